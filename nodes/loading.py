"""Open and load the MAGI-1 models for the loader nodes (no ComfyUI import; devices come resolved).

Opening a DiT reads only headers (size and variant are shown at once; the weights load when the sampler
needs them). VAE and T5 load in their loader nodes. Every load goes through handles.SHARED.
"""
from __future__ import annotations

import math
from pathlib import Path

import torch

from .choices import torch_dtype
from .handles import SHARED, DiTHandle, Loaded, T5Handle, VAEHandle
from .model_files import identity


def open_dit(name: str, path: Path, variant: str, weight_dtype: str, device: str, attention: str,
             precision: str, special_tokens: Path | None) -> DiTHandle:
    """A DiT handle from the checkpoint's headers: size and variant detected (variant 'auto') or checked.

    `device` is where the weights will load ('cuda:0', 'cpu'); the multi-GPU path may pick another."""
    from magi_core.checkpoint import detect, open_checkpoint

    want = None if variant == "auto" else variant
    ckpt = open_checkpoint(path, want)
    det = detect(ckpt, want)
    if ckpt.problems:
        raise ValueError(f"{name}: " + "; ".join(ckpt.problems))
    if weight_dtype == "bf16" and det.fp8:
        raise ValueError(f"{name} is an fp8 checkpoint: weight_dtype 'bf16' would not apply to its fp8 layers; "
                         "use 'auto'")
    key = ("dit", identity(path), det.variant, weight_dtype)
    nbytes = sum(math.prod(shape) * dtype.itemsize for shape, dtype in ckpt.table().values())
    return DiTHandle(name=name, path=Path(path), key=key, detection=det, variant=want, weight_dtype=weight_dtype,
                     device=device, attention=None if attention == "auto" else attention, precision=precision,
                     special_tokens=special_tokens, nbytes=nbytes, loaded=SHARED.peek(key + (device,)))


def load_dit_weights(handle: DiTHandle, device: torch.device, before_load=None) -> Loaded:
    """Read the DiT weights straight onto `device` (shared while loaded; never twice for the same key)."""
    from magi_core.checkpoint import load_dit

    def load():
        if before_load is not None:
            before_load()
        model, info = load_dit(handle.path, device=device, variant=handle.variant, weight_dtype=handle.weight_dtype)
        return Loaded(model, info)

    handle.loaded = SHARED.get(handle.key + (str(device),), load)
    return handle.loaded


def load_vae(name: str, path: Path, dtype: str, device: torch.device, before_load=None) -> VAEHandle:
    from magi_core.vae import load_vae as core_load_vae

    def load():
        if before_load is not None:
            before_load()
        return Loaded(core_load_vae(path, device=device, dtype=torch_dtype(dtype)))

    key = ("vae", identity(path), dtype, str(device))
    return VAEHandle(name=name, key=key, loaded=SHARED.get(key, load))


def load_t5(name: str, path: Path, dtype: str, device: torch.device, tokenizer: Path | None = None,
            before_load=None) -> T5Handle:
    """T5 from the official folder, a HF folder, or one t5xxl file (its tokenizer: `tokenizer` or embedded)."""
    from magi_core.text import T5TextEncoder

    def load():
        if before_load is not None:
            before_load()
        tok = None if Path(path).is_dir() else tokenizer
        return Loaded(T5TextEncoder.load(path, tokenizer=tok, dtype=torch_dtype(dtype), device=device))

    key = ("t5", identity(path), dtype, str(device))
    return T5Handle(name=name, key=key, loaded=SHARED.get(key, load))
