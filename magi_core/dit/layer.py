"""MAGI-1 transformer layer: parallel self/cross attention, one linear_proj, gated sandwich norms
(official `inference/model/dit/dit_module.py`)."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from magi_core.kernels.attention import range_attention
from magi_core.kernels.attention_fp8 import fp8_range_attention, q_scale_bound, quantize_q_bound
from magi_core.kernels.compiled import compiled, maybe_compiled

from ..config import DiTConfig
from .cache import KVCache
from .layers import LayerNorm1p, PerChannelFp8Linear, PerTensorFp8Linear, linear_fp32, make_linear
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

    def forward(self, hs: torch.Tensor, y_xattn: torch.Tensor, m: ForwardMeta):
        cfg = self.cfg
        nh, g, d = cfg.num_attention_heads, cfg.num_query_groups, cfg.kv_channels
        N, S = hs.shape[:2]
        a = self.linear_qkv.layer_norm(hs)  # (N, S, h) bf16, plain gamma

        q = self._qk(a, self.linear_qkv.q, self.q_layernorm, nh, m, norm_rope_e4m3 if m.e4m3_queries else None)
        if m.e4m3_queries:  # FP8 self-attention: the queries left the norm+RoPE island in e4m3
            q, q_descale = q
        q = q.reshape(N * S, nh, d)
        k = self._qk(a, self.linear_qkv.k, self.k_layernorm, g, m).reshape(N * S, g, d)
        v = self.linear_qkv.v(a).reshape(N * S, g, d)
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
        qx = self.linear_qkv.qx(a).reshape(N * S, nh, d)
        qx = self.q_layernorm_xattn(qx)
        kvx = self.linear_kv_xattn(y_xattn).view(-1, g, 2 * d)  # rows interleaved [K_g; V_g] per group
        kx, vx = self.k_layernorm_xattn(kvx[..., :d]), kvx[..., d:]
        range_attention(qx, kx, vx, m.xq_ranges, m.xk_ranges, backend=m.attn_backend, out=cross_out)

        o = o.view(N, S, -1)
        if m.precision == "fast" and not isinstance(self.linear_proj, PerChannelFp8Linear):
            # the same sums as the reference's interleaved input, with linear_proj's columns permuted instead
            w = self.linear_proj.weight
            return F.linear(o, w.index_select(1, planar_columns(cfg.q_dim, w.device)))
        # reference: [self | cross] -> 8 slices interleaved: [self_0, cross_0, ..., self_7, cross_7]
        o = o.view(N, S, 2, 8, -1).transpose(2, 3).reshape(N, S, -1)
        if isinstance(self.linear_proj, PerChannelFp8Linear):
            return self.linear_proj(o)  # official fp8 layer: bf16 in, bf16 out
        return linear_fp32(o, self.linear_proj)  # exact: the reference's fp32 GEMM

    def _with_cache(self, k, v, m: ForwardMeta):
        if m.cache is None:
            return k, v
        cached = m.cache.read(self.index, *m.cache_read, device=k.device)
        if m.cache_write_chunks:
            n = m.cache_write_chunks * m.tokens_per_chunk
            m.cache.write(self.index, m.cache_write_at, torch.cat([k[:n], v[:n]], dim=-1), m.tokens_per_chunk)
        if cached is None:
            return k, v
        d = self.cfg.kv_channels
        return torch.cat([cached[..., :d], k], 0), torch.cat([cached[..., d:], v], 0)


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


class MLP(nn.Module):
    def __init__(self, cfg: DiTConfig, i: int):
        super().__init__()
        h, Fd = cfg.hidden_size, cfg.ffn_hidden_size
        self.glu = cfg.gated_linear_unit
        self.layer_norm = nn.LayerNorm(h, eps=cfg.layernorm_epsilon, dtype=cfg.params_dtype)
        self.linear_fc1 = make_linear(cfg, i, h, Fd * (2 if self.glu else 1), PerTensorFp8Linear)
        self.linear_fc2 = make_linear(cfg, i, Fd, h, PerChannelFp8Linear)

    def forward(self, x, compile_ops: bool = False):
        x = self.linear_fc1(self.layer_norm(x))
        if self.glu:
            x = compiled(_silu_mul_fused, {0: (0, 1)})(x) if compile_ops and x.is_cuda else silu_mul(x)
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


def gated_residual(x, residual, gate, post_norm, chunks: int, compile_ops: bool = False):
    """bf16(LN_post(x_fp32 * gate_fp32 per chunk) + residual_fp32): the gate acts before the post-norm."""
    fn = maybe_compiled(_gated_residual, compile_ops, x, GATED_TOKEN_DIMS)
    tokens_per_chunk = x.shape[1] // chunks  # a constant of the compiled kernel (the chunk count is not)
    return fn(x, residual, gate, post_norm.weight, post_norm.bias, post_norm.eps, post_norm.one_plus, tokens_per_chunk)


def _gated_residual(x, residual, gate, w, b, eps: float, one_plus: bool, tokens_per_chunk: int):
    N, S, h = x.shape
    x = x.float().view(N, -1, tokens_per_chunk, h) * gate.float()[:, :, None, :]
    x = F.layer_norm(x.view(N, S, h), (h,), w + 1 if one_plus else w, b, eps)
    return (x + residual.float()).to(residual.dtype)


class TransformerLayer(nn.Module):
    def __init__(self, cfg: DiTConfig, i: int):
        super().__init__()
        eps = cfg.layernorm_epsilon
        self.ada_modulate_layer = AdaModulate(cfg)
        self.self_attention = SelfCrossAttention(cfg, i)
        self.self_attn_post_norm = LayerNorm1p(cfg.hidden_size, eps, cfg.apply_layernorm_1p, cfg.params_dtype)
        self.mlp = MLP(cfg, i)
        self.mlp_post_norm = LayerNorm1p(cfg.hidden_size, eps, cfg.apply_layernorm_1p, cfg.params_dtype)

    def forward(self, hs, condition, y_xattn, m: ForwardMeta):
        gate = self.ada_modulate_layer(condition)  # (N, dn, 2h) bf16
        gate = torch.tanh(gate.float()).to(gate.dtype)  # softcap with cap 1, stored back as bf16
        chunks = m.chunks
        if m.cp is not None:  # CP hook: local tokens span chunk boundaries -> one gate row per token
            gate = m.cp.per_token(gate)
            chunks = gate.shape[1]
        gate_msa, gate_mlp = gate.chunk(2, dim=-1)
        attn = self.self_attention(hs, y_xattn, m)
        hs = gated_residual(attn, hs, gate_msa, self.self_attn_post_norm, chunks, m.compile_ops)
        return gated_residual(self.mlp(hs, m.compile_ops), hs, gate_mlp, self.mlp_post_norm, chunks, m.compile_ops)


class TransformerBlock(nn.Module):
    def __init__(self, cfg: DiTConfig):
        super().__init__()
        self.layers = nn.ModuleList(TransformerLayer(cfg, i) for i in range(cfg.num_layers))
        self.final_layernorm = LayerNorm1p(cfg.hidden_size, cfg.layernorm_epsilon, cfg.apply_layernorm_1p,
                                           cfg.params_dtype)
