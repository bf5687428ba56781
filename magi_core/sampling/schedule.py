"""MAGI-1 sampler schedule arithmetic (official `inference/pipeline/video_generate.py`,
`inference/model/dit/dit_model.py` `get_cfg_scale`). Pure Python + numpy.

Time runs from 0 (pure noise) to 1 (clean). Values that the reference keeps in float32 tensors are computed
here in float32 with the same operation order, and returned as Python floats holding those float32 values.
"""
from __future__ import annotations

import numpy as np

f32 = np.float32
SHORTCUT_MODES = ("8,16,16", "16,16,8")


def check_shortcut_mode(shortcut_mode: str):
    if shortcut_mode not in SHORTCUT_MODES:
        raise ValueError(f"shortcut_mode must be one of {SHORTCUT_MODES}, got {shortcut_mode!r}")


def _check_steps(steps: int):
    if not isinstance(steps, (int, np.integer)) or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")


def _linspace01(n: int) -> np.ndarray:
    """float32 `linspace(0, 1, n + 1)` as the CUDA kernel computes it.

    step = f32(1 / n); the first half is step*i, the second half 1 - step*(n - i), each rounded once
    (nvcc fuses the multiply-add).
    """
    step = float(f32(1.0 / n))
    half = (n + 1) // 2
    # step*i and 1 - step*i are exact in float64 here (24-bit step times a small integer), so one rounding
    return np.array([step * i if i < half else 1.0 - step * (n - i) for i in range(n + 1)], dtype=np.float64).astype(f32)


def _u_grid(steps: int, shortcut_mode: str) -> np.ndarray:
    """The grid before the time transform: i/N, or the per-quarter 12-step shortcut grid."""
    if steps != 12:
        return _linspace01(steps)
    # steps of 1/8, 1/16, 1/16 per quarter ("8,16,16") or 1/16, 1/16, 1/8 ("16,16,8"); all dyadic, exact
    offsets = [0.0, 0.0625, 0.125] if shortcut_mode == "16,16,8" else [0.0, 0.125, 0.1875]
    return np.array([q * 0.25 + o for q in range(5) for o in offsets][:13], dtype=f32)


def t_grid(steps: int, shortcut_mode: str = "8,16,16") -> list[float]:
    """The reference's t grid (N + 1 values, t[0] = 0, t[N] = 1): square, then the sd3 shift with s = 3.

    t = (1/s)·x / (1 + (1/s - 1)·x) with x = u², every operation rounded to float32 like the CUDA reference.
    """
    _check_steps(steps)
    check_shortcut_mode(shortcut_mode)
    u = _u_grid(steps, shortcut_mode)
    x = u * u
    shift_inv = 1.0 / 3.0
    t = (f32(shift_inv) * x) / (f32(1.0) + f32(shift_inv - 1.0) * x)
    return [float(v) for v in t.astype(f32)]


def step_intervals(steps: int, shortcut_mode: str = "8,16,16") -> list[int]:
    """Per-denoise-index step interval (`distill_interval`): 1s, or [2,1,1] / [1,1,2] repeated when N % 3 == 0."""
    _check_steps(steps)
    check_shortcut_mode(shortcut_mode)
    if steps % 3:
        return [1] * steps
    pattern = [1, 1, 2] if shortcut_mode == "16,16,8" else [2, 1, 1]
    return pattern * (steps // 3)


def distill_dt_factor(steps: int, interval: int = 1) -> float:
    """Value fed to the distill step-size embedding: N/4·2 (= N/2), or (4/interval)·2 when N == 12."""
    if steps == 12:
        return 4 / interval * 2
    return steps / 4 * 2


def cfg_scales(t: float, cfg_t_range, prev_chunk_scales, text_scales) -> tuple[float, float]:
    """(p, s) = (prev_chunk_scale, text_scale) of the bin holding t: searchsorted(range - 1e-7, t) - 1, float32."""
    n = len(cfg_t_range)  # lengths and order: checked by SamplingSettings
    edges = np.asarray(cfg_t_range, dtype=f32) - f32(1e-7)
    b = int(np.searchsorted(edges, f32(t), side="left")) - 1
    if not 0 <= b < n:
        raise ValueError(f"t = {t} lies below cfg_t_range {list(cfg_t_range)}; its first entry must be <= 0")
    return float(f32(prev_chunk_scales[b])), float(f32(text_scales[b]))


def latent_frames(num_frames: int, temporal_downsample_factor: int = 4) -> int:
    """Latent frames generated for `num_frames` pixel frames (integer division, as the reference)."""
    if num_frames < 0 or temporal_downsample_factor < 1:
        raise ValueError("num_frames must be >= 0 and temporal_downsample_factor >= 1")
    return num_frames // temporal_downsample_factor


def num_chunks(num_frames: int, prefix_latents: int = 0, chunk_width: int = 6, temporal_downsample_factor: int = 4) -> int:
    """Chunks in the latent video: ceil((num_frames // 4 + prefix_latents) / chunk_width) (prefix counts too)."""
    if prefix_latents < 0 or chunk_width < 1:
        raise ValueError("prefix_latents must be >= 0 and chunk_width >= 1")
    total = latent_frames(num_frames, temporal_downsample_factor) + prefix_latents
    if total == 0:
        raise ValueError(
            f"num_frames = {num_frames} gives no latent frame; use at least {temporal_downsample_factor} frames"
        )
    return -(-total // chunk_width)
