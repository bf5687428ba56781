"""`python -m magi_core generate` as a user runs it (a subprocess from the repo root), with tiny models in the
real layouts (magi_core.demo.make_tiny_assets): every bad input ends with exit code 2, one `error:` paragraph
naming the offending value and no traceback, before any model weight is read; Ctrl-C keeps a playable file of
the finished chunks; memory does not grow with the video's length.

Model file accesses are recorded in the subprocess by a `sitecustomize` module (on PYTHONPATH): an audit hook for
Python's `open` and a wrapper around `safetensors.safe_open` (the Rust reader the loaders use), each logging the
file and the Python functions on the stack."""
import json
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch

from magi_core.video import read_video, write_mp4
from magi_core import cli_generate, startup

ROOT = Path(__file__).resolve().parents[1]
LOADERS = {"load_dit", "load_vae", "load_models", "_read_shard", "load_file"}  # functions that read weights

SITECUSTOMIZE = r'''
import json, os, sys
_log, _root = os.environ.get("MAGI_ACCESS_LOG"), os.environ.get("MAGI_WATCH")
if _log and _root:
    _out = open(_log, "a")

    def _note(path, how):
        try:
            path = os.path.abspath(os.fsdecode(path))
        except TypeError:
            return
        if path.startswith(_root):
            f, stack = sys._getframe(2), []
            while f is not None:
                stack.append(f.f_code.co_name)
                f = f.f_back
            _out.write(json.dumps([path, how, stack]) + "\n")
            _out.flush()

    def _hook(event, args):
        if event == "open" and args and isinstance(args[0], (str, bytes, os.PathLike)):
            _note(args[0], "open")

    sys.addaudithook(_hook)
    import safetensors

    _safe_open = safetensors.safe_open

    def safe_open(filename, *a, **k):
        _note(filename, "safe_open")
        return _safe_open(filename, *a, **k)

    safetensors.safe_open = safe_open

if os.environ.get("MAGI_TEST_DISK_FULL"):  # the disk fills up as the video is finished ("close") or written ("write")
    import errno
    import magi_core.video as _video

    def _full(self):
        raise OSError(errno.ENOSPC, "No space left on device", str(self._tmp))

    def _close(self):
        self.discard()
        _full(self)

    _video.VideoWriter.close = _close
    if os.environ["MAGI_TEST_DISK_FULL"] == "write":  # the second chunk does not fit
        _write = _video.VideoWriter.write
        _video.VideoWriter.write = lambda self, frames: _full(self) if self.frames_written else _write(self, frames)
'''


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """The tiny models and every broken input the tests feed the CLI."""
    from magi_core.demo import make_tiny_assets

    root = tmp_path_factory.mktemp("models")
    m = dict(root=root, **make_tiny_assets(root))
    from magi_core.vae.loader import save_vae
    from magi_core.vae.model import VAEConfig, ViTVAE

    cfg = json.loads((m["vae"] / "config.json").read_text())  # a VAE with 32 latent channels (the tiny DiT has 16)
    cfg["ddconfig"]["z_chans"] = 32
    save_vae(ViTVAE(VAEConfig.from_official(cfg)), root / "vae32")
    C = 64  # the tiny caption width
    np.savez(root / "tokens_keys.npz", caption=np.zeros((1, C)))
    np.savez(root / "tokens_width.npz", caption_token=np.zeros((1, 32)), logo_token=np.zeros((1, 32)),
             other_tokens=np.zeros((100, 32)))
    (root / "tokens_text.npz").write_text("not an npz")
    (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    (root / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 broken")
    write_mp4(root / "three.mp4", torch.rand(3, 64, 64, 3), 24)
    write_mp4(root / "two.mp4", torch.rand(2, 64, 64, 3), 24)
    (root / "prompt.txt").write_bytes("\ufeff0: a red fox runs\n1-: a cat sleeps\n".encode("utf-8"))  # Notepad's BOM
    site = root / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
    return m


def cli(models, tmp_path, *args, base=True, env=None, popen=False, timeout=300, **kw):
    """Run the CLI (args after `generate`); returns the CompletedProcess (or the Popen with popen=...) and the
    model file accesses it made."""
    log = tmp_path / "access.jsonl"
    cmd = [sys.executable, "-m", "magi_core", "generate"]
    if base:
        cmd += ["--dit", str(models["dit"]), "--vae", str(models["vae"]), "--t5", str(models["t5"]),
                "--special-tokens", str(models["special_tokens"]), "--device", "cpu", "--prompt", "a red fox",
                "--width", "64", "--height", "64", "--frames", "24", "--steps", "4", "-o", str(tmp_path / "out.mp4")]
    environ = dict(os.environ, PYTHONPATH=os.pathsep.join([str(models["root"] / "site"), str(ROOT)]),
                   MAGI_ACCESS_LOG=str(log), MAGI_WATCH=str(models["root"]), OMP_NUM_THREADS="1", **(env or {}))
    if popen:
        return subprocess.Popen(cmd + list(args), cwd=ROOT, env=environ, text=True, **kw), log
    try:
        r = subprocess.run(cmd + list(args), cwd=ROOT, env=environ, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:  # e.g. the old command line generating for a bad input
        out = e.stdout.decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
        r = subprocess.CompletedProcess(e.cmd, None, out, f"timed out after {timeout} s")
    return r, accesses(log)


def accesses(log):
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def weight_reads(acc):
    return [(p, how) for p, how, stack in acc if LOADERS & set(stack)]


# (name, extra args, text the error must contain, whether a model file may be opened for headers)
BAD = [
    ("width", ["--width", "721"], "721", False),
    ("width-first", ["--width", "721", "--t5", "/nonexistent/t5"], "721", False),
    ("height", ["--height", "50"], "50", False),
    ("frames0", ["--frames", "0"], "--frames must be", False),
    ("frames1", ["--frames", "1"], "got 1", False),
    ("steps0", ["--steps", "0"], "got 0", False),
    ("steps3", ["--steps", "3"], "got 3", False),
    ("steps13", ["--steps", "13"], "got 13", False),
    ("window0", ["--window", "0"], "--window must be at least 1, got 0", False),
    ("fps", ["--fps", "4"], "got 4", False),
    ("fps-huge", ["--fps", "2147483648"], "--fps must be between 8", False),  # was accepted, then failed at the end
    ("fps-121", ["--fps", "121"], "and 120, got 121", False),
    ("memory-frames", ["--frames", "1000000000"], "use fewer --frames (about", True),
    ("block-swap-cpu", ["--block-swap", "2"], "set --block-swap to 0", False),
    ("attention-missing", ["--attention", "flash"], "--attention 'flash' can't run on cpu: flash_attn is not importable. "
                                                   "Usable there: auto, sdpa", False),
    ("attention-cuda-only", ["--attention", "cudnn"], "'cudnn' can't run on cpu: it needs a CUDA GPU", False),
    ("gif", ["-o", "OUT.gif"], "OUT.gif", False),
    ("webm", ["-o", "OUT.webm"], "OUT.webm", False),
    ("png", ["-o", "OUT.png"], "OUT.png", False),
    ("no-extension", ["-o", "OUT"], "OUT", False),
    ("missing-folder", ["-o", "/nonexistent/dir/out.mp4"], "/nonexistent/dir", False),
    ("read-only", ["-o", "/sys/out.mp4"], "/sys/out.mp4", False),
    ("wrong-dit", ["--dit", "/nonexistent/dit.safetensors"], "/nonexistent/dit.safetensors", False),
    ("wrong-vae", ["--vae", "{root}/nothing"], "{root}/nothing", False),
    ("wrong-t5", ["--t5", "/nonexistent/t5"], "/nonexistent/t5", False),
    ("missing-image", ["--image", "{root}/none.png"], "none.png", False),
    ("corrupt-image", ["--image", "{root}/broken.png"], "broken.png", True),
    ("missing-video", ["--video", "{root}/none.mp4"], "none.mp4", False),
    ("corrupt-video", ["--video", "{root}/broken.mp4"], "broken.mp4", True),
    ("3-frame-video", ["--video", "{root}/three.mp4"], "gives 3 frame", True),
    ("2-frame-video", ["--video", "{root}/two.mp4"], "use 1 or 4 frames; --prefix-frames 1 takes 1 of its last frames",
     True),
    ("2-frame-video-start", ["--video", "{root}/two.mp4", "--prefix-from", "start"], "--prefix-frames 1 takes 1 of its "
                                                                                     "first frames", True),
    ("image-is-a-folder", ["--image", "{root}"], "is a folder: give the path of an image or video file in it", True),
    ("vae-channels", ["--vae", "{root}/vae32"], "32 channels", True),
    ("tokens-keys", ["--special-tokens", "{root}/tokens_keys.npz"], "tokens_keys.npz", True),
    ("tokens-width", ["--special-tokens", "{root}/tokens_width.npz"], "32-d", True),
    ("tokens-not-npz", ["--special-tokens", "{root}/tokens_text.npz"], "tokens_text.npz", True),
    ("schedule-overlap", ["--frames", "72", "--prompt", "0-1: a fox\n1-2: a cat"], "1-2", True),
    ("schedule-gap", ["--frames", "72", "--prompt", "0: a fox\n2: a cat"], "1", True),
    ("schedule-past-end", ["--prompt", "0: a fox\n3: a cat"], "3", True),
    ("schedule-no-colon", ["--prompt", "0-1 a fox\n2-: a cat"], "0-1 a fox", True),
    ("cjk-only", ["--prompt", "一只狐狸"], "--prompt", True),
    ("memory", ["--width", "16384", "--height", "16384"], "GiB", True),
    ("steps-vs-window", ["--steps", "8", "--window", "3"], "got 8", False),
    ("output-folder", ["-o", "{root}"], "is a folder: give a file name such as", False),
    ("prompt-and-file", ["--prompt-file", "{root}/prompt.txt"], "pass --prompt or --prompt-file, not both", False),
    ("demo-with-models", ["--demo"], "--demo makes tiny random models of its own: drop --dit, --vae, --t5, "
                                     "--special-tokens", False),
    ("output-is-input", ["--video", "{root}/three.mp4", "-o", "{root}/three.mp4"], "is the --video it starts from",
     True),  # the output's temporary file is opened (in the models folder here) before the check
    ("prompt-literal-newline", ["--prompt", "0-1: a fox\\n2-: a bird"], "--prompt has '\\n' as two characters", False),
    ("seed-overflow", ["--seed", "99999999999999999999999"], "--seed must be between 0 and 18446744073709551615",
     False),
    ("temporal-overlap", ["--temporal-overlap", "3"], "--temporal-overlap must be an int in [0, 2] latent frames, got 3: "
                                                      "temporal tiles are 3 latent frames (12 frames, half of 24 frames "
                                                      "per second)\n", True),
    ("t5-file-no-tokenizer", ["--t5", "{root}/text_encoders/t5-tiny/model.safetensors"], "without a tokenizer", True),
    ("vae-is-a-dit", ["--vae", "{root}/diffusion_models/magi1_tiny_distill.safetensors"],
     "cannot read it as a MAGI-1 VAE", True),
]


@pytest.fixture(scope="module")
def bad_runs(models, tmp_path_factory):
    """Every bad input, 3 processes at a time."""
    def one(case):
        name, args, _, _ = case
        tmp = tmp_path_factory.mktemp(name)
        args = [a.replace("{root}", str(models["root"])) for a in args]
        if name in ("gif", "webm", "png", "no-extension"):
            args = [str(tmp / a) if a.startswith("OUT") else a for a in args]
        return name, cli(models, tmp, *args, timeout=150)  # a bad input ends in seconds

    with ThreadPoolExecutor(3) as pool:
        return dict(pool.map(one, BAD))


@pytest.mark.parametrize("name,args,needle,headers", BAD, ids=[b[0] for b in BAD])
def test_bad_input_is_one_clear_error_before_any_weight(bad_runs, models, name, args, needle, headers):
    (r, acc) = bad_runs[name]
    needle = needle.replace("{root}", str(models["root"]))
    assert r.returncode == 2, r.stdout + r.stderr
    assert "Traceback" not in r.stderr and r.stderr.startswith("error: "), r.stderr
    assert needle in r.stderr, r.stderr
    assert not weight_reads(acc), weight_reads(acc)  # no model weights read by a loader
    if not headers:  # a setting or a path: decided without opening any model file
        assert not acc, acc


def _prepare(models, *args):
    """cli_generate.prepare in this process (headers, configs, the prompt; no weights) for these arguments."""
    import argparse

    p = argparse.ArgumentParser()
    cli_generate.add_arguments(p)
    a = p.parse_args(["--dit", str(models["dit"]), "--vae", str(models["vae"]), "--t5", str(models["t5"]),
                      "--special-tokens", str(models["special_tokens"]), "--device", "cpu", "--width", "64",
                      "--height", "64", "--frames", "48", "--steps", "4", *args])
    return cli_generate.prepare(a)


def test_a_prompt_file_with_a_bom_reads_as_typed(models):
    job = _prepare(models, "--prompt-file", str(models["root"] / "prompt.txt"))
    assert job.prompt.startswith("0: a red fox") and job.warnings == []


def test_prefix_options_without_a_prefix_are_said_to_be_ignored(models):
    warnings = _prepare(models, "--prompt", "a fox", "--prefix-frames", "8", "--resize", "crop", "--compile").warnings
    assert "--prefix-frames is used with --video only: ignored" in warnings
    assert "--resize is used with --image or --video only: ignored" in warnings
    assert "--compile fuses the element-wise ops on CUDA GPUs only: no effect on cpu" in warnings
    assert _prepare(models, "--prompt", "a fox").warnings == []


def test_a_config_for_another_kind_of_model_is_refused(models, shared_file):
    base = shared_file("4.5B_base_config.json")
    with pytest.raises(ValueError, match="is for a 4.5B base model .*but --dit is a tiny distill model"):
        _prepare(models, "--prompt", "a fox", "--config", str(base))
    with pytest.raises(ValueError, match="--config .*: not an official MAGI-1 config JSON"):
        _prepare(models, "--prompt", "a fox", "--config", str(models["root"] / "prompt.txt"))


def test_output_is_written_only_when_complete(models, tmp_path):
    """A bad run leaves an existing file as it was and no temporary file behind."""
    out = tmp_path / "out.mp4"
    out.write_bytes(b"a video the user made")
    r, _ = cli(models, tmp_path, "--steps", "3")
    assert r.returncode == 2 and out.read_bytes() == b"a video the user made"
    r, _ = cli(models, tmp_path, "--vae", str(models["root"] / "vae32"))  # fails after the output was opened
    assert r.returncode == 2 and out.read_bytes() == b"a video the user made"
    assert [p.name for p in tmp_path.iterdir() if p.name != "access.jsonl"] == ["out.mp4"]


@pytest.mark.parametrize("when", ["close", "write"])
def test_a_full_disk_says_what_was_lost_and_exits_1(models, tmp_path, when):
    """The video cannot be finished (no space, at the end or at the second chunk): one error line saying the frames
    are lost and what to do, exit 1 (not 2, the code of a mistake in the command), no temporary file left."""
    r, _ = cli(models, tmp_path, "--frames", "48", env={"MAGI_TEST_DISK_FULL": when})
    assert r.returncode == 1, r.stdout + r.stderr
    err = [line for line in r.stderr.splitlines() if not line.startswith("DiT call")]
    assert err == [f"error: No space left on device while writing {tmp_path / 'out.mp4'}: the "
                   f"{48 if when == 'close' else 24} frames made could not be saved (the temporary file was removed); "
                   "free some space there or choose another --output"], r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["access.jsonl"]


def test_a_killed_runs_temporary_file_is_pointed_out(models, tmp_path):
    """A run killed with SIGKILL leaves VideoWriter's hidden .part file; the next run into that name says so first."""
    (tmp_path / ".out.mp4.k1ll3d00.part").write_bytes(b"\0" * 48)
    for other in (".other.mp4.abcdefgh.part", ".out.mp4.x.mp4.abcdefgh.part"):  # other outputs': not this run's
        (tmp_path / other).write_bytes(b"")
    r, _ = cli(models, tmp_path, "--steps", "6")  # a mistake: the note comes before the error all the same
    assert r.returncode == 2, r.stderr
    lines = r.stderr.splitlines()
    assert lines[0] == (f"warning: {tmp_path / '.out.mp4.k1ll3d00.part'} is left from an earlier run into out.mp4 "
                        "that was killed before it finished (an incomplete file that does not play): delete it, "
                        "unless another run is writing that file now"), r.stderr
    assert len(lines) == 2 and lines[1].startswith("error: --steps"), r.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU message")
def test_cuda_without_gpu(models, tmp_path):
    r, acc = cli(models, tmp_path, "--device", "cuda")
    assert r.returncode == 2 and "Traceback" not in r.stderr and "'cuda'" in r.stderr and "no CUDA GPU" in r.stderr
    assert not acc


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU fallback message")
def test_fp8_attention_on_cpu_is_said_once_before_loading(models, tmp_path):
    r, _ = cli(models, tmp_path, "--attention", "fp8-approx")
    assert r.returncode == 0, r.stderr
    note = "warning: --attention fp8-approx can't run here (it needs a CUDA GPU): the exact bf16 attention runs instead"
    assert r.stderr.count("fp8-approx") == 1 and note in r.stderr and "RuntimeWarning" not in r.stderr
    assert "generating" in r.stdout


def test_a_schedule_time_inside_a_chunk_is_said_before_the_run(models, tmp_path):
    r, _ = cli(models, tmp_path, "--prompt", "0s-1.5s: a red fox\n1.5s-: a bird", "--frames", "72")
    assert r.returncode == 0, r.stderr
    assert "warning: line 1: 1.5s falls inside a chunk, so the prompt changes at 2s" in r.stderr
    assert "generating" in r.stdout  # a note, not an error: the run goes on
    assert "  chunks 0-1: a red fox\n  chunk 2: a bird\n" in r.stdout  # which chunk gets which prompt


def test_one_prompt_for_all_chunks_is_shown(models, tmp_path):
    """A mistyped range line joins the prompt above it (a schedule's rule): the run shows the prompt it uses."""
    r, _ = cli(models, tmp_path, "--prompt", "0-1: a red fox\nfoo: a bird", "--frames", "48")
    assert r.returncode == 0, r.stderr
    assert "\n  prompt: a red fox foo: a bird\n" in r.stdout, r.stdout


def test_missing_model_paths_say_where_install_py_puts_them():
    import install

    for flag, item in (("--vae", "vae"), ("--t5", "t5")):
        assert cli_generate._WHERE[flag] == "models/" + install.ITEMS[item][1]
    assert cli_generate._WHERE["--dit"].startswith("models/" + install.ITEMS["4.5B-distill"][1])


def test_debug_shows_the_traceback(models, tmp_path):
    r, _ = cli(models, tmp_path, "--width", "721", "--debug")
    assert r.returncode != 0 and "Traceback" in r.stderr and "721" in r.stderr


def test_help_documents_every_option():
    r = subprocess.run([sys.executable, "-m", "magi_core", "generate", "--help"], cwd=ROOT, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0
    text = " ".join(r.stdout.split("options:", 1)[1].split())  # the option list, not the usage line
    for flag, default in (("--width", "720"), ("--height", "720"), ("--fps", "24"), ("--seed", "0"),
                          ("--window", "4"), ("--frames", "96"), ("--steps", "16 for distill")):
        at = text.index(flag + " ")
        assert f"default: {default}" in text[at:at + 400], flag
    assert "4-27 give 24 frames" in text  # what --frames does to a count that is not whole chunks


def test_inspect_json_is_indented():
    r = subprocess.run([sys.executable, "-m", "magi_core", "inspect", "tiny", "--json"], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.startswith("{\n  ") and json.loads(r.stdout)["size"] == "tiny"


def test_a_misspelled_option_shows_the_commands_usage_and_the_nearest_name():
    r = subprocess.run([sys.executable, "-m", "magi_core", "generate", "--demo", "--ouptut", "x.mp4"], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert "usage: python -m magi_core generate" in r.stderr and "did you mean --output?" in r.stderr, r.stderr


def test_an_empty_prompt_file_is_said(models, tmp_path):
    empty = tmp_path / "prompt.txt"
    empty.write_text("  \n\n")
    with pytest.raises(ValueError, match=r"--prompt-file .*prompt.txt is empty"):
        _prepare(models, "--prompt-file", str(empty))


def test_a_video_given_as_image_is_said(models, tmp_path):
    write_mp4(tmp_path / "v.mp4", torch.rand(24, 64, 64, 3), 24)
    job = _prepare(models, "--prompt", "a fox", "--image", str(tmp_path / "v.mp4"))
    assert any("has 24 frames: its first frame is the image" in w for w in job.warnings), job.warnings
    write_mp4(tmp_path / "one.mp4", torch.rand(1, 64, 64, 3), 24)
    assert not _prepare(models, "--prompt", "a fox", "--image", str(tmp_path / "one.mp4")).warnings


def test_a_prefix_frames_longer_than_the_video_is_said(models, tmp_path):
    write_mp4(tmp_path / "v.mp4", torch.rand(24, 64, 64, 3), 24)
    job = _prepare(models, "--prompt", "a fox", "--video", str(tmp_path / "v.mp4"), "--prefix-frames", "500")
    assert job.prefix_frames == 24
    assert any("--prefix-frames 500" in w and "has 24 frames" in w for w in job.warnings), job.warnings
    assert not _prepare(models, "--prompt", "a fox", "--video", str(tmp_path / "v.mp4"), "--prefix-frames", "24").warnings


@pytest.mark.parametrize("args,rc,needle", [
    (["--download", "4.5B-distil", "--dry-run"], 2, "error: unknown download 4.5B-distil"),
    (["--download", "4.5B-distill", "--models-dir", "/nonexistent/models", "--dry-run"], 2, "is not a folder"),
    (["--download", "vae", "--dry-run"], 0, "nothing downloaded"),  # no ComfyUI around: a plan all the same
    (["--download", "24b", "--dry-run"], 2, "--download 24b: name one of its checkpoints, 24B-base, 24B-distill or "
                                            "24B-distill-fp8"),
    # two options of which one would be ignored without a word
    (["--special-tokens", "t.npz"], 2, "error: --skip-special-tokens and --special-tokens contradict each other"),
    (["--list", "--download", "vae"], 2, "error: --list only lists the downloads: leave out --download, "
                                         "--skip-special-tokens"),
])
def test_install_mistakes_exit_2_and_a_dry_run_needs_no_comfyui(tmp_path, args, rc, needle):
    pack = tmp_path / "pack"  # a clone outside ComfyUI/custom_nodes
    pack.mkdir()
    (pack / "install.py").write_bytes((ROOT / "install.py").read_bytes())
    r = subprocess.run([sys.executable, "install.py", "--skip-special-tokens", *args], cwd=pack, capture_output=True,
                       text=True, timeout=60, env=dict(os.environ, HF_HUB_OFFLINE="1"))
    assert r.returncode == rc and needle in r.stdout + r.stderr and "Traceback" not in r.stderr, r.stdout + r.stderr


def test_install_rejects_an_unknown_download_before_fetching_anything(tmp_path):
    """A mistyped name is the first thing said, with exit 2: nothing is fetched first (the special tokens were)."""
    dead = "http://127.0.0.1:9"  # any download attempt fails at once and would be reported
    r = subprocess.run([sys.executable, "install.py", "--download", "foo", "--models-dir", str(tmp_path)], cwd=ROOT,
                       capture_output=True, text=True, timeout=60,
                       env=dict(os.environ, HF_HUB_OFFLINE="1", http_proxy=dead, https_proxy=dead, HTTPS_PROXY=dead))
    assert r.returncode == 2 and r.stderr.startswith("error: unknown download foo: choose from vae, t5, 4.5B-base"), r.stderr
    assert "special_tokens" not in r.stdout + r.stderr  # (a fetch would have failed and said so)


def test_install_dry_run_checks_a_special_tokens_file(tmp_path):
    r = subprocess.run([sys.executable, "install.py", "--download", "vae", "--dry-run", "--models-dir", str(tmp_path),
                        "--special-tokens", "/nonexistent/t.npz"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "--special-tokens /nonexistent/t.npz: no such file" in r.stderr, r.stderr


def test_install_dry_run_is_offline(tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1", HTTPS_PROXY="http://127.0.0.1:9", HTTP_PROXY="http://127.0.0.1:9")
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "install.py", "--download", "4.5B-distill", "--models-dir", str(tmp_path),
                        "--dry-run"], cwd=ROOT, capture_output=True, text=True, timeout=60, env=env)
    assert r.returncode == 0, r.stderr
    assert time.perf_counter() - t0 < 20
    assert "4.5B-distill" in r.stdout and "vae" in r.stdout and "t5" in r.stdout and "nothing downloaded" in r.stdout


def _wait_for(proc, text, timeout=300):
    """Lines of proc's stdout up to (and including) the first that contains `text`."""
    lines, end = [], time.monotonic() + timeout
    while time.monotonic() < end:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if text in line:
            return lines
    raise AssertionError(f"{text!r} never came: {''.join(lines)}")


@pytest.mark.parametrize("signum,said,repeats", [(signal.SIGINT, "interrupted", 1),
                                                  (signal.SIGTERM, "stopped by SIGTERM", 1),
                                                  *([(signal.SIGHUP, "stopped by SIGHUP", 1)]
                                                    if hasattr(signal, "SIGHUP") else []),
                                                  (signal.SIGINT, "interrupted", 6)])
def test_ctrl_c_keeps_the_finished_chunks(models, tmp_path, signum, said, repeats):
    """Ctrl-C, a SIGTERM from a job system or a SIGHUP (the terminal closed): the finished chunks stay in a playable
    file, no temporary left (SIGHUP used to kill the run silently, leaving only the temporary file). Ctrl-C pressed
    again while they are saved changes nothing (it used to leave only the temporary file)."""
    out = tmp_path / "out.mp4"
    # 100 chunks: far more than can finish between "chunk 0:" and the signal, on a busy machine too
    proc, _ = cli(models, tmp_path, "--frames", "2400", popen=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        _wait_for(proc, "chunk 0:")
        for i in range(repeats):  # the later ones land while the file is being finished
            if proc.poll() is not None:
                break
            proc.send_signal(signum)
            time.sleep(0.01 * i)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 128 + signum and "Traceback" not in err, err
    assert f"{said}: kept the finished chunks" in err and str(out) in err
    video = read_video(out)  # playable, whole chunks only
    assert video.shape[0] >= 24 and video.shape[0] % 24 == 0 and video.shape[0] < 2400, video.shape
    assert f"({video.shape[0]} frames)" in err
    assert not list(tmp_path.glob("*.part"))


def test_demo_refuses_a_config_it_would_not_use(models, tmp_path):
    r, _ = cli(models, tmp_path, "--demo", "--config", "4.5B_distill_config.json", base=False, timeout=120)
    assert r.returncode == 2 and r.stderr.startswith("error: --demo runs tiny models") and "drop --config" in r.stderr, \
        r.stderr


@pytest.mark.skipif(not hasattr(signal, "SIGHUP"), reason="no SIGHUP on this OS")
def test_nohup_keeps_the_run_going_after_a_sighup(models, tmp_path):
    """Started with SIGHUP ignored (nohup), the run outlives the terminal: a SIGHUP changes nothing."""
    out = tmp_path / "out.mp4"
    proc, _ = cli(models, tmp_path, "--frames", "72", popen=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                  preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_IGN))
    try:
        _wait_for(proc, "chunk 0:")
        proc.send_signal(signal.SIGHUP)
        _, err = proc.communicate(timeout=300)
    finally:
        proc.kill()
    assert proc.returncode == 0 and "SIGHUP" not in err, (proc.returncode, err)
    assert read_video(out).shape[0] == 72


def test_a_closed_output_pipe_does_not_stop_the_run(models, tmp_path):
    """`generate ... | head -2`: once the reader is gone the command stops printing, not generating (it used to stop
    with 'error: [Errno 32] Broken pipe' and exit code 2, losing the chunks not made yet)."""
    out = tmp_path / "out.mp4"
    proc, _ = cli(models, tmp_path, "--frames", "96", popen=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        proc.stdout.readline()  # the first line, then the reader goes away
        proc.stdout.close()
        err = proc.stderr.read()
        proc.wait(timeout=300)
    finally:
        proc.kill()
    assert proc.returncode == 0 and "Traceback" not in err and "Broken pipe" not in err, (proc.returncode, err)
    assert read_video(out).shape[0] == 96


@pytest.mark.parametrize("signum,delay", [(signal.SIGINT, 0.4), (signal.SIGINT, 1.2), (signal.SIGTERM, 0.8),
                                          (signal.SIGINT, 2.5)])
def test_an_interrupt_while_starting_stops_cleanly(models, tmp_path, signum, delay):
    """Ctrl-C while Python imports torch, transformers and the rest (the first seconds): held until they are in,
    then the run stops with the usual message and exit code. (It used to be swallowed by an import, the run going
    on to the end, or to end in a traceback about numpy or T5EncoderModel, or in exit code -2.)"""
    out = tmp_path / "out.mp4"
    proc, _ = cli(models, tmp_path, "--demo", "--frames", "2400", "--width", "64", "--height", "64", "-o", str(out),
                  base=False, popen=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        time.sleep(delay)
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 128 + signum and "Traceback" not in err, (proc.returncode, err)
    said = "interrupted" if signum == signal.SIGINT else "stopped by SIGTERM"
    assert said in err and ("nothing written" in err or "kept the finished chunks" in err), err


@pytest.mark.skipif(not hasattr(signal, "SIGHUP"), reason="no SIGHUP on this OS")
def test_a_closed_terminal_while_starting_stops_once(models, tmp_path):
    """A terminal that closes sends SIGHUP twice: the second one, while the libraries import, is not a second
    Ctrl-C (it used to raise KeyboardInterrupt inside an import and end as 'interrupted', exit 130)."""
    proc, _ = cli(models, tmp_path, "--demo", "--frames", "2400", "--width", "64", "--height", "64", "-o",
                  str(tmp_path / "out.mp4"), base=False, popen=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        time.sleep(0.5)
        proc.send_signal(signal.SIGHUP)
        time.sleep(0.05)
        proc.send_signal(signal.SIGHUP)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 128 + signal.SIGHUP and "stopped by SIGHUP" in err and "Traceback" not in err, \
        (proc.returncode, err)


def test_signals_held_while_starting_are_recorded_once_and_a_second_stops_at_once():
    """magi_core/startup.py in this process: a held Ctrl-C is recorded (no KeyboardInterrupt inside an import),
    taken once; a second while holding raises at once; release() puts back what hold() replaced, an inherited
    'ignore' included."""

    before = {s: signal.getsignal(s) for s in startup.STOP_SIGNALS}
    try:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # e.g. a background job of a script
        startup.hold()
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.05)
        assert startup.take() == signal.SIGINT and startup.take() is None
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.05)
        with pytest.raises(KeyboardInterrupt):  # the second one
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN  # put back, not the default
        assert signal.getsignal(signal.SIGINT) is before[signal.SIGINT]
        startup.hold()
        assert startup.original(signal.SIGTERM, signal.getsignal(signal.SIGTERM)) is signal.SIG_IGN
        assert startup.release() is None and signal.getsignal(signal.SIGTERM) is signal.SIG_IGN
    finally:
        startup._held.clear()
        for s, h in before.items():
            signal.signal(s, h)


def test_inspect_stopped_while_starting_says_so(tmp_path):
    """SIGTERM while `inspect` imports torch: its own words and exit code, no traceback, no silent kill."""
    proc = subprocess.Popen([sys.executable, "-m", "magi_core", "inspect", "tiny", "--brief"], cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM and "stopped by SIGTERM: nothing written" in err, (proc.returncode, err)
    assert "Traceback" not in err


def _peak_rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return int(next(line for line in f if line.startswith("VmHWM:")).split()[1])


@pytest.mark.slow  # ~120 s of CPU time (40 chunks with the tiny VAE decode); run with -m slow
def test_memory_is_flat_in_video_length(models, tmp_path):
    """40 chunks at 64x64: the peak RSS after the 40th chunk is within 3 % of the peak after the 10th (the old
    CLI kept every decoded frame, +1.2 MB a chunk here: 478 -> 513 MB, +7.2 %, measured)."""
    proc, _ = cli(models, tmp_path, "--frames", str(40 * 24), "--window", "1", popen=True, stdout=subprocess.PIPE,
                  stderr=subprocess.DEVNULL)
    try:
        _wait_for(proc, "chunk 9:")
        at10 = _peak_rss_kib(proc.pid)
        _wait_for(proc, "chunk 39:")
        at40 = _peak_rss_kib(proc.pid)
        assert proc.wait(timeout=120) == 0
    finally:
        proc.kill()
    assert at40 <= at10 * 1.03, (at10, at40)
    assert read_video(tmp_path / "out.mp4").shape[0] == 40 * 24


def test_special_tokens_found_where_comfyui_keeps_them(models, tmp_path):
    """No --special-tokens: the CLI finds models/magi/special_tokens.npz for a DiT in models/diffusion_models/."""
    from magi_core.cli_generate import DEFAULT_TOKENS

    if DEFAULT_TOKENS.exists():
        pytest.skip(f"{DEFAULT_TOKENS} exists (install.py ran): it is found first")
    assert models["special_tokens"].parent.name == "magi" and models["dit"].parent.name == "diffusion_models"
    args = ["--dit", str(models["dit"]), "--vae", str(models["vae"]), "--t5", str(models["t5"]), "--device", "cpu",
            "--prompt", "a red fox", "--width", "64", "--height", "64", "--frames", "24", "--steps", "4",
            "-o", str(tmp_path / "out.mp4")]
    r, _ = cli(models, tmp_path, *args, base=False)
    assert r.returncode == 0, r.stderr[-2000:]


def test_demo_makes_one_chunk_videos_too(models, tmp_path):
    """--demo's own two-prompt schedule needs two chunks: with --frames 24 it uses one prompt (it used to fail
    with a schedule error the user never wrote)."""
    out = tmp_path / "one.mp4"
    r, _ = cli(models, tmp_path, "--demo", "--frames", "24", "--width", "64", "--height", "64", "--steps", "4",
               "-o", str(out), base=False)
    assert r.returncode == 0 and "warning" not in r.stderr, r.stderr
    assert read_video(out).shape[0] == 24


def test_an_interrupt_before_any_chunk_mentions_the_output_only_if_it_existed(tmp_path):
    out = tmp_path / "out.mp4"
    assert cli_generate.left_as_it_was(str(out)) == ""  # nothing was there: nothing to be "left as it was"
    out.write_bytes(b"an earlier video")
    assert cli_generate.left_as_it_was(str(out)) == f" ({out} left as it was)"


def test_the_frames_the_memory_error_suggests_do_fit(models, tmp_path, monkeypatch):
    """With a video prefix of two chunks: the --frames the error proposes pass the same check (it used to count the
    prefix's chunks as new frames)."""
    import re

    write_mp4(tmp_path / "v.mp4", torch.rand(48, 64, 64, 3), 24)
    args = ("--prompt", "a fox", "--video", str(tmp_path / "v.mp4"))
    monkeypatch.setattr(cli_generate, "_available", lambda device: 1 << 50)
    job = _prepare(models, *args, "--frames", "24000")
    need, _, per_chunk = cli_generate.estimate_bytes(job)
    from magi_core.pipeline import chunk_count

    n = chunk_count(job.settings, job.prefix_frames)[0]
    fixed = need - n * per_chunk
    monkeypatch.setattr(cli_generate, "_available", lambda device: int((fixed + 40.5 * per_chunk) / 0.95))
    with pytest.raises(ValueError, match=r"use fewer --frames \(about (\d+) fit") as e:
        _prepare(models, *args, "--frames", "24000")
    frames = int(re.search(r"about (\d+) fit", str(e.value)).group(1))
    assert frames > 0
    _prepare(models, *args, "--frames", str(frames))  # fits
    with pytest.raises(ValueError, match="needs about"):
        _prepare(models, *args, "--frames", str(frames + 2 * 24))  # and not much more would


def test_no_option_hint_after_a_double_dash():
    r = subprocess.run([sys.executable, "-m", "magi_core", "inspect", "tiny", "--", "--json"], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "unrecognized arguments: --json" in r.stderr and "did you mean" not in r.stderr, \
        r.stderr


@pytest.mark.parametrize("user", [None, "PYTORCH_ALLOC_CONF", "PYTORCH_CUDA_ALLOC_CONF"])
def test_the_command_line_uses_expandable_segments_unless_the_user_chose(user):
    """`python -m magi_core` sets PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True before torch allocates (24B with
    block swap under a 22 GiB cap ran out of memory from fragmentation without it, BENCHMARKS.md session 8); an
    allocator setting of the user's, under either name, is left as it is."""
    code = ("import os, runpy, sys\nsys.argv = ['magi_core', '--help']\ntry:\n"
            "    runpy.run_module('magi_core', run_name='__main__')\nexcept SystemExit:\n    pass\n"
            "print(os.environ.get('PYTORCH_ALLOC_CONF'), os.environ.get('PYTORCH_CUDA_ALLOC_CONF'))")
    env = {k: v for k, v in os.environ.items() if k not in startup.ALLOC_VARS}
    if user:
        env[user] = "backend:native"
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    got = r.stdout.splitlines()[-1].split()
    want = {None: ["None", "expandable_segments:True"], "PYTORCH_ALLOC_CONF": ["backend:native", "None"],
            "PYTORCH_CUDA_ALLOC_CONF": ["None", "backend:native"]}[user]
    assert got == want, r.stdout


def test_torchrun_ranks_get_expandable_segments_after_comfyuis_backend_is_dropped():
    """A `backend:cudaMallocAsync` inherited from ComfyUI is dropped for torchrun ranks (parallel/_bootstrap.py);
    what is left unset then gets the command line's default, not nothing; a ROCm user's setting counts as a choice."""
    from magi_core.parallel._bootstrap import sanitize_env

    env = startup.allocator_defaults(sanitize_env({"PYTORCH_CUDA_ALLOC_CONF": "backend:cudaMallocAsync"}))
    assert env["PYTORCH_CUDA_ALLOC_CONF"] == "expandable_segments:True"
    assert startup.allocator_defaults({"PYTORCH_HIP_ALLOC_CONF": "garbage_collection_threshold:0.8"}) == {
        "PYTORCH_HIP_ALLOC_CONF": "garbage_collection_threshold:0.8"}


def test_no_command_says_what_to_type():
    """`python -m magi_core` alone: the usage with every command's help line, then one error line, exit 2."""
    r = subprocess.run([sys.executable, "-m", "magi_core"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stdout == "", r.stdout
    assert "generate  generate a video" in r.stderr and "(see:" not in r.stderr, r.stderr
    assert r.stderr.rstrip().splitlines()[-1].startswith("error: name a command (inspect, convert, generate)")


def test_demo_numbers_are_checked_before_its_models_are_made(monkeypatch, tmp_path):
    """--demo --frames 0: the mistake is said before make_tiny_assets runs (it takes seconds)."""
    import argparse

    import magi_core.demo

    def made(*_):
        raise AssertionError("the tiny models were made before the settings were checked")

    monkeypatch.setattr(magi_core.demo, "make_tiny_assets", made)
    p = argparse.ArgumentParser()
    cli_generate.add_arguments(p)
    with pytest.raises(ValueError, match="--frames must be at least 4"):
        cli_generate.use_demo(p.parse_args(["--demo", "--frames", "0"]), str(tmp_path))
    with pytest.raises(AssertionError, match="were made"):  # good numbers: on to the models
        cli_generate.use_demo(p.parse_args(["--demo"]), str(tmp_path))
    for variant in ("distill-fp8", "fp8", "DISTILL_QUANT"):  # the tiny DiT is bf16: said before it is made
        with pytest.raises(ValueError, match=f"not an fp8-quantized one: drop --variant {variant} "):
            cli_generate.use_demo(p.parse_args(["--demo", "--variant", variant]), str(tmp_path))
    with pytest.raises(AssertionError, match="were made"):
        cli_generate.use_demo(p.parse_args(["--demo", "--variant", "base"]), str(tmp_path))


@pytest.mark.parametrize("output,needle", [("{tmp}/out.avi", "must end in .mp4, .mov, .mkv"),
                                           ("{tmp}/no/such/folder/out.mp4", "does not exist"),
                                           ("{tmp}", "is a folder"), ("", "--output is empty")])
def test_the_output_name_is_checked_first(tmp_path, output, needle):
    """check_output, which `run` calls before --demo makes its models and before any model file is opened."""
    import argparse

    p = argparse.ArgumentParser()
    cli_generate.add_arguments(p)
    with pytest.raises(ValueError, match=needle):
        cli_generate.check_output(p.parse_args(["-o", output.replace("{tmp}", str(tmp_path))]))
    cli_generate.check_output(p.parse_args(["-o", str(tmp_path / "out.mp4")]))  # a good name passes
