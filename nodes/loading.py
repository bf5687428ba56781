"""Open and load the MAGI-1 models for the loader nodes (no ComfyUI import; devices come resolved).

Opening a DiT reads only headers (size and variant are shown at once; the weights load when the sampler
needs them). VAE and T5 load in their loader nodes. Every load goes through handles.SHARED.

Block swap (`block_swap` N > 0): the DiT is read into host memory, then `magi_core.dit.offload.enable_block_swap`
keeps all but the last N transformer layers on the device and streams those N in at every forward. CUDA only.
"""
from __future__ import annotations

import math
import re
from pathlib import Path

import torch

from .choices import torch_dtype
from .handles import SHARED, DiTHandle, Loaded, T5Handle, VAEHandle
from .model_files import identity


_LAYER = re.compile(r"videodit_blocks\.layers\.(\d+)\.")


def block_swap_error(block_swap: int, num_layers: int | None, device=None) -> str | None:
    """Why `block_swap` cannot be used with this model / device, or None. num_layers / device None: not known."""
    if not block_swap:
        return None
    if block_swap < 0:
        return f"block_swap must be 0 or more, got {block_swap}"
    if num_layers is not None and block_swap > num_layers:
        return (f"block_swap {block_swap} is more than this model's {num_layers} transformer layers: "
                f"the maximum is {num_layers} (every layer streamed)")
    if device is not None and torch.device(device).type != "cuda":
        return (f"block_swap streams layers from host memory to a CUDA GPU, but the DiT runs on {device}, where "
                "all weights are in host memory already: set block_swap to 0")
    return None


def open_dit(name: str, path: Path, variant: str, weight_dtype: str, device: str, attention: str,
             precision: str, special_tokens: Path | None, compile: bool = False, block_swap: int = 0) -> DiTHandle:
    """A DiT handle from the checkpoint's headers: size and variant detected (variant 'auto') or checked.

    `device` is where the weights will load ('cuda:0', 'cpu'); the multi-GPU path may pick another.
    `compile` is a run-time setting (not in the weights key); `block_swap` is part of the key."""
    from magi_core.checkpoint import detect, open_checkpoint

    want = None if variant == "auto" else variant
    ckpt = open_checkpoint(path, want)
    det = detect(ckpt, want)
    if ckpt.problems:
        raise ValueError(f"{name}: " + "; ".join(ckpt.problems))
    if weight_dtype == "bf16" and det.fp8:
        raise ValueError(f"{name} is an fp8 checkpoint: weight_dtype 'bf16' would not apply to its fp8 layers; "
                         "use 'auto'")
    block_swap = int(block_swap)
    err = block_swap_error(block_swap, det.cfg.num_layers, device)
    if err:
        raise ValueError(f"{name}: {err}")
    key = ("dit", identity(path), det.variant, weight_dtype, block_swap)
    nbytes, per_layer = 0, {}
    for tensor, (shape, dtype) in ckpt.table().items():
        size = math.prod(shape) * dtype.itemsize
        nbytes += size
        m = _LAYER.match(tensor)
        if m:
            per_layer[m.group(1)] = per_layer.get(m.group(1), 0) + size
    return DiTHandle(name=name, path=Path(path), key=key, detection=det, variant=want, weight_dtype=weight_dtype,
                     device=device, attention=None if attention == "auto" else attention, precision=precision,
                     special_tokens=special_tokens, nbytes=nbytes, layer_nbytes=max(per_layer.values(), default=0),
                     compile=bool(compile), block_swap=block_swap, loaded=SHARED.peek(key + (device,)))


def load_dit_weights(handle: DiTHandle, device: torch.device, before_load=None) -> Loaded:
    """Read the DiT weights onto `device` (shared while loaded; never twice for the same key). With block swap:
    into host memory, then the resident part moves to `device` and the swapped layers stream in at run time."""
    from magi_core.checkpoint import load_dit

    err = block_swap_error(handle.block_swap, handle.cfg.num_layers, device)
    if err:
        raise ValueError(f"{handle.name}: {err}")

    def load():
        if before_load is not None:
            before_load()
        swap = handle.block_swap
        model, info = load_dit(handle.path, device="cpu" if swap else device, variant=handle.variant,
                               weight_dtype=handle.weight_dtype)
        if swap:
            from magi_core.dit.offload import enable_block_swap

            enable_block_swap(model, device, resident=model.cfg.num_layers - swap)
        return Loaded(model, info)

    handle.loaded = SHARED.get(handle.key + (str(device),), load)
    return handle.loaded


def resident_modules(model) -> torch.nn.ModuleList:
    """The parts of a loaded DiT that live on its device: all of it, or with block swap everything but the
    swapped layers (those stay in host memory between forwards). What ComfyUI's ModelPatcher manages."""
    swap = getattr(model, "block_swap", None)
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
