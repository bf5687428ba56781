"""Where one window forward's GPU time goes (torch profiler), grouped by kind of kernel (GPU machine).

  python bench/profile_forward.py --size 4.5B --mode cached [--backend cudnn] [--compile] [--variant distill-fp8]

Runs window_forward.py's P1 window (4 noisy chunks + 1 cached clean chunk), warms up (and compiles), profiles
one forward and prints the top kernels and a summary: GEMM, attention, element-wise/norm/RoPE, copies, other,
each with its share of GPU time.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import magi_core  # noqa: E402,F401

from common import device_info, emit, model_args, random_dit, window_inputs  # noqa: E402

KINDS = (  # first match wins; matched on the lower-cased kernel name
    ("attention", ("flash", "fmha", "attention", "sdpa", "cudnn", "sm90_flash")),
    ("gemm", ("gemm", "cutlass", "nvjet", "sm90_xmma", "cublas", "matmul", "_scaled_mm")),
    # Inductor's fused kernels (norms, RoPE, gates, quantization) before "copy": their names hold "_to_copy" and
    # "cat" whenever a cast or a concatenation was fused in (session 12 counted 100 ms of them as copies)
    ("compiled", ("triton_",)),
    ("copy", ("memcpy", "memset", "copy_", "cat", "catarray")),
    ("elementwise", ("elementwise", "vectorized", "reduce", "norm", "softmax", "unrolled")),
)


def kind(name: str) -> str:
    n = name.lower()
    return next((k for k, keys in KINDS if any(s in n for s in keys)), "other")


def main():
    ap = argparse.ArgumentParser()
    model_args(ap)
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--json", default=None)
    ap.add_argument("--trace", default=None, help="also write a chrome trace here")
    a = ap.parse_args()
    dev = torch.device("cuda")
    name, cfg, model = random_dit(a, dev)
    w = window_inputs(cfg, a.height, a.width, dev, "cached")
    dt = 8.0 if cfg.distill else None
    cache = w.prefill(model, dt)

    def fwd():
        return model(*w.args, slice_point=w.slice_point, cache=cache, dt_factor=dt)

    for _ in range(2):  # warm-up (and compile)
        fwd()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA, ProfilerActivity.CPU]) as prof:
        fwd()
        torch.cuda.synchronize()
    if a.trace:
        prof.export_chrome_trace(a.trace)
    events = [e for e in prof.key_averages() if e.device_type == torch.autograd.DeviceType.CUDA]
    total = sum(e.self_device_time_total for e in events) or 1.0
    by_kind: dict[str, float] = {}
    for e in events:
        by_kind[kind(e.key)] = by_kind.get(kind(e.key), 0.0) + e.self_device_time_total
    top = sorted(events, key=lambda e: -e.self_device_time_total)[: a.top]
    for e in top:
        print(f"{e.self_device_time_total / 1e3:9.1f} ms {100 * e.self_device_time_total / total:5.1f}% "
              f"x{e.count:<5d} [{kind(e.key)}] {e.key[:110]}")
    res = dict(bench="profile_forward", model=name, res=f"{a.height}x{a.width}", precision=a.precision,
               backend=a.backend or "auto", compile=a.compile, gpu_ms=round(total / 1e3, 1),
               share={k: round(v / total, 3) for k, v in sorted(by_kind.items(), key=lambda kv: -kv[1])},
               ms={k: round(v / 1e3, 1) for k, v in by_kind.items()},
               top=[dict(ms=round(e.self_device_time_total / 1e3, 1), n=e.count, kind=kind(e.key), name=e.key[:120])
                    for e in top], **device_info(dev))  # all --top kernels (the results file is the record)
    emit(res, a.json)


if __name__ == "__main__":
    main()
