"""The README's first two commands, run as a user types them (from the repo root, in a subprocess)."""
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _first_commands():
    text = (ROOT / "README.md").read_text()
    block = re.search(r"## First two commands.*?```\n(.*?)```", text, re.S)
    assert block, "README.md lost its 'First two commands' block"
    return [line for line in block.group(1).splitlines() if line.strip()]


def test_readme_starts_with_setup_then_main_command():
    setup, main = _first_commands()
    assert setup == "bash tests/run.sh"
    assert main.startswith(".venv/bin/python -m magi_core generate --demo")
    assert (ROOT / ".ci" / "run").read_text().strip().endswith("bash tests/run.sh")


def test_readme_main_command_writes_a_playable_video(tmp_path):
    import av

    _, main = _first_commands()
    argv = main.split()
    assert argv[0] == ".venv/bin/python" and argv[-2] == "--output"
    out = tmp_path / "demo.mp4"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    r = subprocess.run([sys.executable, *argv[1:-1], str(out)], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Traceback" not in r.stderr
    # not a terminal: the DiT call count as lines now and then (the first, the last of the run), not in silence
    calls = [line for line in r.stderr.splitlines() if line.startswith("DiT call ")]
    assert calls and calls[0].startswith("DiT call 1/"), r.stderr
    total = calls[0].split()[2].split("/")[1]
    assert calls[-1].startswith(f"DiT call {total}/{total} ") and len(calls) < int(total), calls
    with av.open(str(out)) as c:
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    assert len(frames) == 48 and frames[0].shape == (128, 128, 3)
    assert len({f.tobytes() for f in frames}) > 1  # a real video, not one repeated frame


def test_tests_run_in_a_clone_whose_folder_name_is_no_module_name(tmp_path):
    """Users clone into e.g. `ComfyUI-MAGI-1`; pytest then imports the root __init__.py outside any package."""
    import shutil

    clone = tmp_path / "ComfyUI-MAGI-1"
    shutil.copytree(ROOT, clone, ignore=shutil.ignore_patterns(".git", ".venv", ".gpu", "__pycache__", "*.mp4"))
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_config.py",
                        "-k", "presets_and_errors"], cwd=clone, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "1 passed" in r.stdout, r.stdout[-3000:]
