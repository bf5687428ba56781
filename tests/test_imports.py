"""Our top-level `kernels/` folder never shadows the PyPI `kernels` package that transformers 5 imports."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

PROBE = """
import importlib.metadata as md, importlib.util, sys
from transformers import T5EncoderModel  # transformers 5 imports the PyPI `kernels` here
import magi_core.kernels.attention as att
assert att.__file__.startswith(sys.argv[1]), att.__file__
spec = importlib.util.find_spec("kernels")
try:
    md.version("kernels")
    installed = True
except md.PackageNotFoundError:
    installed = False
if installed:  # the real package wins, whatever sys.path order
    assert spec.origin and not spec.origin.startswith(sys.argv[1]), spec.origin
else:  # at most a namespace portion: nothing to import from it by mistake
    assert spec is None or spec.origin in (None, "namespace"), spec.origin
print("ok", installed)
"""


def test_no_kernels_init():
    assert not (ROOT / "kernels" / "__init__.py").exists(), (
        "kernels/__init__.py makes our folder a regular package that shadows the PyPI `kernels` package")


def test_repo_root_first_on_path_does_not_shadow_kernels(tmp_path):
    for cwd in (ROOT, tmp_path):  # `python -m magi_core` from the repo root puts it first on sys.path
        r = subprocess.run([sys.executable, "-c", f"import sys; sys.path.insert(0, {str(ROOT)!r})\n" + PROBE,
                            str(ROOT / "kernels")], cwd=cwd, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0 and r.stdout.startswith("ok"), r.stderr[-2000:]
