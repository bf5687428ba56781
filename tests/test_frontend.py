"""The frontend extension (js/magi.js) in headless Chromium against a real ComfyUI: every shipped workflow loads
with no missing node, no overlapping nodes and no console error; the prompt-schedule timeline, the live chunk
count and frame-count notes, the chunk previews while a run streams, the detected model info (before any run),
guidance widgets greyed out for distill models, the prefix size following the sampler, the schedule shown in the
text encoder it feeds.

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

from comfyui_harness import ROOT, running_server, ui_workflows

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
            # for /favicon.ico before the frontend sets its icon; the missing-node dialog (test_the_checks_can_fail)
            # looks node types up in the Comfy registry, which this offline machine cannot resolve
            url = m.location.get("url", "")
            baseline = m.text.startswith("Failed to load resource") and (
                url.endswith(("/user.css", "/favicon.ico")) or url.startswith("https://api.comfy.org/"))
            if m.type == "error" and not baseline:
                pg.magi_errors.append(f"{m.text} ({m.location.get('url')})")

        pg.on("console", console)
        pg.on("pageerror", lambda e: pg.magi_errors.append(f"pageerror: {e}"))
        pg.goto(server.url, wait_until="domcontentloaded")
        wait_ready(pg)
        yield pg
        browser.close()


LITEGRAPH = "(window.LiteGraph ?? window.comfyAPI?.litegraph?.LiteGraph)"


def wait_ready(page):
    """The app is up, our extension registered and the node types known (loading a graph earlier would show every
    node as missing)."""
    page.wait_for_function(f"{APP}?.graph && {APP}?.extensionManager !== undefined", timeout=120_000)
    page.wait_for_function(f"{APP}.extensions?.some?.(e => e.name === 'magi1.nodes') ?? true", timeout=30_000)
    page.wait_for_function(f"!!{LITEGRAPH}?.registered_node_types?.MagiSampler", timeout=60_000)


def load_workflow(page, name: str):
    """Load a shipped UI workflow by its API twin's name (e.g. magi1_t2v)."""
    load_graph(page, json.loads(ui_workflows()[name].read_text()))


def load_graph(page, wf: dict):
    page.evaluate(f"wf => {APP}.loadGraphData(wf)", wf)
    page.wait_for_timeout(500)


def node_value(page, node_type: str, name: str):
    return page.evaluate(f"""([t, n]) => {APP}.graph.nodes.find(x => x.type === t)
        .widgets.find(x => x.name === n).value""", [node_type, name])


def wait_value(page, node_type: str, name: str, value, timeout: int = 10_000):
    page.wait_for_function(f"""([t, n, v]) => {APP}.graph.nodes.find(x => x.type === t)
        ?.widgets.find(x => x.name === n)?.value === v""", arg=[node_type, name, value], timeout=timeout)


def missing_node_dialog(page) -> bool:
    return page.evaluate("""() => [...document.querySelectorAll('.p-dialog')].some(
        d => /missing/i.test(d.innerText))""")


OVERLAPS = f"""() => {{
    const title = {LITEGRAPH}?.NODE_TITLE_HEIGHT ?? 30;
    const boxes = {APP}.graph.nodes.map(n => [n.id, n.type, n.pos[0], n.pos[1] - title, n.size[0], n.size[1] + title]);
    const out = [];
    for (let i = 0; i < boxes.length; i++) for (let j = i + 1; j < boxes.length; j++) {{
        const [, ta, xa, ya, wa, ha] = boxes[i], [, tb, xb, yb, wb, hb] = boxes[j];
        if (xa < xb + wb && xb < xa + wa && ya < yb + hb && yb < ya + ha) out.push(`${{ta}} / ${{tb}}`);
    }}
    return out;
}}"""


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


@pytest.mark.parametrize("name", sorted(ui_workflows()))
def test_shipped_workflow_loads_cleanly(page, name):
    """No missing-node dialog, no overlapping nodes, no console error; a screenshot of each for a person to look
    at. The sampler's panel has filled in (the extension ran on it)."""
    errors = len(page.magi_errors)
    load_workflow(page, name)
    page.wait_for_timeout(2500)  # the panels poll the server every 0.7 s
    assert not missing_node_dialog(page)
    assert page.evaluate(OVERLAPS) == []
    if name != "magi1_t2v_multigpu":
        wait_text(page, ".magi-panel", "MAGI-1 tiny distill")  # the loader's panel, without a run
    wait_text(page, ".magi-panel", "chunks of 24 frames")
    shot(page, f"workflow_{name}")
    assert page.magi_errors[errors:] == []


def test_the_checks_can_fail(page):
    """The missing-node and overlap checks above do see a missing node type and two nodes on top of each other."""
    wf = json.loads(ui_workflows()["magi1_t2v"].read_text())
    wf["nodes"][1]["pos"] = list(wf["nodes"][0]["pos"])
    wf["nodes"][2]["type"] = "NoSuchMagiNode"
    load_graph(page, wf)
    page.wait_for_function("[...document.querySelectorAll('.p-dialog')].some(d => /missing/i.test(d.innerText))",
                           timeout=10_000)
    assert page.evaluate(OVERLAPS)
    page.keyboard.press("Escape")
    page.wait_for_function("![...document.querySelectorAll('.p-dialog')].some(d => /missing/i.test(d.innerText))",
                           timeout=10_000)


def test_dit_info_shows_before_any_run(page):
    """After a page reload nothing has run in this page: the loader's panel still says what the model is."""
    page.evaluate("localStorage.clear(); sessionStorage.clear()")  # no tabs restored (test_the_checks_can_fail's)
    page.reload(wait_until="domcontentloaded")
    wait_ready(page)
    load_workflow(page, "magi1_t2v")
    assert not missing_node_dialog(page)
    wait_text(page, ".magi-panel", "MAGI-1 tiny distill")
    assert "after the first run" not in page.locator(".magi-panel", has_text="MAGI-1 tiny").first.inner_text()
    set_widget(page, "MagiDiTLoader", "model", "24B_distill")
    wait_text(page, ".magi-panel", "MAGI-1 tiny-24B distill")
    set_widget(page, "MagiDiTLoader", "attention", "fp8-approx")  # on this CPU-only server: said before any run
    wait_text(page, ".magi-panel", "fp8-approx can't run here")
    shot(page, "dit_info_fp8")
    set_widget(page, "MagiDiTLoader", "attention", "flash")  # not installed: an error, before any weight loads
    wait_text(page, ".magi-panel, .magi-error", "flash_attn is not importable")
    shot(page, "dit_info_flash")
    set_widget(page, "MagiDiTLoader", "attention", "auto")


def test_guidance_widgets_greyed_out_for_distill(page):
    load_workflow(page, "magi1_t2v")
    wait_text(page, ".magi-panel", "MAGI-1 tiny distill")
    page.wait_for_function(f"""{APP}.graph.nodes.find(x => x.type === 'MagiSampler').widgets
        .filter(w => ['text_scale', 'prev_chunk_scale'].includes(w.name)).every(w => w.disabled)""", timeout=10_000)
    label = page.evaluate(f"{APP}.graph.nodes.find(x => x.type === 'MagiSampler').widgets"
                          ".find(w => w.name === 'text_scale').label")
    assert "unused" in label and "distill" in label
    assert not page.evaluate(f"{APP}.graph.nodes.find(x => x.type === 'MagiSampler').widgets"
                             ".find(w => w.name === 'prev_chunks_scale').disabled")  # distill's own scale
    set_widget(page, "MagiDiTLoader", "variant", "base")
    page.wait_for_function(f"""{APP}.graph.nodes.find(x => x.type === 'MagiSampler').widgets
        .filter(w => ['text_scale', 'prev_chunk_scale'].includes(w.name)).every(w => !w.disabled)""", timeout=10_000)
    shot(page, "guidance_base_model")


def test_prefix_size_follows_the_sampler(page):
    load_workflow(page, "magi1_i2v")
    set_widget(page, "MagiSampler", "width", 512)
    set_widget(page, "MagiSampler", "height", 288)
    set_widget(page, "MagiSampler", "fps", 16)
    wait_value(page, "MagiVAEEncode", "width", 512)
    wait_value(page, "MagiVAEEncode", "height", 288)
    wait_value(page, "MagiVAEEncode", "fps", 16)


def test_a_run_queued_right_after_a_size_change_gets_it_on_the_encoder(page):
    """The prompt made in the same moment as the sampler's new size (no poll in between) has it on VAE Encode too:
    a user pressing Run right after typing got 'prefix latent is 720x720 but the sampler makes 128x128'."""
    load_workflow(page, "magi1_i2v")
    page.wait_for_timeout(1500)  # the polls have run: the encoder is at the sampler's current size
    encoder = page.evaluate(f"""async () => {{
        const app = {APP}, s = app.graph.nodes.find(x => x.type === 'MagiSampler');
        for (const [n, v] of [['width', 128], ['height', 96], ['fps', 16]]) s.widgets.find(w => w.name === n).value = v;
        const p = await app.graphToPrompt();
        const enc = Object.values(p.output).find(x => x.class_type === 'MagiVAEEncode');
        return [enc.inputs.width, enc.inputs.height, enc.inputs.fps];
    }}""")
    assert encoder == [128, 96, 16]


def test_previews_without_a_vae_are_said_before_the_run(page):
    load_workflow(page, "magi1_t2v")
    wait_text(page, ".magi-panel", "4 chunks of 24 frames")
    assert not page.evaluate("[...document.querySelectorAll('.magi-warn')].some(e => /needs the vae/.test(e.innerText))")
    page.evaluate(f"""() => {{
        const s = {APP}.graph.nodes.find(x => x.type === 'MagiSampler');
        s.disconnectInput(s.findInputSlot('vae'));
    }}""")
    wait_text(page, ".magi-warn", "preview 'decoded chunks' needs the vae input")
    shot(page, "preview_without_vae")
    set_widget(page, "MagiSampler", "preview", "off")
    page.wait_for_function("![...document.querySelectorAll('.magi-warn')].some(e => /needs the vae/.test(e.innerText))",
                           timeout=10_000)


def test_schedule_shown_in_the_text_encoder(page):
    load_workflow(page, "magi1_prompt_schedule")
    schedule = node_value(page, "MagiPromptSchedule", "schedule")
    wait_value(page, "MagiTextEncode", "prompt", schedule)
    set_widget(page, "MagiPromptSchedule", "schedule", "0-: a heron in the rain")
    wait_value(page, "MagiTextEncode", "prompt", "0-: a heron in the rain")


def test_a_connected_schedule_keeps_the_prompt_typed_in_the_encoder(page):
    """Connecting a Prompt Schedule shows its text in the encoder; disconnecting it brings back what the user had
    typed there (the mirror used to overwrite it for good)."""
    load_workflow(page, "magi1_t2v")
    own = node_value(page, "MagiTextEncode", "prompt")
    page.evaluate(f"""() => {{
        const app = {APP}, g = app.graph, enc = g.nodes.find(x => x.type === 'MagiTextEncode');
        const s = {LITEGRAPH}.createNode('MagiPromptSchedule');
        s.pos = [enc.pos[0], enc.pos[1] + 400];
        g.add(s);
        s.widgets.find(w => w.name === 'schedule').value = '0-: a heron in the rain';
        s.connect(0, enc, enc.findInputSlot('prompt'));
    }}""")
    wait_value(page, "MagiTextEncode", "prompt", "0-: a heron in the rain")
    page.evaluate(f"""() => {{
        const enc = {APP}.graph.nodes.find(x => x.type === 'MagiTextEncode');
        enc.disconnectInput(enc.findInputSlot('prompt'));
    }}""")
    wait_value(page, "MagiTextEncode", "prompt", own)


def _between_image_and_encoder(page, node_type: str) -> list[str]:
    """Put a new `node_type` between Load Image and MAGI VAE Encode; -> the panels' texts three polls later."""
    page.evaluate(f"""t => {{
        const g = {APP}.graph, load = g.nodes.find(x => x.type === 'LoadImage');
        const enc = g.nodes.find(x => x.type === 'MagiVAEEncode');
        const mid = {LITEGRAPH}.createNode(t);
        mid.pos = [load.pos[0], load.pos[1] + 500 + 200 * g.nodes.length];
        g.add(mid);
        load.connect(0, mid, mid.findInputSlot('image'));
        mid.connect(0, enc, enc.findInputSlot('image'));
    }}""", node_type)
    assert page.evaluate(f"""() => {{
        const enc = {APP}.graph.nodes.find(x => x.type === 'MagiVAEEncode');
        return enc.getInputNode(enc.findInputSlot('image'))?.type;
    }}""") == node_type
    page.wait_for_timeout(3 * 700)  # three of the panel's polls: it has seen the new graph
    return page.evaluate("[...document.querySelectorAll('.magi-panel')].map(e => e.innerText)")


def test_an_image_prefix_is_recognised_through_other_nodes(page):
    """Load Image -> ImageScaleBy -> MAGI VAE Encode is still an image prefix: 120 frames, not a video prefix;
    through RepeatImageBatch (a batch of it) it is not."""
    load_workflow(page, "magi1_i2v")
    wait_text(page, ".magi-panel", "(image prefix)")
    texts = _between_image_and_encoder(page, "ImageScaleBy")
    assert any("image prefix" in t and "120 frames" in t for t in texts), texts
    assert not any("video prefix" in t for t in texts), texts
    texts = _between_image_and_encoder(page, "RepeatImageBatch")
    assert not any("image prefix" in t for t in texts), texts


def test_frame_counts_and_fps_mismatch_are_shown(page):
    load_workflow(page, "magi1_t2v")
    wait_text(page, ".magi-panel", "4 chunks of 24 frames")
    set_widget(page, "MagiSampler", "fps", 12)
    wait_text(page, ".magi-warn", "96 frames asked -> 24 out")
    wait_text(page, ".magi-warn", "Create Video plays at 24 fps, the sampler makes 12 fps")
    shot(page, "frame_count_notes")
    set_widget(page, "CreateVideo", "fps", 12)
    page.wait_for_function("![...document.querySelectorAll('.magi-warn')].some(e => /Create Video/.test(e.innerText))",
                           timeout=10_000)


def test_widget_details(page):
    """tile_overlap shows two decimals (0.25, not 0.3); the multi-GPU devices are a list to pick from."""
    load_workflow(page, "magi1_t2v")
    assert page.evaluate(f"{APP}.graph.nodes.find(x => x.type === 'MagiVAEDecode').widgets"
                         ".find(w => w.name === 'tile_overlap').options.precision") == 2
    load_workflow(page, "magi1_t2v_multigpu")
    assert page.evaluate(f"{APP}.graph.nodes.find(x => x.type === 'MagiMultiGPUSettings').widgets"
                         ".find(w => w.name === 'devices').type") == "combo"


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
    # a time inside a chunk: the panel says where the prompt really changes
    set_widget(page, "MagiPromptSchedule", "schedule", "0s-2.5s: a fox\n2.5s-: a bird")
    wait_text(page, ".magi-warn", "2.5s falls inside a chunk, so the prompt changes at 3s")


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


def shrink(page, num_frames: int):
    """The loaded template at 64x64, 4 steps, num_frames, fp32 T5 and VAE: a run of seconds on a CPU."""
    for widget, value in (("width", 64), ("height", 64), ("steps", 4), ("num_frames", num_frames)):
        set_widget(page, "MagiSampler", widget, value)
    for t in ("MagiT5Loader", "MagiVAELoader"):
        set_widget(page, t, "dtype", "fp32")


def queue_and_wait(page, server, timeout: float) -> str:
    """Queue the graph from the UI and wait for its history entry -> its status ('success', 'error', ...)."""
    before = set(server.get("/history"))
    page.evaluate(f"{APP}.queuePrompt(0)")
    deadline = time.time() + timeout
    while time.time() < deadline and not set(server.get("/history")) - before:
        time.sleep(1)
    [pid] = set(server.get("/history")) - before
    return server.get("/history")[pid]["status"]["status_str"]


def test_the_long_video_node_shows_its_video_after_the_run(page, server):
    """MAGI-1 Decode to Video File ends with its mp4 as a playable video on the node. It used to send a still per
    chunk through the progress bar, and the frontend kept showing that still instead of the finished video. The
    chunk strips follow the newest chunk (they stayed on the first five)."""
    load_workflow(page, "magi1_long_video")
    shrink(page, num_frames=240)
    assert queue_and_wait(page, server, timeout=300) == "success"
    page.wait_for_function("[...document.querySelectorAll('video')].some(v => (v.currentSrc || v.src || '')"
                           ".includes('MAGI-1_long'))", timeout=30_000)
    shot(page, "long_video_done")
    # the chunk strips (sampler, file writer) hold 10 chunks, more than fit: each shows its newest, not its first
    strips = page.evaluate("[...document.querySelectorAll('.magi-strip')].map(s => [s.children.length, "
                           "s.scrollWidth, s.clientWidth, s.scrollLeft])")
    assert len(strips) == 2 and all(n == 10 and width > shown for n, width, shown, _ in strips), strips
    assert all(left + shown >= width - 8 for _, width, shown, left in strips), strips


@pytest.mark.parametrize("name", ["magi1_i2v", "magi1_v2v"])
def test_no_node_covers_another_after_a_run(page, server, name):
    """The sampler's chunk previews make it taller after a run: the templates keep the space below it free (MAGI
    VAE Encode sat there and was covered)."""
    load_workflow(page, name)
    shrink(page, num_frames=24)
    wait_value(page, "MagiVAEEncode", "width", 64)  # the encode node follows the sampler's size (js/magi.js)
    wait_value(page, "MagiVAEEncode", "height", 64)
    assert queue_and_wait(page, server, timeout=400) == "success"
    page.wait_for_function(f"{APP}.graph.nodes.find(x => x.type === 'MagiSampler').imgs?.length > 0",
                           timeout=30_000)
    page.wait_for_timeout(1000)
    shot(page, f"after_run_{name}")
    assert page.evaluate(OVERLAPS) == []


def test_no_console_errors(page):
    assert page.magi_errors == []
