"""What this machine can run: CUDA compute capability, optional kernel packages, one-time numeric checks.

Every answer is computed once per process and cached. Optional packages (flash_attn, magi_attention) are
imported lazily; a broken build (ABI mismatch, missing CUDA library) counts as "not installed".
"""
from __future__ import annotations

import importlib
import warnings
from typing import Callable

import torch

_modules: dict[str, object] = {}
_verified: dict[object, bool] = {}


def optional_module(name: str):
    """The imported module `name`, or None when it is absent or fails to import."""
    if name not in _modules:
        try:
            _modules[name] = importlib.import_module(name)
        except Exception:  # ImportError, but also OSError/RuntimeError from broken CUDA extensions
            _modules[name] = None
    return _modules[name]


def cuda_capability(device=None) -> tuple[int, int] | None:
    """(major, minor) of a CUDA device, or None for CPU tensors / no CUDA."""
    device = torch.device(device) if device is not None else None
    if device is not None and device.type != "cuda":
        return None
    if not torch.cuda.is_available():
        return None
    return torch.cuda.get_device_capability(device)


def probe(device):
    """A stand-in for bf16 attention inputs on `device` (is_cuda, device, dtype, shape), for the availability checks
    made from the settings, before any tensor or model exists."""
    import types

    dev = torch.device(device)
    return types.SimpleNamespace(is_cuda=dev.type == "cuda", device=dev, dtype=torch.bfloat16, shape=(0, 1, 128))


def fp8_gemm_supported(device) -> bool:
    """fp8 e4m3 tensor-core GEMM (torch._scaled_mm) needs sm89+ (Ada, Hopper, Blackwell)."""
    cc = cuda_capability(device)
    return cc is not None and cc >= (8, 9)


def verified(key, check: Callable[[], bool], what: str) -> bool:
    """Run `check()` once per key; False (with a warning) when it returns False or raises."""
    if key not in _verified:
        try:
            ok, why = bool(check()), "it disagreed with the SDPA reference"
        except Exception as e:  # a kernel that cannot run here is as unusable as a wrong one
            ok, why = False, f"it raised {type(e).__name__}: {e}"
        if not ok:
            warnings.warn(f"{what} failed its one-time check ({why}); using SDPA instead.", RuntimeWarning, stacklevel=3)
        _verified[key] = ok
    return _verified[key]


def describe() -> str:
    """One line naming torch, the GPU and the optional kernel packages, for error messages."""
    cc = cuda_capability("cuda") if torch.cuda.is_available() else None
    gpu = f"CUDA sm{cc[0]}{cc[1]}" if cc else "no CUDA"
    pkgs = []
    for name in ("flash_attn", "magi_attention", "cudnn"):
        mod = optional_module(name)
        label = "nvidia-cudnn-frontend" if name == "cudnn" else name
        pkgs.append(f"{label} {getattr(mod, '__version__', '?')}" if mod else f"{label} not installed")
    return f"torch {torch.__version__} ({gpu}), " + ", ".join(pkgs)
