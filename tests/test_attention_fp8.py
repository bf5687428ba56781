"""The approximate FP8 attention backend (kernels/attention_fp8.py): scales, smoothing, fallbacks; GPU vs bf16 SDPA.

On the CPU cuDNN's FP8 SDPA is replaced by a fake `cudnn` module that computes the same function from the fp8
tensors and scalars it is given (float64 softmax, e4m3 rounding of P and of the output), so the quantization,
the per-range calls, the views and the dequantization of our code are checked without a GPU.
"""
from __future__ import annotations

import types
import warnings

import pytest
import torch

from magi_core.kernels import attention, attention_fp8, capability
from magi_core.kernels.attention import FP8, range_attention, sdpa_range_attention
from magi_core.dit.rope import LearnableRoPE

E4M3 = torch.float8_e4m3fn


def rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def qkv(sq, sk, nh, g, d=128, seed=0, k_shift=0.0, v_shift=0.0):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(sq, nh, d, generator=gen)
    k = torch.randn(sk, g, d, generator=gen) + k_shift * torch.randn(1, g, d, generator=gen)
    v = torch.randn(sk, g, d, generator=gen) + v_shift * torch.randn(1, g, d, generator=gen)
    return (x.bfloat16() for x in (q, k, v))


def emulated(q, k, v, p_scale=attention_fp8.P_SCALE, **quant):
    """What the cuDNN kernel computes from quantize_qkv's tensors, in float64, one range, then dequantized."""
    nh, g = q.shape[1], k.shape[1]
    q8, k8, v8, dqk, o_scale, o_shift = attention_fp8.quantize_qkv(q, k, v, **quant)
    r = nh // g
    qd, kd, vd = q8.double(), k8.double().repeat_interleave(r, 1), v8.double().repeat_interleave(r, 1)
    s = torch.einsum("qhd,khd->hqk", qd, kd) * dqk.double() * q.shape[2] ** -0.5
    p = (s - s.amax(-1, keepdim=True)).exp()
    p8 = (p * p_scale).to(E4M3).double() / p_scale
    o = torch.einsum("hqk,khd->qhd", p8, vd) / p.sum(-1).T[..., None]
    return attention_fp8.dequantize_out(o.to(E4M3), o_scale, o_shift, torch.float64)


def reference(q, k, v):
    return sdpa_range_attention(q.double(), k.double(), v.double(), [(0, q.shape[0])], [(0, k.shape[0])])


# ----------------------------------------------------------------------------- scale selection

def test_scales_fill_e4m3_per_head_and_undo_exactly():
    q, k, v = qkv(300, 500, 8, 2)
    q = q * torch.tensor([1, 1, 1, 1, 10, 10, 10, 10]).view(1, 8, 1).bfloat16()  # KV head 1's queries 10x larger
    q8, k8, v8, dqk, o_scale, o_shift = attention_fp8.quantize_qkv(q, k, v)
    assert q8.dtype == k8.dtype == v8.dtype == E4M3
    # each KV head's smoothed K and V fill the range; the largest query maps to 448
    assert torch.equal(k8.float().abs().amax((0, 2)), torch.full((2,), 448.0))
    assert torch.equal(v8.float().abs().amax(0), torch.full((2, 128), attention_fp8.V_RANGE))  # every channel
    assert q8.float().abs().max() == 448.0
    # the products, descaled, are q.(k - mean k) up to e4m3 rounding (3 mantissa bits: ~2-3 % per element)
    ks = k.double() - k.double().mean(0, keepdim=True)
    exact = torch.einsum("qhd,khd->hqk", q.double(), ks.repeat_interleave(4, 1))
    got = torch.einsum("qhd,khd->hqk", q8.double(), k8.double().repeat_interleave(4, 1)) * dqk.double()
    assert rel(got, exact) < 0.05
    # V: v8 / scale + shift gives V back per head
    v_back = v8.double().repeat_interleave(4, 1) / o_scale.double() + o_shift.double()
    assert rel(v_back, v.double().repeat_interleave(4, 1)) < 0.05


def test_spread_from_max_and_min_equals_the_centred_amax_bit_for_bit():
    """quantize_qkv takes amax |x - mean| from max(x) and min(x) (one pass with the mean): the same fp32 value."""
    gen = torch.Generator().manual_seed(21)
    for shift in (0.0, 3.0, -1e4):
        x = torch.randn(4097, 3, 64, generator=gen) * torch.logspace(-3, 2, 64) + shift
        m = x.mean(0)
        assert torch.equal(attention_fp8._spread(x, m), (x - m).abs().amax(0))


def test_head_amax_in_two_steps_equals_the_one_step_amax_bit_for_bit():
    gen = torch.Generator().manual_seed(22)
    x = torch.randn(3001, 6, 128, generator=gen) * torch.logspace(-4, 3, 6)[:, None]
    x[17, 2, 5] = -1e5  # a negative extreme
    assert torch.equal(attention_fp8._head_amax(x), x.abs().amax((0, 2)))


def test_zero_heads_give_finite_scales():
    q, k, v = qkv(64, 64, 4, 2)
    q[:, 0] = 0
    v[:, 1] = 0
    out = attention_fp8.quantize_qkv(q, k, v)
    assert all(torch.isfinite(t.float()).all() for t in out)


def test_emulated_fp8_attention_error_is_small():
    q, k, v = qkv(128, 2048, 4, 2, seed=1)
    assert rel(emulated(q, k, v), reference(q, k, v)) < 0.08  # e4m3 V and output rounding: ~3.6 % + ~2.6 %


def test_per_channel_v_scales_keep_small_channels():
    """Real V has channels of very different sizes: each channel gets its own scale (folded into the output's
    dequantization), so the small channels do not round against the largest one."""
    q, k, v = qkv(128, 2048, 4, 2, seed=3)
    v = (v.float() * torch.logspace(-2, 1, 128)).bfloat16()  # channel sizes over three decades
    ref = reference(q, k, v)
    small = slice(0, 8)  # the smallest channels, where one scale for the tensor leaves subnormal e4m3 values
    err_channel = rel(emulated(q, k, v)[..., small], ref[..., small])
    err_head = rel(emulated(q, k, v, per_head=False)[..., small], ref[..., small])
    assert err_channel < 0.08 and err_head > 3 * err_channel, (err_channel, err_head)


def test_smoothing_is_exact_in_math_and_pays_off_with_shared_offsets():
    # invariance: with the rounding taken out (float64 "quantization"), smoothing changes nothing
    q, k, v = qkv(96, 700, 4, 2, seed=2, k_shift=4.0, v_shift=4.0)
    ks, vs = k.double() - k.double().mean(0, keepdim=True), v.double() - v.double().mean(0, keepdim=True)
    ref = reference(q, k, v)
    smoothed = sdpa_range_attention(q.double(), ks, vs, [(0, 96)], [(0, 700)]) + v.double().mean(0).repeat_interleave(2, 0)
    assert rel(smoothed, ref) < 1e-12
    # with e4m3 rounding, a shared offset in K and V costs accuracy unless it is subtracted first
    err_smooth, err_plain = rel(emulated(q, k, v), ref), rel(emulated(q, k, v, smooth=False), ref)
    assert err_smooth < 0.05 and err_plain > 2 * err_smooth, (err_smooth, err_plain)


# ----------------------------------------------------------------------------- the backend with a fake cuDNN

class FakeTensor:
    def __init__(self, name, dim=None, stride=None):
        self.name, self.dim, self.stride = name, dim, stride

    def set_output(self, v):
        return self

    def set_dim(self, d):
        self.dim = d
        return self

    def set_stride(self, s):
        self.stride = s
        return self

    def set_data_type(self, t):
        return self


def fake_cudnn(gqa=True):
    """A `cudnn` module whose FP8 SDPA graph computes attention in float64 from the fp8 inputs and scalars."""
    mod = types.SimpleNamespace(calls=[], builds=0)
    mod.data_type = types.SimpleNamespace(FLOAT="f32", FP8_E4M3="e4m3")
    mod.heur_mode = types.SimpleNamespace(A="A", FALLBACK="F")
    mod.create_handle = lambda: "handle"
    mod.set_stream = lambda h, s: None

    class Graph:
        def __init__(self, **kw):
            self.n = 0

        def tensor_like(self, x):
            return FakeTensor("in", list(x.shape), x.stride())

        def tensor(self, dim, stride, data_type):
            return FakeTensor("scalar", dim, stride)

        def sdpa_fp8(self, q, k, v, dq, dk, dv, ds, ss, so, is_inference, attn_scale, use_causal_mask):
            if not gqa and q.dim[1] != k.dim[1]:
                raise RuntimeError("fake: GQA not supported")
            self.io = (q, k, v, dq, dk, dv, ds, ss, so)
            self.attn_scale = attn_scale
            self.outs = [FakeTensor("o"), None, FakeTensor("amax_s"), FakeTensor("amax_o")]
            return self.outs

        def validate(self):
            pass

        build_operation_graph = check_support = build_plans = validate

        def create_execution_plans(self, modes):
            mod.builds += 1

        def get_workspace_size(self):
            return 0

        def execute(self, pack, workspace, handle=None):
            q, k, v, dq, dk, dv, ds, ss, so = (pack[t] for t in self.io)
            o = pack[self.outs[0]]
            assert q.dtype == k.dtype == v.dtype == o.dtype == E4M3 and list(o.shape) == self.outs[0].dim
            r = q.shape[1] // k.shape[1]
            qd, kd = q[0].double() * dq.item(), k[0].double().repeat_interleave(r, 0) * dk.item()
            vd = v[0].double().repeat_interleave(r, 0) * dv.item()
            s = qd @ kd.transpose(1, 2) * self.attn_scale
            p = (s - s.amax(-1, keepdim=True)).exp()
            p8 = (p * ss.item()).to(E4M3).double() * ds.item()
            res = (p8 @ vd) / p.sum(-1, keepdim=True) * so.item()
            o[0].copy_(res.to(E4M3))
            pack[self.outs[2]].fill_(p.max().item())
            mod.calls.append((tuple(q.shape), tuple(k.shape)))

    mod.pygraph = Graph
    return mod


@pytest.fixture
def with_fake(monkeypatch):
    def install(**kw):
        mod = fake_cudnn(**kw)
        monkeypatch.setitem(capability._modules, attention_fp8.PACKAGE, mod)
        monkeypatch.setattr(attention_fp8, "_graphs", type(attention_fp8._graphs)())
        monkeypatch.setattr(attention_fp8, "_handles", {})
        monkeypatch.setattr(attention_fp8, "_native_gqa", None)
        monkeypatch.setattr(attention_fp8, "_bind", lambda x: x)  # the fake reads tensors, not addresses
        monkeypatch.setattr(attention_fp8, "MIN_KEYS", 0)  # these small cases take the fp8 path
        return mod
    return install


@pytest.mark.parametrize("gqa", [True, False])
def test_backend_with_fake_cudnn_matches_float64(with_fake, gqa):
    mod = with_fake(gqa=gqa)
    q, k, v = qkv(230, 300, 4, 2, seed=4)
    qr = [(0, 70), (70, 140), (140, 200)]  # rows 200..229 are in no range: zero
    kr = [(0, 100), (0, 0), (50, 300)]  # an empty key range: zero rows
    out = torch.full(q.shape, float("nan"), dtype=q.dtype)
    got = attention_fp8.fp8_range_attention(q, k, v, qr, kr, out=out)
    assert got is out
    ref = sdpa_range_attention(q.double(), k.double(), v.double(), qr, kr)
    assert torch.isfinite(out.float()).all()
    assert (out[70:140] == 0).all() and (out[200:] == 0).all()
    assert rel(out[:70], ref[:70]) < 0.08 and rel(out[140:200], ref[140:200]) < 0.08
    heads = 2 if gqa else 4
    assert mod.calls[-2:] == [((1, 4, 70, 128), (1, heads, 100, 128)), ((1, 4, 60, 128), (1, heads, 250, 128))]
    assert attention_fp8._native_gqa is gqa
    builds = mod.builds
    for seed in (10, 11, 12):  # later calls, fresh inputs, same shapes: cached graphs, each call computed
        q, k, v = qkv(230, 300, 4, 2, seed=seed)
        n = len(mod.calls)
        out = attention_fp8.fp8_range_attention(q, k, v, qr, kr)
        ref = sdpa_range_attention(q.double(), k.double(), v.double(), qr, kr)
        assert len(mod.calls) == n + 2
        assert rel(out[:70], ref[:70]) < 0.08 and rel(out[140:200], ref[140:200]) < 0.08
    assert mod.builds == builds


def test_short_key_ranges_run_bf16(with_fake, monkeypatch):
    """The caption's cross-attention (keys shorter than MIN_KEYS) is computed exactly, without a cuDNN FP8 call."""
    mod = with_fake()
    monkeypatch.setattr(attention_fp8, "MIN_KEYS", 1024)
    q, k, v = qkv(300, 1600, 4, 2, seed=13)
    qr, kr = [(0, 100), (100, 300)], [(0, 800), (800, 1600)]
    assert torch.equal(attention_fp8.fp8_range_attention(q, k, v, qr, kr), sdpa_range_attention(q, k, v, qr, kr))
    assert mod.calls == []
    kr = [(0, 800), (0, 1600)]  # one range of 1600 keys: the whole call in fp8
    out = attention_fp8.fp8_range_attention(q, k, v, qr, kr)
    assert len(mod.calls) == 2 and not torch.equal(out, sdpa_range_attention(q, k, v, qr, kr))
    assert rel(out, sdpa_range_attention(q.double(), k.double(), v.double(), qr, kr)) < 0.08


def test_backend_writes_into_a_strided_out_view(with_fake):
    with_fake()
    q, k, v = qkv(64, 80, 4, 2, seed=5)
    buf = torch.zeros(64, 2 * 4 * 128, dtype=q.dtype)
    view = buf[:, 512:].view(64, 4, 128)
    attention_fp8.fp8_range_attention(q, k, v, [(0, 64)], [(0, 80)], out=view)
    assert (buf[:, :512] == 0).all()
    assert rel(view, reference(q, k, v)) < 0.08


def test_refused_shapes_warn_once_and_run_exact(with_fake, monkeypatch):
    mod = with_fake()
    tries = []

    def refuse(*a, **k):
        tries.append(1)
        raise ValueError("fake: unsupported sequence length")
    monkeypatch.setattr(mod.pygraph, "sdpa_fp8", refuse)
    q, k, v = qkv(40, 30, 4, 2, seed=8)
    with pytest.warns(RuntimeWarning, match="refused.*unsupported sequence length.*bf16"):
        out = attention_fp8.fp8_range_attention(q, k, v, [(0, 40)], [(0, 30)])
    assert torch.equal(out, sdpa_range_attention(q, k, v, [(0, 40)], [(0, 30)]))
    n = len(tries)
    with pytest.warns(RuntimeWarning):
        attention_fp8.fp8_range_attention(q, k, v, [(0, 40)], [(0, 30)])
    assert len(tries) == n  # the refusal is remembered, not rebuilt


# ----------------------------------------------------------------------------- queries made in e4m3 (norm+RoPE island)

def norm_rope_case(tokens=2048, heads=4, d=128, seed=0, spike=False, spike_bias=0.0):
    """Projections, a LayerNorm1p (random weight around 1, bias) and a RoPE table as a layer has them.
    spike: the bound's worst case instead (one huge channel per head, weight 1, bias spike_bias on that channel)."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(tokens, heads * d, generator=gen)
    if spike:  # one huge channel per head: x̂ puts ~sqrt(d-1) into it, the bound's worst case
        x = torch.zeros(tokens, heads * d)
        x[:, ::d] = 1e3
    w = 0.3 * torch.randn(d, generator=gen) if not spike else torch.zeros(d)
    b = 0.2 * torch.randn(d, generator=gen) if not spike else torch.zeros(d).index_fill_(0, torch.tensor([0]), spike_bias)
    rope = LearnableRoPE(d).table(2, 32, tokens // 64) if not spike else torch.zeros(tokens, 6 * (d // 8))
    if spike:
        rope[:, 3 * (d // 8):] = 1  # sin 0, cos 1: no rotation
    return x.bfloat16(), heads, d, w, b, 1e-6, True, rope  # norm weights stay fp32 in the model


def test_q_scale_bound_is_a_bound_and_a_tight_one():
    from magi_core.dit.layer import _norm_rope_f32

    for seed in range(3):
        x, heads, d, w, b, eps, _, rope = norm_rope_case(seed=seed)
        x = x * torch.logspace(-3, 3, x.shape[0])[:, None].bfloat16()  # tokens of every size: x̂ does not care
        q = _norm_rope_f32(x, heads, d, w + 1, b, eps, rope)
        bound = attention_fp8.E4M3_MAX / attention_fp8.q_scale_bound(w + 1, b)
        assert q.abs().amax() <= bound, (q.abs().amax(), bound)
    for spike_bias in (0.0, 3.0):  # sqrt(d-1) (+ 3) of sqrt(d) (+ 3): holds where it is tight, and is not loose
        x, heads, d, w, b, eps, _, rope = norm_rope_case(spike=True, spike_bias=spike_bias)
        q = _norm_rope_f32(x, heads, d, w + 1, b, eps, rope)
        bound = attention_fp8.E4M3_MAX / attention_fp8.q_scale_bound(w + 1, b)
        assert 0.99 * bound < q.abs().amax() <= bound, (q.abs().amax(), bound)


def test_e4m3_queries_cost_no_accuracy(with_fake):
    """Queries quantized where they are made (bound scale, K with one scale) vs quantized from bf16 with their
    measured amax (per-head K scales): the same error against float64 attention of the fp32 queries."""
    from magi_core.dit.layer import _norm_rope_f32, norm_rope, norm_rope_e4m3

    with_fake()
    case = norm_rope_case(seed=5)
    x, heads, d, w, b, eps, one_plus, rope = case
    qf = _norm_rope_f32(x, heads, d, w + 1, b, eps, rope).reshape(-1, heads, d)
    _, k, v = qkv(8, 3000, heads, 2, seed=6, k_shift=1.0)
    qr, kr = [(0, 1000), (1000, 2048)], [(0, 1500), (0, 3000)]
    ref = sdpa_range_attention(qf.double(), k.double(), v.double(), qr, kr)
    q8, q_descale = norm_rope_e4m3(*case)
    assert q8.dtype == E4M3 and q8.shape == (2048, heads, d)
    out = torch.empty(2048, heads, d, dtype=torch.bfloat16)
    attention_fp8.fp8_range_attention(q8.reshape(-1, heads, d), k, v, qr, kr, out=out, q_descale=q_descale)
    err_e4m3 = rel(out, ref)
    err_bf16 = rel(attention_fp8.fp8_range_attention(norm_rope(*case).reshape(-1, heads, d), k, v, qr, kr), ref)
    assert err_e4m3 < 0.08 and err_e4m3 < 1.1 * err_bf16, (err_e4m3, err_bf16)
    # the dequantized queries are the queries: a wrong descale would show here first
    assert rel(q8.float() * q_descale, qf) < 0.04


def test_e4m3_queries_fall_back_dequantized(with_fake, monkeypatch):
    """A shape cuDNN refuses, or keys too short for FP8: bf16 attention of the dequantized queries."""
    with_fake()
    monkeypatch.setattr(attention_fp8, "MIN_KEYS", 1024)
    q, k, v = qkv(64, 300, 4, 2, seed=9)
    q8, q_descale = attention_fp8.quantize_q_bound(q.float(), torch.tensor(100.0))
    out = torch.empty(q.shape, dtype=torch.bfloat16)
    attention_fp8.fp8_range_attention(q8, k, v, [(0, 64)], [(0, 300)], out=out, q_descale=q_descale)
    assert torch.equal(out, sdpa_range_attention((q8.float() * q_descale).bfloat16(), k, v, [(0, 64)], [(0, 300)]))
    with pytest.raises(ValueError, match="need `out`"):
        attention_fp8.fp8_range_attention(q8, k, v, [(0, 64)], [(0, 300)], q_descale=q_descale)


def test_dit_makes_its_queries_in_e4m3_under_fp8_attention(with_fake, monkeypatch):
    """The DiT with fp8-approx (a fake cuDNN on the CPU): self-attention gets e4m3 queries from the norm+RoPE
    island, the caption's cross-attention bf16 ones; the velocity stays near the bf16 model's, as it does with
    queries quantized inside the backend."""
    from magi_core.config import preset
    from magi_core.dit import build_dit, init_random_
    from magi_core.dit import layer as layer_mod

    mod = with_fake()
    real_why = attention_fp8.why_unusable  # the fake "runs" here, on an "sm90 GPU": the other checks are real
    monkeypatch.setattr(capability, "cuda_capability", lambda dev=None: (9, 0))
    monkeypatch.setattr(attention_fp8, "why_unusable", lambda q: real_why(
        types.SimpleNamespace(is_cuda=True, device=q.device, dtype=q.dtype, shape=q.shape)))
    cfg = preset("tiny").replace(num_layers=2, params_dtype=torch.bfloat16)
    model = init_random_(build_dit(cfg), seed=0)
    gen = torch.Generator().manual_seed(2)
    x, t = torch.randn(1, cfg.vae_channels, 4, 16, 16, generator=gen), torch.rand(1, 2, generator=gen)
    y, mask = torch.randn(2, 16, cfg.caption_channels, generator=gen) * 0.5, torch.ones(2, 16)
    kv = [(0, 128), (0, 256)]
    ref = model(x, t, y, mask, kv)  # automatic backend: bf16 SDPA
    seen = []
    real = layer_mod.fp8_range_attention
    monkeypatch.setattr(layer_mod, "fp8_range_attention",
                        lambda q, *a, **kw: seen.append(q.dtype) or real(q, *a, **kw))
    model.attn_backend = FP8
    out = model(x, t, y, mask, kv)
    assert seen == [E4M3] * cfg.num_layers and len(mod.calls) == 2 * cfg.num_layers * 2  # self + cross, 2 ranges
    err = rel(out, ref)
    model.e4m3_queries = False  # the backend quantizes bf16 queries itself
    err_bf16_q = rel(model(x, t, y, mask, kv), ref)
    assert seen == [E4M3] * cfg.num_layers and err < 0.1 and err < 1.2 * err_bf16_q, (err, err_bf16_q)
    model.e4m3_queries = True
    hs = torch.empty(1, 256, cfg.hidden_size, dtype=torch.bfloat16)
    assert model._e4m3_queries(hs, kv)
    monkeypatch.setattr(model, "cp", object())  # context parallel: bf16 queries for the all-to-all
    assert not model._e4m3_queries(hs, kv)
    monkeypatch.setattr(model, "cp", None)
    model.attn_backend = None
    assert not model._e4m3_queries(hs, kv)  # automatic: never fp8
    attention.set_default_backend(FP8)
    try:
        assert model._e4m3_queries(hs, kv)  # fp8 chosen as the default backend
    finally:
        attention.set_default_backend(None)
    model.attn_backend = FP8
    monkeypatch.setattr(attention_fp8, "MIN_KEYS", 1024)  # short keys: no FP8, no e4m3 queries
    seen.clear()
    assert torch.equal(model(x, t, y, mask, kv), ref) and seen == []


# ----------------------------------------------------------------------------- availability and fallback

def fake_q(cc_device="cuda:0"):
    return types.SimpleNamespace(is_cuda=True, device=torch.device(cc_device), dtype=torch.bfloat16,
                                 shape=(10, 4, 128))


def test_why_unusable_names_the_gpu_and_the_package(monkeypatch):
    monkeypatch.setattr(capability, "cuda_capability", lambda dev=None: (8, 6))
    assert "Hopper" in attention_fp8.why_unusable(fake_q()) and "sm86" in attention_fp8.why_unusable(fake_q())
    monkeypatch.setattr(capability, "cuda_capability", lambda dev=None: (9, 0))
    monkeypatch.setitem(capability._modules, attention_fp8.PACKAGE, None)
    assert "pip install nvidia-cudnn-frontend" in attention_fp8.why_unusable(fake_q())
    monkeypatch.setitem(capability._modules, attention_fp8.PACKAGE, fake_cudnn())
    assert attention_fp8.why_unusable(fake_q()) is None
    assert "CUDA" in attention_fp8.why_unusable(torch.zeros(2, 4, 128, dtype=torch.bfloat16))


def test_unavailable_fp8_warns_and_runs_the_exact_path():
    q, k, v = qkv(50, 60, 4, 2, seed=6)
    with pytest.warns(RuntimeWarning, match=r"fp8-approx.*unavailable.*CUDA.*bf16"):
        assert attention.resolve_backend(FP8, q) == "sdpa"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = range_attention(q, k, v, [(0, 50)], [(0, 60)], backend=FP8)
    assert torch.equal(out, range_attention(q, k, v, [(0, 50)], [(0, 60)], backend="sdpa"))


def test_runtime_on_a_gpu_without_fp8_warns_once_and_runs_bf16():
    from magi_core.dit import build_dit, init_random_
    from magi_core.config import preset
    from magi_core.settings import DiTRuntime

    model = init_random_(build_dit(preset("tiny")))
    with pytest.warns(RuntimeWarning, match="fp8-approx can't run here .*it needs a CUDA GPU.*bf16 attention runs"):
        DiTRuntime(attention="fp8-approx").configure(model)
    assert model.attn_backend is None  # automatic: no warning at every attention call
    DiTRuntime(attention="sdpa").configure(model)
    assert model.attn_backend == "sdpa"


def test_unavailable_exact_backends_are_refused_by_the_settings():
    """Before any model loads (CLI, loader node, workers): a backend that cannot run on the device is an error
    naming the ones that can; fp8-approx is not (it falls back with a note)."""
    from magi_core.settings import DiTRuntime

    with pytest.raises(ValueError, match=r"'cudnn' can't run on cpu: it needs a CUDA GPU\. Usable there: auto, sdpa"):
        DiTRuntime(attention="cudnn")
    if capability.optional_module("flash_attn") is None:
        with pytest.raises(ValueError, match="flash_attn is not importable"):
            DiTRuntime(attention="flash")
    assert DiTRuntime(attention="fp8-approx").attention == FP8 and DiTRuntime(attention="sdpa").attention == "sdpa"


def test_default_fp8_backend_falls_back_without_recursion():
    q, k, v = qkv(20, 20, 4, 2)
    attention.set_default_backend(FP8)
    try:
        with pytest.warns(RuntimeWarning, match="unavailable"):
            assert attention.resolve_backend(None, q) == "sdpa"
    finally:
        attention.set_default_backend(None)


def test_every_backend_is_offered_to_users_and_fp8_says_approximate():
    import argparse

    from nodes import choices
    from magi_core import cli_generate

    assert set(attention.BACKENDS) <= set(choices.ATTENTION)
    assert "approx" in FP8
    p = argparse.ArgumentParser()
    cli_generate.add_arguments(p)  # the CLI and torchrun share these options
    help_text = " ".join(p.format_help().split())
    assert "fp8-approx" in help_text and "APPROXIMATE" in help_text


# ----------------------------------------------------------------------------- GPU: against bf16 SDPA at model shapes

@pytest.mark.gpu
@pytest.mark.parametrize("nh,g,keys", [(24, 8, 3), (48, 8, 1)])  # 4.5B and 24B heads, 720x720 chunks
def test_gpu_fp8_vs_bf16_sdpa_at_model_shapes(nh, g, keys):
    if attention_fp8.why_unusable(torch.empty(1, 1, 128, device="cuda", dtype=torch.bfloat16)):
        pytest.skip(attention_fp8.why_unusable(torch.empty(1, 1, 128, device="cuda", dtype=torch.bfloat16)))
    ctn = 12150
    gen = torch.Generator(device="cuda").manual_seed(7)
    qr, kr = [(0, ctn)], [(0, keys * ctn)]
    for _ in range(3):  # fresh inputs each call, same shapes (cached graphs): every call must compute its own
        q = torch.randn(ctn, nh, 128, device="cuda", generator=gen).bfloat16()
        k = (torch.randn(keys * ctn, g, 128, device="cuda", generator=gen)
             + 2 * torch.randn(1, g, 128, device="cuda", generator=gen)).bfloat16()
        v = torch.randn_like(k)
        ref = range_attention(q, k, v, qr, kr, backend="cudnn").float()
        out = range_attention(q, k, v, qr, kr, backend=FP8).float()
        err = rel(out, ref)
        print(f"fp8 vs bf16 rel L2 {err:.3e} (nh {nh}, keys {keys} chunks)")
        # N(0,1) inputs are the hard case (the output is an average of noise): e4m3 V and output rounding cost
        # ~5 % (the CPU emulation above); a wrong descale, layout, head mapping or stale buffer gives order 1
        assert err < 0.08


@pytest.mark.gpu
def test_gpu_e4m3_queries_from_the_compiled_island_at_model_shapes():
    """The DiT's FP8 path at 4.5B shapes: queries from the compiled norm+RoPE island in e4m3 (bound scale), K with
    one scale, vs bf16 cuDNN on the island's bf16 queries; and vs the backend quantizing those bf16 queries."""
    from magi_core.dit.layer import norm_rope, norm_rope_e4m3
    from magi_core.kernels.compiled import compiled

    if attention_fp8.why_unusable(torch.empty(1, 1, 128, device="cuda", dtype=torch.bfloat16)):
        pytest.skip(attention_fp8.why_unusable(torch.empty(1, 1, 128, device="cuda", dtype=torch.bfloat16)))
    ctn, nh, g, d = 12150, 24, 8, 128
    x, _, _, w, b, eps, one_plus, _ = norm_rope_case(tokens=64, heads=nh, d=d, seed=3)
    gen = torch.Generator(device="cuda").manual_seed(8)
    x = torch.randn(ctn, nh * d, device="cuda", generator=gen).bfloat16()
    rope = LearnableRoPE(d).table(6, 45, 45).cuda()
    w, b = w.cuda(), b.cuda()
    qr, kr = [(0, ctn)], [(0, 3 * ctn)]
    k = (torch.randn(3 * ctn, g, d, device="cuda", generator=gen)
         + 2 * torch.randn(1, g, d, device="cuda", generator=gen)).bfloat16()
    v = torch.randn_like(k)
    q = compiled(norm_rope)(x, nh, d, w, b, eps, one_plus, rope).view(ctn, nh, d)
    q8, q_descale = compiled(norm_rope_e4m3)(x, nh, d, w, b, eps, one_plus, rope)
    assert q8.dtype == E4M3 and rel(q8.float().view(ctn, nh, d) * q_descale, q) < 0.04
    ref = range_attention(q, k, v, qr, kr, backend="cudnn").float()
    out = torch.empty_like(q)
    attention_fp8.fp8_range_attention(q8.view(ctn, nh, d), k, v, qr, kr, out=out, q_descale=q_descale)
    err, err_bf16_q = rel(out, ref), rel(range_attention(q, k, v, qr, kr, backend=FP8), ref)
    print(f"e4m3 queries: fp8 vs bf16 rel L2 {err:.3e} (bf16 queries quantized by the backend: {err_bf16_q:.3e})")
    assert err < 0.08 and err < 1.1 * err_bf16_q


def test_the_one_time_check_covers_the_dits_e4m3_queries(with_fake, monkeypatch):
    """attention._self_check (run once per GPU before fp8-approx is used) passes with a right backend and fails
    when only the e4m3-query path is wrong (here: K's descale left out of the product's)."""
    with_fake()
    assert attention._self_check(FP8, "cpu")
    real = attention_fp8.quantize_kv

    def wrong(k, v, heads):
        k8, v8, k_descale, o_scale, o_shift = real(k, v, heads)
        return k8, v8, torch.ones_like(k_descale), o_scale, o_shift
    monkeypatch.setattr(attention_fp8, "quantize_kv", wrong)
    assert not attention._self_check(FP8, "cpu")
