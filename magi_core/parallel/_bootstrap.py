"""First code a pool worker runs: clean the inherited environment, then load `magi_core` by file path.

`pool.py` makes this file the `__main__` that a spawned worker re-runs (as `__mp_main__`) before it unpickles
its target, so: (1) nothing of the parent's own main script (ComfyUI's main.py) runs in the worker, (2) the
environment is fixed before torch is imported, (3) `magi_core` is importable although ComfyUI loaded it by
path and the repo root is not on sys.path (putting it there would shadow ComfyUI's `nodes` module).
No torch import here.
"""
import importlib.util
import os
import sys
from pathlib import Path

ALLOC_VARS = ("PYTORCH_CUDA_ALLOC_CONF", "PYTORCH_ALLOC_CONF")
NCCL_DEFAULTS = {"NCCL_NVLS_ENABLE": "0"}  # NVLink multicast off (it needs extra memory and broke on some hosts)


def sanitize_env(env=None):
    """Drop allocator `backend:` settings (ComfyUI sets backend:cudaMallocAsync, which made NCCL all-to-all hit
    the VRAM ceiling for raylight) and set NCCL defaults the user did not choose. Other settings are kept."""
    env = os.environ if env is None else env
    for var in ALLOC_VARS:
        if var in env:
            keep = [p.strip() for p in env[var].split(",") if p.strip() and not p.strip().startswith("backend:")]
            if keep:
                env[var] = ",".join(keep)
            else:
                del env[var]
    for k, v in NCCL_DEFAULTS.items():
        env.setdefault(k, v)
    return env


def load_magi_core():
    """Register this repo's magi_core package under its name without touching sys.path."""
    if "magi_core" in sys.modules:
        return sys.modules["magi_core"]
    pkg = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location("magi_core", pkg / "__init__.py",
                                                  submodule_search_locations=[str(pkg)])
    mod = importlib.util.module_from_spec(spec)
    sys.modules["magi_core"] = mod
    spec.loader.exec_module(mod)
    return mod


if __name__ == "__mp_main__":
    sanitize_env()
    load_magi_core()
