"""The pack inside a real ComfyUI (headless, CPU, tiny models): schemas, shipped workflows, runs, interrupt,
caching, errors, routes, template browser, the native-CLIP bridge. Needs COMFYUI_PATH (tests/setup_comfyui.sh)."""
from __future__ import annotations

import copy
import json
import re
import subprocess
import sys
import time
import urllib.parse

import pytest

from comfyui_harness import (PACK_NAME, ROOT, api_twin, check_ui_workflow, comfy_env, comfyui_path,
                             run_clip_bridge_check, running_server, to_api, widget_names)

pytestmark = pytest.mark.comfyui
WORKFLOWS = sorted((ROOT / "workflows").glob("*.json"))
MAGI_NODES = {"MagiDiTLoader", "MagiVAELoader", "MagiT5Loader", "MagiTextEncode", "MagiPromptSchedule",
              "MagiCLIPTextEncode", "MagiVAEEncode", "MagiVAEDecode", "MagiSampler", "MagiSamplerOptions",
              "MagiMultiGPUSettings"}
# Pixel frames each shipped workflow gives at tiny sizes (64x64, 4 steps), worked out by hand from the chunk
# rules: whole chunks of 6 latents decode to 24 frames (2 tiles of 3 latents); a 1-latent tile gives 1 frame.
TINY_FRAMES = {
    "magi1_t2v": 24,  # 24 frames = 1 chunk
    "magi1_i2v": 48,  # image latent + 6 -> 2 chunks; chunk 0 keeps the image latent: 24 + 24
    "magi1_v2v": 37,  # 32-frame prefix = 8 latents; +6 -> 3 chunks; chunk 1 emits latents 8..11 (12+1), chunk 2: 24
    "magi1_prompt_schedule": 120,  # kept at 120 frames (5 chunks): its schedule names chunk 4
    "magi1_t2v_multigpu": 24,
}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    s = running_server(tmp_path_factory.mktemp("comfyui"))
    yield s
    s.stop()


@pytest.fixture(scope="module")
def object_info(server):
    return server.get("/object_info")


def tiny(prompt: dict, **sampler) -> dict:
    """Shipped API prompt at tiny sizes, so it runs in seconds on a CPU."""
    p = copy.deepcopy(prompt)
    for node in p.values():
        inputs = node["inputs"]
        if node["class_type"] == "MagiSampler":
            inputs.update(width=64, height=64, steps=4)
            if inputs["num_frames"] != 120:
                inputs["num_frames"] = 24
            inputs.update(sampler)
        elif node["class_type"] == "MagiVAEEncode":
            inputs.update(width=64, height=64)
        elif node["class_type"] == "MagiMultiGPUSettings":
            inputs.update(devices="cpu", cp_size=2)
        elif node["class_type"] in ("MagiT5Loader", "MagiVAELoader"):
            inputs["dtype"] = "fp32"
    return p


def node_of(prompt: dict, class_type: str) -> str:
    return next(k for k, v in prompt.items() if v["class_type"] == class_type)


def run(server, prompt: dict, timeout: float = 300) -> dict:
    status, r = server.queue(prompt)
    assert status == 200, r
    return server.wait(r["prompt_id"], timeout)


def error_of(history: dict) -> dict:
    for kind, data in history["status"]["messages"]:
        if kind == "execution_error":
            return data
    raise AssertionError(f"no execution_error in {history['status']}")


def video_file_frames(path):
    """(N, H, W, 3) uint8 frames of a video file, as ffmpeg (PyAV) decodes them."""
    import av
    import numpy as np

    with av.open(str(path)) as c:
        return np.stack([fr.to_ndarray(format="rgb24") for fr in c.decode(video=0)])


def saved_frames(server, history: dict, prompt: dict):
    f = history["outputs"][node_of(prompt, "SaveVideo")]["images"][0]
    return video_file_frames(server.workdir / "output" / f["subfolder"] / f["filename"])


def saved_video(server, history: dict, prompt: dict):
    frames = saved_frames(server, history, prompt)
    return frames.shape[0], frames.shape[2], frames.shape[1]


def between(prompt: dict, node: dict, src: str, dst: str, dst_input: str) -> dict:
    """A copy of `prompt` with `node` (whose first input is named in node["link"]) between src's output 0 and
    dst's `dst_input`."""
    p = copy.deepcopy(prompt)
    nid = str(max(int(k) for k in p) + 1)
    inputs = dict(node["inputs"], **{node["link"]: [node_of(p, src), 0]})
    p[nid] = {"class_type": node["class_type"], "inputs": inputs}
    p[node_of(p, dst)]["inputs"][dst_input] = [nid, 0]
    return p


def magi_children(pid: int) -> dict:
    """The server's multi-GPU workers and multiprocessing's resource tracker (processes it started)."""
    import psutil

    out = {"workers": [], "tracker": []}
    for c in psutil.Process(pid).children(recursive=True):
        try:
            cmd = " ".join(c.cmdline())
        except psutil.Error:
            continue
        if "resource_tracker" in cmd:
            out["tracker"].append(c.pid)
        elif "multiprocessing" in cmd:
            out["workers"].append(c.pid)
    return out


def wait_for(pred, timeout: float = 60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(0.25)
    return pred()


# ----------------------------------------------------------------------------- schemas and workflows
def test_object_info_lists_every_node(object_info):
    assert MAGI_NODES <= set(object_info)
    core_names = {v["display_name"] for k, v in object_info.items() if not k.startswith("Magi")}
    for name in MAGI_NODES:
        info = object_info[name]
        assert info["category"] == "MAGI-1" and info["display_name"] not in core_names
        types = [s[0] for k, sec in info["input"].items() if k != "hidden" for s in sec.values()] + info["output"]
        custom = [t for t in types if isinstance(t, str) and t not in
                  ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO", "IMAGE", "LATENT", "CLIP")]
        assert all(t.startswith("MAGI_") for t in custom), (name, custom)
    dit = object_info["MagiDiTLoader"]["input"]["required"]
    assert dit["model"][1]["options"] == ["24B_distill", "4.5B_distill"]
    assert object_info["MagiT5Loader"]["input"]["required"]["t5"][1]["options"] == ["t5-v1_1-xxl"]
    assert object_info["MagiVAELoader"]["input"]["required"]["vae"][1]["options"] == ["vae"]
    assert widget_names(object_info["MagiSampler"])[5:7] == ["seed", None]  # control_after_generate slot


def test_performance_switches_are_appended_optional_widgets(object_info):
    """compile / block_swap (DiT loader) and early_first_chunk (options): after the older widgets, so saved
    workflows keep their widget order, and optional, so older API prompts without them still validate."""
    loader, options = object_info["MagiDiTLoader"], object_info["MagiSamplerOptions"]
    assert widget_names(loader)[-3:] == ["special_tokens", "compile", "block_swap"]
    assert loader["input_order"]["optional"] == ["compile", "block_swap"]
    compile_, swap = loader["input"]["optional"]["compile"], loader["input"]["optional"]["block_swap"]
    assert compile_[0] == "BOOLEAN" and compile_[1]["default"] is False and "torch.compile" in compile_[1]["tooltip"]
    assert swap[0] == "INT" and (swap[1]["default"], swap[1]["min"], swap[1]["max"]) == (0, 0, 64)
    assert widget_names(options)[-2:] == ["negative_special_tokens", "early_first_chunk"]
    early = options["input"]["optional"]["early_first_chunk"]
    assert early[0] == "BOOLEAN" and early[1]["default"] is False and "first preview" in early[1]["tooltip"]


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_ui_workflow_matches_schemas(path, object_info):
    assert check_ui_workflow(json.loads(path.read_text()), object_info) == []


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_api_twin_matches_ui_workflow(path, object_info):
    wf = json.loads(path.read_text())
    assert to_api(wf, object_info) == api_twin(wf["extra"]["magi_api"])


def test_template_browser_finds_the_workflows(server):
    listed = server.get("/api/workflow_templates")
    assert sorted(listed[PACK_NAME]) == sorted(p.stem for p in WORKFLOWS)
    name = urllib.parse.quote("MAGI-1 text to video")
    wf = server.request(f"/api/workflow_templates/{PACK_NAME}/{name}.json")
    assert wf["nodes"] and server.request(f"/api/workflow_templates/{PACK_NAME}/{name}.jpg", raw=True)[:2] == b"\xff\xd8"


def test_frontend_extension_is_served(server):
    exts = server.get("/extensions")
    js = [e for e in exts if e.endswith("/magi.js")]
    assert js, exts
    assert b"registerExtension" in server.request(js[0], raw=True)


# ----------------------------------------------------------------------------- runs
@pytest.mark.parametrize("name", sorted(TINY_FRAMES))
def test_shipped_workflow_runs(server, name):
    prompt = tiny(api_twin(name))
    h = run(server, prompt)
    assert h["status"]["status_str"] == "success", error_of(h)
    frames, w, hgt = saved_video(server, h, prompt)
    assert (frames, w, hgt) == (TINY_FRAMES[name], 64, 64)
    sampler = node_of(prompt, "MagiSampler")
    chunks = len(h["outputs"][sampler]["images"])  # one animated preview per finished chunk
    assert chunks == {"magi1_t2v": 1, "magi1_i2v": 2, "magi1_v2v": 2}.get(name, chunks)
    preview = h["outputs"][sampler]["images"][0]
    data = server.request(f"/view?filename={preview['filename']}&subfolder={preview['subfolder']}&type=temp", raw=True)
    assert data[:4] == b"RIFF" and data[8:12] == b"WEBP"


def test_unchanged_inputs_never_reload(server):
    prompt = tiny(api_twin("magi1_t2v"))
    run(server, prompt)
    h = run(server, prompt)
    cached = next(d["nodes"] for k, d in h["status"]["messages"] if k == "execution_cached")
    assert sorted(cached) == sorted(prompt)  # nothing ran again
    loads = server.log().count("Requested to load MagiDiT")
    changed = copy.deepcopy(prompt)
    changed[node_of(prompt, "MagiSampler")]["inputs"]["seed"] += 1
    changed[node_of(prompt, "MagiDiTLoader")]["inputs"]["attention"] = "sdpa"  # run-time settings only
    changed[node_of(prompt, "MagiDiTLoader")]["inputs"]["compile"] = True  # (no effect on the CPU)
    h = run(server, changed)
    assert h["status"]["status_str"] == "success"
    cached = next(d["nodes"] for k, d in h["status"]["messages"] if k == "execution_cached")
    assert {node_of(prompt, t) for t in ("MagiT5Loader", "MagiVAELoader", "MagiTextEncode")} <= set(cached)
    assert server.log().count("Requested to load MagiDiT") == loads  # same weights, still on their device
    status, _ = server.post("/free", {"unload_models": True})
    assert status == 200
    assert run(server, changed)["status"]["status_str"] == "success"


def test_interrupt_stops_within_a_dit_call_and_the_next_run_works(server):
    prompt = tiny(api_twin("magi1_t2v"), num_frames=24 * 12, steps=16)
    sampler = node_of(prompt, "MagiSampler")
    ws = server.websocket()
    try:
        status, r = server.queue(prompt)
        assert status == 200
        seen, t_interrupt, result = None, None, None
        deadline = time.time() + 300
        while time.time() < deadline and result is None:
            msg = ws.recv()
            if not isinstance(msg, str):
                continue
            m = json.loads(msg)
            d = m.get("data", {})
            if d.get("prompt_id") not in (None, r["prompt_id"]):
                continue
            if m["type"] == "progress" and d.get("node") == sampler and t_interrupt is None and d["value"] >= 2:
                seen = (d["value"], d["max"])
                server.post("/interrupt", {})
                t_interrupt = time.time()
            elif m["type"] in ("execution_interrupted", "execution_error", "execution_success"):
                result = m
    finally:
        ws.close()
    assert seen is not None and seen[0] < seen[1]
    assert result["type"] == "execution_interrupted", result
    assert result["data"]["node_id"] == sampler
    assert time.time() - t_interrupt < 20  # stopped at the next DiT pass, not at the end of the video
    h = server.wait(r["prompt_id"])
    assert h["status"]["status_str"] == "error"
    assert run(server, tiny(api_twin("magi1_t2v")))["status"]["status_str"] == "success"


def test_the_sampler_says_where_it_is_before_its_first_chunk(server):
    """The text under the sampler (ComfyUI's progress text, binary websocket messages of type 3) tells the DiT pass
    and how many chunks are done; before the first chunk it showed only the plan for minutes on a CPU."""
    import struct

    prompt = tiny(api_twin("magi1_t2v"), num_frames=48)
    sampler = node_of(prompt, "MagiSampler")
    texts = []
    ws = server.websocket()
    try:
        status, r = server.queue(prompt)
        assert status == 200
        deadline = time.time() + 300
        while time.time() < deadline:
            msg = ws.recv()
            if isinstance(msg, str):
                m = json.loads(msg)
                if m["type"] in ("execution_error", "execution_success", "execution_interrupted") and \
                        m["data"].get("prompt_id") == r["prompt_id"]:
                    break
                continue
            if struct.unpack(">I", msg[:4])[0] == 3:  # BinaryEventTypes.TEXT: node id length, node id, text
                n = struct.unpack(">I", msg[4:8])[0]
                if msg[8:8 + n].decode() == sampler:
                    texts.append(msg[8 + n:].decode())
    finally:
        ws.close()
    assert m["type"] == "execution_success", m
    first_done = next(i for i, t in enumerate(texts) if t.startswith("chunk 1/2 done"))
    assert re.match(r"DiT pass 1/\d+, first chunk in progress", texts[0]), texts
    assert all("first chunk in progress" in t for t in texts[1:first_done] if t.startswith("DiT pass")), texts
    assert any(re.match(r"DiT pass (\d+)/\1, 1/2 chunks done", t) for t in texts), texts  # the last pass: always
    assert texts[-1].startswith("chunk 2/2 done"), texts


def test_max_frames_beyond_the_clip_is_said_on_the_encoder(server):
    """The sampler's panel counts max_frames before the clip is read; a shorter clip gives a shorter prefix, which
    the encoder says (the run itself is right: every frame of the clip is the prefix)."""
    prompt = tiny(api_twin("magi1_v2v"))
    enc = node_of(prompt, "MagiVAEEncode")
    prompt[enc]["inputs"]["max_frames"] = 1000
    h = run(server, prompt)
    assert h["status"]["status_str"] == "success"
    [text] = h["outputs"][enc]["text"]
    assert text.startswith("max_frames 1000, but the video has ") and "the prefix is all of them" in text


def test_prompts_without_the_newer_inputs_still_run(server):
    prompt = tiny(api_twin("magi1_t2v"))
    for name in ("compile", "block_swap"):
        del prompt[node_of(prompt, "MagiDiTLoader")]["inputs"][name]
    assert run(server, prompt)["status"]["status_str"] == "success"


def test_early_first_chunk_option_runs(server):
    prompt = tiny(api_twin("magi1_t2v"), num_frames=48)  # 2 chunks: the first one is finished first
    prompt["90"] = {"class_type": "MagiSamplerOptions", "inputs": dict(
        cfg_number="auto", cfg_t_range="", text_scales="", prev_chunk_scales="", noise2clean_kvrange="",
        clean_chunk_kvrange=1, clean_t=0.9999, shortcut_mode="8,16,16", distill_nearly_clean_threshold=0.3,
        per_chunk_noise=False, kv_offload=False, negative_special_tokens=False, early_first_chunk=True)}
    prompt[node_of(prompt, "MagiSampler")]["inputs"]["options"] = ["90", 0]
    h = run(server, prompt)
    assert h["status"]["status_str"] == "success", error_of(h)
    assert len(h["outputs"][node_of(prompt, "MagiSampler")]["images"]) == 2


def test_vae_decode_is_a_function_of_its_latent(server):
    """The sampler's preview frames are reused only for the latent they were decoded from: a native node in
    between (LatentMultiply, LatentUpscaleBy) changes what MAGI VAE Decode gives."""
    import numpy as np

    prompt = tiny(api_twin("magi1_t2v"), seed=11)
    h = run(server, prompt)
    assert h["status"]["status_str"] == "success", error_of(h)
    plain = saved_frames(server, h, prompt).astype(np.int16)

    def with_node(node):
        p = between(prompt, node, "MagiSampler", "MagiVAEDecode", "samples")
        h = run(server, p)
        assert h["status"]["status_str"] == "success", error_of(h)
        return saved_frames(server, h, p).astype(np.int16)

    zero = with_node({"class_type": "LatentMultiply", "link": "samples", "inputs": {"multiplier": 0.0}})
    one = with_node({"class_type": "LatentMultiply", "link": "samples", "inputs": {"multiplier": 1.0}})
    big = with_node({"class_type": "LatentUpscaleBy", "link": "samples",
                     "inputs": {"upscale_method": "nearest-exact", "scale_by": 2.0}})
    assert zero.shape == plain.shape and np.abs(zero - plain).mean() > 10, np.abs(zero - plain).mean()
    assert np.abs(zero - zero.mean(axis=(0, 1, 2))).mean() < np.abs(plain - plain.mean(axis=(0, 1, 2))).mean()
    assert np.abs(one - plain).mean() < 1.0  # the same latent, the same video (the H.264 of equal frames once differed locally)
    assert big.shape == (plain.shape[0], 128, 128, 3)


def test_foreign_latent_is_not_taken_as_prefix(server):
    prompt = tiny(api_twin("magi1_t2v"))
    prompt["90"] = {"class_type": "EmptyHunyuanLatentVideo",
                    "inputs": {"width": 64, "height": 64, "length": 25, "batch_size": 1}}
    prompt[node_of(prompt, "MagiSampler")]["inputs"]["prefix"] = ["90", 0]
    h = run(server, prompt)
    assert h["status"]["status_str"] == "error"
    err = error_of(h)
    assert err["node_id"] == node_of(prompt, "MagiSampler")
    assert "not made by MAGI VAE Encode" in err["exception_message"], err["exception_message"]


def test_caption_cleaner_warnings_are_shown(server):
    """What MAGI-1's caption cleaner removes is said in the node's output (ui text) and in the console."""
    prompt = tiny(api_twin("magi1_prompt_schedule"), num_frames=48)
    prompt[node_of(prompt, "MagiPromptSchedule")]["inputs"]["schedule"] = (
        "0: a red fox runs 在雪地里\n1-: the fox sleeps, see https://example.com/fox.jpg")
    h = run(server, prompt)
    assert h["status"]["status_str"] == "success", error_of(h)
    for node in ("MagiPromptSchedule", "MagiTextEncode"):
        text = " | ".join(h["outputs"][node_of(prompt, node)]["text"])
        assert "在雪地里" in text and "caption cleaner" in text and "line 1" in text, text
        assert "example.com" in text and "line 2" in text, text
    assert "在雪地里" in server.log()



BLOCK_SWAP_PATCHER = """
import json, sys
sys.path[:0] = [{comfy!r}, {root!r}, {tests!r}]
sys.argv = [sys.argv[0], "--cpu"]
import comfy.options
comfy.options.enable_args_parsing()
import torch
import comfy.model_management as mm
from comfyui_harness import node_logic
from magi_core.config import preset
from magi_core.dit import build_dit, init_random_
from magi_core.dit.offload import enable_block_swap

memory, handles, loading = node_logic("memory"), node_logic("handles"), node_logic("loading")
nbytes = lambda mods: sum(t.numel() * t.element_size() for m in mods for t in m.state_dict().values())
model = init_random_(build_dit(preset("tiny")), seed=0)  # 3 layers
total = nbytes([model])
swap = enable_block_swap(model, "cpu", resident=1)  # the CPU stands in for the GPU here
loaded = handles.Loaded(model)
memory.register_dit(loaded, torch.device("cpu"))
memory.use(loaded)
memory.keep("dit", loaded)
out = dict(holder=type(loaded.patcher.model).__name__, size=loaded.patcher.model_size(), total=total,
           resident=nbytes(loading.resident_modules(model)), swapped=nbytes(model.videodit_blocks.layers[1:]),
           listed=any(lm.model is loaded.patcher for lm in mm.current_loaded_models))
swap.pending[0] = ([], None)  # as after a forward: the next forward's first swapped layer is prefetched
memory.offload(loaded)
out.update(pending=len(swap.pending), kept=memory._recent.get("dit") is loaded,
           listed_after=any(lm.model is loaded.patcher for lm in mm.current_loaded_models))
print(json.dumps(out))
"""


def test_block_swap_patcher_holds_only_the_resident_part():
    """ComfyUI's model manager sees (sizes, loads, offloads) only the resident part of a block-swapped DiT; an
    unload drops the swap's prefetched layer too (nodes/memory.py)."""
    script = BLOCK_SWAP_PATCHER.format(comfy=str(comfyui_path()), root=str(ROOT), tests=str(ROOT / "tests"))
    r = subprocess.run([sys.executable, "-c", script], cwd=comfyui_path(), env=comfy_env(), capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["holder"] == "MagiDiTResident" and out["listed"]
    assert out["size"] == out["resident"] == out["total"] - out["swapped"] and out["swapped"] > 0
    assert out["pending"] == 0 and not out["kept"] and not out["listed_after"]


ENCODE_NODE_INPUTS = """
import json, sys, tempfile
sys.path[:0] = [{comfy!r}, {root!r}, {tests!r}]
sys.argv = [sys.argv[0], "--cpu"]
import comfy.options
comfy.options.enable_args_parsing()
from pathlib import Path
import numpy as np, torch
from PIL import Image
import nodes as comfy_nodes
import magi_core.vae
from comfyui_harness import node_logic
from magi_core.demo import make_tiny_assets
from magi_core.vae import load_vae
from magi_core.video import read_image, to_vae_input

vae_nodes, handles = node_logic("vae_nodes"), node_logic("handles")
seen = []
encode = magi_core.vae.tiled_encode
def spy(vae, x, fps, **kw):
    seen.append((x.clone(), kw.get("tile_frames")))
    return encode(vae, x, fps, **kw)
magi_core.vae.tiled_encode = spy
tmp = Path(tempfile.mkdtemp())
vae = handles.VAEHandle("vae", ("vae", "tiny"), handles.Loaded(load_vae(make_tiny_assets(tmp)["vae"], dtype=torch.float32)))
node_logic("memory").register(vae.loaded, vae.model, "vae", torch.device("cpu"))
def node(image, **kw):
    args = dict(vae=vae, image=image, width=48, height=32, fps=24, resize="stretch", max_frames=0, take="end",
                tile_size=256, tile_overlap=0.25, tile_frames=0)
    args.update(kw)
    return vae_nodes.MagiVAEEncode.execute(**args).args[0]
y, x = np.mgrid[0:75, 0:122]
rgb = np.stack([x * 2, y * 3, 128 + 100 * np.sin(x / 9) * np.cos(y / 7)], -1).astype(np.uint8)
Image.fromarray(rgb).save(tmp / "a.png")
exif = Image.Exif()
exif[0x0112] = 6
Image.fromarray(rgb).save(tmp / "r6.jpg", quality=95, exif=exif.tobytes())
out = {{}}
for name in ("a.png", "r6.jpg"):
    size = (32, 48) if name == "a.png" else (48, 32)
    image = comfy_nodes.LoadImage().load_image(str(tmp / name))[0]  # ComfyUI's own loader
    node(image, width=size[1], height=size[0])
    cli = to_vae_input(read_image(tmp / name, size=size))
    levels = lambda a, b: float((a - b).abs().mean() * 127.5)
    out[name] = dict(shape=list(image.shape), diff=levels(seen[-1][0], cli), flipped=levels(seen[-1][0], cli.flip(3, 4)))
lat = node(torch.rand(30, 32, 48, 3), fps=30)
out["video"] = dict(latents=lat["samples"].shape[2], tile_frames=seen[-1][1], fps=lat["magi_fps"],
                    frames=lat["magi_prefix_frames"])
print(json.dumps(out))
"""


def test_encode_node_gives_the_command_line_inputs():
    """ComfyUI's LoadImage -> MAGI VAE Encode: a PNG enters the VAE exactly as the command line reads it (which is
    ffmpeg's, tests/test_video.py), an EXIF-rotated photo upright like the command line's (the JPEG decoders differ
    slightly), and video frames are encoded in tiles of fps // 2 frames (30 fps: 15 -> 30 frames make 6 latents)."""
    script = ENCODE_NODE_INPUTS.format(comfy=str(comfyui_path()), root=str(ROOT), tests=str(ROOT / "tests"))
    r = subprocess.run([sys.executable, "-c", script], cwd=comfyui_path(), env=comfy_env(), capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["a.png"]["diff"] == 0
    assert out["r6.jpg"]["shape"] == [1, 122, 75, 3]  # upright: the 122 x 75 picture turned a quarter
    assert out["r6.jpg"]["diff"] < 5 and out["r6.jpg"]["flipped"] > 10 * out["r6.jpg"]["diff"]  # 3.2 and 96 levels
    assert out["video"] == dict(latents=6, tile_frames=None, fps=30, frames=30)


# ----------------------------------------------------------------------------- bad inputs
@pytest.mark.parametrize("node, field, value, needle", [
    ("MagiDiTLoader", "model", "nope", "python install.py --download NAME puts official weights in models/magi (names: python install.py --list)"),
    ("MagiDiTLoader", "model", "24B_distill_quant", "python install.py --download 24B-distill-fp8 "),
    ("MagiDiTLoader", "model", "magi1_24B_distill.safetensors", "python install.py --download 24B-distill "),  # convert's name
    ("MagiDiTLoader", "block_swap", 65, "Value 65 bigger than max of 64"),  # ComfyUI's own check
    ("MagiVAELoader", "vae", "nope", "python install.py --download vae puts the official VAE in models/magi/vae"),
    ("MagiT5Loader", "t5", "nope", "python install.py --download t5 puts the official t5-v1_1-xxl folder in models/text_encoders"),
])
def test_bad_values_are_rejected_at_queue_time_once_on_their_input(server, node, field, value, needle):
    """One error, attached to the input it is about (ComfyUI attaches validate_inputs' answer to every input the
    method takes: the DiT loader's used to show the same error 8 times). A missing official model names the
    install.py download of that very model (the 24B workflow's used to suggest the 4.5B one)."""
    item = needle.split("--download ")[1].split()[0] if "--download" in needle else "NAME"
    if item != "NAME":  # a name install.py really has; an official folder's name is where install.py puts it
        listing = subprocess.run([sys.executable, "install.py", "--list"], cwd=ROOT, capture_output=True, text=True)
        dest = {"vae": "magi/vae", "t5": "text_encoders/t5-v1_1-xxl"}.get(item, "magi/" + value)
        assert any(line.split()[:1] == [item] and (value in ("nope", "magi1_24B_distill.safetensors")
                                                   or line.rstrip().endswith("/" + dest))
                   for line in listing.stdout.splitlines()), listing.stdout
    prompt = tiny(api_twin("magi1_t2v"))
    nid = node_of(prompt, node)
    prompt[nid]["inputs"][field] = value
    status, r = server.queue(prompt)
    assert status == 400
    errors = r["node_errors"][nid]["errors"]
    assert len(errors) == 1 and errors[0]["extra_info"]["input_name"] == field, errors
    assert needle in errors[0]["details"] + errors[0]["message"], errors
    assert set(r["node_errors"]) == {nid}


def test_steps_that_do_not_fit_the_window_are_rejected_at_queue_time(server):
    """steps 16 with window_size 3 (both within the widgets' limits): a 400 before anything runs or loads, on
    the two inputs involved."""
    prompt = tiny(api_twin("magi1_t2v"))
    nid = node_of(prompt, "MagiSampler")
    prompt[nid]["inputs"].update(steps=16, window_size=3)
    status, r = server.queue(prompt)
    assert status == 400
    errors = r["node_errors"][nid]["errors"]
    assert sorted(e["extra_info"]["input_name"] for e in errors) == ["height", "steps", "width", "window_size"], errors
    assert all("steps must be a positive multiple of window_size (3), got 16" in e["details"] for e in errors)
    assert set(r["node_errors"]) == {nid}
    for field, value, needle in (("steps", 1004, "steps must be between 4 and 1000, got 1004"),
                                 ("window_size", 17, "window_size must be between 1 and 16, got 17")):
        bad = tiny(api_twin("magi1_t2v"))
        bad[nid]["inputs"][field] = value
        status, r = server.queue(bad)
        assert status == 400 and all(needle in e["details"] for e in r["node_errors"][nid]["errors"]), r


def test_temporal_overlap_is_checked_at_queue_time_and_its_largest_value_keeps_every_frame(server):
    """temporal_overlap that does not fit the tile tile_frames gives: a 400 before anything runs, under the two
    inputs either of which can fix it. Its largest value that fits decodes every frame (it used to keep 1 frame per
    temporal tile: 30 of 48)."""
    prompt = tiny(api_twin("magi1_t2v"), num_frames=48)
    nid = node_of(prompt, "MagiVAEDecode")
    bad = copy.deepcopy(prompt)
    bad[nid]["inputs"].update(tile_frames=16, temporal_overlap=4)
    status, r = server.queue(bad)
    assert status == 400 and set(r["node_errors"]) == {nid}, r
    errors = r["node_errors"][nid]["errors"]
    assert sorted(e["extra_info"]["input_name"] for e in errors) == ["temporal_overlap", "tile_frames"], errors
    assert all("temporal_overlap must be an int in [0, 3] latent frames, got 4: temporal tiles are 4 latent frames "
               "(16 frames); lower temporal_overlap or raise tile_frames" in e["details"] for e in errors), errors
    prompt[nid]["inputs"].update(tile_frames=0, temporal_overlap=2)  # the largest at 24 fps (12-frame tiles)
    frames, width, height = saved_video(server, run(server, prompt), prompt)
    assert (frames, width, height) == (48, 64, 64)
    long = tiny(api_twin("magi1_long_video"))  # the decode-to-file node: the same check beside its filename's
    fid = node_of(long, "MagiDecodeToVideoFile")
    long[fid]["inputs"].update(tile_frames=8, temporal_overlap=2)
    status, r = server.queue(long)
    assert status == 400 and set(r["node_errors"]) == {fid}, r
    assert all("temporal_overlap must be an int in [0, 1] latent frames, got 2: temporal tiles are 2 latent frames "
               "(8 frames);" in e["details"]
               for e in r["node_errors"][fid]["errors"]), r


@pytest.mark.parametrize("schedule, needle", [("0: a\n2-: b", "nothing covers chunk(s) 1"),
                                              ("0-1: a fox\n2- a bird", "line 2")])
def test_schedule_mistakes_are_rejected_at_queue_time(server, schedule, needle):
    """The Prompt Schedule node checks its text when the prompt is queued (it used to fail when it ran, after the
    T5 loader may already have loaded), once, on its one input."""
    prompt = tiny(api_twin("magi1_prompt_schedule"))
    nid = node_of(prompt, "MagiPromptSchedule")
    prompt[nid]["inputs"]["schedule"] = schedule
    status, r = server.queue(prompt)
    assert status == 400 and set(r["node_errors"]) == {nid}, r
    errors = r["node_errors"][nid]["errors"]
    assert len(errors) == 1 and errors[0]["extra_info"]["input_name"] == "schedule", errors
    assert needle in errors[0]["details"], errors


def test_placing_the_special_tokens_file_takes_effect_on_the_next_run(server):
    """special_tokens auto with no file: the run fails and says what to do; once the file is in models/magi the same
    prompt queued again runs (the DiT loader's cached result used to keep 'special tokens none' until a restart)."""
    if (ROOT / "magi_core" / "assets" / "special_tokens.npz").exists():
        pytest.skip("the pack's own special_tokens.npz is installed here: auto always finds it")
    tokens = server.models / "magi" / "special_tokens.npz"
    aside = tokens.with_name("special_tokens.aside")
    prompt = tiny(api_twin("magi1_t2v"), seed=777)
    assert prompt[node_of(prompt, "MagiDiTLoader")]["inputs"]["special_tokens"] == "auto"
    tokens.rename(aside)
    try:
        h = run(server, prompt)
        assert h["status"]["status_str"] == "error"
        assert "special tokens (special_tokens.npz) are needed" in error_of(h)["exception_message"]
    finally:
        aside.rename(tokens)
    h = run(server, prompt)
    assert h["status"]["status_str"] == "success", error_of(h)


def test_create_video_at_another_fps_is_noted_for_api_prompts(server):
    """Sampler at 12 fps, native Create Video left at 24 (an API prompt: no UI to warn while editing): the run
    succeeds and the console says the video will run 2x as fast (the file: 24 frames in 1 s, not 2 s)."""
    prompt = tiny(api_twin("magi1_t2v"), fps=12, seed=4242)
    cv = node_of(prompt, "CreateVideo")
    assert prompt[cv]["inputs"]["fps"] == 24
    h = run(server, prompt)
    assert h["status"]["status_str"] == "success", error_of(h)
    assert f"Create Video (node {cv}) plays at 24 fps but this video is made for 12 fps: it will run 2x as fast" \
        in server.log()
    prompt[cv]["inputs"]["fps"] = 12
    prompt[node_of(prompt, "MagiSampler")]["inputs"]["seed"] = 4243
    before = server.log().count("plays at")
    h = run(server, prompt)
    assert h["status"]["status_str"] == "success", error_of(h)
    assert server.log().count("plays at") == before  # same fps: no note


OPTIONS_DEFAULTS = dict(cfg_number="auto", cfg_t_range="", text_scales="", prev_chunk_scales="", noise2clean_kvrange="",
                        clean_chunk_kvrange=1, clean_t=0.9999, shortcut_mode="8,16,16",
                        distill_nearly_clean_threshold=0.3, per_chunk_noise=False, kv_offload=False,
                        negative_special_tokens=False)


@pytest.mark.parametrize("workflow, node, changes, needle", [
    ("magi1_t2v", "MagiSampler", dict(width=72), "width must be a positive multiple of 16, got 72 (e.g. 64)"),
    ("magi1_t2v", "MagiSampler", dict(height=721), "height must be a positive multiple of 16, got 721"),
    ("magi1_t2v", "MagiSampler", dict(width=4112), "width must be between 16 and 4096, got 4112"),
    ("magi1_t2v", "MagiSampler", dict(height="tall"), "height must be a whole number, got 'tall'"),
    ("magi1_i2v", "MagiVAEEncode", dict(height=70), "height must be a positive multiple of 16, got 70"),
    # prompt text is never dropped: an empty prompt, a malformed schedule line, a prompt the caption cleaner empties
    ("magi1_t2v", "MagiTextEncode", dict(prompt="  "), "the prompt is empty"),
    ("magi1_t2v", "MagiTextEncode", dict(prompt="0-2: a fox\n1-: a bird"), "overlap"),
    ("magi1_t2v", "MagiTextEncode", dict(prompt="0-1 a fox\n2-: a bird"), "line 1"),
    ("magi1_t2v", "MagiTextEncode", dict(prompt="一只红狐狸在雪地里奔跑"), "caption cleaner"),
    ("magi1_t2v", "MagiSamplerOptions", dict(cfg_t_range="abc"), "cfg_t_range: 'abc' is not a comma-separated list"),
    ("magi1_t2v", "MagiSamplerOptions", dict(text_scales="7, 7, 7, 0"), "text_scales: give 5 values"),
    ("magi1_t2v", "MagiSamplerOptions", dict(shortcut_mode="8,16"), "shortcut_mode: give 3 values"),
    # the save's own check used to come after the whole generation
    ("magi1_long_video", "MagiDecodeToVideoFile", dict(filename_prefix="../../escape/MAGI"),
     "points outside ComfyUI's output folder"),
    ("magi1_long_video", "MagiDecodeToVideoFile", dict(filename_prefix="/tmp/MAGI"), "points outside"),
    ("magi1_long_video", "MagiDecodeToVideoFile", dict(filename_prefix=" "), "names no file"),
])
def test_mistakes_that_would_surface_after_a_model_loads_are_rejected_at_queue_time(server, workflow, node, changes,
                                                                                     needle):
    """A 400 when the prompt is queued, before anything runs: ComfyUI does not enforce a widget's step (an API
    prompt can send any width), and the prompt's text and the options' text fields used to be read only when their
    nodes ran, after the T5 encoder had loaded. Every error on the node names the input it is about."""
    prompt = tiny(api_twin(workflow))
    if node == "MagiSamplerOptions":
        prompt["900"] = {"class_type": node, "inputs": dict(OPTIONS_DEFAULTS)}
        prompt[node_of(prompt, "MagiSampler")]["inputs"]["options"] = ["900", 0]
        h = run(server, prompt)  # the defaults pass, and the run takes them
        assert h["status"]["status_str"] == "success", error_of(h)
    nid = node_of(prompt, node)
    prompt[nid]["inputs"].update(changes)
    status, r = server.queue(prompt)
    assert status == 400 and set(r["node_errors"]) == {nid}, r
    errors = [e for e in r["node_errors"][nid]["errors"] if e["type"] == "custom_validation_failed"]  # ours
    assert errors and all(needle in e["details"] and e["details"].count(needle) == 1 for e in errors), r


@pytest.mark.parametrize("workflow, node, changes, needle", [
    ("magi1_t2v", "MagiTextEncode", dict(prompt="0: a fox\n1-3: a bird"), "the video has only 1 chunk (0..0)"),
    ("magi1_i2v", "MagiSampler", dict(width=80, height=80), "prefix latent is 64x64 but the sampler makes 80x80"),
    ("magi1_v2v", "MagiVAEEncode", dict(max_frames=26), "last temporal VAE tile of 2 frames"),
    ("magi1_v2v", "MagiVAEEncode", dict(fps=25), "set the same fps on MAGI VAE Encode and on the sampler"),
    # combos checked first thing in execute (nodes/choices.py), before any model loads
    ("magi1_t2v", "MagiDiTLoader", dict(variant="fp16"), "variant: 'fp16' is not one of the choices"),
    ("magi1_t2v", "MagiVAELoader", dict(dtype="int8"), "dtype: 'int8' is not one of the choices"),
    ("magi1_t2v", "MagiDiTLoader", dict(device="cuda"), "no CUDA GPU is visible to this ComfyUI (PyTorch sees none)"),
    ("magi1_t2v", "MagiT5Loader", dict(device="cuda:0"), "no CUDA GPU is visible to this ComfyUI"),
    ("magi1_i2v", "MagiVAEEncode", dict(take="middle"), "take: 'middle' is not one of the choices"),
    ("magi1_t2v", "MagiSampler", dict(preview="sometimes"), "preview: 'sometimes' is not one of the choices"),
    # the test server runs on the CPU, where block swap is refused first (the layer limit: test_nodes, fake GPU)
    ("magi1_t2v", "MagiDiTLoader", dict(block_swap=4), "set block swap to 0"),
])
def test_bad_values_give_clear_errors(server, workflow, node, changes, needle):
    prompt = tiny(api_twin(workflow))
    prompt[node_of(prompt, node)]["inputs"].update(changes)
    h = run(server, prompt)
    assert h["status"]["status_str"] == "error"
    err = error_of(h)
    assert needle in err["exception_message"], err["exception_message"]
    assert err["exception_message"].count(needle) == 1


# ----------------------------------------------------------------------------- routes, CLIP bridge
def test_routes(server):
    info = server.get("/api/magi/chunk_info?frames=96&fps=24&prefix_frames=1")
    assert (info["chunks"], info["generated_chunks"]) == (5, 5)
    status, r = server.post("/api/magi/schedule", {"text": "0-1: a\n2-: b", "frames": 96, "fps": 24})
    assert status == 200 and r["ok"] and [g["last_chunk"] for g in r["ranges"]] == [1, 3]
    status, r = server.post("/api/magi/schedule", {"text": "0-1: a\n1-: b", "frames": 96, "fps": 24})
    assert status == 200 and not r["ok"] and "overlap" in r["error"]
    status, r = server.post("/api/magi/schedule", {"text": "0-1: a fox 在雪地里\n2-: b", "frames": 96, "fps": 24})
    assert status == 200 and r["ok"] and "在雪地里" in r["warnings"][0] and "line 1" in r["warnings"][0], r
    status, r = server.post("/api/magi/schedule", {"text": "0-1: a fox\n2- b", "frames": 96, "fps": 24})
    assert status == 200 and not r["ok"] and "line 2" in r["error"], r
    status, r = server.post("/api/magi/schedule", {"text": "x", "frames": "many"})
    assert status == 400 and "integers" in r["error"]
    # widget values the sampler would refuse: 200 and the error, which the panel shows (no failed request logged)
    r = server.get("/api/magi/chunk_info?frames=96&fps=24&steps=16&window_size=3")
    assert r == {"error": r["error"]} and "multiple of window_size (3), got 16" in r["error"]
    assert "at least 4" in server.get("/api/magi/chunk_info?frames=0&fps=24")["error"]
    assert server.get("/api/magi/chunk_info?frames=96&fps=24&steps=16&window_size=4")["chunks"] == 4
    status, r = server.post("/api/magi/schedule", {"text": "a fox", "frames": 0, "fps": 24})
    assert status == 200 and "at least 4" in r["error"]


def test_clip_bridge_matches_magi_t5():
    for clip_type, res in run_clip_bridge_check().items():
        for prompt, (diff, n_bridge, n_magi, scale) in res.items():
            assert n_bridge == n_magi, (clip_type, prompt)
            assert diff < 1e-4 * max(1.0, scale), (clip_type, prompt, diff)
        assert res["long"][1] == 800  # truncated like the reference: 799 tokens + </s>


# ----------------------------------------------------------------------------- multi-GPU pool lifetime
def test_free_releases_the_worker_pool_and_the_next_run_restarts_it(tmp_path):
    """POST /free {unload_models, free_memory} stops the multi-GPU workers and the resource tracker (like ComfyUI's
    own models); the next run starts them again; server exit ends them too. Own server: it is stopped here."""
    srv = running_server(tmp_path)
    try:
        prompt = tiny(api_twin("magi1_t2v_multigpu"))
        h = run(srv, prompt)
        assert h["status"]["status_str"] == "success", error_of(h)
        first = magi_children(srv.proc.pid)
        assert len(first["workers"]) == 2 and first["tracker"], first
        status, _ = srv.post("/free", {"unload_models": True, "free_memory": True})
        assert status == 200
        gone = wait_for(lambda: magi_children(srv.proc.pid) == {"workers": [], "tracker": []}, 60)
        assert gone, magi_children(srv.proc.pid)
        assert "MagiWorkerPool" in srv.log()  # listed among ComfyUI's loaded models
        h = run(srv, prompt)
        assert h["status"]["status_str"] == "success", error_of(h)
        again = magi_children(srv.proc.pid)
        assert len(again["workers"]) == 2 and not set(again["workers"]) & set(first["workers"]), again
    finally:
        pids = magi_children(srv.proc.pid)["workers"] if srv.proc.poll() is None else []
        srv.stop()
    import psutil

    assert wait_for(lambda: not [p for p in pids if psutil.pid_exists(p) and
                                 psutil.Process(p).status() != psutil.STATUS_ZOMBIE], 30), pids


# ----------------------------------------------------------------------------- headless use
def test_headless_example_queues_a_shipped_workflow(server, tmp_path):
    """docs/queue_workflow.py (README, "Headless use") against the real server: prompt, seed and size set,
    progress followed on the websocket, the video downloaded."""
    script = ROOT / "docs" / "queue_workflow.py"
    tiny_widgets = ["MagiSampler.steps=4", "MagiT5Loader.dtype=\"fp32\"", "MagiVAELoader.dtype=\"fp32\""]
    args = [sys.executable, str(script), "--server", server.url, "--workflow", "magi1_t2v", "--prompt",
            "a small grey cat naps on a warm windowsill", "--seed", "4242", "--width", "64", "--height", "48",
            "--frames", "24", "--out", str(tmp_path)]
    for w in tiny_widgets:
        args += ["--set", w]
    r = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "chunk 1/1 done" in r.stdout and "progress 1/" in r.stdout, r.stdout
    counts = [line for line in r.stdout.splitlines() if "progress " in line]
    assert len(counts) == len(set(counts)), r.stdout  # each count said once
    saved = [line.removeprefix("saved ") for line in r.stdout.splitlines() if line.startswith("saved ")]
    assert len(saved) == 1 and saved[0].startswith(str(tmp_path)), r.stdout
    frames = video_file_frames(saved[0])
    assert frames.shape == (24, 48, 64, 3)
    prompt_id = next(line.split()[1] for line in r.stdout.splitlines() if line.startswith("queued "))
    sent = server.history(prompt_id)["prompt"][2]
    assert sent[node_of(sent, "MagiTextEncode")]["inputs"]["prompt"] == "a small grey cat naps on a warm windowsill"
    assert sent[node_of(sent, "MagiSampler")]["inputs"]["seed"] == 4242

    r = subprocess.run(args[:-2 * len(tiny_widgets)] + ["--set", "MagiDiTLoader.model=\"nope\""],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and "the server refused the workflow" in r.stderr and "model" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr

    # stopped after a chunk: the script says where the server kept the finished chunks (it used to say only
    # "the run was interrupted")
    long_run = [a if a != "24" else "480" for a in args]
    proc = subprocess.Popen(long_run, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for line in proc.stdout:
            if "chunk 1/" in line:
                server.post("/interrupt", {})
                break
        _, err = proc.communicate(timeout=300)
    finally:
        proc.kill()
    assert proc.returncode == 1 and "the run was interrupted; the sampler stopped after" in err, err
    assert "MAGI-1_unfinished_" in err and "Traceback" not in err, err
