"""Open and load the MAGI-1 models for the loader nodes (no ComfyUI import; devices come resolved).

Opening a DiT reads only headers (size and variant are shown at once; the weights load when the sampler
needs them). VAE and T5 load in their loader nodes. Every load goes through handles.SHARED.

The DiT's run-time settings are a `magi_core.settings.DiTRuntime` (built by the loader node, applied by
`magi_core.checkpoint.load_dit`). Block swap N > 0: all but the last N transformer layers stay on the device and
those N stream in from host memory at every forward. CUDA only.
"""
from __future__ import annotations

import math
import re
from pathlib import Path

import torch

from magi_core.settings import DiTRuntime

from .choices import torch_dtype
from .handles import SHARED, DiTHandle, Loaded, T5Handle, VAEHandle
from .model_files import identity


_LAYER = re.compile(r"videodit_blocks\.layers\.(\d+)\.")


def open_dit(name: str, path: Path, variant: str, runtime: DiTRuntime, special_tokens: Path | None) -> DiTHandle:
    """A DiT handle from the checkpoint's headers: size and variant detected (variant 'auto') or checked, and the
    run-time settings checked against the model.

    `runtime.device` is where the weights will load ('cuda:0', 'cpu'); the multi-GPU path may pick another.
    Weight dtype and block swap are part of the weights key; precision, attention and compile are not."""
    from magi_core.checkpoint import detect, open_checkpoint

    want = None if variant == "auto" else variant
    ckpt = open_checkpoint(path, want)
    det = detect(ckpt, want)
    if ckpt.problems:
        raise ValueError(f"{name}: " + "; ".join(ckpt.problems))
    try:
        runtime.check_model(det.cfg, det.fp8)
    except ValueError as e:
        raise ValueError(f"{name}: {e}") from None
    key = ("dit", identity(path), det.variant, runtime.weight_dtype, runtime.block_swap)
    nbytes, per_layer = 0, {}
    for tensor, (shape, dtype) in ckpt.table().items():
        size = math.prod(shape) * dtype.itemsize
        nbytes += size
        m = _LAYER.match(tensor)
        if m:
            per_layer[m.group(1)] = per_layer.get(m.group(1), 0) + size
    return DiTHandle(name=name, path=Path(path), key=key, detection=det, variant=want, runtime=runtime,
                     special_tokens=special_tokens, nbytes=nbytes, layer_nbytes=max(per_layer.values(), default=0),
                     loaded=SHARED.peek(key + (runtime.device,)))


def load_dit_weights(handle: DiTHandle, device: torch.device, before_load=None) -> Loaded:
    """Read the DiT weights onto `device` (shared while loaded; never twice for the same key), set up as the
    handle's run-time settings say (block swap: the swapped layers stay in host memory)."""
    from magi_core.checkpoint import load_dit

    try:
        runtime = handle.runtime.replace(device=str(device))
    except ValueError as e:
        raise ValueError(f"{handle.name}: {e}") from None

    def load():
        if before_load is not None:
            before_load()
        return Loaded(*load_dit(handle.path, runtime, variant=handle.variant))

    handle.loaded = SHARED.get(handle.key + (runtime.device,), load)
    runtime.configure(handle.loaded.model)  # shared weights: this handle's precision, attention, compile
    return handle.loaded


def resident_modules(model) -> torch.nn.ModuleList:
    """The parts of a loaded DiT that live on its device: all of it, or with block swap everything but the
    swapped layers (those stay in host memory between forwards). What ComfyUI's ModelPatcher manages."""
    swap = model.block_swap
    if swap is None:
        return torch.nn.ModuleList([model])
    blocks = model.videodit_blocks
    swapped = {id(layer) for layer in swap.swapped}
    parts = [m for m in model.children() if m is not blocks]
    parts += [m for m in blocks.children() if m is not blocks.layers]
    parts += [layer for layer in blocks.layers if id(layer) not in swapped]
    return torch.nn.ModuleList(parts)


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
