"""Long videos to a file at constant memory (MAGI-1 Decode to Video File) and the user-facing details of issue 13
(defects 5-8), in a real ComfyUI (headless, CPU, tiny models). Needs COMFYUI_PATH (tests/setup_comfyui.sh).

The RSS test runs 100 chunks (a few minutes on two CPU cores) and prints the numbers it measured."""
from __future__ import annotations

import copy
import json
import re
import struct
import time
import urllib.parse
from pathlib import Path

import pytest

from comfyui_harness import PACK_NAME, ROOT, api_twin, running_server, ui_workflows

pytestmark = pytest.mark.comfyui
MAGI_PREFIX = "Magi"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    s = running_server(tmp_path_factory.mktemp("comfyui-video"))
    yield s
    s.stop()


@pytest.fixture(scope="module")
def object_info(server):
    return server.get("/object_info")


def node_of(prompt: dict, class_type: str) -> str:
    return next(k for k, v in prompt.items() if v["class_type"] == class_type)


def tiny(prompt: dict, size: int = 64, **sampler) -> dict:
    p = copy.deepcopy(prompt)
    for node in p.values():
        inputs = node["inputs"]
        if node["class_type"] == "MagiSampler":
            inputs.update(width=size, height=size, steps=4, **sampler)
        elif node["class_type"] == "MagiVAEEncode":
            inputs.update(width=size, height=size)
        elif node["class_type"] in ("MagiT5Loader", "MagiVAELoader"):
            inputs["dtype"] = "fp32"
    return p


def run(server, prompt: dict, timeout: float = 600) -> dict:
    status, r = server.queue(prompt)
    assert status == 200, r
    return server.wait(r["prompt_id"], timeout)


def error_text(h: dict) -> str:
    return next((d["exception_message"] for k, d in h["status"]["messages"] if k == "execution_error"), "")


def video_frames(path: Path):
    import av

    with av.open(str(path)) as c:
        return [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]


def output_file(server, result: dict) -> Path:
    return server.workdir / "output" / result["subfolder"] / result["filename"]


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


# ----------------------------------------------------------------------------- MAGI Decode to Video File
def long_video(server, num_frames: int, **kw) -> dict:
    return tiny(api_twin("magi1_long_video"), num_frames=num_frames, **kw)


def test_long_video_file_matches_the_image_path_and_feeds_native_video_nodes(server):
    """The file holds the frames MAGI VAE Decode gives for the same latent, as faithfully as ComfyUI's own Create
    Video + Save Video path encodes them (both against the decoded frames saved losslessly as PNG); ComfyUI's Save
    Video and Get Video Components take its VIDEO output."""
    import numpy as np
    from PIL import Image

    prompt = long_video(server, 72)  # 3 chunks
    sampler, writer = node_of(prompt, "MagiSampler"), node_of(prompt, "MagiDecodeToVideoFile")
    prompt["50"] = {"class_type": "SaveVideo", "inputs": dict(video=[writer, 0], filename_prefix="video/native",
                                                             format="auto", codec="auto")}
    prompt["51"] = {"class_type": "GetVideoComponents", "inputs": dict(video=[writer, 0])}
    prompt["52"] = {"class_type": "PreviewImage", "inputs": dict(images=["51", 0])}
    prompt["53"] = {"class_type": "MagiVAEDecode", "inputs": dict(
        vae=[node_of(prompt, "MagiVAELoader"), 0], samples=[sampler, 0], tile_size=256, tile_overlap=0.25,
        tile_frames=0, temporal_overlap=0)}
    prompt["54"] = {"class_type": "CreateVideo", "inputs": dict(images=["53", 0], fps=24.0)}
    prompt["55"] = {"class_type": "SaveVideo", "inputs": dict(video=["54", 0], filename_prefix="video/images",
                                                             format="auto", codec="auto")}
    prompt["56"] = {"class_type": "SaveImage", "inputs": dict(images=["53", 0], filename_prefix="frames/truth")}
    h = run(server, prompt)
    assert h["status"]["status_str"] == "success", error_text(h)
    written = output_file(server, h["outputs"][writer]["images"][0])
    assert h["outputs"][writer]["animated"] == [True] and written.suffix == ".mp4"
    ours, native = video_frames(written), video_frames(output_file(server, h["outputs"]["50"]["images"][0]))
    via_images = video_frames(output_file(server, h["outputs"]["55"]["images"][0]))
    truth = [np.asarray(Image.open(output_file(server, f)).convert("RGB")) for f in h["outputs"]["56"]["images"]]
    assert len(ours) == len(via_images) == len(truth) == 72 and ours[0].shape == (64, 64, 3)
    assert all((a == b).all() for a, b in zip(ours, native))  # Save Video copied the stream

    def blocks(frames):  # 8x8 means: what the frames show, without H.264's pixel-level noise
        x = np.stack(frames).astype(np.float32)
        return x.reshape(x.shape[0], 8, 8, 8, 8, 3).mean(axis=(2, 4))

    def error(a, b):
        return float(np.abs(blocks(a) - blocks(b)).mean())

    other_chunk = truth[24:] + truth[:24]
    print(f"\nmean abs error of 8x8 blocks vs the decoded frames (0-255): ours {error(ours, truth):.2f}, "
          f"Create Video {error(via_images, truth):.2f}, frames of another chunk {error(other_chunk, truth):.2f}")
    assert error(ours, truth) <= error(via_images, truth) * 1.25 + 0.5
    assert error(ours, truth) < 0.5 * error(other_chunk, truth)
    assert len(h["outputs"]["52"]["images"]) == 72  # Get Video Components read the file back as IMAGE
    assert len(h["outputs"][writer]["images"]) == 1  # the video; the chunk previews went to the strip (websocket)


def test_long_video_rejects_a_foreign_latent_before_writing(server):
    prompt = long_video(server, 24)
    writer = node_of(prompt, "MagiDecodeToVideoFile")
    prompt["60"] = {"class_type": "EmptyLatentImage", "inputs": dict(width=64, height=64, batch_size=1)}
    prompt[writer]["inputs"]["samples"] = ["60", 0]
    prompt[writer]["inputs"]["filename_prefix"] = "video/foreign"
    h = run(server, prompt)
    assert h["status"]["status_str"] == "error"
    assert "needs a MAGI video latent" in error_text(h)
    assert not list((server.workdir / "output" / "video").glob("foreign*"))  # nothing, not even a temp file


def _text_events(ws, until, timeout: float):
    """(time, node, text) of progress-text messages, and the JSON messages, until `until(json message)`."""
    texts, deadline = [], time.time() + timeout
    while time.time() < deadline:
        msg = ws.recv()
        if isinstance(msg, bytes):
            kind = struct.unpack(">I", msg[:4])[0]
            if kind == 3:  # BinaryEventTypes.TEXT: node id length, node id, text
                n = struct.unpack(">I", msg[4:8])[0]
                texts.append((time.time(), msg[8:8 + n].decode(), msg[8 + n:].decode()))
            continue
        m = json.loads(msg)
        if until(m):
            return texts, m
    raise TimeoutError("no end of run")


def test_interrupt_keeps_the_finished_chunks(server):
    prompt = long_video(server, 24 * 6)
    writer = node_of(prompt, "MagiDecodeToVideoFile")
    prompt[writer]["inputs"]["filename_prefix"] = "video/interrupted"
    prompt[writer]["inputs"]["tile_size"] = 32  # slower decode: room to interrupt after the first chunk
    ws = server.websocket()
    try:
        status, r = server.queue(prompt)
        assert status == 200
        written = []

        def until(m):
            return m["type"] in ("execution_interrupted", "execution_error", "execution_success")

        deadline = time.time() + 600
        end = None
        while time.time() < deadline and end is None:
            msg = ws.recv()
            if isinstance(msg, bytes) and struct.unpack(">I", msg[:4])[0] == 3:
                n = struct.unpack(">I", msg[4:8])[0]
                if msg[8:8 + n].decode() == writer and b"written" in msg[8 + n:]:
                    written.append(msg[8 + n:].decode())
                    if len(written) == 2:
                        server.post("/interrupt", {})
            elif isinstance(msg, str) and until(json.loads(msg)):
                end = json.loads(msg)
    finally:
        ws.close()
    assert end["type"] == "execution_interrupted", end
    files = list((server.workdir / "output" / "video").glob("interrupted*.mp4"))
    assert len(files) == 1, files
    frames = video_frames(files[0])
    assert 48 <= len(frames) < 24 * 6  # the chunks finished before the interrupt, playable
    assert not list((server.workdir / "output" / "video").glob(".interrupted*"))  # no temp file left
    # the node's last words agree with the file: the chunk line (it said one chunk fewer than written) and the stop
    last_chunk = [t for t in written if t.startswith("chunk ")][-1]
    assert f"chunk {len(frames) // 24}/6 written: {len(frames)} frames" in last_chunk, written
    assert f"stopped: the {len(frames)} frames written are kept in video/{files[0].name}" in written[-1], written


def test_interrupt_while_sampling_keeps_the_finished_chunks(server):
    """Cancel after the sampler's first finished chunk: the run ends interrupted (no LATENT output, nothing
    cached), and the finished chunk is in the output folder as a playable mp4, which the node's text names."""
    prompt = long_video(server, 24 * 6, seed=int(time.time()))  # a seed no other test ran: nothing cached
    sampler = node_of(prompt, "MagiSampler")
    out = server.workdir / "output"
    before = set(out.glob("MAGI-1_unfinished*"))
    ws = server.websocket()
    try:
        status, r = server.queue(prompt)
        assert status == 200
        texts, end, chunks = [], None, 0
        deadline = time.time() + 600
        while time.time() < deadline and end is None:
            msg = ws.recv()
            if isinstance(msg, bytes):  # previews, and node texts (kind 3)
                n = struct.unpack(">I", msg[4:8])[0]
                if struct.unpack(">I", msg[:4])[0] == 3 and msg[8:8 + n].decode() == sampler:
                    texts.append(msg[8 + n:].decode())
                continue
            m = json.loads(msg)
            if m.get("data", {}).get("prompt_id") not in (None, r["prompt_id"]):
                continue
            if m["type"] == "magi.chunk" and m["data"].get("node") == sampler:
                chunks += 1
                if chunks == 1:
                    server.post("/interrupt", {})
            elif m["type"] in ("execution_interrupted", "execution_error", "execution_success"):
                end = m
    finally:
        ws.close()
    assert end["type"] == "execution_interrupted", end
    files = sorted(set(out.glob("MAGI-1_unfinished*")) - before)
    assert [f.suffix for f in files] == [".mp4"], files
    assert 24 <= len(video_frames(files[0])) < 24 * 6  # the finished chunk(s), playable
    assert any(files[0].name in t and "finished chunk" in t for t in texts), texts[-3:]
    assert not list(out.glob(".MAGI-1_unfinished*"))  # no temporary file left


def test_long_video_memory_stays_flat(server):
    """100 chunks (2400 frames) through the long-video workflow: the server's RSS after chunk 100 is within a few
    % of its RSS after chunk 10, for the sampler (chunk previews on) and for the file writer."""
    warm = long_video(server, 24)
    assert run(server, warm)["status"]["status_str"] == "success"  # models loaded, allocator warm
    prompt = long_video(server, 2400)
    sampler, writer = node_of(prompt, "MagiSampler"), node_of(prompt, "MagiDecodeToVideoFile")
    pid = server.proc.pid
    marks = {}
    ws = server.websocket()
    try:
        status, r = server.queue(prompt)
        assert status == 200
        deadline = time.time() + 1500
        end = None
        while time.time() < deadline and end is None:
            msg = ws.recv()
            if isinstance(msg, bytes) and struct.unpack(">I", msg[:4])[0] == 3:
                n = struct.unpack(">I", msg[4:8])[0]
                node, text = msg[8:8 + n].decode(), msg[8 + n:].decode()
                m = re.match(r"chunk (\d+)/100 (done|written)", text)
                if m and int(m.group(1)) in (10, 100):
                    marks[(node, int(m.group(1)))] = rss_kb(pid)
            elif isinstance(msg, str):
                m = json.loads(msg)
                if m["type"] in ("execution_interrupted", "execution_error", "execution_success"):
                    end = m
    finally:
        ws.close()
    assert end is not None and end["type"] == "execution_success", end
    print(f"\nserver RSS (MiB) after chunk 10 / 100: sampler {marks[(sampler, 10)] / 1024:.1f} / "
          f"{marks[(sampler, 100)] / 1024:.1f}, writer {marks[(writer, 10)] / 1024:.1f} / "
          f"{marks[(writer, 100)] / 1024:.1f}")
    for node in (sampler, writer):
        assert marks[(node, 100)] <= marks[(node, 10)] * 1.03, (node, marks)
    h = server.wait(r["prompt_id"])  # (the history entry is written just after execution_success is sent)
    assert len(video_frames(output_file(server, h["outputs"][writer]["images"][0]))) == 2400


# ----------------------------------------------------------------------------- defect 5: DiT info panel
def test_dit_info_is_known_without_a_run(server, object_info):
    """The loader's panel asks /magi/dit_info (headers only); it says what a run's info output says."""
    body = dict(model="4.5B_distill", variant="auto", weight_dtype="auto", attention="auto", precision="fast",
                device="auto", special_tokens="auto", compile=False, block_swap=0)
    status, info = server.post("/magi/dit_info", body)
    assert status == 200, info
    assert info["size"] == "tiny" and info["variant"] == "distill" and info["guidance"] is False
    prompt = {"1": {"class_type": "MagiDiTLoader", "inputs": body},
              "2": {"class_type": "PreviewAny", "inputs": {"source": ["1", 1]}}}
    h = run(server, prompt)
    assert h["status"]["status_str"] == "success", error_text(h)
    assert h["outputs"]["1"]["text"] == [info["text"]]
    status, err = server.post("/magi/dit_info", {**body, "model": "nope"})
    assert status == 200 and "nope" in err["error"]  # a widget's value: answered, shown in the panel


# ----------------------------------------------------------------------------- defect 6: v2v input
def test_v2v_template_runs_on_a_fresh_install(server):
    """The harness no longer puts magi1_prefix.mp4 in the input folder: the pack does (workflows/input/)."""
    data = server.request("/view?filename=magi1_prefix.mp4&type=input", raw=True)
    assert data == (ROOT / "workflows" / "input" / "magi1_prefix.mp4").read_bytes()
    h = run(server, tiny(api_twin("magi1_v2v"), num_frames=24))
    assert h["status"]["status_str"] == "success", error_text(h)


# ----------------------------------------------------------------------------- defect 7: frame counts
@pytest.mark.parametrize("num_frames, fps, twin", [(96, 12, "magi1_t2v"), (24, 8, "magi1_t2v"),
                                                   (24, 24, "magi1_v2v"), (24, 24, "magi1_i2v")])
def test_frame_count_shown_before_the_run_is_what_comes_out(server, num_frames, fps, twin):
    prompt = tiny(api_twin(twin), num_frames=num_frames, fps=fps)
    prefix = {"magi1_t2v": 0, "magi1_i2v": 1, "magi1_v2v": 32}[twin]
    info = server.get(f"/magi/chunk_info?frames={num_frames}&fps={fps}&prefix_frames={prefix}")
    h = run(server, prompt)
    assert h["status"]["status_str"] == "success", error_text(h)
    saved = h["outputs"][node_of(prompt, "SaveVideo")]["images"][0]
    assert len(video_frames(output_file(server, saved))) == info["output_frames"]
    if info["output_frames"] != num_frames:  # the node says why, before the run
        assert info["note"].startswith(f"{num_frames} frames asked -> {info['output_frames']} out")


def test_frame_count_tooltips(object_info):
    req = object_info["MagiSampler"]["input"]["required"]
    assert "fps/2" in req["fps"][1]["tooltip"] and "Create Video" in req["fps"][1]["tooltip"]
    assert "96 -> 120" in req["num_frames"][1]["tooltip"]


# ----------------------------------------------------------------------------- defect 8: polish
def test_every_widget_has_a_tooltip(object_info):
    widgets = ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO")
    missing = [f"{name}.{k}" for name, info in object_info.items() if name.startswith(MAGI_PREFIX)
               for section in ("required", "optional") for k, spec in info["input"].get(section, {}).items()
               if (isinstance(spec[0], list) or spec[0] in widgets) and not (len(spec) > 1 and spec[1].get("tooltip"))]
    assert missing == []


def test_float_widgets_show_their_defaults(object_info):
    """The frontend shows a FLOAT with -floor(log10(step)) decimals: a default needing more would show rounded
    (tile_overlap 0.25 showed as 0.3)."""
    import math

    wrong = []
    for name, info in object_info.items():
        if not name.startswith(MAGI_PREFIX):
            continue
        for section in ("required", "optional"):
            for k, spec in info["input"].get(section, {}).items():
                if spec[0] == "FLOAT":
                    shown = max(0, -math.floor(math.log10(spec[1]["step"])))
                    if round(spec[1]["default"], shown) != spec[1]["default"]:
                        wrong.append(f"{name}.{k}")
    assert wrong == []


def test_templates_have_titles_and_order(server):
    listed = server.get("/api/workflow_templates")[PACK_NAME]
    assert listed[0] == "MAGI-1 text to video" and listed[-1] == "MAGI-1 24B on several GPUs"
    assert [json.loads((ROOT / "workflows" / f"{n}.json").read_text())["extra"]["magi_order"] for n in listed] == \
        list(range(len(listed)))
    for name in listed:
        assert name.startswith("MAGI-1 ") and "_" not in name
        wf = server.request(f"/api/workflow_templates/{PACK_NAME}/{urllib.parse.quote(name)}.json")
        assert wf["nodes"]
    assert set(listed) == {p.stem for p in ui_workflows().values()}


def test_multigpu_devices_is_a_choice(object_info):
    spec = object_info["MagiMultiGPUSettings"]["input"]["required"]["devices"]
    assert spec[0] == "COMBO" and spec[1]["options"][0] == "all" and "cpu" in spec[1]["options"]
