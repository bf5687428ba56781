"""Sampling plan: the exact sequence of DiT calls made by MAGI-1's chunk-wise sampler
(official `inference/pipeline/video_generate.py`; docs/sampling.md).

Pure Python, no tensors. `make_plan` lists every `forward_dispatcher` call of the reference (`video_generate.py`)
with everything an executor needs: the chunks in the forward with their step index, t and key ranges, the Euler
updates, CFG scales, KV-cache reads and writes, prefix overwrites and the finished chunk to emit.

Conventions: chunk indices are absolute (0 = first latent chunk of the video, prefix chunks included); key ranges
are `(start, end)` in chunk units on the absolute key axis (the executor multiplies by tokens per chunk); latent
frame ranges are `[start, end)` on the full latent video.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from ..video import CHUNK_WIDTH
from .schedule import cfg_scales, distill_dt_factor, step_intervals, t_grid

CFG_PASSES = {3: ("cond_pre_and_text", "cond_pre", "uncond"), 1: ("cond_pre_and_text",)}
CACHE_PASS = {3: "cond_pre", 1: "cond_pre_and_text"}  # the pass whose K/V the reference writes to the cache


@dataclass(frozen=True)
class ChunkInCall:
    """One chunk of a DiT forward."""

    index: int  # absolute chunk index
    step: int  # k in 0..N-1 for a noisy chunk; N for a clean one (extra clean chunk, prefix chunk)
    t: float  # DiT timestep (float32 value): t_grid[k], or clean_t
    kv_range: tuple[int, int]  # visible key chunks [start, end), absolute; end = index + 1 (block causal)
    clean: bool  # t = clean_t, null caption, K/V go to the cache, output discarded
    is_extra_clean: bool = False  # the just-finished chunk prepended at d == 0
    euler: tuple[float, float] | None = None  # (t_cur, t_next) of this chunk's Euler update; None if clean
    dt: float | None = None  # float32(t_next - t_cur), the reference's Δt
    cfg: tuple[float, float] | None = None  # (p, s) = (prev_chunk_scale, text_scale), cfg_number 3 only


@dataclass(frozen=True)
class Emission:
    """A chunk that is finished after this call."""

    chunk: int  # absolute chunk index
    index: int  # output chunk number (chunk - chunk_offset), as the reference yields it
    frames: tuple[int, int]  # latent frames [start, end) to emit (prefix frames excluded, i2v keeps frame 0)


@dataclass(frozen=True)
class DiTCall:
    """One `forward_dispatcher` call. The sampler call of step g is followed by the Euler updates of its
    noisy chunks and then by `emit`; the prefix-extraction call (g is None) only fills the KV cache."""

    g: int | None  # sampler step; None for the prefix-extraction call
    stage: int | None  # g // S
    d: int  # g % S (0 for the extraction call)
    chunk_start: int  # noisy chunks are [chunk_start, chunk_end); the extraction call: the prefix chunks
    chunk_end: int
    slice_point: int  # absolute index of the first chunk in the forward; chunks before it come from the cache
    chunks: tuple[ChunkInCall, ...]  # in forward order: optional extra clean chunk, then oldest to newest
    fwd_extra_1st_chunk: bool
    extract_prefix: bool
    passes: int  # DiT passes of this call (3 for cfg_number 3, 1 for cfg_number 1)
    cache_writes: tuple[int, ...]  # chunks whose K/V must be stored (the leading clean chunks of the forward)
    cache_reads: tuple[int, int] | None  # cached chunks [start, slice_point) that some key range reaches
    prefix_frames: tuple[int, int] | None  # latent frames replaced by the prefix latents of the same index
    nearly_clean: bool  # t of the first noisy chunk > distill_nearly_clean_chunk_threshold
    distill_interval: int
    dt_factor: float  # distill step-size embedding value
    distill_copy: ChunkInCall | None = None  # cfg_number 1 and nearly_clean: see `make_plan`
    emit: Emission | None = None
    kv_keep: bool = False  # early first chunk: keep this forward's K/V of its one chunk, per pass, under g
    kv_from: int | None = None  # early first chunk: this chunk's K/V kept under g come from the cache

    @property
    def noisy(self) -> tuple[ChunkInCall, ...]:
        return tuple(c for c in self.chunks if not c.clean)

    @property
    def span(self) -> tuple[int, int]:
        """Chunks [start, end) in the forward (extra clean chunk included); times chunk_width = its latent frames."""
        return self.slice_point, self.slice_point + len(self.chunks)


@dataclass(frozen=True)
class Plan:
    n_chunks: int
    steps: int  # Euler steps per chunk (N)
    window_size: int
    chunk_width: int
    prefix_latents: int
    chunk_offset: int  # whole prefix chunks (only in the KV cache, never denoised)
    cfg_number: int
    t: tuple[float, ...]  # the t grid, N + 1 float32 values
    calls: tuple[DiTCall, ...]  # every DiT call in order (the extraction call first when there is one)

    @property
    def steps_per_stage(self) -> int:
        return self.steps // self.window_size

    @property
    def sampler_calls(self) -> tuple[DiTCall, ...]:
        """The sampler calls, sampler_calls[g].g == g (for a plan in the reference's order)."""
        return tuple(c for c in self.calls if c.g is not None)

    @property
    def n_passes(self) -> int:
        return sum(c.passes for c in self.calls)

    @property
    def emissions(self) -> list[Emission]:
        return [c.emit for c in self.calls if c.emit is not None]

    @property
    def passes(self) -> tuple[str, ...]:
        return CFG_PASSES[self.cfg_number]

    @property
    def cache_pass(self) -> str:
        return CACHE_PASS[self.cfg_number]


def _reads(chunks, slice_point) -> tuple[int, int] | None:
    """Cached chunks [first, slice_point) that some key range of the forward reaches."""
    first = min(c.kv_range[0] for c in chunks)
    return (first, slice_point) if first < slice_point else None


def max_cached_chunks(plan: Plan) -> int:
    """Most chunks behind slice_point that any call attends to: a KV cache of that many clean chunks suffices."""
    return max((c.slice_point - c.cache_reads[0] for c in plan.calls if c.cache_reads), default=0)


def _validate(n_chunks, prefix_latents, chunk_width):
    if not isinstance(n_chunks, (int, np.integer)) or n_chunks < 1:
        raise ValueError(f"n_chunks must be a positive integer, got {n_chunks!r}")
    if prefix_latents < 0:
        raise ValueError(f"prefix_latents must be >= 0, got {prefix_latents}")
    if prefix_latents >= n_chunks * chunk_width:
        raise ValueError(
            f"the prefix ({prefix_latents} latent frames) fills all {n_chunks} chunks "
            f"({n_chunks * chunk_width} latent frames): nothing is left to generate; ask for more frames"
        )


def make_plan(s, n_chunks: int, prefix_latents: int = 0) -> Plan:
    """Every DiT call of the reference sampler for a latent video of `n_chunks` chunks, with the sampling settings
    `s` (a `magi_core.settings.SamplingSettings` resolved for the model: `s.for_model(dit_cfg)`).

    Staircase: S = N / window_size steps per stage, total = S·(n_chunks + window_size − 1 − chunk_offset)
    sampler calls; at stage s chunk c is at step k = (s − (c − chunk_offset))·S + d.
    Extra clean chunk: at d == 0 once a chunk has finished, that chunk is prepended at t = clean_t; it is
    the source of its cached K/V. Prefix: chunk_offset = prefix_latents // chunk_width whole prefix chunks
    are run once at t = clean_t (extraction call, output discarded) to fill the cache; leftover prefix frames
    overwrite the forward input before every call that covers them.
    Distill copy (cfg_number 1): when `nearly_clean`, the first noisy chunk is appended once more after the
    last chunk (key position slice_point + R, attending only to itself, own text caption, not cached); its output
    o_iso is mixed into that chunk's output as prev_chunks_scale·o + (1 − prev_chunks_scale)·o_iso.
    """
    if not s.resolved:
        raise ValueError("make_plan needs settings resolved for the model (SamplingSettings.for_model): "
                         f"steps={s.steps}, cfg_number={s.cfg_number}")
    chunk_width = CHUNK_WIDTH
    _validate(n_chunks, prefix_latents, chunk_width)
    cfg_number = s.cfg_number
    noise2clean_kvrange, clean_chunk_kvrange = list(s.noise2clean_kvrange), s.clean_chunk_kvrange
    nearly_clean_threshold = s.distill_nearly_clean_threshold
    cfg_t_range, prev_chunk_scales, text_scales = s.cfg_t_range, s.prev_chunk_scales, s.text_scales
    N, w, P = s.steps, s.window_size, prefix_latents
    S = N // w
    offset = P // chunk_width
    ts = t_grid(N, s.shortcut_mode)
    intervals = step_intervals(N, s.shortcut_mode)
    t_clean = float(np.float32(s.clean_t))
    n_passes = len(CFG_PASSES[cfg_number])
    if clean_chunk_kvrange == -1:
        clean_chunk_kvrange = noise2clean_kvrange[-1] if noise2clean_kvrange else 8

    def visible(a: int, k: int) -> tuple[int, int]:
        """Key chunks seen by the chunk at absolute position a and step k."""
        if not noise2clean_kvrange:
            return 0, a + 1
        r = clean_chunk_kvrange if k == N else noise2clean_kvrange[k // (N // len(noise2clean_kvrange))]
        return max(0, a + 1 - r), a + 1

    def clean_chunk(a: int, extra: bool) -> ChunkInCall:
        return ChunkInCall(index=a, step=N, t=t_clean, kv_range=visible(a, N), clean=True, is_extra_clean=extra)

    def noisy_chunk(a: int, k: int) -> ChunkInCall:
        t_cur, t_next = ts[k], ts[k + 1]
        return ChunkInCall(
            index=a, step=k, t=t_cur, kv_range=visible(a, k), clean=False, euler=(t_cur, t_next),
            dt=float(np.float32(t_next) - np.float32(t_cur)),
            cfg=cfg_scales(t_cur, cfg_t_range, prev_chunk_scales, text_scales) if cfg_number == 3 else None,
        )

    calls = []
    if offset:
        # prefix extraction (reference: at g == 0, before the first sampler call)
        chunks = tuple(
            ChunkInCall(index=j, step=N, t=t_clean, kv_range=(max(0, j + 1 - clean_chunk_kvrange), j + 1), clean=True)
            for j in range(offset)
        )
        calls.append(DiTCall(
            g=None, stage=None, d=0, chunk_start=0, chunk_end=offset, slice_point=0, chunks=chunks,
            fwd_extra_1st_chunk=False, extract_prefix=True, passes=n_passes, cache_writes=tuple(range(offset)),
            cache_reads=None, prefix_frames=None, nearly_clean=False, distill_interval=intervals[0],
            dt_factor=distill_dt_factor(N, intervals[0]),
        ))

    done = [0] * n_chunks  # Euler updates received per chunk
    total = S * (n_chunks + w - 1 - offset)
    for g in range(total):
        stage, d = divmod(g, S)
        i = offset + stage
        chunk_start, chunk_end = max(offset, i - w + 1), min(n_chunks, i + 1)
        extra = chunk_start > offset and d == 0
        slice_point = chunk_start - 1 if extra else chunk_start
        # oldest chunk first: chunk c is (stage - (c - offset)) stages into its life
        noisy = [noisy_chunk(c, (stage - (c - offset)) * S + d) for c in range(chunk_start, chunk_end)]
        chunks = tuple(([clean_chunk(chunk_start - 1, True)] if extra else []) + noisy)

        prefix_frames = None
        first_frame = slice_point * chunk_width
        if P > first_frame:
            prefix_frames = (first_frame, min(P, first_frame + len(chunks) * chunk_width))
            assert P - first_frame < chunk_width  # whole prefix chunks are never in a forward

        distill_copy = None
        nearly_clean = noisy[0].t > nearly_clean_threshold
        if cfg_number == 1 and nearly_clean:
            end = slice_point + len(chunks)
            distill_copy = ChunkInCall(
                index=noisy[0].index, step=noisy[0].step, t=noisy[0].t, kv_range=(end, end + 1), clean=False
            )

        for c in range(chunk_start, chunk_end):
            done[c] += 1
        emit = None
        if done[chunk_start] == N:
            start = max(chunk_start * chunk_width, P)
            if chunk_start == 0 and P == 1:  # i2v keeps the image frame
                start = 0
            emit = Emission(chunk=chunk_start, index=chunk_start - offset,
                            frames=(start, (chunk_start + 1) * chunk_width))

        calls.append(DiTCall(
            g=g, stage=stage, d=d, chunk_start=chunk_start, chunk_end=chunk_end, slice_point=slice_point,
            chunks=chunks, fwd_extra_1st_chunk=extra, extract_prefix=False, passes=n_passes,
            cache_writes=(chunk_start - 1,) if extra else (), cache_reads=_reads(chunks, slice_point),
            prefix_frames=prefix_frames, nearly_clean=nearly_clean, distill_interval=intervals[d],
            dt_factor=distill_dt_factor(N, intervals[d]), distill_copy=distill_copy, emit=emit,
        ))
    return Plan(
        n_chunks=n_chunks, steps=N, window_size=w, chunk_width=chunk_width, prefix_latents=P,
        chunk_offset=offset, cfg_number=cfg_number, t=tuple(ts), calls=tuple(calls),
    )


def early_first_chunk(plan: Plan) -> Plan:
    """The same DiT work reordered so that the first generated chunk finishes first.

    In the reference order the first noisy chunk c0 shares its forwards of stages 1 .. window-1 with the younger
    chunks, so it is emitted only after window x S calls of growing size. Block-causal attention means c0's output
    in those forwards depends on c0 alone (its key range is c0 itself; its distill copy attends to itself), while
    the younger chunks only read c0's keys/values. So c0 runs those steps first in forwards of its own, keeping
    its K/V of each step (`kv_keep`); then the original forwards run without it, reading the kept K/V of the same
    step from the cache (`kv_from`). The results are the reference's up to float rounding (the distill copy's
    RoPE time position shifts, which cancels in its attention); the cost is memory for c0's K/V at
    (window - 1) x S steps (x 2 passes for cfg 3), released step by step as the replayed forwards use them.
    """
    c0, W = plan.chunk_offset, plan.window_size
    calls = list(plan.calls)
    lead = [c for c in calls if c.g is not None and 1 <= c.stage < W]  # c0 shares these forwards
    if not lead or plan.n_chunks - c0 < 2:
        return plan
    first = calls.index(lead[0])
    alone, rest = [], []
    for call in lead:
        assert call.chunks[0].index == c0 and not call.fwd_extra_1st_chunk
        mine, others = call.chunks[0], call.chunks[1:]
        reads = _reads(others, c0 + 1)
        needed = bool(reads) and reads[0] <= c0 < reads[1]  # does a younger chunk see c0 at this step?
        copy = None
        if call.distill_copy is not None:  # c0's isolated copy, right after it
            copy = replace(call.distill_copy, kv_range=(c0 + 1, c0 + 2))
        cw = plan.chunk_width
        pf = (c0 * cw, min(plan.prefix_latents, (c0 + 1) * cw)) if plan.prefix_latents > c0 * cw else None
        alone.append(replace(
            call, chunk_start=c0, chunk_end=c0 + 1, chunks=(mine,), cache_reads=_reads((mine,), c0),
            prefix_frames=pf, distill_copy=copy, kv_keep=needed,
            emit=call.emit if call.emit and call.emit.chunk == c0 else None,
        ))
        rest.append(replace(
            call, chunk_start=c0 + 1, slice_point=c0 + 1, chunks=others, cache_reads=reads, prefix_frames=None,
            distill_copy=None, emit=call.emit if call.emit and call.emit.chunk != c0 else None,
            kv_from=call.g if needed else None,
        ))
    calls[first:first + len(lead)] = alone + rest
    return replace(plan, calls=tuple(calls))


def without_redundant_copies(plan: Plan) -> Plan:
    """`fast` precision: the same generation without the distill copies that repeat their chunk's own forward.

    A distill copy (`make_plan`) is the first noisy chunk once more, with the chunk's own latents, t and caption,
    attending to itself only; its output o_iso is mixed in as a·o + (1 − a)·o_iso. Where that chunk's own key range
    is the chunk itself (the first chunk of a video without whole prefix chunks: t2v and i2v; any chunk at steps
    whose noise2clean_kvrange entry is 1), o is computed from the same inputs over the same keys, so o_iso = o up
    to rounding: the copy sits at a later RoPE time position, which cancels in its attention. Dropping it makes
    those forwards one chunk smaller (the first chunk of a 16-step distill run: 20 chunk-forwards → 16). `exact` keeps the reference's copies (README, Precision)."""
    calls = []
    for call in plan.calls:
        if call.distill_copy is not None:
            first = call.noisy[0]
            if first.kv_range == (first.index, first.index + 1):
                call = replace(call, distill_copy=None)
        calls.append(call)
    return replace(plan, calls=tuple(calls))
