"""The frontend extension (js/magi.js) in headless Chromium against a real ComfyUI: the prompt-schedule timeline,
the live chunk count, the chunk previews while a run streams, the detected model info; no console errors.

Needs COMFYUI_PATH (tests/setup_comfyui.sh), Debian's chromium (/usr/bin/chromium or MAGI_CHROMIUM) and the
`playwright` Python package (its own browser download is not used). Screenshots go to $MAGI_ARTIFACTS
(default: <tmp>/magi-frontend-artifacts).
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import pytest

from comfyui_harness import ROOT, running_server

pytestmark = pytest.mark.comfyui
CHROMIUM = os.environ.get("MAGI_CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = Path(os.environ.get("MAGI_ARTIFACTS") or Path(tempfile.gettempdir()) / "magi-frontend-artifacts")
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]
APP = "window.comfyAPI?.app?.app"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    s = running_server(tmp_path_factory.mktemp("comfyui-frontend"))
    yield s
    s.stop()


@pytest.fixture(scope="module")
def page(server):
    if not shutil.which(CHROMIUM) and not Path(CHROMIUM).is_file():
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium, or set MAGI_CHROMIUM)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright (no browser download)")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        pg = browser.new_page(viewport={"width": 1600, "height": 1000})
        pg.magi_errors = []

        def console(m):
            # on every page load: index.html links /user.css, which no ComfyUI route serves, and the browser asks
            # for /favicon.ico before the frontend sets its icon
            baseline = m.text.startswith("Failed to load resource") and m.location.get("url", "").endswith(
                ("/user.css", "/favicon.ico"))
            if m.type == "error" and not baseline:
                pg.magi_errors.append(f"{m.text} ({m.location.get('url')})")

        pg.on("console", console)
        pg.on("pageerror", lambda e: pg.magi_errors.append(f"pageerror: {e}"))
        pg.goto(server.url, wait_until="domcontentloaded")
        pg.wait_for_function(f"{APP}?.graph && {APP}?.extensionManager !== undefined", timeout=120_000)
        pg.wait_for_function(f"{APP}.extensions?.some?.(e => e.name === 'magi1.nodes') ?? true", timeout=30_000)
        yield pg
        browser.close()


def load_workflow(page, name: str):
    wf = json.loads((ROOT / "workflows" / f"{name}.json").read_text())
    page.evaluate(f"wf => {APP}.loadGraphData(wf)", wf)
    page.wait_for_timeout(500)


def set_widget(page, node_type: str, name: str, value):
    page.evaluate(f"""([t, n, v]) => {{
        const node = {APP}.graph.nodes.find(x => x.type === t);
        const w = node.widgets.find(x => x.name === n);
        w.value = v; w.callback?.(v); {APP}.graph.setDirtyCanvas(true, true);
    }}""", [node_type, name, value])


def wait_text(page, selector: str, text: str, timeout: int = 20_000):
    page.wait_for_function("([s, t]) => [...document.querySelectorAll(s)].some(e => e.innerText.includes(t))",
                           arg=[selector, text], timeout=timeout)


def text_of(page, selector: str) -> str:
    return page.locator(selector).first.inner_text()


def shot(page, name: str):
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"))


def test_extension_loaded(page, server):
    assert any(e.endswith("/magi.js") for e in server.get("/extensions"))
    names = page.evaluate(f"{APP}.extensions.map(e => e.name)")
    assert "magi1.nodes" in names


def test_schedule_timeline_and_chunk_count(page):
    load_workflow(page, "magi1_prompt_schedule")
    page.wait_for_selector(".magi-bar .magi-seg", timeout=20_000)
    segs = page.locator(".magi-bar .magi-seg")
    assert segs.count() == 3 and [segs.nth(i).inner_text() for i in range(3)] == ["0-1", "2-3", "4"]
    legend = text_of(page, ".magi-legend")
    assert "0.0-2.0 s: a red fox" in legend and "4.0-5.0 s" in legend
    wait_text(page, ".magi-panel", "5 chunks of 24")
    info = page.locator(".magi-panel", has_text="chunks of 24 frames").first.inner_text()
    assert "5 chunks of 24 frames" in info and "120 frames, 5.00 s at 720x720" in info
    shot(page, "schedule_timeline")
    # fewer frames on the sampler: the schedule no longer fits; the node shows the sampler's own error
    set_widget(page, "MagiSampler", "num_frames", 48)
    page.wait_for_selector(".magi-error", timeout=20_000)
    assert "only 2 chunks" in text_of(page, ".magi-error")
    wait_text(page, ".magi-panel", "2 chunks of 24")
    set_widget(page, "MagiSampler", "num_frames", 120)
    set_widget(page, "MagiPromptSchedule", "schedule", "0-2: a fox\n2-: a bird")
    wait_text(page, ".magi-error", "overlap")
    shot(page, "schedule_error")


def test_chunk_previews_stream_during_a_run(page, server):
    load_workflow(page, "magi1_prompt_schedule")
    for name, value in (("width", 64), ("height", 64), ("steps", 4)):
        set_widget(page, "MagiSampler", name, value)
    for t in ("MagiT5Loader", "MagiVAELoader"):
        set_widget(page, t, "dtype", "fp32")
    page.evaluate(f"{APP}.queuePrompt(0)")
    page.wait_for_function("document.querySelectorAll('.magi-strip img').length >= 1", timeout=120_000)
    first = time.time()
    page.wait_for_function("document.querySelectorAll('.magi-strip img').length === 5", timeout=300_000)
    page.wait_for_function("[...document.querySelectorAll('.magi-strip img')].every(i => i.complete && i.naturalWidth > 0)",
                           timeout=30_000)
    assert time.time() >= first  # the first chunk showed before the last one was done
    wait_text(page, ".magi-panel", "MAGI-1 tiny distill", timeout=60_000)
    deadline = time.time() + 120
    while time.time() < deadline and server.get("/queue")["queue_running"]:
        time.sleep(0.5)
    shot(page, "chunk_previews")


def test_no_console_errors(page):
    assert page.magi_errors == []
