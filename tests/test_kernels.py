"""Attention backends and fp8 GEMM vs independent float64 math (kernels/attention.py, kernels/fp8.py)."""
import types

import pytest
import torch

from magi_core.kernels import attention as att
from magi_core.kernels import capability
from magi_core.kernels import fp8 as fp8k

# block-causal self-attention as in MAGI-1: 3 chunks of 7 tokens after a 2-chunk cache (14 keys), window of 3
# chunks, so key ranges overlap; plus cross-attention: disjoint caption ranges, chunk 1 has no caption tokens.
SELF = dict(sq=21, sk=35, qr=[(0, 7), (7, 14), (14, 21)], kr=[(0, 21), (7, 28), (14, 35)])
CROSS = dict(sq=21, sk=9, qr=[(0, 7), (7, 14), (14, 21)], kr=[(0, 5), (5, 5), (5, 9)])
CPU_BACKENDS = [n for n in att.BACKENDS if n in att.available_backends(torch.zeros(1, 1, 1))]


def reference(q, k, v, qr, kr, scale=None):
    """float64 softmax(q k^T * scale) v per range; query head h uses KV head h // (nh / g)."""
    q, k, v = q.double(), k.double(), v.double()
    nh, g, d = q.shape[1], k.shape[1], q.shape[2]
    scale = d ** -0.5 if scale is None else scale
    out = torch.zeros(q.shape, dtype=torch.float64)
    for (qs, qe), (ks, ke) in zip(qr, kr):
        if qe == qs or ke == ks:
            continue
        for h in range(nh):
            kh = h // (nh // g)
            p = torch.softmax(q[qs:qe, h] @ k[ks:ke, kh].T * scale, dim=-1)
            out[qs:qe, h] = p @ v[ks:ke, kh]
    return out


def make_qkv(sq, sk, nh=4, g=2, d=16, dtype=torch.float32, seed=0, device="cpu"):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(s, h, d, generator=gen).to(device, dtype) for s, h in ((sq, nh), (sk, g), (sk, g))]


@pytest.fixture(autouse=True)
def _restore_defaults():
    yield
    att.set_default_backend(None)
    fp8k.set_default_backend(None)


# ----------------------------------------------------------------------------- attention on CPU

def test_cpu_backends_listed():
    assert CPU_BACKENDS[0] == "sdpa" and "flex" in CPU_BACKENDS  # torch 2.13 has FlexAttention


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("case", [SELF, CROSS], ids=["self_overlapping", "cross_empty"])
def test_backend_matches_float64(backend, case):
    q, k, v = make_qkv(case["sq"], case["sk"])
    out = att.range_attention(q, k, v, case["qr"], case["kr"], backend=backend)
    assert out.dtype == q.dtype and out.shape == q.shape and out.is_contiguous()
    torch.testing.assert_close(out.double(), reference(q, k, v, case["qr"], case["kr"]), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_bf16_tensor_ranges_and_scale(backend):
    q, k, v = make_qkv(SELF["sq"], SELF["sk"], dtype=torch.bfloat16)
    qr, kr = torch.tensor(SELF["qr"]), torch.tensor(SELF["kr"])
    out = att.range_attention(q, k, v, qr, kr, backend=backend, scale=0.3)
    assert out.dtype == torch.bfloat16
    # inputs are exact bf16 values; the only extra error is bf16 rounding of P/outputs (~2^-8 relative, |out| < 3)
    torch.testing.assert_close(out.double(), reference(q, k, v, SELF["qr"], SELF["kr"], 0.3), atol=2e-2, rtol=1e-2)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_gqa_consecutive_heads_share_a_group(backend):
    """v is +1 in KV group 0 and -1 in group 1: softmax weights sum to 1, so heads 0,1 -> +1 and heads 2,3 -> -1.
    The other mapping (head h -> group h % g) would give heads 0,2 -> +1."""
    q, k, _ = make_qkv(8, 8, nh=4, g=2)
    v = torch.ones(8, 2, 16)
    v[:, 1] = -1
    out = att.range_attention(q, k, v, [(0, 8)], [(0, 8)], backend=backend)
    expect = torch.tensor([1.0, 1.0, -1.0, -1.0])[None, :, None].expand_as(out)
    torch.testing.assert_close(out, expect, atol=1e-5, rtol=0)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_empty_key_ranges_and_uncovered_rows_are_zero(backend):
    q, k, v = make_qkv(12, 6)
    out = att.range_attention(q, k, v, [(0, 4), (4, 8)], [(2, 2), (0, 6)], backend=backend)  # rows 8..11 in no range
    assert out[:4].abs().max() == 0 and out[8:].abs().max() == 0
    torch.testing.assert_close(out.double(), reference(q, k, v, [(0, 4), (4, 8)], [(2, 2), (0, 6)]), atol=1e-5, rtol=1e-5)


def test_flex_block_structure_matches_token_mask():
    """Partial|full blocks cover every allowed (q, k) pair; full blocks are exactly the all-allowed blocks."""
    sq, sk, blk = 53, 70, 16
    qr = [(0, 13), (13, 26), (26, 40), (40, 53)]  # chunk edges not on block edges
    kr = [(0, 20), (5, 45), (30, 30), (20, 70)]
    allowed = torch.zeros(sq, sk, dtype=torch.bool)
    for (qs, qe), (ks, ke) in zip(qr, kr):
        allowed[qs:qe, ks:ke] = True
    partial, full = att.block_structure(qr, kr, sq, sk, block=blk)
    assert not (partial & full).any()
    for i in range(partial.shape[0]):
        for j in range(partial.shape[1]):
            sub = allowed[i * blk:(i + 1) * blk, j * blk:(j + 1) * blk]
            assert bool(full[i, j]) == bool(sub.all()), (i, j)
            assert bool(partial[i, j] | full[i, j]) >= bool(sub.any()), (i, j)


def test_bad_inputs_and_backend_names():
    q, k, v = make_qkv(8, 8)
    with pytest.raises(ValueError, match="unknown attention backend 'bogus'"):
        att.range_attention(q, k, v, [(0, 8)], [(0, 8)], backend="bogus")
    with pytest.raises(ValueError, match="k_ranges entry"):
        att.range_attention(q, k, v, [(0, 8)], [(0, 9)])
    with pytest.raises(ValueError, match="overlap"):
        att.range_attention(q, k, v, [(0, 5), (4, 8)], [(0, 8), (0, 8)])
    with pytest.raises(ValueError, match="multiple of g"):
        att.range_attention(q[:, :3], k, v, [(0, 8)], [(0, 8)])
    with pytest.raises(ValueError, match="set_default|unknown"):
        att.set_default_backend("nope")
    with pytest.raises(RuntimeError, match="unavailable here: .*CUDA|not importable"):
        att.range_attention(q, k, v, [(0, 8)], [(0, 8)], backend="flash")


def test_default_backend_and_argument_override():
    q = torch.zeros(4, 2, 16)
    assert att.resolve_backend(None, q) == "sdpa"  # auto on CPU
    att.set_default_backend("flex")
    assert att.resolve_backend(None, q) == "flex"
    assert att.resolve_backend("sdpa", q) == "sdpa"
    att.set_default_backend("auto")
    assert att.resolve_backend(None, q) == "sdpa"


def test_verified_runs_once_and_warns_on_failure():
    calls = []

    def bad():
        calls.append(1)
        raise RuntimeError("no kernel image")

    with pytest.warns(RuntimeWarning, match="no kernel image"):
        assert capability.verified(("test", "bad"), bad, "x") is False
    assert capability.verified(("test", "bad"), bad, "x") is False and len(calls) == 1
    with pytest.warns(RuntimeWarning, match="disagreed"):
        assert capability.verified(("test", "wrong"), lambda: False, "x") is False
    assert capability.verified(("test", "good"), lambda: True, "x") is True


# ----------------------------------------------------------------------------- adapters, with fake kernel packages

def _fake_dense(q, k, v, scale):
    """(Sq, nh, d) x (Sk, g, d) attention in float64, written against the libraries' documented semantics."""
    return reference(q, k, v, [(0, q.shape[0])], [(0, k.shape[0])], scale).to(q.dtype)


def _fake_flash():
    calls = []

    def flash_attn_func(q, k, v, dropout_p=0.0, softmax_scale=None, causal=False):
        assert q.dim() == 4 and q.shape[0] == 1 and not causal
        calls.append("dense")
        return _fake_dense(q[0], k[0], v[0], softmax_scale)[None]

    def flash_attn_varlen_func(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, dropout_p=0.0,
                               softmax_scale=None, causal=False):
        assert cu_seqlens_q.dtype == torch.int32 and cu_seqlens_k.dtype == torch.int32 and not causal
        assert cu_seqlens_q[-1] == q.shape[0] and cu_seqlens_k[-1] == k.shape[0]
        cq, ck = cu_seqlens_q.tolist(), cu_seqlens_k.tolist()
        assert max_seqlen_q == max(b - a for a, b in zip(cq, cq[1:]))
        calls.append("varlen")
        ranges = list(zip(zip(cq, cq[1:]), zip(ck, ck[1:])))
        out = reference(q, k, v, *zip(*ranges), softmax_scale).to(q.dtype)
        for (qs, qe), (ks, ke) in ranges:
            if ke == ks:
                out[qs:qe] = float("nan")  # empty key sequence: do not rely on the kernel writing zeros
        return out

    return types.SimpleNamespace(flash_attn_func=flash_attn_func, flash_attn_varlen_func=flash_attn_varlen_func), calls


def _magi_v103(q, k, v, q_ranges, k_ranges, max_seqlen_q, max_seqlen_k, attn_type_map=None, softmax_scale=None,
               softcap=0.0, deterministic=False, sm_margin=0, disable_fwd_atomic_reduction=False, auto_range_merge=False):
    qr, kr = q_ranges.tolist(), k_ranges.tolist()
    assert max_seqlen_q == max(b - a for a, b in qr) and max_seqlen_k == max(b - a for a, b in kr)
    return _magi_core(q, k, v, q_ranges, k_ranges, softmax_scale), "lse"


def _magi_v104(q, k, v, q_ranges, k_ranges, attn_type_map=None, softmax_scale=None, softcap=0.0,
               deterministic=False, sm_margin=0, disable_fwd_atomic_reduction=False, auto_range_merge=False,
               ref_block_size=None):
    return _magi_core(q, k, v, q_ranges, k_ranges, softmax_scale), "lse"


def _magi_v110(q, k, v, q_ranges, k_ranges, attn_type_map=None, *, sink=None, softmax_scale=None, softcap=0.0,
               deterministic=False, sm_margin=0, disable_fwd_atomic_reduction=False, max_seqlen_q=None,
               auto_range_merge=False, return_max_logits=False):
    return _magi_core(q, k, v, q_ranges, k_ranges, softmax_scale), types.SimpleNamespace(lse=None)


def _magi_core(q, k, v, q_ranges, k_ranges, scale):
    """FFA semantics: listed (q_range, k_range) pairs, all non-empty; rows in no range stay uninitialised."""
    assert q_ranges.dtype == torch.int32 and k_ranges.dtype == torch.int32
    qr, kr = [tuple(r) for r in q_ranges.tolist()], [tuple(r) for r in k_ranges.tolist()]
    assert all(b > a for a, b in qr + kr)
    out = torch.full_like(q, float("nan"))
    ref = reference(q, k, v, qr, kr, scale).to(q.dtype)
    for a, b in qr:
        out[a:b] = ref[a:b]
    return out


@pytest.mark.parametrize("case,expect_calls", [
    (SELF, ["dense"] * 3),  # overlapping key ranges: one call per range on slices, no K/V copies
    (CROSS, ["varlen"]),  # consecutive ranges: one varlen call (the empty caption must come back as zeros)
    (dict(sq=12, sk=6, qr=[(0, 4), (4, 8)], kr=[(2, 2), (0, 6)]), ["dense"]),  # only the live range runs
], ids=["self", "cross", "uncovered"])
def test_flash_adapter_with_fake_flash_attn(monkeypatch, case, expect_calls):
    fake, calls = _fake_flash()
    monkeypatch.setattr(capability, "optional_module", lambda name: fake)
    q, k, v = make_qkv(case["sq"], case["sk"])
    out = att.flash_range_attention(q, k, v, case["qr"], case["kr"])
    torch.testing.assert_close(out.double(), reference(q, k, v, case["qr"], case["kr"]), atol=1e-5, rtol=1e-5)
    assert calls == expect_calls


@pytest.mark.parametrize("fn", [_magi_v103, _magi_v104, _magi_v110], ids=["v1.0.3", "v1.0.4", "v1.1.0"])
@pytest.mark.parametrize("case", [SELF, CROSS, dict(sq=12, sk=6, qr=[(0, 4), (4, 8)], kr=[(2, 2), (0, 6)])],
                         ids=["self", "cross", "uncovered"])
def test_magi_adapter_across_signatures(monkeypatch, fn, case):
    monkeypatch.setattr(capability, "optional_module", lambda name: types.SimpleNamespace(flex_flash_attn_func=fn))
    q, k, v = make_qkv(case["sq"], case["sk"])
    out = att.magi_range_attention(q, k, v, case["qr"], case["kr"], scale=0.2)
    torch.testing.assert_close(out.double(), reference(q, k, v, case["qr"], case["kr"], 0.2), atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------- fp8 on CPU

def test_quantize_fp8_double_rounding():
    x = torch.tensor([1.0625 + 2 ** -12])  # just above the fp8 midpoint 1.0625 between 1.0 and 1.125
    assert x.to(fp8k.FP8).float().item() == 1.125  # direct fp32 -> fp8 rounds up
    # fp32 -> bf16 gives exactly 1.0625 (a tie), and ties-to-even in e4m3 gives 1.0
    assert fp8k.quantize_fp8(x, torch.tensor(1.0)).float().item() == 1.0


def test_quantize_fp8_scale_and_clamp():
    x = torch.tensor([[1000.0, -1000.0, 3.0, 3.0]])
    scale = torch.tensor([1.0, 1.0, 2.0, 0.5])  # per-input-feature vector broadcast over the last dim
    got = fp8k.quantize_fp8(x, scale)
    assert got.dtype == torch.float8_e4m3fn
    assert got.float().tolist() == [[448.0, -448.0, 1.5, 6.0]]


def _fp8_case(m=24, n=48, kdim=64, seed=0, device="cpu"):
    gen = torch.Generator().manual_seed(seed)
    x_q = (torch.randn(m, kdim, generator=gen) * 40).clamp(-448, 448).to(fp8k.FP8).to(device)
    w_q = (torch.randn(n, kdim, generator=gen) * 40).clamp(-448, 448).to(fp8k.FP8).to(device)
    scale_a = torch.tensor([0.02] + [7.0] * (kdim - 1), device=device)  # only element 0 may be used
    scale_b = torch.tensor([0.003], device=device)
    return x_q, w_q, scale_a, scale_b


def _fp8_reference(x_q, w_q, scale_a, scale_b):
    y = (x_q.double().cpu() @ w_q.double().cpu().T) * (scale_a[0].double().cpu() * scale_b[0].double().cpu())
    bound = (x_q.double().cpu().abs() @ w_q.double().cpu().abs().T) * (scale_a[0].item() * scale_b[0].item())
    return y, bound


@pytest.mark.parametrize("backend", ["dequant", "scaled_mm"])
def test_fp8_matmul_vs_float64(backend):
    x_q, w_q, sa, sb = _fp8_case()
    out = fp8k.fp8_matmul(x_q.view(2, 12, 64), w_q, sa, sb, backend=backend)
    assert out.shape == (2, 12, 48) and out.dtype == torch.bfloat16
    ref, bound = _fp8_reference(x_q, w_q, sa, sb)
    # bf16 output rounding: <= 2^-9 relative (2^-8 allowed); fp32 accumulation: far below 2^-16 of sum |x w|
    err = (out.reshape(24, 48).double() - ref).abs()
    assert (err <= 2 ** -8 * ref.abs() + 2 ** -16 * bound).all()


def test_fp8_matmul_bad_shapes_fall_back():
    x_q, w_q, sa, sb = _fp8_case(kdim=24)
    with pytest.warns(RuntimeWarning, match="divisible by 16"):
        out = fp8k.fp8_matmul(x_q, w_q, sa, sb, backend="scaled_mm")
    assert torch.equal(out, fp8k.fp8_matmul(x_q, w_q, sa, sb, backend="dequant"))
    with pytest.raises(ValueError, match="float8_e4m3fn"):
        fp8k.fp8_matmul(x_q.float(), w_q, sa, sb)
    with pytest.raises(ValueError, match="unknown fp8 GEMM backend"):
        fp8k.set_default_backend("cublas")


@pytest.mark.parametrize("accepts_gqa", [True, False], ids=["native_gqa", "folded"])
def test_cudnn_adapter_gqa_or_fold(monkeypatch, accepts_gqa):
    """cudnn backend with a fake SDPA (cuDNN does not run on the CPU): SDPA's own GQA on strided views where the
    kernel takes it; where it raises, the query heads are folded instead, decided once, same result."""
    calls = []

    def fake_sdpa(q, k, v, scale=None, enable_gqa=False):
        calls.append(enable_gqa)
        if enable_gqa and not accepts_gqa:
            raise RuntimeError("No available kernel")
        rep = q.shape[1] // k.shape[1]
        k, v = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
        s = q.double() @ k.double().transpose(-1, -2) * (q.shape[-1] ** -0.5 if scale is None else scale)
        return (torch.softmax(s, -1) @ v.double()).to(q.dtype)

    monkeypatch.setattr(att.F, "scaled_dot_product_attention", fake_sdpa)
    monkeypatch.setattr(att, "_cudnn_native_gqa", None)
    for case in (SELF, CROSS):
        q, k, v = make_qkv(case["sq"], case["sk"])
        out = att.cudnn_range_attention(q, k, v, case["qr"], case["kr"])
        torch.testing.assert_close(out.double(), reference(q, k, v, case["qr"], case["kr"]), atol=1e-5, rtol=1e-5)
    assert att._cudnn_native_gqa is accepts_gqa
    # native: every call with enable_gqa; folded: one rejected try, then the rest folded (no GQA asked)
    assert calls == ([True] * 5 if accepts_gqa else [True] + [False] * 5)


# ----------------------------------------------------------------------------- GPU

GPU_BACKENDS = ["cudnn", "flex", "flash", "magi"]


@pytest.mark.gpu
@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_gpu_backend_vs_sdpa(backend):
    """MAGI-like bf16 case: 4 chunks of 300 tokens (not multiples of 128) after a 600-token cache, window of
    3 chunks, GQA 12:4, d=128; cross-attention with one empty caption. Outputs are O(1); bf16 P/output rounding
    gives ~1e-2 abs, so 3e-2 abs vs the float64 reference (and vs SDPA) catches any wrong range or head mapping."""
    q = torch.zeros(1, 1, 1, device="cuda", dtype=torch.bfloat16)
    why = att._why_unusable(backend, q)
    if why:
        pytest.skip(f"{backend}: {why}")
    ct = 300
    qr = [(i * ct, (i + 1) * ct) for i in range(4)]
    cases = [(1200, 1800, qr, [(max(0, i - 2) * ct, (i + 3) * ct) for i in range(4)]),
             (1200, 90, qr, [(0, 40), (40, 40), (40, 64), (64, 90)])]
    for sq, sk, qr, kr in cases:
        q, k, v = make_qkv(sq, sk, nh=12, g=4, d=128, dtype=torch.bfloat16, device="cuda")
        out = att.range_attention(q, k, v, qr, kr, backend=backend)
        assert att.resolve_backend(backend, q) == backend  # passed its one-time check, no silent fallback
        base = att.range_attention(q, k, v, qr, kr, backend="sdpa")
        ref = reference(q.cpu(), k.cpu(), v.cpu(), qr, kr)
        assert out.dtype == torch.bfloat16 and out.shape == q.shape
        assert (out.double().cpu() - ref).abs().max() < 3e-2
        assert (out.float() - base.float()).abs().max() < 3e-2
        assert out[qr[1][0]:qr[1][1]].abs().max() == 0 if kr[1][0] == kr[1][1] else True


@pytest.mark.gpu
def test_gpu_sdpa_uses_a_fused_kernel():
    """With the math kernel disabled SDPA must still run: the math fallback materialises (nh, Sq, Sk) scores."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    q, k, v = make_qkv(SELF["sq"], SELF["sk"], nh=12, g=4, d=128, dtype=torch.bfloat16, device="cuda")
    with sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.CUDNN_ATTENTION]):
        out = att.range_attention(q, k, v, SELF["qr"], SELF["kr"], backend="sdpa")
    assert (out.double().cpu() - reference(q.cpu(), k.cpu(), v.cpu(), SELF["qr"], SELF["kr"])).abs().max() < 3e-2


@pytest.mark.gpu
def test_gpu_auto_backend_is_usable():
    q = torch.zeros(4, 2, 128, device="cuda", dtype=torch.bfloat16)
    assert att.resolve_backend(None, q) in att.available_backends(q)


@pytest.mark.gpu
def test_gpu_scaled_mm_vs_dequant():
    """cuBLASLt fp8 with FAST_ACCUM: products of e4m3 values are exact; Hopper's fast-accum tensor-core sums keep
    ~14+ mantissa bits, so the accumulation error stays below 2^-10 of sum |x w|; bf16 output rounding adds
    <= 2^-9 relative. A transposed weight or a wrong scale gives O(1) relative errors."""
    if not capability.fp8_gemm_supported("cuda"):
        pytest.skip("fp8 GEMM needs sm89+")
    x_q, w_q, sa, sb = _fp8_case(m=200, n=384, kdim=1024, device="cuda")
    assert fp8k._resolve(None, x_q, w_q) == "scaled_mm"
    out = fp8k.fp8_matmul(x_q, w_q, sa, sb)
    deq = fp8k.fp8_matmul(x_q, w_q, sa, sb, backend="dequant")
    ref, bound = _fp8_reference(x_q, w_q, sa, sb)
    for y in (out, deq):
        err = (y.double().cpu() - ref).abs()
        assert (err <= 2 ** -8 * ref.abs() + 2 ** -10 * bound).all()
    assert ((out.float() - deq.float()).norm() / deq.float().norm()) < 1e-2


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_out_argument_writes_into_a_strided_view(backend):
    """out= (here the left half of a wider buffer, as the DiT layer passes it) gets the same values, uncovered rows
    zeroed, and nothing outside the view is touched."""
    case = CROSS
    q, k, v = make_qkv(case["sq"], case["sk"])
    nh, d = q.shape[1:]
    buf = torch.full((case["sq"], 2 * nh * d), 7.0, dtype=q.dtype)
    view = buf[:, : nh * d].view(case["sq"], nh, d)
    got = att.range_attention(q, k, v, case["qr"], case["kr"], backend=backend, out=view)
    want = att.range_attention(q, k, v, case["qr"], case["kr"], backend=backend)
    assert got.data_ptr() == view.data_ptr() and torch.equal(view, want)
    assert (buf[:, nh * d:] == 7).all()
    with pytest.raises(ValueError, match="out must be"):
        att.range_attention(q, k, v, case["qr"], case["kr"], backend=backend, out=view[:-1])
