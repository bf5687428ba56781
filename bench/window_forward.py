"""Time one steady-state DiT window forward at full size with random weights (GPU machine).

  python bench/window_forward.py --size 4.5B --variant base --height 720 --width 720 --mode extra
  --mode extra : 4 noisy chunks + the extra clean chunk in the forward (K = 1..5, sum 15), as the
                 reference's stage-start step (its "steady window" row: 60,750 query tokens at 720x720)
  --mode cached: 4 noisy chunks, one clean chunk read from the KV cache (K = 2..5, sum 14): P1's shape
Prints time, peak VRAM and achieved TFLOP/s from the FLOP model of docs/model.md.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import magi_core  # noqa: F401

from ceilings import ceilings, dense_and_attention_flops, ideal_seconds
from common import device_info, emit, model_args, random_dit, window_inputs


def main():
    ap = argparse.ArgumentParser()
    model_args(ap)
    ap.add_argument("--mode", default="extra", choices=["extra", "cached"])
    ap.add_argument("--compile", action="store_true", help="torch.compile the element-wise islands")
    ap.add_argument("--cap-tokens", type=int, default=100)
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--bf16-queries", action="store_true",
                    help="fp8-approx: queries leave the norm+RoPE island in bf16, quantized by the backend (before session 8)")
    ap.add_argument("--all-dynamic", action="store_true",
                    help="compile with every size symbolic, as sessions 2-8 did (kernels/compiled.py ALL_DYNAMIC)")
    ap.add_argument("--deviation", action="store_true",
                    help="also report the velocity's relative L2 change from the unfused forward (--unfused)")
    ap.add_argument("--json", default=None, help="append the result as one JSON line to this file")
    a = ap.parse_args()
    if a.all_dynamic:
        from magi_core.kernels import compiled

        compiled.ALL_DYNAMIC = True

    dev = torch.device("cuda")
    t0 = time.perf_counter()
    name, cfg, model = random_dit(a, dev)
    if a.bf16_queries:
        model.e4m3_queries = False
    torch.cuda.synchronize()
    build_s = time.perf_counter() - t0

    w = window_inputs(cfg, a.height, a.width, dev, a.mode, a.cap_tokens)
    ctn, keys, dn = w.ctn, w.keys, len(w.keys)
    dt = 8.0 if cfg.distill else None

    def run(out=None):
        cache = w.prefill(model, dt) if a.mode == "cached" else None
        torch.cuda.synchronize()
        t1 = time.perf_counter()
        v = model(*w.args, slice_point=w.slice_point, cache=cache, dt_factor=dt)
        torch.cuda.synchronize()
        if out is not None:
            out.append(v)
        return time.perf_counter() - t1

    run()  # warm-up (and compile)
    run()
    torch.cuda.reset_peak_memory_stats()
    times = [run() for _ in range(a.iters)]
    peak = torch.cuda.max_memory_allocated() / 2**30
    if a.deviation:  # the same forward without session 10's fusions (same weights and inputs; the cache is made
        #             again by the unfused model, as it would be in a run without them)
        from magi_core.dit import layer

        outs = []
        run(outs)
        fused = layer.FUSIONS, layer.GELU_EPILOGUE
        layer.FUSIONS = layer.GELU_EPILOGUE = False
        run(outs)
        layer.FUSIONS, layer.GELU_EPILOGUE = fused
        dev_rel = ((outs[0] - outs[1]).norm() / outs[1].norm()).item()
        print(f"velocity change from the unfused forward: {dev_rel:.3e} relative L2", flush=True)
    dense, attn = dense_and_attention_flops(cfg, ctn, keys, a.cap_tokens)
    total = dense + attn
    best = min(times)
    fp8_attn = a.backend == "fp8-approx"
    ceil = ceilings(dev, cfg, ctn, fp8_attention=fp8_attn)
    ideal = ideal_seconds(cfg, ctn, keys, ceil, a.cap_tokens)
    extra = {}
    if fp8_attn:  # the ideal with FP8 attention (attention FLOPs at the FP8 kernel's own speed)
        ideal8 = ideal_seconds(cfg, ctn, keys, ceil, a.cap_tokens, attention="fp8_sdpa_TFLOPs")
        extra = dict(ideal_fp8_s=round(ideal8, 3), time_over_ideal_fp8=round(best / ideal8, 3))
    res = dict(
        bench="window_forward", model=name, res=f"{a.height}x{a.width}", mode=a.mode, precision=a.precision,
        backend=a.backend or "auto", compile=a.compile, all_dynamic=a.all_dynamic, bf16_queries=a.bf16_queries, query_tokens=ctn * dn, sum_K=sum(keys), time_s=round(best, 4),
        times=[round(x, 4) for x in times], peak_GiB=round(peak, 2), model_GiB=round(torch.cuda.memory_allocated() / 2**30, 2),
        flop=f"{total:.3e}", attn_flop=f"{attn:.3e}", achieved_TFLOPs=round(total / best / 1e12, 1),
        **ceil, ideal_s=round(ideal, 3), time_over_ideal=round(best / ideal, 3), **extra, build_s=round(build_s, 1),
        unfused_rel_l2=f"{dev_rel:.3e}" if a.deviation else None,
        **device_info(dev),
    )
    emit(res, a.json)


if __name__ == "__main__":
    main()
