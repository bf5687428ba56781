"""Hardware ceilings measured in the same run as a benchmark, and the FLOP-model ideal (docs/model.md).

ideal time = dense FLOPs / bf16 GEMM ceiling + attention FLOPs / SDPA ceiling at the model's attention shape.
"""
from __future__ import annotations

import time

import torch
import torch.nn.functional as F


def _time(fn, iters=10, warmup=3):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(iters):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) / iters


def gemm_tflops(dev, n=8192):
    a = torch.randn(n, n, device=dev, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=dev, dtype=torch.bfloat16)
    return 2 * n ** 3 / _time(lambda: a @ b) / 1e12


def fp8_gemm_tflops(dev, n=8192):
    a = torch.randn(n, n, device=dev).to(torch.float8_e4m3fn)
    b = torch.randn(n, n, device=dev).to(torch.float8_e4m3fn).t()
    one = torch.ones((), device=dev)
    return 2 * n ** 3 / _time(lambda: torch._scaled_mm(a, b, one, one, out_dtype=torch.bfloat16,
                                                       use_fast_accum=True)) / 1e12


def sdpa_tflops(dev, ctn, keys_chunks, heads, groups, d=128):
    """SDPA at the model's shape: one chunk of queries (query heads folded per KV head) against keys_chunks."""
    hpg = heads // groups
    q = torch.randn(1, groups, hpg * ctn, d, device=dev, dtype=torch.bfloat16)
    k = torch.randn(1, groups, keys_chunks * ctn, d, device=dev, dtype=torch.bfloat16)
    v = torch.randn_like(k)
    flop = 4 * heads * d * ctn * keys_chunks * ctn
    return flop / _time(lambda: F.scaled_dot_product_attention(q, k, v), iters=5) / 1e12


def fp8_sdpa_tflops(dev, ctn, keys_chunks, heads, groups, d=128):
    """cuDNN's FP8 SDPA kernel alone (kernels/attention_fp8.run_ranges, inputs quantized beforehand) at the model's
    shape: the attention ceiling of the fp8-approx backend."""
    from magi_core.kernels import attention_fp8 as f8

    q = torch.randn(ctn, heads, d, device=dev, dtype=torch.bfloat16)
    k = torch.randn(keys_chunks * ctn, groups, d, device=dev, dtype=torch.bfloat16)
    q8, k8, v8, dq, _, _ = f8.quantize_qkv(q, k, torch.randn_like(k))
    if f8._native_gqa is False:
        k8, v8 = (x.repeat_interleave(heads // groups, dim=1) for x in (k8, v8))
    o8 = torch.empty(q.shape, dtype=q8.dtype, device=dev)
    live = [((0, ctn), (0, keys_chunks * ctn))]
    flop = 4 * heads * d * ctn * keys_chunks * ctn
    return flop / _time(lambda: f8.run_ranges(q8, k8, v8, o8, live, dq, d ** -0.5), iters=5) / 1e12


def dense_and_attention_flops(cfg, ctn, keys_per_chunk, cap_tokens=100):
    """(dense FLOPs incl. cross-attention and caption projections, self-attention FLOPs) of one forward."""
    h, Q, K, Fd = cfg.hidden_size, cfg.q_dim, cfg.kv_dim, cfg.ffn_hidden_size
    f1 = Fd * (2 if cfg.gated_linear_unit else 1)
    n = len(keys_per_chunk)
    pair = 4 * cfg.num_attention_heads * cfg.kv_channels
    dense = ctn * n * 2 * (2 * h * Q + 2 * h * K + 2 * Q * h + h * f1 + Fd * h)
    dense += pair * ctn * cap_tokens * n + 2 * cfg.xattn_dim * 2 * K * cap_tokens * n
    attn = pair * ctn * ctn * sum(keys_per_chunk)
    return cfg.num_layers * dense, cfg.num_layers * attn


def ceilings(dev, cfg, ctn, fp8_attention: bool = False):
    c = dict(gemm_TFLOPs=round(gemm_tflops(dev), 1),
             sdpa_TFLOPs=round(sdpa_tflops(dev, ctn, 3, cfg.num_attention_heads, cfg.num_query_groups), 1),
             fp8_gemm_TFLOPs=round(fp8_gemm_tflops(dev), 1))
    if fp8_attention:
        c["fp8_sdpa_TFLOPs"] = round(fp8_sdpa_tflops(dev, ctn, 3, cfg.num_attention_heads, cfg.num_query_groups), 1)
    return c


def ideal_seconds(cfg, ctn, keys_per_chunk, ceil, cap_tokens=100, attention="sdpa_TFLOPs"):
    """Dense FLOPs at the bf16 GEMM ceiling + attention FLOPs at ceil[attention] (sdpa_TFLOPs: bf16 ideal,
    fp8_sdpa_TFLOPs: the ideal with FP8 attention)."""
    dense, attn = dense_and_attention_flops(cfg, ctn, keys_per_chunk, cap_tokens)
    return dense / (ceil["gemm_TFLOPs"] * 1e12) + attn / (ceil[attention] * 1e12)


def plan_flops(cfg, plan, ctn, cap_tokens=100):
    """(dense, attention) FLOPs of every DiT pass of a sampling plan (distill copies and cfg passes included): pass
    the plan a run makes (magi_core.pipeline.sampling_plan), which in fast precision has fewer copies."""
    dense = attn = 0.0
    for call in plan.calls:
        chunks = list(call.chunks) + ([call.distill_copy] if call.distill_copy is not None else [])
        keys = [c.kv_range[1] - c.kv_range[0] for c in chunks]
        passes = [keys] * (2 if plan.cfg_number == 3 and not call.extract_prefix else 1)
        if plan.cfg_number == 3 and not call.extract_prefix:
            passes.append([1] * len(call.noisy))  # uncond: each noisy chunk alone
        for k in passes:
            d, a = dense_and_attention_flops(cfg, ctn, k, cap_tokens)
            dense, attn = dense + d, attn + a
    return dense, attn
