"""Sampling planner: t grid, staircase, kv ranges, extra clean chunk, prefix handling, CFG bins, distill.

Expected values come from the reference (`inference/pipeline/video_generate.py`; docs/sampling.md) and from independent
recomputations (float64 formulas, a torch re-derivation of the reference's float32 grid, simulations)."""
import math

import numpy as np
import pytest
import torch

from magi_core.sampling import (
    cfg_scales, distill_dt_factor, latent_frames, make_plan, max_cached_chunks, num_chunks, step_intervals, t_grid,
)
from magi_core.settings import SamplingSettings
from plans import plan_for


def torch_init_t(n, device="cpu"):
    """The reference's grid, op by op in torch float32 (linspace, square, sd3 shift 3)."""
    u = torch.linspace(0, 1, n + 1, device=device)
    x = u**2
    s_inv = 1.0 / 3.0
    return (s_inv * x / (1 + (s_inv - 1) * x)).cpu().tolist()


# ---------------------------------------------------------------- t grid


def test_t_grid_n64_quoted_values():
    t = t_grid(64)
    assert len(t) == 65 and t[0] == 0.0
    assert t[64] == float(np.float32(1.0000001))  # the reference's float32 shift gives 1 + 1 ulp, not 1.0
    quoted = {1: 8.1e-5, 8: 0.00526, 16: 0.02174, 24: 0.05172, 32: 0.1000, 40: 0.17606, 48: 0.3000,
              56: 0.52128, 60: 0.70755, 63: 0.91241}
    for i, v in quoted.items():
        assert abs(t[i] - v) < 6e-6, (i, t[i], v)
    assert t[48] == float(np.float32(0.30000001))  # the float32 value just above 0.3
    assert t[48] > 0.3


def test_t_grid_n16_quoted_values():
    quoted = [0, .0013, .0053, .0120, .0217, .0348, .0517, .0731, .1, .1337, .1761, .2300, .3, .3930, .5213, .7075, 1]
    assert np.allclose(t_grid(16), quoted, atol=6e-5, rtol=0)


@pytest.mark.parametrize("n", [4, 8, 16, 24, 32, 48, 64, 96, 100])
def test_t_grid_matches_float64_formula(n):
    u = np.arange(n + 1, dtype=np.float64) / n
    exact = u**2 / (3 - 2 * u**2)
    assert np.abs(np.array(t_grid(n)) - exact).max() < 3e-7  # a few float32 ulps
    assert all(a < b for a, b in zip(t_grid(n), t_grid(n)[1:]))


def test_t_grid_is_float32_like_torch():
    for n in list(range(1, 80)) + [96, 128, 200]:
        if n == 12:
            continue
        assert t_grid(n) == torch_init_t(n), n


def test_shortcut_grid_12_steps():
    u = [0, .125, .1875, .25, .375, .4375, .5, .625, .6875, .75, .875, .9375, 1]
    exact = [x * x / (3 - 2 * x * x) for x in u]
    t = t_grid(12)
    assert np.allclose(t, exact, atol=3e-7, rtol=0)
    quoted = [0, .00526, .0120, .0217, .0517, .0731, .1, .1761, .2300, .3, .5213, .7075, 1]
    assert np.allclose(t, quoted, atol=6e-5, rtol=0)
    assert step_intervals(12) == [2, 1, 1] * 4
    assert step_intervals(12, "16,16,8") == [1, 1, 2] * 4
    u2 = [0, .0625, .125, .25, .3125, .375, .5, .5625, .625, .75, .8125, .875, 1]
    assert np.allclose(t_grid(12, "16,16,8"), [x * x / (3 - 2 * x * x) for x in u2], atol=3e-7, rtol=0)
    # Δu = interval/16 and dt_factor = 1 / (2·Δu)
    assert [distill_dt_factor(12, i) for i in (2, 1)] == [4.0, 8.0]
    assert [distill_dt_factor(n) for n in (64, 16, 8)] == [32.0, 8.0, 4.0]
    assert step_intervals(64) == [1] * 64 and step_intervals(24) == [2, 1, 1] * 8


@pytest.mark.gpu
def test_t_grid_matches_cuda():
    for n in range(1, 257):
        if n != 12:
            assert t_grid(n) == torch_init_t(n, "cuda"), n


# ---------------------------------------------------------------- chunk counts, cfg bins


def test_counts():
    assert latent_frames(96) == 24 and latent_frames(97) == 24 and latent_frames(3) == 0
    assert num_chunks(96) == 4 and num_chunks(97) == 4 and num_chunks(100) == 5
    assert num_chunks(96, 1) == 5  # i2v: the image latent counts
    assert num_chunks(96, 8) == 6  # v2v: 32 prefix frames -> 8 latents
    with pytest.raises(ValueError, match="at least 4"):
        num_chunks(3)


def test_cfg_bins():
    r, p, s = SamplingSettings().cfg_t_range, [1.5, 1.5, 1.5, 1.0, 1.0], [7.5, 7.5, 7.5, 0.0, 0.0]
    assert cfg_scales(0.0, r, p, s) == (1.5, 7.5)
    assert cfg_scales(float(np.float32(0.3)), r, p, s) == (1.0, 0.0)
    assert cfg_scales(0.2999, r, p, s) == (1.5, 7.5)
    assert cfg_scales(0.9999, r, p, s) == (1.0, 0.0)
    r2, ps = [0.0, 0.25, 0.5], [1.0, 2.0, 3.0]
    assert [cfg_scales(t, r2, ps, ps)[0] for t in (0.0, 0.2, 0.2499998, 0.24999995, 0.6)] == [1.0, 1.0, 1.0, 2.0, 3.0]
    # the reference's rule, run in torch float32
    edges = torch.tensor(r) - 1e-7
    for t in t_grid(64) + t_grid(16) + [0.0217, 0.02169999, 0.09999999, 0.1, 0.3, 0.2999999, 0.9989999, 0.999]:
        b = int(torch.searchsorted(edges, torch.tensor([t], dtype=torch.float32))[0]) - 1
        assert cfg_scales(t, r, p, s) == (p[b], s[b]), t
    with pytest.raises(ValueError, match="below cfg_t_range"):
        cfg_scales(0.05, [0.1, 0.5], [1, 1], [1, 1])


# ---------------------------------------------------------------- worked example (docs/sampling.md)

# (g range, chunks in the forward (c = extra clean), slice_point, step indices as f(d), key ranges)
TABLE = [
    (range(0, 16), "0", 0, lambda d: [d], [(0, 1)]),
    (range(16, 32), "0 1", 0, lambda d: [16 + d, d], [(0, 1), (0, 2)]),
    (range(32, 48), "0 1 2", 0, lambda d: [32 + d, 16 + d, d], [(0, 1), (0, 2), (0, 3)]),
    (range(48, 64), "0 1 2 3", 0, lambda d: [48 + d, 32 + d, 16 + d, d], [(0, 1), (0, 2), (0, 3), (0, 4)]),
    (range(64, 65), "0c 1 2 3", 0, lambda d: [64, 48, 32, 16], [(0, 1), (0, 2), (0, 3), (0, 4)]),
    (range(65, 80), "1 2 3", 1, lambda d: [48 + d, 32 + d, 16 + d], [(0, 2), (0, 3), (0, 4)]),
    (range(80, 81), "1c 2 3", 1, lambda d: [64, 48, 32], [(1, 2), (1, 3), (1, 4)]),
    (range(81, 96), "2 3", 2, lambda d: [48 + d, 32 + d], [(1, 3), (1, 4)]),
    (range(96, 97), "2c 3", 2, lambda d: [64, 48], [(2, 3), (2, 4)]),
    (range(97, 112), "3", 3, lambda d: [48 + d], [(2, 4)]),
]


@pytest.fixture(scope="module")
def t2v():
    return plan_for(4, 64)


def test_worked_example_table(t2v):
    assert len(t2v.calls) == len(t2v.sampler_calls) == 112 and t2v.n_passes == 336
    ts = t_grid(64)
    for g_range, chunks, sp, steps, kv in TABLE:
        for g in g_range:
            c = t2v.calls[g]
            d = g % 16
            assert (c.g, c.stage, c.d) == (g, g // 16, d)
            assert [f"{x.index}c" if x.is_extra_clean else str(x.index) for x in c.chunks] == chunks.split()
            assert c.slice_point == sp and c.fwd_extra_1st_chunk == ("c" in chunks)
            assert [x.step for x in c.chunks] == steps(d)
            assert [x.t for x in c.chunks] == [float(np.float32(0.9999)) if k == 64 else ts[k] for k in steps(d)]
            assert [x.kv_range for x in c.chunks] == kv
            assert c.passes == 3
            lo = min(a for a, _ in kv)
            assert c.cache_reads == ((lo, sp) if lo < sp else None)  # g = 80, 96 read no cached chunk
    # chunk-forwards over the 3 passes: two with every chunk, the uncond pass with the noisy ones only
    assert sum(2 * len(c.chunks) + len(c.noisy) for c in t2v.calls) == 774
    # g = 64: t = [0.9999, 0.3, 0.1, 0.0217]
    assert np.allclose([x.t for x in t2v.calls[64].chunks], [0.9999, 0.3, 0.1, 0.0217], atol=1e-4)


def test_worked_example_emission_and_cache(t2v):
    emits = [(c.g, c.emit.chunk, c.emit.index, c.emit.frames) for c in t2v.calls if c.emit]
    assert emits == [(63, 0, 0, (0, 6)), (79, 1, 1, (6, 12)), (95, 2, 2, (12, 18)), (111, 3, 3, (18, 24))]
    writes = [(c.g, c.cache_writes) for c in t2v.calls if c.cache_writes]
    assert writes == [(64, (0,)), (80, (1,)), (96, (2,))]
    assert max_cached_chunks(t2v) == 1
    assert all(c.prefix_frames is None for c in t2v.calls)


def test_worked_example_cfg_bins(t2v):
    c = t2v.calls[48]
    assert [x.cfg for x in c.chunks] == [(1.0, 0.0), (1.5, 7.5), (1.5, 7.5), (1.5, 7.5)]
    # text switches off exactly in each chunk's last quarter (steps 48-63), clean chunks get no scales
    for call in t2v.calls:
        for x in call.chunks:
            assert x.cfg == (None if x.clean else ((1.0, 0.0) if x.step >= 48 else (1.5, 7.5)))


def test_distill_same_schedule():
    p = plan_for(4, 64, cfg_number=1)
    assert len(p.calls) == 112 and p.n_passes == 112 and p.passes == ("cond_pre_and_text",)
    assert p.cache_pass == "cond_pre_and_text" and plan_for(1, 4).cache_pass == "cond_pre"
    assert all(c.dt_factor == 32.0 and c.distill_interval == 1 for c in p.calls)
    assert all(x.cfg is None for c in p.calls for x in c.chunks)
    for c in p.calls:
        first = c.chunks[1] if c.fwd_extra_1st_chunk else c.chunks[0]
        assert c.nearly_clean == (first.step >= 48)  # t[48] = 0.30000001 > 0.3
        if c.nearly_clean:
            cp = c.distill_copy
            end = c.slice_point + len(c.chunks)
            assert (cp.index, cp.step, cp.t, cp.kv_range) == (first.index, first.step, first.t, (end, end + 1))
        else:
            assert c.distill_copy is None
    assert sum(c.nearly_clean for c in p.calls) == 64  # 16 steps of chunk 0 ... chunk 3 as the first noisy chunk
    assert all(c.distill_copy is None for c in plan_for(4, 64).calls)  # cfg 3 has no copy


def test_distill_12_step_intervals():
    p = plan_for(3, 12, cfg_number=1)
    assert [c.distill_interval for c in p.calls[:3]] == [2, 1, 1]
    assert [c.dt_factor for c in p.calls[:3]] == [4.0, 8.0, 8.0]
    for c in p.calls:  # Euler steps follow the shortcut grid
        for x in c.noisy:
            assert x.euler == (p.t[x.step], p.t[x.step + 1])


# ---------------------------------------------------------------- i2v / v2v


def test_i2v():
    p = plan_for(5, 64, prefix_latents=1)  # 96 frames: 24 latents + the image latent
    assert p.n_chunks == 5 and p.chunk_offset == 0
    assert len(p.calls) == 128 and p.n_passes == 384 and not any(c.extract_prefix for c in p.calls)
    for c in p.calls:  # frame 0 is forced to the image latent whenever chunk 0 is in the forward
        assert c.prefix_frames == ((0, 1) if c.slice_point == 0 else None)
    assert p.calls[64].fwd_extra_1st_chunk and p.calls[64].prefix_frames == (0, 1)
    assert [e.frames for e in p.emissions] == [(0, 6), (6, 12), (12, 18), (18, 24), (24, 30)]


def test_v2v():
    p = plan_for(6, 64, prefix_latents=8)  # 96 frames: 24 latents + 8 prefix latents
    assert p.n_chunks == 6 and p.chunk_offset == 1
    ex, steps = p.calls[0], p.sampler_calls
    assert ex.extract_prefix and ex.g is None and ex.passes == 3
    assert [(x.index, x.t, x.kv_range, x.clean) for x in ex.chunks] == [(0, float(np.float32(0.9999)), (0, 1), True)]
    assert ex.cache_writes == (0,) and ex.slice_point == 0 and ex.emit is None
    assert len(steps) == 128 and p.n_passes == 384 + 3
    assert steps[0].chunk_start == 1 and steps[0].slice_point == 1 and not steps[0].fwd_extra_1st_chunk
    assert steps[0].chunks[0].kv_range == (0, 2) and steps[0].cache_reads == (0, 1)
    for c in steps:  # chunk 1's first 2 frames are forced to prefix frames 6, 7
        assert c.prefix_frames == ((6, 8) if c.slice_point == 1 else None)
    assert [e.frames for e in p.emissions] == [(8, 12), (12, 18), (18, 24), (24, 30), (30, 36)]
    assert [e.index for e in p.emissions] == [0, 1, 2, 3, 4]
    assert steps[64].cache_writes == (1,)


def test_long_prefix_needs_more_cache():
    p = plan_for(7, 16, prefix_latents=24)  # 4 whole prefix chunks, each attending only to itself
    assert [x.kv_range for x in p.calls[0].chunks] == [(0, 1), (1, 2), (2, 3), (3, 4)]
    assert p.sampler_calls[0].chunks[0].kv_range == (0, 5) and max_cached_chunks(p) == 4


# ---------------------------------------------------------------- properties over many settings

COMBOS = [
    (n, N, w, P, cfg)
    for n, N, w, P, cfg in [
        (1, 64, 4, 0, 3), (2, 64, 4, 0, 3), (4, 64, 4, 0, 1), (9, 16, 4, 0, 3), (5, 32, 4, 1, 3), (6, 64, 4, 8, 3),
        (8, 16, 2, 0, 1), (8, 16, 1, 0, 3), (7, 8, 8, 0, 3), (10, 16, 4, 13, 1), (6, 12, 4, 0, 1), (3, 4, 4, 6, 3),
        (12, 32, 4, 20, 3), (5, 24, 3, 5, 3),
    ]
]


@pytest.mark.parametrize("n,N,w,P,cfg", COMBOS)
def test_plan_properties(n, N, w, P, cfg):
    p = plan_for(n, N, window_size=w, prefix_latents=P, cfg_number=cfg,
                  noise2clean_kvrange=[5, 4, 3, 2] if N % 4 == 0 else [3, 2, 2])
    S, off = N // w, P // 6
    assert p.chunk_offset == off and len(p.sampler_calls) == S * (n + w - 1 - off)
    assert [c.g for c in p.sampler_calls] == list(range(len(p.sampler_calls)))
    assert p.n_passes == (3 if cfg == 3 else 1) * (len(p.sampler_calls) + (1 if off else 0))
    history = {c: [] for c in range(n)}
    written, ref_cache = set(), {}  # our cache writes; the reference's (all chunks of the forward)
    updated = {c: 0 for c in range(n)}
    for call in p.calls:
        # block causality and key ranges inside [0, own end)
        for pos, x in enumerate(call.chunks):
            assert x.index == call.slice_point + pos
            a, b = x.kv_range
            assert b == x.index + 1 and 0 <= a <= x.index
        # cached K/V read: must have been written by a clean forward, in both our scheme and the reference's
        if call.cache_reads:
            lo, hi = call.cache_reads
            assert hi == call.slice_point and set(range(lo, hi)) <= written
            assert all(ref_cache[c] == "clean" for c in range(lo, hi))
            assert lo == min(x.kv_range[0] for x in call.chunks)
        else:
            assert min(x.kv_range[0] for x in call.chunks) >= call.slice_point
        for x in call.chunks:
            ref_cache[x.index] = "clean" if x.clean else "noisy"
        assert call.cache_writes == tuple(x.index for x in call.chunks if x.clean)
        for c in call.cache_writes:
            assert c < off or updated[c] == N  # only finished chunks (or prefix chunks) are cached
        written.update(call.cache_writes)
        if call.extract_prefix:
            assert all(x.clean and x.t == p.calls[0].chunks[0].t for x in call.chunks) and call.emit is None
            continue
        noisy = call.noisy
        assert 1 <= len(noisy) <= w and call.fwd_extra_1st_chunk == (len(noisy) < len(call.chunks))
        assert [x.index for x in noisy] == list(range(call.chunk_start, call.chunk_end))
        assert call.fwd_extra_1st_chunk == (call.d == 0 and call.chunk_start > off)
        for older, newer in zip(noisy, noisy[1:]):  # neighbours are one stage apart
            assert older.step == newer.step + S
        for x in noisy:
            assert x.step == (call.stage - (x.index - off)) * S + call.d
            assert x.euler == (p.t[x.step], p.t[x.step + 1]) and x.t == p.t[x.step]
            assert x.dt == float(np.float32(p.t[x.step + 1]) - np.float32(p.t[x.step])) and x.dt > 0
            history[x.index].append(x.step)
            updated[x.index] += 1
        if call.emit:
            e = call.emit
            assert e.chunk == call.chunk_start and updated[e.chunk] == N and e.index == e.chunk - off
        if call.prefix_frames:
            a, b = call.prefix_frames
            assert a == call.slice_point * 6 and b == min(P, 6 * (call.slice_point + len(call.chunks))) and a < b
        else:
            assert P <= call.slice_point * 6
        assert call.passes == (3 if cfg == 3 else 1)
    for c in range(n):  # every generated chunk gets N Euler updates with consecutive steps 0..N-1
        assert history[c] == ([] if c < off else list(range(N)))
    emits = p.emissions
    assert [e.chunk for e in emits] == list(range(off, n))
    frames = [f for e in emits for f in range(*e.frames)]
    assert frames == list(range(0 if P == 1 else P, 6 * n))
    # a cache of max_cached_chunks clean chunks (oldest evicted) always holds what is read
    m, kept = max_cached_chunks(p), []
    for call in p.calls:
        if call.cache_reads:
            assert set(range(*call.cache_reads)) <= set(kept)
        kept = (kept + list(call.cache_writes))[-m:] if m else []


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize("kw,msg", [
    (dict(steps=30), "multiple of window_size"),
    (dict(steps=6, window_size=2), r"noise2clean_kvrange stages"),
    (dict(steps=0), "steps must be a positive"),
    (dict(steps=64, cfg_number=2), "cfg_number must be 1"),
    (dict(steps=64, clean_chunk_kvrange=0), "clean_chunk_kvrange"),
    (dict(steps=12, shortcut_mode="8,8,8"), "shortcut_mode"),
    (dict(steps=64, cfg_t_range=[0, 0.3, 0.1, 0.5, 1]), "ascending"),
    (dict(steps=64, cfg_t_range=[0.1, 0.5], prev_chunk_scales=[1, 1], text_scales=[1, 1]), "start at 0"),
    (dict(steps=64, cfg_t_range=[0, 0.5], prev_chunk_scales=[1, 1, 1], text_scales=[1, 1]), "needs 2 values"),
])
def test_bad_settings(kw, msg):
    with pytest.raises(ValueError, match=msg):
        SamplingSettings(**kw)


@pytest.mark.parametrize("n,P,msg", [
    (0, 0, "n_chunks must be a positive"), (2, 12, "nothing is left to generate"), (2, -1, "prefix_latents"),
])
def test_bad_plan_input(n, P, msg):
    with pytest.raises(ValueError, match=msg):
        plan_for(n, 64, prefix_latents=P)
    with pytest.raises(ValueError, match="resolved for the model"):
        make_plan(SamplingSettings(), 2)


def test_official_configs(shared_file):
    from magi_core.config import load_official_config

    for name in ["4.5B_base_config.json", "4.5B_distill_config.json", "24B_base_config.json",
                 "24B_distill_quant_config.json"]:
        sc = load_official_config(shared_file(name)).sampler
        n = math.ceil(sc.num_frames // 4 / 6)
        p = make_plan(sc, n)
        assert p.n_chunks == n and len(p.calls) == sc.steps // 4 * (n + 3)
        assert p.n_passes == len(p.calls) * sc.cfg_number and max_cached_chunks(p) <= 1
