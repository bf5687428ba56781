"""Run a real ComfyUI headless with this pack and tiny models; talk to it over HTTP and the websocket.

Used by tests/test_comfyui.py and tests/test_frontend.py (marker `comfyui`, COMFYUI_PATH set; see
tests/setup_comfyui.sh). Also converts UI-format workflows to API format the way the frontend does
(graphToPrompt) and checks them against /object_info.

    python tests/comfyui_harness.py serve       # a server with tiny models; prints its URL, runs until ^C or kill
    python tests/comfyui_harness.py workflows   # rebuild workflows/*.json, workflows/api/*.json, thumbnails
    python tests/comfyui_harness.py clip-bridge # compare the native-CLIP bridge with MAGI's T5 path (JSON)
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACK_NAME = "ComfyUI-MAGI1"  # folder name the pack gets in the test's custom_nodes (the template-browser title)
SEED_WIDGET_NAMES = ("seed", "noise_seed")
VIRTUAL_NODES = ("Note", "MarkdownNote", "Reroute", "PrimitiveNode")

PYDEPS_DIR = ".magi-test-pydeps"  # in COMFYUI_PATH: test-only extra packages (tests/setup_comfyui.sh)


def node_logic(name: str):
    """A ComfyUI-free module of nodes/ (e.g. 'conditioning'), imported as `magi_nodes.<name>` without running
    nodes/__init__.py, which registers the nodes with ComfyUI."""
    import importlib
    import types

    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    if "magi_nodes" not in sys.modules:
        pkg = types.ModuleType("magi_nodes")
        pkg.__path__ = [str(ROOT / "nodes")]
        sys.modules["magi_nodes"] = pkg
    return importlib.import_module(f"magi_nodes.{name}")


def comfyui_path() -> Path:
    p = os.environ.get("COMFYUI_PATH")
    if not p or not (Path(p) / "main.py").is_file():
        raise RuntimeError("set COMFYUI_PATH to a ComfyUI checkout (see tests/setup_comfyui.sh)")
    return Path(p)


def comfy_env() -> dict:
    """Environment for a process that runs or imports ComfyUI: the test-only packages first (setup_comfyui.sh)."""
    env = dict(os.environ)
    deps = comfyui_path() / PYDEPS_DIR
    if deps.is_dir():
        env["PYTHONPATH"] = os.pathsep.join([str(deps)] + [p for p in [env.get("PYTHONPATH")] if p])
    return env


def run_clip_bridge_check() -> dict:
    r = subprocess.run([sys.executable, str(Path(__file__).resolve()), "clip-bridge"], cwd=comfyui_path(),
                       env=comfy_env(), capture_output=True, text=True, timeout=600)
    if r.returncode:
        raise RuntimeError(r.stdout[-3000:] + r.stderr[-3000:])
    return json.loads(r.stdout.strip().splitlines()[-1])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ComfyServer:
    """A ComfyUI process: this pack (symlinked as custom_nodes/ComfyUI-MAGI1), tiny models, temp dirs."""

    def __init__(self, workdir: Path, models: Path, extra_args=()):
        self.workdir, self.models = Path(workdir), Path(models)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.client_id = uuid.uuid4().hex
        self.extra_args = list(extra_args)
        self.proc = None
        self.log_path = self.workdir / "comfyui.log"

    def _layout(self) -> list[str]:
        w = self.workdir
        nodes_dir = w / "custom_nodes"
        nodes_dir.mkdir(parents=True, exist_ok=True)
        link = nodes_dir / PACK_NAME
        if not link.exists():
            link.symlink_to(ROOT, target_is_directory=True)
        for d in ("output", "input", "temp", "user"):
            (w / d).mkdir(exist_ok=True)
        seed_inputs(w / "input")
        seed_user(w / "user" / "default")
        yaml = w / "extra_model_paths.yaml"
        yaml.write_text(
            "magi_test:\n"
            f"  base_path: {self.models}\n"
            "  diffusion_models: diffusion_models\n"
            "  text_encoders: text_encoders\n"
            "  magi: magi\n"
            f"  custom_nodes: {nodes_dir}\n"
        )
        return ["--cpu", "--listen", "127.0.0.1", "--port", str(self.port), "--disable-auto-launch",
                "--disable-api-nodes", "--extra-model-paths-config", str(yaml),
                "--disable-all-custom-nodes", "--whitelist-custom-nodes", PACK_NAME,
                "--output-directory", str(w / "output"), "--input-directory", str(w / "input"),
                "--temp-directory", str(w / "temp"), "--user-directory", str(w / "user"),
                "--database-url", f"sqlite:///{w / 'comfyui.sqlite'}", "--preview-method", "none"]

    def start(self, timeout: float = 180) -> "ComfyServer":
        args = self._layout() + self.extra_args
        env = comfy_env()
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen([sys.executable, "main.py", *args], cwd=comfyui_path(), env=env,
                                     stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ComfyUI exited ({self.proc.returncode}):\n{self.log()[-4000:]}")
            try:
                self.get("/system_stats")
                return self
            except (urllib.error.URLError, ConnectionError, OSError):
                time.sleep(0.5)
        self.stop()
        raise TimeoutError(f"ComfyUI did not start in {timeout}s:\n{self.log()[-4000:]}")

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        if getattr(self, "_log", None):
            self._log.close()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    # ------------------------------------------------------------------ HTTP
    def request(self, path: str, data=None, method=None, raw: bool = False):
        body = None if data is None else json.dumps(data).encode()
        req = urllib.request.Request(self.url + path, data=body, method=method,
                                     headers={"Content-Type": "application/json"} if body else {})
        with urllib.request.urlopen(req, timeout=60) as r:
            out = r.read()
        return out if raw else json.loads(out or b"null")

    def get(self, path: str):
        return self.request(path)

    def post(self, path: str, data) -> tuple[int, dict]:
        """-> (status, json) without raising on 4xx."""
        try:
            return 200, self.request(path, data, method="POST")
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"null")

    def queue(self, prompt: dict) -> tuple[int, dict]:
        return self.post("/prompt", {"prompt": prompt, "client_id": self.client_id})

    def history(self, prompt_id: str) -> dict | None:
        return self.get(f"/history/{prompt_id}").get(prompt_id)

    def wait(self, prompt_id: str, timeout: float = 300) -> dict:
        deadline = time.time() + timeout
        while time.time() < deadline:
            h = self.history(prompt_id)
            if h and h.get("status", {}).get("completed") is not None and (
                    h["status"].get("completed") or h["status"].get("status_str") == "error"):
                return h
            time.sleep(0.25)
        raise TimeoutError(f"prompt {prompt_id} did not finish in {timeout}s")

    def wait_running(self, timeout: float = 60):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.get("/queue")["queue_running"]:
                return
            time.sleep(0.05)
        raise TimeoutError("nothing started running")

    def websocket(self):
        import websocket  # websocket-client

        ws = websocket.WebSocket()
        ws.connect(f"ws://127.0.0.1:{self.port}/ws?clientId={self.client_id}", timeout=120)
        return ws


def seed_inputs(folder: Path, size: int = 96):
    """ComfyUI's own example.png (a git checkout has it in input/); the pack brings the rest (workflows/input/)."""
    import numpy as np
    from PIL import Image

    yy, xx = np.mgrid[0:size, 0:size]
    if not (folder / "example.png").exists():
        Image.fromarray(np.stack([xx * 255 // size, yy * 255 // size, (xx + yy) * 127 // size], -1).astype(np.uint8)
                        ).save(folder / "example.png")


def seed_user(folder: Path):
    """A user folder as after a first session: frontend 1.27.10 raises a TypeError on a pristine one (its
    navigation-mode migration sets settings that are not registered yet) and probes these files."""
    (folder / "workflows").mkdir(parents=True, exist_ok=True)
    (folder / "subgraphs").mkdir(exist_ok=True)
    settings = folder / "comfy.settings.json"
    if not settings.exists():
        settings.write_text(json.dumps({"Comfy.Canvas.NavigationMode": "legacy", "Comfy.TutorialCompleted": True,
                                        "Comfy.Canvas.LeftMouseClickBehavior": "panning",
                                        "Comfy.Canvas.MouseWheelScroll": "zoom"}))
    for name, text in (("user.css", ""), ("comfy.templates.json", "[]")):
        if not (folder / name).exists():
            (folder / name).write_text(text)


def make_models(root: Path) -> dict:
    """Tiny random MAGI-1 models (magi_core.demo), laid out under the names the shipped workflows use:
    models/magi/4.5B_distill/ and 24B_distill/ (official folders), magi/vae/, magi/special_tokens.npz,
    text_encoders/t5-v1_1-xxl/ (what `install.py --download 4.5B-distill` produces, at tiny sizes)."""
    import shutil

    sys.path.insert(0, str(ROOT))
    import torch
    from magi_core.checkpoint import save_official
    from magi_core.config import preset
    from magi_core.demo import make_tiny_assets
    from magi_core.dit import build_dit, init_random_
    from safetensors.torch import load_file

    root = Path(root)
    tiny = make_tiny_assets(root)
    dit = root / "magi" / "4.5B_distill"
    save_official(load_file(str(tiny["dit"])), dit, "distill", single_file=True)
    tiny["dit"].unlink()  # only what make_tiny_assets wrote: `root` may be a real models folder
    if not any(tiny["dit"].parent.iterdir()):
        tiny["dit"].parent.rmdir()
    big = root / "magi" / "24B_distill"
    save_official(init_random_(build_dit(preset("tiny-24B-distill")), seed=1), big, "distill", shards=2)
    t5 = root / "text_encoders" / "t5-v1_1-xxl"
    shutil.move(str(tiny["t5"]), str(t5))
    del torch
    return {"dit": dit, "dit_24b": big, "vae": tiny["vae"], "t5": t5, "special_tokens": tiny["special_tokens"]}


# ---------------------------------------------------------------------- workflow formats (frontend graphToPrompt)
def widget_inputs(info: dict) -> list[tuple[str, tuple]]:
    """(name, spec) of a node's widget inputs in declaration order, from its /object_info entry."""
    out = []
    for section in ("required", "optional"):
        for name in info.get("input_order", {}).get(section, []):
            spec = info["input"][section][name]
            kind = spec[0]
            if isinstance(kind, list) or kind in ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"):
                out.append((name, spec))
    return out


def widget_names(info: dict) -> list[str]:
    """Names in `widgets_values` order, incl. the frontend's control_after_generate slot after seed widgets."""
    names = []
    for name, spec in widget_inputs(info):
        names.append(name)
        opts = spec[1] if len(spec) > 1 else {}
        if opts.get("control_after_generate") or name in SEED_WIDGET_NAMES:
            names.append(None)  # not sent to the API
    return names


def to_api(workflow: dict, object_info: dict) -> dict:
    """UI-format workflow -> API prompt, as the frontend's graphToPrompt (no subgraphs, no bypass chains)."""
    nodes = {n["id"]: n for n in workflow["nodes"]}
    links = {link[0]: link for link in workflow["links"]}
    prompt = {}
    for n in workflow["nodes"]:
        if n["type"] in VIRTUAL_NODES or n.get("mode", 0) in (2, 4):
            continue
        info = object_info[n["type"]]
        inputs = {}
        for name, value in zip(widget_names(info), n.get("widgets_values", [])):
            if name is not None:
                inputs[name] = value
        for inp in n.get("inputs", []):
            if inp.get("link") is not None:
                _, src, slot, _, _, _ = links[inp["link"]]
                if nodes[src].get("mode", 0) in (2, 4):
                    continue
                inputs[inp["name"]] = [str(src), slot]
        prompt[str(n["id"])] = {"class_type": n["type"], "inputs": inputs,
                                "_meta": {"title": n.get("title") or object_info[n["type"]]["display_name"]}}
    return prompt


def check_ui_workflow(workflow: dict, object_info: dict) -> list[str]:
    """Problems of a UI workflow against the node schemas: types, widget counts/values, links, names."""
    problems = []
    nodes = {n["id"]: n for n in workflow["nodes"]}
    for n in workflow["nodes"]:
        t = n["type"]
        if t in VIRTUAL_NODES:
            continue
        if t not in object_info:
            problems.append(f"node {n['id']}: unknown type {t!r}")
            continue
        info = object_info[t]
        if n.get("properties", {}).get("Node name for S&R") != t:
            problems.append(f"node {n['id']}: properties['Node name for S&R'] must be {t!r}")
        names = widget_names(info)
        values = n.get("widgets_values", [])
        if len(values) != len(names):
            problems.append(f"node {n['id']} ({t}): {len(values)} widget values, the schema has {len(names)} "
                            f"({[x or 'control_after_generate' for x in names]})")
            continue
        specs = dict(widget_inputs(info))
        for name, value in zip(names, values):
            if name is None:
                continue
            kind, opts = specs[name][0], (specs[name][1] if len(specs[name]) > 1 else {})
            options = kind if isinstance(kind, list) else opts.get("options")
            if options is not None and value not in options:
                problems.append(f"node {n['id']} ({t}): {name}={value!r} not in {options[:8]}")
            if isinstance(value, str) and ("\\" in value and kind != "STRING"):
                problems.append(f"node {n['id']} ({t}): {name}={value!r} has an OS-specific path separator")
            if kind in ("INT", "FLOAT") and not isinstance(value, (int, float)):
                problems.append(f"node {n['id']} ({t}): {name}={value!r} is not a number")
            if kind in ("INT", "FLOAT") and isinstance(value, (int, float)):
                if "min" in opts and value < opts["min"] or "max" in opts and value > opts["max"]:
                    problems.append(f"node {n['id']} ({t}): {name}={value} outside [{opts.get('min')}, {opts.get('max')}]")
        all_inputs = {**info["input"].get("required", {}), **info["input"].get("optional", {})}
        for inp in n.get("inputs", []):
            if inp["name"] not in all_inputs:
                problems.append(f"node {n['id']} ({t}): input {inp['name']!r} is not in the schema")
        outputs = info["output"]
        for i, out in enumerate(n.get("outputs", [])):
            if i >= len(outputs) or out["type"] != outputs[i]:
                problems.append(f"node {n['id']} ({t}): output {i} type {out['type']!r}, schema says "
                                f"{outputs[i] if i < len(outputs) else None!r}")
    for link in workflow["links"]:
        lid, src, slot, dst, dslot, typ = link
        if src not in nodes or dst not in nodes:
            problems.append(f"link {lid}: unknown node")
            continue
        s, d = nodes[src], nodes[dst]
        if s["type"] in object_info:
            outs = object_info[s["type"]]["output"]
            if slot >= len(outs) or outs[slot] != typ:
                problems.append(f"link {lid}: {s['type']} output {slot} is not {typ!r}")
        if dslot >= len(d.get("inputs", [])) or d["inputs"][dslot].get("link") != lid:
            problems.append(f"link {lid}: target slot {dslot} of node {dst} does not point back at the link")
            continue
        inp = d["inputs"][dslot]
        if d["type"] in object_info:
            all_inputs = {**object_info[d["type"]]["input"].get("required", {}),
                          **object_info[d["type"]]["input"].get("optional", {})}
            want = all_inputs.get(inp["name"], [None])[0]
            want = "COMBO" if isinstance(want, list) else want
            if typ != want and not (typ == "STRING" and want == "STRING"):
                problems.append(f"link {lid}: {typ!r} into {d['type']}.{inp['name']} ({want!r})")
        if lid not in s["outputs"][slot].get("links", []):
            problems.append(f"link {lid}: source node {src} output {slot} does not list it")
    for n in workflow["nodes"]:
        info = object_info.get(n["type"])
        if info is None:
            continue
        required = info["input"].get("required", {})
        linked = {i["name"] for i in n.get("inputs", []) if i.get("link") is not None}
        widgets = {name for name, _ in widget_inputs(info)}
        for name in required:
            if name not in widgets and name not in linked:
                problems.append(f"node {n['id']} ({n['type']}): required input {name!r} is not connected")
    return problems




# ---------------------------------------------------------------------- the shipped workflows
# Compact specs of the shipped workflows: nodes (id, type, position, widget values by name, title) and links
# (source id, output slot, target id, input name). `build_workflows` turns them into UI-format files named after
# their titles (the template browser shows the file name as the card's title), API twins in workflows/api/ under
# the spec's key (stable names for scripts), and thumbnails. A UI workflow names its twin in extra.magi_api.
# Widgets not given take their schema default. Nodes of a column (same x) are pushed down so none overlaps the
# one above it (`build_ui`). Nothing sits below the sampler: its chunk previews make it taller after a run.
SAMPLER = dict(width=720, height=720, num_frames=96, fps=24, steps=16, seed=1234, window_size=4)
LOADERS = [
    (1, "MagiDiTLoader", (0, 0), dict(model="4.5B_distill"), None),
    (2, "MagiT5Loader", (0, 1), dict(t5="t5-v1_1-xxl"), None),
    (3, "MagiVAELoader", (0, 2), dict(vae="vae"), None),
]
OUTPUT = [
    (6, "MagiVAEDecode", (1380, 0), {}, None),
    (7, "CreateVideo", (1380, 1), dict(fps=24.0), None),
    (8, "SaveVideo", (1380, 2), dict(filename_prefix="video/MAGI-1"), None),
]
BASE_LINKS = [(1, 0, 5, "model"), (2, 0, 4, "t5"), (4, 0, 5, "conditioning"), (3, 0, 5, "vae"), (5, 0, 6, "samples"),
              (3, 0, 6, "vae"), (6, 0, 7, "images"), (7, 0, 8, "video")]
# room for what the frontend extension draws under the widgets (js/magi.js), and for multiline text and previews
EXTRA_HEIGHT = {"MagiSampler": 150, "MagiPromptSchedule": 230, "MagiTextEncode": 110, "MagiDiTLoader": 60,
                "MagiDecodeToVideoFile": 150, "LoadImage": 240, "LoadVideo": 360, "SaveVideo": 200}
GAP = 30  # between nodes of a column, besides the title bar
TITLE_HEIGHT = 30
def models_note(dit: str = "4.5B-distill", folder: str = "4.5B_distill",
                others: str = "4.5B_base, 24B_distill") -> str:
    """The Read-me note's model list: the download (an install.py name) that puts the DiT in models/magi/`folder`,
    and the VAE and T5 in theirs."""
    return (f"Models (python install.py --download {dit} puts them here):\n"
            f"- models/magi/{folder}/  (DiT; {others} ... work too)\n"
            "- models/magi/vae/  (MAGI-1 VAE)\n"
            "- models/text_encoders/t5-v1_1-xxl/  (T5; a t5xxl_fp16.safetensors works too)\n"
            "Distill models: 16 steps. Base models: steps 32-64 (3 guidance passes, slower).")


MODELS_NOTE = models_note()
def _workflow_specs() -> dict:
    prompt = ("a red fox trots through fresh snow in a birch forest at sunrise, soft golden light, "
              "breath visible in the cold air, cinematic")
    text = (4, "MagiTextEncode", (460, 0), dict(prompt=prompt), None)

    def sampler(**kw):
        return (5, "MagiSampler", (920, 0), {**SAMPLER, **kw}, None)

    def note(text):
        return (9, "Note", (0, 3), dict(text=text), "Read me")

    return {
        "magi1_t2v": dict(
            title="MAGI-1 text to video",
            nodes=[*LOADERS, text, sampler(), *OUTPUT,
                   note("Text to video, chunk by chunk (24 frames each); each finished chunk shows on the "
                        "sampler while the next one denoises.\n\n" + MODELS_NOTE)],
            links=BASE_LINKS),
        "magi1_i2v": dict(
            title="MAGI-1 image to video",
            nodes=[*LOADERS, text, sampler(), *OUTPUT,
                   (10, "LoadImage", (460, 1), dict(image="example.png"), None),
                   (11, "MagiVAEEncode", (460, 2), dict(width=720, height=720), None),
                   note("Image to video: the image is the first frame, resized to the sampler's size (MAGI VAE "
                        "Encode follows the sampler's width, height and fps).\n\n" + MODELS_NOTE)],
            links=BASE_LINKS + [(10, 0, 11, "image"), (3, 0, 11, "vae"), (11, 0, 5, "prefix")]),
        "magi1_v2v": dict(
            title="MAGI-1 video continuation",
            nodes=[*LOADERS, text, sampler(), *OUTPUT,
                   (10, "LoadVideo", (460, 1), dict(file="magi1_prefix.mp4"), None),
                   (12, "GetVideoComponents", (460, 2), {}, None),
                   (11, "MagiVAEEncode", (460, 3), dict(width=720, height=720, max_frames=32), None),
                   note("Video continuation: the last 32 frames of the clip are the prefix; the sampler makes "
                        "what follows. magi1_prefix.mp4 is a short example clip the pack puts in ComfyUI's input "
                        "folder: upload your own in Load Video.\n\n" + MODELS_NOTE)],
            links=BASE_LINKS + [(10, 0, 12, "video"), (12, 0, 11, "image"), (3, 0, 11, "vae"),
                                (11, 0, 5, "prefix")]),
        "magi1_prompt_schedule": dict(
            title="MAGI-1 per-chunk prompts",
            nodes=[*LOADERS, (4, "MagiTextEncode", (460, 1), dict(prompt=""), None), sampler(num_frames=120),
                   *OUTPUT,
                   (13, "MagiPromptSchedule", (460, 0), dict(schedule=(
                       "0-1: a red fox trots through fresh snow in a birch forest, morning light\n"
                       "2-3: the fox stops and looks up at a raven on a branch\n"
                       "4-: the fox leaps into a snowdrift and disappears, snow dust in the sunlight")), None),
                   note("Per-chunk prompts: one line per chunk range ('0-1:' chunk indices, '0s-2s:' seconds, "
                        "'4-:' to the end). The schedule node shows the ranges on a timeline for the sampler's "
                        "frames and fps, and flags gaps and overlaps.\n\n" + MODELS_NOTE)],
            links=BASE_LINKS + [(13, 0, 4, "prompt")]),
        "magi1_long_video": dict(
            title="MAGI-1 long video to file",
            nodes=[*LOADERS, text, sampler(num_frames=2400),
                   (6, "MagiDecodeToVideoFile", (1380, 0), dict(filename_prefix="video/MAGI-1_long"), None),
                   note("Long videos at constant memory: MAGI-1 Decode to Video File decodes the sampler's latent "
                        "one chunk at a time straight into an mp4 in the output folder (2400 frames = 100 chunks "
                        "= 100 s here; memory does not grow with the length). Cancel keeps what is finished: while "
                        "sampling, the finished chunks go to the output folder as MAGI-1_unfinished_00001_.mp4; "
                        "while writing, the chunks written so far stay in the file. Its VIDEO output works with "
                        "ComfyUI's video nodes.\n\n"
                        + MODELS_NOTE)],
            links=BASE_LINKS[:5] + [(3, 0, 6, "vae")]),
        "magi1_t2v_multigpu": dict(
            title="MAGI-1 24B on several GPUs",
            nodes=[(1, "MagiDiTLoader", (0, 0), dict(model="24B_distill"), None), *LOADERS[1:],
                   (4, "MagiTextEncode", (460, 1), dict(prompt=prompt), None),
                   sampler(width=1280, height=720), *OUTPUT,
                   (14, "MagiMultiGPUSettings", (460, 0), dict(devices="all", cp_size=0), None),
                   note("Multi-GPU: the sampler runs in one worker process per GPU (context parallel); cp_size "
                        "must divide the attention heads (48 for 24B: 2, 4, 6, 8). leave_gpu0_free keeps GPU 0 "
                        "for T5 and the VAE.\n\n"
                        + models_note("24B-distill", "24B_distill", "24B_base, 4.5B_distill"))],
            links=BASE_LINKS + [(14, 0, 5, "multigpu")]),
    }


def _default(spec) -> object:
    kind, opts = spec[0], (spec[1] if len(spec) > 1 else {})
    if "default" in opts:
        return opts["default"]
    if isinstance(kind, list):
        return kind[0] if kind else ""
    if kind == "COMBO":
        return (opts.get("options") or [""])[0]
    return {"INT": 0, "FLOAT": 0.0, "STRING": "", "BOOLEAN": False}.get(kind)


def build_ui(spec: dict, object_info: dict) -> dict:
    """A UI-format (0.4) workflow from a compact spec (see _workflow_specs)."""
    nodes, links = {}, []
    for nid, ntype, pos, widgets, title in spec["nodes"]:
        if ntype == "Note":
            nodes[nid] = {"id": nid, "type": "Note", "pos": list(pos), "size": [400, 240], "flags": {}, "order": 0,
                          "mode": 0, "inputs": [], "outputs": [], "title": title,
                          "properties": {}, "widgets_values": [widgets["text"]], "color": "#432", "bgcolor": "#653"}
            continue
        info = object_info[ntype]
        specs = dict(widget_inputs(info))
        unknown = set(widgets) - set(specs)
        if unknown:
            raise ValueError(f"{ntype}: no widgets {sorted(unknown)}")
        values = []
        for name in widget_names(info):
            values.append("fixed" if name is None else widgets.get(name, _default(specs[name])))
        inputs = []
        for section in ("required", "optional"):
            for name in info["input_order"].get(section, []):
                if name not in specs:
                    inputs.append({"name": name, "type": info["input"][section][name][0], "link": None})
        outputs = [{"name": n, "type": t, "links": [], "slot_index": i}
                   for i, (t, n) in enumerate(zip(info["output"], info["output_name"]))]
        height = 46 + 24 * len(values) + 22 * max(len(inputs), len(outputs)) + EXTRA_HEIGHT.get(ntype, 0)
        node = {"id": nid, "type": ntype, "pos": list(pos), "size": [400 if ntype in EXTRA_HEIGHT else 340, height],
                "flags": {}, "order": 0, "mode": 0, "inputs": inputs, "outputs": outputs,
                "properties": {"Node name for S&R": ntype}, "widgets_values": values}
        if title:
            node["title"] = title
        nodes[nid] = node
    for lid, (src, slot, dst, name) in enumerate(spec["links"], start=1):
        typ = object_info[nodes[src]["type"]]["output"][slot]
        d = nodes[dst]
        slots = [i for i, inp in enumerate(d["inputs"]) if inp["name"] == name]
        if not slots:  # a widget fed by a link: it gets an input slot
            d["inputs"].append({"name": name, "type": typ, "widget": {"name": name}, "link": None})
            slots = [len(d["inputs"]) - 1]
        d["inputs"][slots[0]]["link"] = lid
        nodes[src]["outputs"][slot]["links"].append(lid)
        links.append([lid, src, slot, dst, slots[0], typ])
    columns: dict = {}  # a node's pos is (x, k): the k-th node of column x, placed below the ones above it
    for n in sorted(nodes.values(), key=lambda n: tuple(n["pos"])):
        x, _ = n["pos"]
        n["pos"] = [x, columns.get(x, 0)]
        columns[x] = n["pos"][1] + n["size"][1] + TITLE_HEIGHT + GAP
    order, done = [], set()
    while len(order) < len(nodes):  # topological order, as the frontend stores it
        for nid in nodes:
            srcs = {link[1] for link in links if link[3] == nid}
            if nid not in done and srcs <= done:
                order.append(nid)
                done.add(nid)
    for k, nid in enumerate(order):
        nodes[nid]["order"] = k
    return {"id": str(uuid.uuid5(uuid.NAMESPACE_URL, "magi1/" + spec["title"])), "revision": 0,
            "last_node_id": max(nodes), "last_link_id": len(links), "nodes": [nodes[i] for i in sorted(nodes)],
            "links": links, "groups": [], "config": {},
            "extra": {"ds": {"scale": 0.6, "offset": [30, 50]}, "frontendVersion": "1.27.10",
                      "magi_api": spec["api"], "magi_order": spec["order"]}, "version": 0.4}


def thumbnail(title: str, path: Path):
    """A 512x384 card with the workflow's title (the template browser shows <name>.jpg)."""
    from PIL import Image, ImageDraw, ImageFont

    img = Image.new("RGB", (512, 384))
    px = img.load()
    for y in range(384):
        for x in range(512):
            px[x, y] = (20 + x * 30 // 512, 24 + y * 40 // 384, 60 + (x + y) * 60 // 896)
    draw = ImageDraw.Draw(img)
    try:
        big, small = ImageFont.load_default(size=44), ImageFont.load_default(size=24)
    except TypeError:  # Pillow < 10.1
        big = small = ImageFont.load_default()
    draw.text((32, 120), "MAGI-1", fill=(255, 190, 90), font=big)
    draw.text((32, 190), title.removeprefix("MAGI-1 "), fill=(235, 235, 245), font=small)
    for i in range(8):  # a strip of "chunks"
        draw.rectangle([32 + i * 56, 280, 32 + i * 56 + 48, 320], outline=(255, 190, 90), width=2)
    img.save(path, quality=88)


def build_workflows(object_info: dict, out_dir: Path = ROOT / "workflows") -> list[Path]:
    out_dir.mkdir(exist_ok=True)
    (out_dir / "api").mkdir(exist_ok=True)
    written = []
    for old in [*out_dir.glob("*.json"), *out_dir.glob("*.jpg"), *(out_dir / "api").glob("*.json")]:
        old.unlink()  # renamed or removed workflows must not linger
    for k, (name, spec) in enumerate(_workflow_specs().items()):  # the template browser's order (routes.py)
        ui = build_ui({**spec, "api": name, "order": k}, object_info)
        problems = check_ui_workflow(ui, object_info)
        if problems:
            raise ValueError(f"{name}: " + "; ".join(problems))
        (out_dir / f"{spec['title']}.json").write_text(json.dumps(ui, indent=1) + "\n")
        (out_dir / "api" / f"{name}.json").write_text(json.dumps(to_api(ui, object_info), indent=1) + "\n")
        thumbnail(spec["title"], out_dir / f"{spec['title']}.jpg")
        written.append(out_dir / f"{spec['title']}.json")
    return written


def api_twin(name: str) -> dict:
    """A shipped API-format workflow (workflows/api/NAME.json)."""
    return json.loads((ROOT / "workflows" / "api" / f"{name}.json").read_text())


def ui_workflows() -> dict:
    """API name -> path of each shipped UI workflow (its extra.magi_api names its twin in workflows/api/)."""
    out = {}
    for p in sorted((ROOT / "workflows").glob("*.json")):
        out[json.loads(p.read_text())["extra"]["magi_api"]] = p
    return out


def running_server(tmp: Path) -> ComfyServer:
    make_models(tmp / "models")
    return ComfyServer(tmp, tmp / "models").start()


def clip_bridge_check() -> dict:
    """In a process with ComfyUI importable: a tiny T5 (ComfyUI's vocabulary) loaded as ComfyUI CLIPs of types
    pixart and sd3, encoded through the bridge, against magi_core's own T5 path on the same weights and the same
    tokenizer. -> {type: {prompt: (max abs diff at valid tokens, valid tokens bridge, valid tokens magi)}}."""
    sys.path[:0] = [str(comfyui_path()), str(ROOT)]
    sys.argv = [sys.argv[0], "--cpu"]  # comfy parses the command line on import (ComfyUI `comfy/options.py`)
    import comfy.options

    comfy.options.enable_args_parsing()
    import torch
    from transformers import T5Config, T5EncoderModel

    import comfy.sd
    import comfy.text_encoders.pixart_t5 as pixart
    import comfy.text_encoders.sd3_clip as sd3
    from magi_core.text.t5 import JsonTokenizer, T5TextEncoder

    conditioning = node_logic("conditioning")
    torch.manual_seed(0)
    small = dict(d_ff=64, d_kv=8, d_model=32, num_heads=4, num_layers=2)
    hf = T5EncoderModel(T5Config(vocab_size=32128, feed_forward_proj="gated-gelu", relative_attention_num_buckets=32,
                                 relative_attention_max_distance=128, is_encoder_decoder=False, use_cache=False,
                                 tie_word_embeddings=False, **small)).eval()
    with torch.no_grad():
        for p in hf.parameters():
            p.normal_(0, 0.5)
    tok = JsonTokenizer(comfyui_path() / "comfy" / "text_encoders" / "t5_tokenizer" / "tokenizer.json")
    magi = T5TextEncoder(hf, tok, "tiny", cache=None)
    prompts = {"short": "A red FOX runs through the <b>snow</b> at dawn! https://example.com/fox.jpg",
               "long": " ".join(f"word{i % 50} fox" for i in range(700))}

    class Target:
        params = {}

    out = {}
    for name, clip_cls, tok_cls in (("pixart", pixart.pixart_te(), pixart.PixArtTokenizer),
                                    ("sd3", sd3.sd3_clip(clip_l=False, clip_g=False, t5=True), sd3.SD3Tokenizer)):
        target = Target()
        target.clip, target.tokenizer = clip_cls, tok_cls
        clip = comfy.sd.CLIP(target, model_options={"t5xxl_model_config": small, "dtype": torch.float32})
        clip.load_sd(hf.state_dict())
        bridge = conditioning.ClipT5(clip)
        res = {}
        for key, text in prompts.items():
            e1, m1 = bridge.encode(text)
            e2, m2 = magi.encode(text)
            n = int(m2.sum())
            res[key] = (float((e1[0, :n] - e2[0, :n]).abs().max()), int(m1.sum()), n,
                        float(e2[0, :n].abs().mean()))
        out[name] = res
    return out


def main(argv):
    import tempfile

    if argv == ["clip-bridge"]:
        print(json.dumps(clip_bridge_check()))
        return 0
    if argv not in (["serve"], ["workflows"]):
        print(__doc__)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    import signal

    def stop(signum, frame):  # kill (SIGTERM) stops ComfyUI too, as ^C does
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    with tempfile.TemporaryDirectory(prefix="magi-comfy-") as tmp:
        server = running_server(Path(tmp))
        try:
            if argv == ["workflows"]:
                for p in build_workflows(server.get("/object_info")):
                    print("wrote", p.relative_to(ROOT))
            else:
                print(f"{server.url}  (ComfyUI with this pack and tiny models; ^C or kill {os.getpid()} stops it)\n"
                      "The workflow templates are made for the real models (720x720): with these tiny models on a "
                      "CPU, set width and height to 64 on the MAGI-1 Sampler and on MAGI-1 VAE Encode (image and video "
                      "templates) first: a run then takes seconds; at 720x720 the first chunk alone takes minutes.", flush=True)
                server.proc.wait()
        except KeyboardInterrupt:
            pass
        finally:
            server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
