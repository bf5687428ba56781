"""Chunk-wise autoregressive sampling: schedule arithmetic and the DiT-call plan (pure Python)."""
from .plan import (ChunkInCall, DiTCall, Emission, Plan, early_first_chunk, make_plan, max_cached_chunks,
                   without_redundant_copies)
from .schedule import cfg_scales, distill_dt_factor, latent_frames, num_chunks, step_intervals, t_grid

__all__ = [
    "ChunkInCall", "DiTCall", "Emission", "Plan", "early_first_chunk", "make_plan", "max_cached_chunks",
    "without_redundant_copies",
    "cfg_scales", "distill_dt_factor", "latent_frames", "num_chunks", "step_intervals", "t_grid",
]
