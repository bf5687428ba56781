"""The element-wise islands that `compile_ops` hands to torch.compile: compiled == eager, and the eager versions
equal the modules they replace. Also the GQA head folding of the cuDNN attention backend."""
import pytest
import torch
import torch.nn.functional as F

import magi_core  # noqa: F401
from magi_core.dit.layer import _gated_residual, _silu_mul_fused, norm_rope, silu_mul
from magi_core.dit.layers import LayerNorm1p
from magi_core.dit.rope import LearnableRoPE, apply_rope
from magi_core.dit.weight_fp8 import dequantize
from magi_core.kernels.attention import fold_heads, sdpa_range_attention, unfold_heads
from magi_core.kernels.compiled import compiled
from magi_core.kernels.fp8 import FP8, quantize_fp8


def _rand(*shape, seed=0, dtype=torch.float32):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).to(dtype)


def _norm(d, seed):
    n = LayerNorm1p(d, 1e-6, True, torch.float32)
    n.weight.data, n.bias.data = _rand(d, seed=seed) * 0.1, _rand(d, seed=seed + 1) * 0.1
    return n


def test_eager_islands_equal_the_modules_they_replace():
    d, heads, S = 32, 4, 48
    x = _rand(2, S, heads * d, seed=1, dtype=torch.bfloat16)
    norm = _norm(d, 2)
    rope = LearnableRoPE(d).table(3, 4, 4).float()
    assert rope.shape[0] == S
    want = apply_rope(norm(x.view(2, S, heads, d).float()), rope).to(x.dtype)
    assert torch.equal(norm_rope(x, heads, d, norm.weight, norm.bias, norm.eps, True, rope), want)
    h = 64
    post = _norm(h, 3)
    y, res = _rand(2, S, h, seed=4, dtype=torch.bfloat16), _rand(2, S, h, seed=5, dtype=torch.bfloat16)
    gate = _rand(2, 3, h, seed=6, dtype=torch.bfloat16)
    g = y.float().view(2, 3, S // 3, h) * gate.float()[:, :, None]
    want = (post(g.view(2, S, h)) + res.float()).to(torch.bfloat16)
    assert torch.equal(_gated_residual(y, res, gate, post.weight, post.bias, post.eps, True, S // 3), want)
    z = _rand(2, 50, 2 * h, seed=7, dtype=torch.bfloat16)  # row blocks of 16 over 100 rows: a partial last block
    assert torch.equal(silu_mul(z, rows=16), _silu_mul_fused(z))


@pytest.mark.parametrize("chunks", [1, 3])
def test_compiled_islands_equal_eager(chunks):
    """Inductor (CPU here, CUDA in the product) computes the same values: fp32 math, bf16 rounding at the end."""
    d, heads, S, h = 32, 4, 48, 64
    x = _rand(1, S, heads * d, seed=1, dtype=torch.bfloat16)
    norm, post = _norm(d, 2), _norm(h, 3)
    rope = LearnableRoPE(d).table(3, 4, 4).float()
    a = norm_rope(x, heads, d, norm.weight, norm.bias, norm.eps, True, rope)
    b = compiled(norm_rope)(x, heads, d, norm.weight, norm.bias, norm.eps, True, rope)
    assert (a.float() - b.float()).abs().max() <= 2 ** -7 * a.float().abs().max()  # at most 1 bf16 ulp apart
    y, res = _rand(1, S, h, seed=4, dtype=torch.bfloat16), _rand(1, S, h, seed=5, dtype=torch.bfloat16)
    gate = _rand(1, chunks, h, seed=6, dtype=torch.bfloat16)
    a = _gated_residual(y, res, gate, post.weight, post.bias, post.eps, True, S // chunks)
    b = compiled(_gated_residual)(y, res, gate, post.weight, post.bias, post.eps, True, S // chunks)
    assert (a.float() - b.float()).abs().max() <= 2 ** -7 * a.float().abs().max()
    z = _rand(S, 2 * h, seed=7, dtype=torch.bfloat16)
    a, b = silu_mul(z), compiled(_silu_mul_fused)(z)
    assert (a.float() - b.float()).abs().max() <= 2 ** -7 * a.float().abs().max()
    scale = _rand(h, seed=8).abs() * 0.05 + 0.01
    a, b = quantize_fp8(y, scale), compiled(quantize_fp8)(y, scale)
    assert a.dtype == b.dtype == FP8 and torch.equal(a.float(), b.float())
    w = _rand(h, h, seed=9).to(FP8)
    s = _rand(h, 1, seed=10).abs() * 0.01
    assert torch.equal(dequantize(w, s, torch.bfloat16), compiled(dequantize)(w, s, torch.bfloat16))


def test_token_counts_share_a_graph_and_other_sizes_are_constants(monkeypatch):
    """compiled(fn, dynamic): forwards of 1..5 chunks (the token dims named dynamic) reuse one graph, in which the
    head count, head size and eps are constants; a new head count (queries vs keys) makes its own graph."""
    import torch._dynamo

    from magi_core.dit.layer import TOKEN_DIMS
    from magi_core.kernels import compiled as compiled_mod

    graphs = []

    def backend(gm, inputs):
        graphs.append([tuple(i.shape) if isinstance(i, torch.Tensor) else i for i in inputs])
        return gm

    real = torch.compile
    monkeypatch.setattr(compiled_mod, "_compiled", {})
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: real(fn, **{**kw, "backend": backend}))
    torch._dynamo.reset()
    d, norm = 32, _norm(32, 2)
    for heads, chunks in [(4, 1), (4, 2), (4, 5), (2, 1), (2, 3)]:
        island = compiled(norm_rope, TOKEN_DIMS)  # as every forward of the DiT asks for it
        rope = LearnableRoPE(d).table(3 * chunks, 4, 4).float()
        x = _rand(1, rope.shape[0], heads * d, seed=chunks, dtype=torch.bfloat16)
        want = norm_rope(x, heads, d, norm.weight, norm.bias, norm.eps, True, rope)
        assert torch.equal(island(x, heads, d, norm.weight, norm.bias, norm.eps, True, rope), want)
    torch._dynamo.reset()
    assert len(graphs) == 2, graphs  # one per head count
    for g in graphs:
        assert not any(isinstance(i, (int, float)) for i in g)  # heads, d, eps, one_plus: constants, not inputs
        sym = {str(i) for i in g if not isinstance(i, tuple)}
        assert len(sym) == 1  # the token count (S): the one symbolic size


def test_past_the_recompile_limit_an_island_runs_eagerly(monkeypatch):
    """A server that made videos of many sizes (tokens per chunk is a constant of the gated residual's graphs) hits
    torch.compile's recompile limit: the island goes on uncompiled with one warning (fullgraph=True made it an error)."""
    import torch._dynamo

    from magi_core.kernels import compiled as compiled_mod

    real = torch.compile
    monkeypatch.setattr(compiled_mod, "_compiled", {})
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: real(fn, **{**kw, "backend": "eager"}))
    torch._dynamo.reset()
    h, post = 64, _norm(64, 3)
    island = compiled(_gated_residual, {0: (0, 1), 1: (0, 1), 2: (0, 1)})
    limit = "recompile_limit" if hasattr(torch._dynamo.config, "recompile_limit") else "cache_size_limit"
    # (config.patch, not monkeypatch: undoing a monkeypatched alias deletes the setting for the later tests)
    with torch._dynamo.config.patch(**{limit: 2}), pytest.warns(RuntimeWarning, match="runs uncompiled from now on"):
        for ctn in (8, 12, 16, 20):  # four video sizes
            y, res = _rand(1, 2 * ctn, h, seed=ctn, dtype=torch.bfloat16), _rand(1, 2 * ctn, h, seed=1, dtype=torch.bfloat16)
            gate = _rand(1, 2, h, seed=2, dtype=torch.bfloat16)
            args = (y, res, gate, post.weight, post.bias, post.eps, True, ctn)
            assert torch.equal(island(*args), _gated_residual(*args))
    torch._dynamo.reset()


def test_fold_heads_is_exact_gqa():
    """Query heads of one KV head stacked along the query axis: plain attention per KV head == GQA attention."""
    L, nh, g, d = 20, 8, 2, 16
    q, k, v = _rand(L, nh, d, seed=1), _rand(30, g, d, seed=2), _rand(30, g, d, seed=3)
    folded = fold_heads(q, g)
    assert folded.shape == (1, g, nh // g * L, d)
    assert torch.equal(unfold_heads(folded, L), q)
    out = unfold_heads(F.scaled_dot_product_attention(folded, k.transpose(0, 1)[None], v.transpose(0, 1)[None]), L)
    ref = sdpa_range_attention(q.double(), k.double(), v.double(), [(0, L)], [(0, 30)])
    assert torch.allclose(out.double(), ref, atol=1e-6)
