"""Multi-GPU settings and the hand-off to magi_core's worker pool (no ComfyUI import).

The pool (magi_core/parallel/pool.py, the multi-GPU issue) is called as

    pool.generate(model=<DiTHandle.spec()>, prompts=PromptEmbeds, settings=SamplingSettings, prefix_latents=...,
                  prefix_frames=int, special_tokens=SpecialTokens | None, devices=[...], cp_size=int,
                  progress=cb(i, total, chunk), cancel=fn() -> bool) -> iterator of FinishedChunk

so the sampler node streams chunks, progress and interrupt the same way for one GPU and for many.
"""
from __future__ import annotations

from .handles import MultiGPUSettings

def parse_devices(text: str, cuda_count: int, leave_gpu0_free: bool = False, cp_size: int = 0) -> list[str]:
    """'all' | '0,1,3' | 'cpu' -> device names. 'cpu' gives cp_size CPU workers (gloo; for tests)."""
    text = (text or "").strip().lower()
    if text == "cpu":
        return ["cpu"] * max(1, cp_size)
    if text in ("", "all"):
        ids = list(range(cuda_count))
        if leave_gpu0_free:
            ids = ids[1:]
        if not ids and cuda_count:  # the one GPU there is, left free
            raise ValueError("devices 'all': no usable CUDA GPU (1 visible, GPU 0 left free): turn leave_gpu0_free "
                             "off, or disconnect MAGI-1 Multi-GPU Settings to run on that GPU alone")
        if not ids:
            raise ValueError("devices 'all': no usable CUDA GPU (0 visible): disconnect MAGI-1 Multi-GPU Settings to "
                             "run on this machine's one device, or pick devices 'cpu' (CPU worker processes, slow)")
        return [f"cuda:{i}" for i in ids]
    try:
        ids = [int(p) for p in text.replace(";", ",").split(",") if p.strip()]
    except ValueError:
        raise ValueError(f"devices: {text!r} is not 'all', 'cpu' or a list of GPU numbers like '0,1,2,3'") from None
    if not ids:
        raise ValueError(f"devices: {text!r} names no GPU; give 'all', 'cpu' or a list like '0,1'")
    if not cuda_count:
        raise ValueError(f"devices: {text!r} names GPUs, but no CUDA GPU is visible here: use 'cpu'")
    bad = [i for i in ids if not 0 <= i < cuda_count]
    if bad:
        raise ValueError(f"devices: {text!r} names GPU(s) {bad}, but the visible GPUs are 0..{cuda_count - 1} "
                         "(numbers follow CUDA_VISIBLE_DEVICES)")
    twice = sorted({i for i in ids if ids.count(i) > 1})
    if twice:
        raise ValueError(f"devices: {text!r} names GPU(s) {twice} more than once; name each GPU once")
    if leave_gpu0_free and 0 in ids:
        raise ValueError("devices lists GPU 0 but leave_gpu0_free is on: remove 0 or turn leave_gpu0_free off")
    return [f"cuda:{i}" for i in ids]


def make_settings(devices: str, cp_size: int, leave_gpu0_free: bool, cuda_count: int) -> MultiGPUSettings:
    if cp_size < 0:
        raise ValueError(f"cp_size must be >= 0 (0 = one rank per device), got {cp_size}")
    devs = parse_devices(devices, cuda_count, leave_gpu0_free, cp_size)
    cp = cp_size or len(devs)
    if cp > len(devs):
        raise ValueError(f"cp_size {cp} needs {cp} devices, only {len(devs)} selected ({', '.join(devs)})")
    return MultiGPUSettings(devices=devs[:cp], cp_size=cp)


def check_heads(settings: MultiGPUSettings, num_heads: int):
    if num_heads % settings.cp_size:
        ok = [c for c in range(1, num_heads + 1) if num_heads % c == 0 and c <= 16]
        raise ValueError(f"cp_size {settings.cp_size} does not divide the model's {num_heads} attention heads; "
                         f"use one of {ok}")


def pool_generate(**kwargs):
    """Run one generation on the worker pool (magi_core.parallel.pool.generate)."""
    from magi_core.parallel.pool import generate

    return generate(**kwargs)


def release_pool() -> None:
    """Stop the worker pool if one runs (its processes and GPU memory); the next multi-GPU run starts a new one."""
    try:
        from magi_core.parallel import pool
    except ImportError:
        return
    pool.shutdown_pool()
