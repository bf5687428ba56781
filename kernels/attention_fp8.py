"""FP8 range attention on Hopper through cuDNN's FP8 SDPA (`nvidia-cudnn-frontend`): opt-in and approximate.

Backend "fp8-approx" of kernels/attention.py. Same contract as the other backends (query range i attends to key
range i, GQA, rows outside every live range are 0), same result up to FP8 rounding: see README.md for the
measured error. On Hopper cuDNN runs FP8 attention only with FP8 (e4m3) output, so the output is dequantized
afterwards.

How the scales are chosen (all computed on the GPU from the tensors or weights themselves, no host sync):
- K smoothing: K's mean over all keys of the call is subtracted first. Every query's logits then shift by one
  constant, which the softmax ignores, and the keys' values shrink to what tells them apart.
- V smoothing: V's mean over all keys is subtracted and added back to the output. Softmax rows sum to 1, so
  P (V - m) + m = P V; the fp8 rounding then acts on the part of V that differs between keys only.
- per-head amax scales: each KV head's smoothed K is scaled to fill e4m3's range (448). The query heads take the
  inverse of their KV head's K scale times one shared factor, chosen so the largest scaled query is 448: the
  products q·k keep one common descale (cuDNN takes one scalar per tensor) while every head uses the range.
- queries made in e4m3 (the DiT's self-attention, magi_core/dit/layer.py norm_rope_e4m3): the norm+RoPE island
  writes e4m3 directly with a scale bounded from the norm's weights (q_scale_bound), so the backend never reads a
  bf16 Q (no amax pass, no cast pass); K then takes one scale for the tensor (quantize_kv), since the q·k descale
  is one scalar. e4m3 rounds relative to each value, so neither costs accuracy (tests/test_attention_fp8.py).
- per-channel V scales: each channel of each KV head's smoothed V is scaled to V_RANGE. Output channel c of a
  head is a convex combination of V's channel c only (|O| <= V_RANGE < 448, no overflow), so dividing it by that
  channel's scale undoes the scaling exactly; a channel with small values (real V has channels of very
  different sizes) keeps its precision instead of rounding against the largest channel.
- P (the softmax numerators exp(s - rowmax), in [0, 1]) is scaled by P_SCALE before cuDNN rounds it to e4m3,
  which keeps values down to ~3.5e-5 normal e4m3 numbers. (The CPU emulation in tests/test_attention_fp8.py
  found little difference against a scale of 1: P's subnormal rounding is unbiased and averages out; the error
  is dominated by V's and the output's rounding, ~3.6 % and ~2.6 % per element.)
- Calls whose key ranges are all shorter than MIN_KEYS (the caption's cross-attention: <= 800 keys) run bf16 cuDNN:
  there FP8 would add its rounding to a call that takes well under 1 % of a forward.
Quantization (both reductions and the casts) and the dequantization are compiled element-wise kernels
(kernels/compiled.py); K and V are quantized once per call, not per range.
"""
from __future__ import annotations

import warnings
from collections import OrderedDict

import torch

from . import capability
from .compiled import maybe_compiled

E4M3 = torch.float8_e4m3fn
E4M3_MAX = 448.0
V_RANGE = 256.0  # |V'| <= 256, so |O'| <= 256 (convex combination), with margin below 448 for P's rounding
P_SCALE = 448.0  # exp(s - rowmax) <= 1 maps to <= 448
MIN_KEYS = 1024  # shorter key ranges (the caption's cross-attention, <= 800 tokens) stay bf16: see fp8_range_attention
PACKAGE = "cudnn"  # import name of nvidia-cudnn-frontend
INSTALL = "pip install nvidia-cudnn-frontend"


def why_unusable(q) -> str | None:
    """Why FP8 attention cannot run on tensors like q, or None when it can (Hopper, the package, bf16/fp16)."""
    if not q.is_cuda:
        return "it needs a CUDA GPU"
    cc = capability.cuda_capability(q.device)
    if cc is None or cc[0] != 9:
        return (f"cuDNN's FP8 attention is used on Hopper GPUs (sm90) only; this GPU is sm{cc[0]}{cc[1]}"
                if cc else "no CUDA device")
    if q.dtype not in (torch.float16, torch.bfloat16):
        return f"it needs float16/bfloat16 inputs, got {q.dtype}"
    if q.shape[-1] % 16 or q.shape[-1] > 256:
        return f"head dim {q.shape[-1]} is not a multiple of 16 up to 256"
    if capability.optional_module(PACKAGE) is None:
        return f"the nvidia-cudnn-frontend package is not installed ({INSTALL})"
    return None


def why_unusable_on(device) -> str | None:
    """why_unusable for bf16 attention on `device` (a name or torch.device), without touching the device."""
    try:
        return why_unusable(capability.probe(device))
    except Exception as e:  # noqa: BLE001 -- a device this process cannot query
        return f"{type(e).__name__}: {e}"


def choice_note(device) -> str:
    """What a user who picked this backend for `device` is told before the run (loader info panel, CLI)."""
    why = why_unusable_on(device)
    if why:
        return f"attention fp8-approx can't run here ({why}): the exact bf16 attention runs instead"
    return ("attention fp8-approx is APPROXIMATE: FP8 self-attention, about 6% away from bf16 over a generation "
            "(README, Performance switches)")


# ----------------------------------------------------------------------------- scales and quantization

def _spread(x, mean):
    """max over tokens of |x - mean| per (head, channel), from reductions of x itself (max and min, which share
    one pass over x with its mean): max(x) - mean and mean - min(x), in fp32 exactly what |x - mean| would give."""
    return torch.maximum(x.amax(0) - mean, mean - x.amin(0))


def _head_amax(x):
    """max |x| per head of (tokens, heads, d): over the contiguous d first, then over tokens. The same value as
    x.abs().amax((0, 2)) (max is exact in any order); the one-step reduction over dims 0 and 2 was the slowest
    kernel of the quantization on an H100 (1.13 ms for a P1 window's Q, ~10x its memory time; BENCHMARKS.md,
    session 7)."""
    return x.abs().amax(2).amax(0)


def _stats(kf, vf, smooth: bool):
    """K's and V's means over the keys (zero without smoothing) and max |x - mean| per (head, channel)."""
    if smooth:
        k_mean, v_mean = kf.mean(0), vf.mean(0)  # (g, d)
        return k_mean, v_mean, _spread(kf, k_mean), _spread(vf, v_mean)
    zero = kf.new_zeros(kf.shape[1:])
    return zero, zero, kf.abs().amax(0), vf.abs().amax(0)


def _to_e4m3(x, scale):
    return (x * scale).clamp(-E4M3_MAX, E4M3_MAX).to(E4M3)


def quantize_qkv(q, k, v, smooth: bool = True, per_head: bool = True):
    """q (Sq, nh, d), k/v (Sk, g, d) -> e4m3 q8, k8, v8 and the fp32 factors that undo the scaling.

    Returns q8, k8, v8, qk_descale (1,): multiply q8·k8 by it to get q·k (after K smoothing);
    o_scale (nh, d): divide the P·v8 output by it; o_shift (nh, d): then add this (V's mean).
    smooth=False / per_head=False (no mean subtraction / one amax per tensor) exist to measure what they buy.
    Two passes over K and V (reductions, then the casts) and two over Q. A query quantized where it is made
    (quantize_q_bound) skips both Q passes: quantize_kv.
    """
    nh, g = q.shape[1], k.shape[1]
    r = nh // g
    qf, kf, vf = q.float(), k.float(), v.float()
    k_mean, v_mean, k_ch, v_ch = _stats(kf, vf, smooth)
    q_head = _head_amax(qf)  # (nh,)
    if not per_head:
        k_ch, v_ch, q_head = k_ch.amax().expand_as(k_ch), v_ch.amax().expand_as(v_ch), q_head.amax().expand(nh)
    k_scale = E4M3_MAX / k_ch.amax(1).clamp_min(1e-12)  # (g,)
    q_pre = q_head.clamp_min(1e-12) / k_scale.repeat_interleave(r)  # (nh,) amax of q / its K head's scale
    shared = E4M3_MAX / q_pre.amax()  # scalar: q_scale_h = shared / k_scale_g(h)
    q_scale = shared / k_scale.repeat_interleave(r)
    v_scale = V_RANGE / v_ch.clamp_min(1e-12)  # (g, d)
    q8 = _to_e4m3(qf, q_scale[:, None])
    k8, v8 = _to_e4m3(kf - k_mean, k_scale[:, None]), _to_e4m3(vf - v_mean, v_scale)
    qk_descale = (1.0 / shared).reshape(1)
    return q8, k8, v8, qk_descale, v_scale.repeat_interleave(r, 0), v_mean.repeat_interleave(r, 0)


def q_scale_bound(w, b):
    """e4m3 scale for queries made by a per-head LayerNorm over d channels (effective weight w, bias b, both (d,))
    followed by a rotary embedding, known before the queries exist: 448 / B with B >= every |q_c|.

    B = max|w|·sqrt(d) + ||b||_2: the normalized x̂ has ||x̂||_2 = sqrt(d·var/(var+eps)) <= sqrt(d), so
    ||w x̂ + b||_2 <= B, and RoPE rotates channel pairs (norm kept), so no channel exceeds the head's norm.
    B is a few times the largest query of a real batch; e4m3 rounds relative to each value, so only values
    below ~B·2^-15 (which add nothing to q·k) lose precision to the looser scale."""
    bound = (w.float().square().amax() * w.shape[0]).sqrt() + b.float().norm()  # tensor ops only (compiles)
    return E4M3_MAX / bound.clamp_min(1e-12)


def quantize_q_bound(q, scale):
    """fp32 queries (any shape) and q_scale_bound's scale -> (e4m3 q8, q_descale (1,)): q ≈ q8 · q_descale."""
    return _to_e4m3(q, scale), (1.0 / scale).reshape(1)


def quantize_kv(k, v, heads: int):
    """quantize_qkv's K and V for queries quantized ahead with one scale for all heads (quantize_q_bound): the
    q·k descale is one scalar, so K gets one scale for the tensor (not one per head); smoothing and V's
    per-channel scales as in quantize_qkv. Returns k8, v8, k_descale (1,), o_scale, o_shift ((heads, d))."""
    r = heads // k.shape[1]
    kf, vf = k.float(), v.float()
    k_mean, v_mean, k_ch, v_ch = _stats(kf, vf, True)
    k_scale = E4M3_MAX / k_ch.amax().clamp_min(1e-12)
    v_scale = V_RANGE / v_ch.clamp_min(1e-12)
    k8, v8 = _to_e4m3(kf - k_mean, k_scale), _to_e4m3(vf - v_mean, v_scale)
    return k8, v8, (1.0 / k_scale).reshape(1), v_scale.repeat_interleave(r, 0), v_mean.repeat_interleave(r, 0)


def dequantize_out(o8, o_scale, o_shift, dtype):
    """(Sq, nh, d) e4m3 -> dtype: o8 / o_scale + o_shift (both (nh, d))."""
    return (o8.float() / o_scale + o_shift).to(dtype)


def dequantize_into(out, o8, o_scale, o_shift):
    """dequantize_out written straight into `out` (a strided view is fine): one pass when compiled."""
    out.copy_(dequantize_out(o8, o_scale, o_shift, out.dtype))


# ----------------------------------------------------------------------------- cuDNN graphs

_graphs: OrderedDict = OrderedDict()
_handles: dict = {}


def _handle(cudnn, device):
    h = _handles.get(device)
    if h is None:
        h = _handles[device] = cudnn.create_handle()
    if device.type == "cuda":
        cudnn.set_stream(h, torch.cuda.current_stream(device).cuda_stream)
    return h


def _graph(cudnn, handle, qv, kv, vv, ov, attn_scale, device):
    """The built FP8 SDPA graph for these (1, heads, len, d) views, cached per shape and strides."""
    key = (tuple(qv.shape), qv.stride(), tuple(kv.shape), kv.stride(), vv.stride(), ov.stride(), attn_scale,
           str(device))
    if key in _graphs:
        _graphs.move_to_end(key)
        if isinstance(_graphs[key], Exception):  # refused before: don't build it again
            raise _graphs[key]
        return _graphs[key]
    try:
        entry = _build(cudnn, handle, qv, kv, vv, ov, attn_scale)
    except Exception as e:
        entry = RuntimeError(f"cuDNN FP8 SDPA refused q {tuple(qv.shape)}, k {tuple(kv.shape)}: "
                             f"{str(e).splitlines()[0][:300] if str(e) else type(e).__name__}")
    _graphs[key] = entry
    if len(_graphs) > 64:
        _graphs.popitem(last=False)
    if isinstance(entry, Exception):
        raise entry
    return entry


def _build(cudnn, handle, qv, kv, vv, ov, attn_scale):
    f32, fp8 = cudnn.data_type.FLOAT, cudnn.data_type.FP8_E4M3
    gr = cudnn.pygraph(io_data_type=fp8, intermediate_data_type=f32, compute_data_type=f32, handle=handle)
    t = {n: gr.tensor_like(x) for n, x in (("q", qv), ("k", kv), ("v", vv))}
    for n in ("descale_q", "descale_k", "descale_v", "descale_s", "scale_s", "scale_o"):
        t[n] = gr.tensor(dim=[1, 1, 1, 1], stride=[1, 1, 1, 1], data_type=f32)
    o, _, amax_s, amax_o = gr.sdpa_fp8(t["q"], t["k"], t["v"], t["descale_q"], t["descale_k"], t["descale_v"],
                                       t["descale_s"], t["scale_s"], t["scale_o"], is_inference=True,
                                       attn_scale=attn_scale, use_causal_mask=False)
    o.set_output(True).set_dim(list(ov.shape)).set_stride(list(ov.stride())).set_data_type(fp8)
    for a in (amax_s, amax_o):
        a.set_output(True).set_dim([1, 1, 1, 1]).set_stride([1, 1, 1, 1]).set_data_type(f32)
    t.update(o=o, amax_s=amax_s, amax_o=amax_o)
    gr.validate()
    gr.build_operation_graph()
    gr.create_execution_plans([cudnn.heur_mode.A, cudnn.heur_mode.FALLBACK])
    gr.check_support()
    gr.build_plans()
    return gr, t, gr.get_workspace_size()


def _bind(x):
    """What the variant pack gets for a tensor: its device address. (nvidia-cudnn-frontend 1.32 handed torch
    tensors to a reused graph gave stale buffers on an H100: outputs of an earlier call's tensors, NaN.)"""
    return x.data_ptr()


def _heads_view(x, start, end):
    """(S, h, d)[start:end] -> (1, h, L, d) view (no copy)."""
    return x[start:end].transpose(0, 1)[None]


_native_gqa: bool | None = None  # does cuDNN's FP8 SDPA take fewer K/V heads than query heads? (tried once)


_constant_cache: dict = {}


def _constants(device, p_scale: float):
    """The fixed scalars of every call on `device` (1, P's scale and its inverse) and the amax outputs nobody
    reads: made once, not with four small kernels per call."""
    key = (str(device), p_scale)
    if key not in _constant_cache:
        one = torch.ones(1, 1, 1, 1, device=device)
        _constant_cache[key] = (one, one * p_scale, one / p_scale, torch.empty(2, 1, 1, 1, device=device))
    return _constant_cache[key]


def run_ranges(q8, k8, v8, o8, live, qk_descale, attn_scale: float):
    """cuDNN FP8 SDPA for each live ((qs, qe), (ks, ke)) pair: o8[qs:qe] = attention(q8[qs:qe], k8/v8[ks:ke]).

    q8/o8 (Sq, nh, d), k8/v8 (Sk, nh or g, d) e4m3; qk_descale (1,) fp32 undoes the Q and K scales."""
    cudnn = capability.optional_module(PACKAGE)
    dev = q8.device
    if dev.type == "cuda" and dev != torch.device("cuda", torch.cuda.current_device()):
        with torch.cuda.device(dev):  # cuDNN handles and graphs belong to the current device
            return run_ranges(q8, k8, v8, o8, live, qk_descale, attn_scale)
    one, p_scale, inv_p_scale, amax = _constants(dev, P_SCALE)
    scalars = dict(descale_q=qk_descale.view(1, 1, 1, 1), descale_k=one, descale_v=one, descale_s=inv_p_scale,
                   scale_s=p_scale, scale_o=one)
    handle = _handle(cudnn, dev)
    workspace = None
    for (qs, qe), (ks, ke) in live:
        views = (_heads_view(q8, qs, qe), _heads_view(k8, ks, ke), _heads_view(v8, ks, ke), _heads_view(o8, qs, qe))
        gr, t, ws = _graph(cudnn, handle, *views, attn_scale, dev)
        pack = {t[n]: _bind(x) for n, x in zip(("q", "k", "v", "o"), views)}
        pack.update({t[n]: _bind(x) for n, x in scalars.items()})
        pack.update({t["amax_s"]: _bind(amax[0:1]), t["amax_o"]: _bind(amax[1:2])})
        if workspace is None or workspace.numel() < ws:
            workspace = torch.empty(max(ws, 1), dtype=torch.uint8, device=dev)
        gr.execute(pack, _bind(workspace), handle=handle)
    return o8


def _run_gqa(q8, k8, v8, o8, live, qk_descale, attn_scale):
    """run_ranges with fewer K/V heads than query heads: natively where cuDNN takes it (tried once per process),
    else with the fp8 K/V expanded to every query head."""
    global _native_gqa
    nh, g = q8.shape[1], k8.shape[1]
    if g != nh and _native_gqa is not False:
        try:
            run_ranges(q8, k8, v8, o8, live, qk_descale, attn_scale)
            _native_gqa = True
            return
        except RuntimeError:
            if _native_gqa:  # it took GQA before: this refusal is about something else
                raise
            _native_gqa = False  # this cuDNN wants as many K/V heads as query heads
    if g != nh:
        k8, v8 = (x.repeat_interleave(nh // g, dim=1) for x in (k8, v8))
    run_ranges(q8, k8, v8, o8, live, qk_descale, attn_scale)


def fp8_range_attention(q, k, v, q_ranges, k_ranges, scale=None, out=None, min_keys: int | None = None,
                        q_descale=None, **quant):
    """Range attention with Q, K, V and the output in e4m3 (cuDNN FP8 SDPA per live range pair).

    q: bf16/fp16 (Sq, nh, d), or e4m3 queries quantized where they were made (quantize_q_bound) with their
    q_descale (1,); then `out` (the output's dtype) is required. min_keys: calls whose longest key range is
    shorter run bf16 cuDNN instead (default MIN_KEYS: the caption's cross-attention); quant: quantize_qkv's
    switches (measurements only)."""
    from .attention import _as_pairs, _live_pairs, _zero_uncovered, cudnn_range_attention, sdpa_range_attention

    if q_descale is not None and out is None:
        raise ValueError("e4m3 queries need `out` (it gives the output's dtype)")

    def exact():  # bf16 attention for this call (an e4m3 query is dequantized first)
        qx = q if q_descale is None else (q.float() * q_descale).to(out.dtype)
        fn = cudnn_range_attention if q.is_cuda else sdpa_range_attention
        return fn(qx, k, v, q_ranges, k_ranges, scale=scale, out=out)

    live = _live_pairs(_as_pairs(q_ranges), _as_pairs(k_ranges))
    if max((ke - ks for _, (ks, ke) in live), default=0) < (MIN_KEYS if min_keys is None else min_keys):
        return exact()
    attn_scale = float(scale) if scale is not None else q.shape[2] ** -0.5
    if q_descale is None:
        q8, k8, v8, qk_descale, o_scale, o_shift = maybe_compiled(quantize_qkv, True, q, {0: (0,), 1: (0,), 2: (0,)})(q, k, v, **quant)
    else:
        k8, v8, k_descale, o_scale, o_shift = maybe_compiled(quantize_kv, True, k, {0: (0,), 1: (0,)})(k, v, q.shape[1])
        q8, qk_descale = q, q_descale * k_descale
    o8 = torch.empty(q.shape, dtype=E4M3, device=q.device)
    try:
        _run_gqa(q8, k8, v8, o8, live, qk_descale, attn_scale)
    except RuntimeError as e:  # a shape this cuDNN refuses: exact bf16 attention for this call
        warnings.warn(f"{e}; those attention calls run in bf16 instead.", RuntimeWarning, stacklevel=2)
        return exact()
    out = torch.empty_like(q) if out is None else out
    maybe_compiled(dequantize_into, True, q, {0: (0,), 1: (0,)})(out, o8, o_scale, o_shift)
    return _zero_uncovered(out, [a for a, _ in live])
