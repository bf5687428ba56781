"""8-bit range attention (opt-in backend "quant8"): a Triton flash-attention forward on 8-bit tensor cores.

The SageAttention recipe (INT8 Q K^T, FP8 P V). Numerics differ from bf16 attention; the error is measured in
tests and BENCHMARKS.md:
- K is smoothed (its mean over the keys subtracted: every query's scores shift by a constant, which the softmax
  ignores), then Q and K are rounded to int8 per (token, head): scale = amax over the head dim / 127. The
  softmax scale and log2(e) are folded into Q's scale. S = Q K^T accumulates exactly in int32.
- V is rounded to float8 e4m3 per (KV head, channel) over the keys of the range; the channel scale is applied
  to the output. P is rounded to e4m3 in [0, 256] (exp2 offset by 8, inside e4m3's normal range) and O = P V
  accumulates in fp32; the softmax (running max, row sums) is fp32.

One kernel launch per (query range, key range) pair, grid (query blocks, query heads); GQA by indexing the KV
head (h // heads-per-group), no K/V repeat. V is stored transposed (keys contiguous), the layout Hopper's 8-bit
tensor-core instructions read. Runs under TRITON_INTERPRET=1 on the CPU (tests); needs triton on CUDA.
"""
from __future__ import annotations

import os

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # optional: only this backend needs it
    triton = tl = None

FP8 = torch.float8_e4m3fn
FP8_MAX = 448.0
LOG2E = 1.4426950408889634


def available() -> bool:
    return triton is not None


def _configs():
    """Launch shapes tried once per head dim and GPU (triton.autotune); one under the CPU interpreter."""
    shapes = [(128, 128, 8, 3), (128, 64, 8, 3), (128, 128, 8, 2), (64, 128, 4, 3), (128, 64, 4, 4), (64, 64, 4, 3)]
    if os.environ.get("TRITON_INTERPRET") == "1":
        shapes = shapes[:1]
    return [triton.Config(dict(BM=bm, BN=bn), num_warps=w, num_stages=st) for bm, bn, w, st in shapes]


if triton is not None:

    @triton.jit
    def _quantize_rows(X, Y, S, rows, mul, D: tl.constexpr, BR: tl.constexpr):
        """Rows of X (rows, D) -> int8 Y (rounded to nearest) and fp32 S = mul * amax / 127 (per row)."""
        r = tl.program_id(0) * BR + tl.arange(0, BR)
        d = tl.arange(0, D)
        ok = r < rows
        x = tl.load(X + r[:, None] * D + d[None, :], mask=ok[:, None], other=0.0).to(tl.float32)
        amax = tl.maximum(tl.max(tl.abs(x), 1), 1e-30)
        y = x * (127.0 / amax)[:, None]
        y = y + tl.where(y >= 0, 0.5, -0.5)  # the int8 cast truncates
        tl.store(Y + r[:, None] * D + d[None, :], y.to(tl.int8), mask=ok[:, None])
        tl.store(S + r, amax * (mul / 127.0), mask=ok)

    @triton.jit
    def _block(q, qs, k_ptrs, ks_ptrs, v_ptrs, n_left, m_i, l_i, acc, BN: tl.constexpr, TAIL: tl.constexpr):
        """One key block of the online softmax; TAIL masks keys past n_left."""
        if TAIL:
            ok = tl.arange(0, BN) < n_left
            k = tl.load(k_ptrs, mask=ok[None, :], other=0.0)
            ks = tl.load(ks_ptrs, mask=ok, other=0.0)
            v = tl.load(v_ptrs, mask=ok[:, None], other=0.0)
        else:
            k = tl.load(k_ptrs)
            ks = tl.load(ks_ptrs)
            v = tl.load(v_ptrs)
        s = tl.dot(q, k).to(tl.float32) * qs[:, None] * ks[None, :]
        if TAIL:
            s = tl.where(ok[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        alpha = tl.math.exp2(m_i - m_new)
        p = tl.math.exp2(s - m_new[:, None] + 8.0)  # P in [0, 256]: e4m3's normal range, not its subnormals
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = tl.dot(p.to(tl.float8e4nv), v, acc * alpha[:, None])
        return m_new, l_i, acc

    @triton.autotune(configs=_configs(), key=["D"])
    @triton.jit
    def _attention(Q, QS, K, KS, VT, VS, O, Lq, Lk, nh, g, hpg, s_vt_h, s_vt_d, s_o_m, s_o_h,
                   D: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr):
        """Q (Lq, nh, D), K (Lk, g, D), VT (g, D, >=Lk) fp8; QS (Lq, nh), KS (Lk, g), VS (g, D) fp32 -> O."""
        h = tl.program_id(1)
        kv = h // hpg
        rm = tl.program_id(0) * BM + tl.arange(0, BM)
        rd = tl.arange(0, D)
        rn = tl.arange(0, BN)
        row_ok = rm < Lq
        q = tl.load(Q + (rm[:, None] * nh + h) * D + rd[None, :], mask=row_ok[:, None], other=0.0)
        qs = tl.load(QS + rm * nh + h, mask=row_ok, other=0.0)
        k_ptrs = K + (rn[None, :] * g + kv) * D + rd[:, None]
        ks_ptrs = KS + rn * g + kv
        v_ptrs = VT + kv * s_vt_h + rd[None, :] * s_vt_d + rn[:, None]
        m_i = tl.full([BM], float("-inf"), tl.float32)
        l_i = tl.zeros([BM], tl.float32)
        acc = tl.zeros([BM, D], tl.float32)
        n_full = (Lk // BN) * BN
        for n0 in range(0, n_full, BN):
            m_i, l_i, acc = _block(q, qs, k_ptrs + n0 * g * D, ks_ptrs + n0 * g, v_ptrs + n0, Lk - n0,
                                   m_i, l_i, acc, BN, False)
        if n_full < Lk:
            m_i, l_i, acc = _block(q, qs, k_ptrs + n_full * g * D, ks_ptrs + n_full * g, v_ptrs + n_full,
                                   Lk - n_full, m_i, l_i, acc, BN, True)
        vs = tl.load(VS + kv * D + rd)
        o = acc / l_i[:, None] * vs[None, :]
        tl.store(O + rm[:, None] * s_o_m + h * s_o_h + rd[None, :], o.to(O.dtype.element_ty), mask=row_ok[:, None])


def quantize_rows(x: torch.Tensor, mul: float = 1.0):
    """(..., D) -> (int8 like x, fp32 scales (...)) with mul * x ~= y * scale, per row of D."""
    x = x.contiguous()
    rows, d = x.numel() // x.shape[-1], x.shape[-1]
    y = torch.empty(x.shape, dtype=torch.int8, device=x.device)
    s = torch.empty(x.shape[:-1], dtype=torch.float32, device=x.device)
    br = 32
    _quantize_rows[(triton.cdiv(rows, br),)](x, y, s, rows, mul, D=d, BR=br)
    return y, s


def quantize_v(v: torch.Tensor):
    """(Lk, g, D) -> (e4m3 (g, D, Lk padded to 16), fp32 (g, D) channel scales over the keys)."""
    lk, g, d = v.shape
    vs = v.abs().amax(0).float().clamp_min(1e-30) / FP8_MAX
    vt = torch.zeros(g, d, -(-lk // 16) * 16, dtype=FP8, device=v.device)
    vt[:, :, :lk] = (v.float() / vs).to(FP8).permute(1, 2, 0)
    return vt, vs


def quant8_attention(q, k, v, live, scale=None, out=None):
    """q (Sq, nh, d), k/v (Sk, g, d) bf16/fp16 -> out (Sq, nh, d), query range i attending to key range i for
    the (q_range, k_range) pairs in `live` (all non-empty). Rows of out outside every range are left as they are."""
    if triton is None:
        raise RuntimeError("the quant8 attention backend needs triton (it comes with CUDA builds of torch)")
    sq, nh, d = q.shape
    g = k.shape[1]
    scale = d ** -0.5 if scale is None else scale
    if out is None:
        out = torch.zeros_like(q)
    if out.stride(2) != 1:
        raise ValueError("quant8 attention writes rows of the head dim; out's last dim must be contiguous")
    q8, qsc = quantize_rows(q, scale * LOG2E)  # per-row scales: quantize once, slice per range
    k8, ksc = quantize_rows(k - k.mean(0, dtype=torch.float32).to(k.dtype))  # smoothing: softmax ignores it
    for (qs_, qe), (ks_, ke) in live:
        vt, vsc = quantize_v(v[ks_:ke])  # per range: its own channel scales, keys 16-byte aligned
        o = out[qs_:qe]
        _attention[lambda meta, n=qe - qs_: (triton.cdiv(n, meta["BM"]), nh)](
            q8[qs_:qe], qsc[qs_:qe], k8[ks_:ke], ksc[ks_:ke], vt, vsc, o, qe - qs_, ke - ks_, nh, g, nh // g,
            vt.stride(0), vt.stride(1), o.stride(0), o.stride(1), D=d)
    return out
