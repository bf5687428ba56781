"""MAGI-1 transformer layer: parallel self/cross attention, one linear_proj, gated sandwich norms
(official `inference/model/dit/dit_module.py`)."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from magi_core.kernels.attention import range_attention
from magi_core.kernels.attention_fp8 import fp8_range_attention, q_scale_bound, quantize_q_bound
from magi_core.kernels.compiled import compiled, compiling, maybe_compiled
from magi_core.kernels.fp8 import quantize_fp8

from ..config import DiTConfig
from .cache import KVCache
from .layers import (LayerNorm1p, PerChannelFp8Linear, PerTensorFp8Linear, fp8_input_scale, linear_fp32, linear_gelu,
                     make_linear)
from .rope import apply_rope


@dataclass
class ForwardMeta:
    """Per-forward packing shared by all layers (built once by VideoDiT)."""

    batch: int  # N
    seq: int  # S tokens per batch element
    chunks: int  # dn chunks per batch element
    tokens_per_chunk: int  # ctn
    rope: torch.Tensor  # (S, 6*nb) [sin | cos] fp32
    q_ranges: list  # self-attention query ranges on the flattened (N*S) axis
    k_ranges: list  # key ranges on [cached ; flattened current] axis
    xq_ranges: list  # cross-attention query ranges (= q_ranges)
    xk_ranges: list  # ranges into the flat valid-caption tokens
    cache: KVCache | None = None
    cache_read: tuple = (0, 0)  # absolute chunks [start, end) prepended from the cache
    cache_write_chunks: int = 0  # leading current chunks written to the cache at chunk `cache_write_at`
    cache_write_at: int = 0
    precision: str = "fast"
    attn_backend: str | None = None
    compile_ops: bool = False  # fuse the element-wise islands with torch.compile (CUDA only)
    e4m3_queries: bool = False  # self-attention runs FP8 (kernels/attention_fp8.py): queries made in e4m3
    cp: object | None = None  # context parallel: this rank's Shard (magi_core/parallel/ulysses.py), else None


class LinearQKV(nn.Module):
    """Pre-norm plus the four separate projections q, qx, k, v (no fused tensor in the checkpoint)."""

    def __init__(self, cfg: DiTConfig, i: int):
        super().__init__()
        h = cfg.hidden_size
        self.layer_norm = nn.LayerNorm(h, eps=cfg.layernorm_epsilon, dtype=cfg.params_dtype)
        self.q = make_linear(cfg, i, h, cfg.q_dim, PerTensorFp8Linear)
        self.qx = make_linear(cfg, i, h, cfg.q_dim, PerTensorFp8Linear)
        self.k = make_linear(cfg, i, h, cfg.kv_dim, PerTensorFp8Linear)
        self.v = make_linear(cfg, i, h, cfg.kv_dim, PerTensorFp8Linear)

    def fp8_input_scales(self) -> tuple:
        """The four projections' fp8 input scales (q, qx, k, v) when all four are fp8 linears, else ()."""
        scales = tuple(fp8_input_scale(lin) for lin in (self.q, self.qx, self.k, self.v))
        return () if any(sc is None for sc in scales) else scales


_planar: dict = {}


def planar_columns(q_dim: int, device) -> torch.Tensor:
    """Column j of [self | cross] -> its column in the reference's interleaved [self_0, cross_0, ..., self_7,
    cross_7] layout (8 slices of q_dim/8): linear_proj.weight[:, idx] takes [self | cross] as it is."""
    key = (q_dim, str(device))
    if key not in _planar:
        j = torch.arange(2 * q_dim)
        part, rem = j // q_dim, j % q_dim
        w = q_dim // 8
        _planar[key] = ((rem // w) * 2 * w + part * w + rem % w).to(device)
    return _planar[key]


class SelfCrossAttention(nn.Module):
    """Reference `FullyParallelAttention`: block-causal self-attention and caption cross-attention."""

    def __init__(self, cfg: DiTConfig, i: int):
        super().__init__()
        self.cfg, self.index = cfg, i
        d, eps, dt = cfg.kv_channels, cfg.layernorm_epsilon, cfg.params_dtype
        self.linear_qkv = LinearQKV(cfg, i)
        self.linear_kv_xattn = nn.Linear(cfg.xattn_dim, 2 * cfg.kv_dim, bias=False, dtype=dt)
        self.linear_proj = make_linear(cfg, i, 2 * cfg.q_dim, cfg.hidden_size, PerChannelFp8Linear)
        self.q_layernorm = LayerNorm1p(d, eps, cfg.apply_layernorm_1p, dt)
        self.q_layernorm_xattn = LayerNorm1p(d, eps, cfg.apply_layernorm_1p, dt)
        self.k_layernorm = LayerNorm1p(d, eps, cfg.apply_layernorm_1p, dt)
        self.k_layernorm_xattn = LayerNorm1p(d, eps, cfg.apply_layernorm_1p, dt)

    def _qk(self, a, proj, norm, heads, m: ForwardMeta, island=None):
        """Projection -> per-head LayerNorm (fp32) -> RoPE (fp32) -> bf16 (or island's output)."""
        x = proj(a)
        fn = maybe_compiled(island or norm_rope, m.compile_ops, x, TOKEN_DIMS)
        return fn(x, heads, self.cfg.kv_channels, norm.weight, norm.bias, norm.eps, norm.one_plus, m.rope)

    def forward(self, hs: torch.Tensor, y_xattn: torch.Tensor, m: ForwardMeta, handoff: list | None = None):
        """handoff: holds hs's pre-norm when the previous layer's last kernel made it (see `gated_residual`);
        taken out of it, so it is freed as soon as the projections have read it."""
        cfg = self.cfg
        nh, g, d = cfg.num_attention_heads, cfg.num_query_groups, cfg.kv_channels
        N, S = hs.shape[:2]
        a = handoff.pop() if handoff else pre_norm(hs, self.linear_qkv.layer_norm, m.compile_ops)
        # bf16 pre-norm, or (fp8 layers, compiled) one fp8 copy per projection, quantized with its scale
        aq, aqx, ak, av = a if isinstance(a, tuple) else (a,) * 4
        del a

        q = self._qk(aq, self.linear_qkv.q, self.q_layernorm, nh, m, norm_rope_e4m3 if m.e4m3_queries else None)
        del aq
        if m.e4m3_queries:  # FP8 self-attention: the queries left the norm+RoPE island in e4m3
            q, q_descale = q
        q = q.reshape(N * S, nh, d)
        k = self._qk(ak, self.linear_qkv.k, self.k_layernorm, g, m).reshape(N * S, g, d)
        v = self.linear_qkv.v(av).reshape(N * S, g, d)
        del ak, av
        if m.cp is not None:  # CP hook: full sequence, local heads (all-to-all)
            q, k, v = m.cp.to_heads(q, k, v)
        k, v = self._with_cache(k, v, m)
        # the two attentions write straight into o = [self | cross] (N*S, 2*q_dim)
        o = hs.new_empty(N * S, 2 * cfg.q_dim)
        self_out, cross_out = o[:, :cfg.q_dim].view(N * S, nh, d), o[:, cfg.q_dim:].view(N * S, nh, d)
        if m.e4m3_queries:
            fp8_range_attention(q, k, v, m.q_ranges, m.k_ranges, out=self_out, q_descale=q_descale)
        elif m.cp is None:
            range_attention(q, k, v, m.q_ranges, m.k_ranges, backend=m.attn_backend, out=self_out)
        else:  # CP hook: back to local tokens, all heads
            self_out.copy_(m.cp.to_seq(range_attention(q, k, v, m.q_ranges, m.k_ranges, backend=m.attn_backend)))

        # cross-attention: bf16 norms with weight+1 in bf16, no RoPE
        qx = self.linear_qkv.qx(aqx).reshape(N * S, nh, d)
        del aqx
        qx = head_norm(qx, self.q_layernorm_xattn, m.compile_ops)
        kvx = self.linear_kv_xattn(y_xattn).view(-1, g, 2 * d)  # rows interleaved [K_g; V_g] per group
        kx, vx = self.k_layernorm_xattn(kvx[..., :d]), kvx[..., d:]
        range_attention(qx, kx, vx, m.xq_ranges, m.xk_ranges, backend=m.attn_backend, out=cross_out)

        o = o.view(N, S, -1)
        proj = self.linear_proj
        fp8_proj = isinstance(proj, PerChannelFp8Linear)
        if m.precision == "fast" and (FUSIONS or not fp8_proj):
            # the reference's interleaved input's sums, with proj's columns (fp8: and smoothing scales) permuted
            cols = planar_columns(cfg.q_dim, o.device)
            return proj(o, cols=cols) if fp8_proj else F.linear(o, proj.weight.index_select(1, cols))
        # reference: [self | cross] -> 8 slices interleaved: [self_0, cross_0, ..., self_7, cross_7]
        o = o.view(N, S, 2, 8, -1).transpose(2, 3).reshape(N, S, -1)
        if fp8_proj:
            return proj(o)  # official fp8 layer: bf16 in, bf16 out
        return linear_fp32(o, self.linear_proj)  # exact: the reference's fp32 GEMM

    def _with_cache(self, k, v, m: ForwardMeta):
        if m.cache is None:
            return k, v
        kv = m.cache.read_before(self.index, *m.cache_read, k, v)  # before this write (it may evict)
        if m.cache_write_chunks:
            n = m.cache_write_chunks * m.tokens_per_chunk
            m.cache.write(self.index, m.cache_write_at, torch.cat([k[:n], v[:n]], dim=-1), m.tokens_per_chunk,
                           fresh=True)
        return kv


# benches only, to time what they buy in one call (both on in the product; BENCHMARKS.md session 10):
FUSIONS = True  # False: pre-norms, the cross-attention query norm and the fp8 layers' input quantizations run as
#                 passes of their own, and fast fp8 `linear_proj` takes the interleaved input
GELU_EPILOGUE = True  # False: `fast` runs fc1 and GELU as two passes, as `exact` does
TOKEN_DIMS = {0: (0, 1), 7: (0,)}  # norm_rope's dims that change from forward to forward: x's (N, S), rope's S
GATED_TOKEN_DIMS = {0: (0, 1), 1: (0, 1), 2: (0, 1)}  # _gated_residual's: x's and residual's (N, S), gate's chunks


def _norm_rope_f32(x, heads: int, d: int, w, b, eps: float, rope):
    h = x.view(*x.shape[:-1], heads, d).float()
    return apply_rope(F.layer_norm(h, (d,), w, b, eps), rope)


def norm_rope(x, heads: int, d: int, w, b, eps: float, one_plus: bool, rope):
    """(.., heads*d) projection -> per-head LayerNorm1p in fp32 -> RoPE -> x's dtype."""
    return _norm_rope_f32(x, heads, d, w + 1 if one_plus else w, b, eps, rope).to(x.dtype)


def norm_rope_e4m3(x, heads: int, d: int, w, b, eps: float, one_plus: bool, rope):
    """norm_rope's fp32 result in e4m3 for FP8 attention, with a scale known from the norm's weights
    (kernels/attention_fp8.py q_scale_bound): no bf16 copy of the queries, no pass to find their amax.
    Returns (e4m3 (.., heads, d), q_descale (1,))."""
    w = w + 1 if one_plus else w
    return quantize_q_bound(_norm_rope_f32(x, heads, d, w, b, eps, rope), q_scale_bound(w, b))


def pre_norm(x, norm: nn.LayerNorm, compile_ops: bool):
    """A sublayer's pre-norm made on its own (the first layer, or the previous one streamed by block swap): compiled,
    it is the same kernel code the fused gated residual runs, so the result does not depend on which made it."""
    if not (compiling(compile_ops, x) and FUSIONS):
        return norm(x)
    return compiled(layer_norm_as_cuda, {0: (0, 1)})(x, norm.weight, norm.bias, norm.eps)


def head_norm(x, norm: LayerNorm1p, compile_ops: bool):
    """The cross-attention query norm: LayerNorm1p with bf16 weights on bf16 x (compiled on CUDA when asked)."""
    if not (compiling(compile_ops, x) and FUSIONS):
        return norm(x)
    w = norm.weight + 1 if norm.one_plus else norm.weight  # rounded in the weight's dtype, as LayerNorm1p does
    return compiled(layer_norm_as_cuda, {0: (0,)})(x, w, norm.bias, norm.eps)


def layer_norm_as_cuda(x, w, b, eps: float):
    """F.layer_norm of bf16 x with bf16 weights as PyTorch's CUDA kernel computes it: statistics and affine in
    fp32, one rounding to x's dtype (written out so Inductor fuses it into the kernel that makes x)."""
    return F.layer_norm(x.float(), x.shape[-1:], w.float(), None if b is None else b.float(), eps).to(x.dtype)


def silu_mul(x, rows: int = 8192):
    """silu(first half) * second half in fp32, one rounding (flashinfer silu_and_mul).

    Eager: row blocks, so the fp32 temporaries stay small (24B at 27k tokens would need ~7 GB at once)."""
    x2 = x.reshape(-1, x.shape[-1])
    out = x2.new_empty(x2.shape[0], x2.shape[1] // 2)
    for i in range(0, x2.shape[0], rows):
        a, b = x2[i:i + rows].float().chunk(2, dim=-1)
        out[i:i + rows] = F.silu(a) * b
    return out.view(*x.shape[:-1], -1)


def _silu_mul_fused(x):
    a, b = x.float().chunk(2, dim=-1)
    return (F.silu(a) * b).to(x.dtype)


def _gelu_fp8(x, scale):
    """F.gelu of bf16 x (fp32 math, bf16 result), then quantize_fp8 with the next fp8 linear's scale."""
    return quantize_fp8(F.gelu(x.float()).to(x.dtype), scale)


def _silu_mul_fp8(x, scale):
    return quantize_fp8(_silu_mul_fused(x), scale)


class MLP(nn.Module):
    def __init__(self, cfg: DiTConfig, i: int):
        super().__init__()
        h, Fd = cfg.hidden_size, cfg.ffn_hidden_size
        self.glu = cfg.gated_linear_unit
        self.layer_norm = nn.LayerNorm(h, eps=cfg.layernorm_epsilon, dtype=cfg.params_dtype)
        self.linear_fc1 = make_linear(cfg, i, h, Fd * (2 if self.glu else 1), PerTensorFp8Linear)
        self.linear_fc2 = make_linear(cfg, i, Fd, h, PerChannelFp8Linear)

    def fp8_input_scales(self) -> tuple:
        """fc1's fp8 input scale, or () for a bf16 fc1 (the pre-norm's consumer; see `gated_residual`)."""
        scale = fp8_input_scale(self.linear_fc1)
        return () if scale is None else (scale,)

    def forward(self, handoff: list, compile_ops: bool = False, gelu_epilogue: bool = False):
        """handoff: holds the pre-normed input (`self.layer_norm(x)`, made by the attention's gated residual), bf16 or
        (a1,): fc1's fp8 input; taken out, so it is freed once fc1 has read it. gelu_epilogue (`fast` precision):
        GELU inside fc1's GEMM on CUDA (layers.py `linear_gelu`)."""
        a = handoff.pop()
        a = a[0] if isinstance(a, tuple) else a
        fused, cuda = compiling(compile_ops, a), a.is_cuda
        if gelu_epilogue and cuda and not self.glu and fp8_input_scale(self.linear_fc1) is None:
            x = linear_gelu(a, self.linear_fc1)  # bf16 GEMM (or fp8 storage): GELU in its epilogue
            del a
        else:
            x = self.linear_fc1(a)
            del a
            fc2_scale = fp8_input_scale(self.linear_fc2)
            if fused and fc2_scale is not None and FUSIONS:  # activation and fc2's fp8 quantization in one kernel
                return self.linear_fc2(compiled(_silu_mul_fp8 if self.glu else _gelu_fp8, {0: (0, 1)})(x, fc2_scale))
            if self.glu:
                x = compiled(_silu_mul_fused, {0: (0, 1)})(x) if fused else silu_mul(x)
            else:
                x = F.gelu(x)
        return self.linear_fc2(x)


class AdaModulate(nn.Module):
    def __init__(self, cfg: DiTConfig):
        super().__init__()
        self.proj = nn.Sequential(
            nn.Linear(cfg.cond_dim, int(2 * cfg.hidden_size * cfg.cond_gating_ratio), dtype=cfg.params_dtype))

    def forward(self, cond):
        return self.proj(F.silu(cond))


def gated_residual(x, residual, gate, post_norm, chunks: int, compile_ops: bool = False, consumer=None,
                   handoff: list | None = None):
    """bf16(LN_post(x_fp32 * gate_fp32 per chunk) + residual_fp32): the gate acts before the post-norm.

    consumer: the next sublayer (LinearQKV or MLP): then its pre-norm a = consumer.layer_norm(result) is also made,
    in the same kernel when compiled (the result is not read again, no LayerNorm pass of its own), and appended to
    handoff; when the consumer's projections are fp8 linears, a is instead a tuple of their fp8 inputs, each
    quantized with its scale (no bf16 copy, no quantization passes)."""
    tokens_per_chunk = x.shape[1] // chunks  # a constant of the compiled kernel (the chunk count is not)
    args = (x, residual, gate, post_norm.weight, post_norm.bias, post_norm.eps, post_norm.one_plus, tokens_per_chunk)
    if consumer is None:
        return maybe_compiled(_gated_residual, compile_ops, x, GATED_TOKEN_DIMS)(*args)
    norm = consumer.layer_norm
    if compiling(compile_ops, x) and FUSIONS:
        scales = consumer.fp8_input_scales()
        fn = compiled(_PRE_NORM_ISLANDS[len(scales)], GATED_TOKEN_DIMS)  # one function per count: its own graphs
        out, *a = fn(*args, norm.weight, norm.bias, norm.eps, *scales)
        handoff.append(tuple(a) if scales else a[0])
        return out
    out = maybe_compiled(_gated_residual, compile_ops, x, GATED_TOKEN_DIMS)(*args)
    handoff.append(norm(out))
    return out


def _gated_residual(x, residual, gate, w, b, eps: float, one_plus: bool, tokens_per_chunk: int):
    N, S, h = x.shape
    x = x.float().view(N, -1, tokens_per_chunk, h) * gate.float()[:, :, None, :]
    x = F.layer_norm(x.view(N, S, h), (h,), w + 1 if one_plus else w, b, eps)
    return (x + residual.float()).to(residual.dtype)


def _gated_residual_pre_norm(x, residual, gate, w, b, eps: float, one_plus: bool, tokens_per_chunk: int, nw, nb,
                             neps: float):
    """(_gated_residual, its pre-norm in bf16)."""
    out = _gated_residual(x, residual, gate, w, b, eps, one_plus, tokens_per_chunk)
    return out, layer_norm_as_cuda(out, nw, nb, neps)


def _gated_residual_pre_norm_fp8(x, residual, gate, w, b, eps, one_plus, tokens_per_chunk, nw, nb, neps, s1):
    """(_gated_residual, its pre-norm quantized as the fp8 linear would: quantize_fp8 of the bf16 value)."""
    out, a = _gated_residual_pre_norm(x, residual, gate, w, b, eps, one_plus, tokens_per_chunk, nw, nb, neps)
    return out, quantize_fp8(a, s1)


def _gated_residual_pre_norm_fp8x4(x, residual, gate, w, b, eps, one_plus, tokens_per_chunk, nw, nb, neps, s1, s2,
                                   s3, s4):
    """As _gated_residual_pre_norm_fp8, for four projections (q, qx, k, v), each with its own scale."""
    out, a = _gated_residual_pre_norm(x, residual, gate, w, b, eps, one_plus, tokens_per_chunk, nw, nb, neps)
    return out, *(quantize_fp8(a, sc) for sc in (s1, s2, s3, s4))


# by the number of fp8 consumers; separate functions, so each keeps its own torch.compile graph budget
_PRE_NORM_ISLANDS = {0: _gated_residual_pre_norm, 1: _gated_residual_pre_norm_fp8, 4: _gated_residual_pre_norm_fp8x4}


class TransformerLayer(nn.Module):
    def __init__(self, cfg: DiTConfig, i: int):
        super().__init__()
        eps = cfg.layernorm_epsilon
        self.ada_modulate_layer = AdaModulate(cfg)
        self.self_attention = SelfCrossAttention(cfg, i)
        self.self_attn_post_norm = LayerNorm1p(cfg.hidden_size, eps, cfg.apply_layernorm_1p, cfg.params_dtype)
        self.mlp = MLP(cfg, i)
        self.mlp_post_norm = LayerNorm1p(cfg.hidden_size, eps, cfg.apply_layernorm_1p, cfg.params_dtype)

    def forward(self, hs, condition, y_xattn, m: ForwardMeta, handoff: list | None = None, next_qkv=None):
        """handoff: holds hs's attention pre-norm if the previous layer made it; next_qkv: the next layer's
        LinearQKV, whose pre-norm this layer's last kernel then makes and leaves in handoff."""
        handoff = [] if handoff is None else handoff
        gate = self.ada_modulate_layer(condition)  # (N, dn, 2h) bf16
        gate = torch.tanh(gate.float()).to(gate.dtype)  # softcap with cap 1, stored back as bf16
        chunks = m.chunks
        if m.cp is not None:  # CP hook: local tokens span chunk boundaries -> one gate row per token
            gate = m.cp.per_token(gate)
            chunks = gate.shape[1]
        gate_msa, gate_mlp = gate.chunk(2, dim=-1)
        attn = self.self_attention(hs, y_xattn, m, handoff)
        hs = gated_residual(attn, hs, gate_msa, self.self_attn_post_norm, chunks, m.compile_ops, self.mlp, handoff)
        del attn
        mlp = self.mlp(handoff, m.compile_ops, gelu_epilogue=m.precision == "fast" and GELU_EPILOGUE)
        return gated_residual(mlp, hs, gate_mlp, self.mlp_post_norm, chunks, m.compile_ops, next_qkv, handoff)


class TransformerBlock(nn.Module):
    def __init__(self, cfg: DiTConfig):
        super().__init__()
        self.layers = nn.ModuleList(TransformerLayer(cfg, i) for i in range(cfg.num_layers))
        self.final_layernorm = LayerNorm1p(cfg.hidden_size, cfg.layernorm_epsilon, cfg.apply_layernorm_1p,
                                           cfg.params_dtype)
