"""Expose the repo's top-level `kernels/` package as `magi1_kernels`.

The folder name `kernels` is fixed by the project layout, but `kernels` is also a PyPI package that
transformers probes for, so we never put this repo on sys.path under that name: the folder is loaded
by path under a private name instead (works from the repo root, inside ComfyUI and in spawned workers).
"""
import importlib.util
import sys
from pathlib import Path

NAME = "magi1_kernels"

if NAME not in sys.modules:
    _dir = Path(__file__).resolve().parents[1] / "kernels"
    _spec = importlib.util.spec_from_file_location(NAME, _dir / "__init__.py", submodule_search_locations=[str(_dir)])
    _mod = importlib.util.module_from_spec(_spec)
    sys.modules[NAME] = _mod
    _spec.loader.exec_module(_mod)
