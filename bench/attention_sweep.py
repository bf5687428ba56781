"""SDPA kernels at MAGI-1's self-attention shapes (GPU machine): which one to use, and the attention ceiling.

  python bench/attention_sweep.py --size 4.5B --height 720 --width 720 --json out.jsonl

One chunk of queries (all heads) against 1..5 chunks of keys, for each kernel: torch SDPA's own choice with
native GQA (`enable_gqa`), and flash / cuDNN / memory-efficient pinned, with the query heads of each KV head
folded into the query length (kernels/attention.py `fold_heads`). Prints TFLOP/s per (kernel, keys).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import magi_core  # noqa: E402,F401
from magi_core.config import preset  # noqa: E402
from magi_core.kernels.attention import fold_heads, unfold_heads  # noqa: E402

from ceilings import _time  # noqa: E402
from common import device_info, emit  # noqa: E402

KERNELS = {"flash": SDPBackend.FLASH_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION,
           "efficient": SDPBackend.EFFICIENT_ATTENTION}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", default="4.5B")
    ap.add_argument("--height", type=int, default=720)
    ap.add_argument("--width", type=int, default=720)
    ap.add_argument("--keys", default="1,2,3,4,5")
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    cfg = preset(a.size)
    dev = torch.device("cuda")
    nh, g, d = cfg.num_attention_heads, cfg.num_query_groups, cfg.kv_channels
    ctn = 6 * (a.height // 16) * (a.width // 16)
    gen = torch.Generator(device=dev).manual_seed(0)
    q = torch.randn(ctn, nh, d, device=dev, dtype=torch.bfloat16, generator=gen)
    ref = None
    for nk in [int(x) for x in a.keys.split(",")]:
        k = torch.randn(nk * ctn, g, d, device=dev, dtype=torch.bfloat16, generator=gen)
        v = torch.randn_like(k)
        kt, vt = k.transpose(0, 1)[None], v.transpose(0, 1)[None]
        flop = 4 * nh * d * ctn * nk * ctn
        variants = {"sdpa_gqa": lambda: F.scaled_dot_product_attention(q.transpose(0, 1)[None], kt, vt,
                                                                        enable_gqa=True)[0].transpose(0, 1)}
        for name, kern in KERNELS.items():
            def run(kern=kern):
                with sdpa_kernel([kern]):
                    return unfold_heads(F.scaled_dot_product_attention(fold_heads(q, g), kt, vt), ctn)
            variants[f"{name}_fold"] = run
        def cudnn_gqa():  # cuDNN pinned with SDPA's own GQA on strided views (no fold copies), if it accepts it
            with sdpa_kernel([SDPBackend.CUDNN_ATTENTION]):
                return variants["sdpa_gqa"]()
        variants["cudnn_gqa"] = cudnn_gqa
        ref = variants["sdpa_gqa"]().float()
        for name, fn in variants.items():
            row = dict(bench="attention_sweep", model=a.size, res=f"{a.height}x{a.width}", kernel=name,
                       q_tokens=ctn, key_chunks=nk)
            try:
                err = ((fn().float() - ref).norm() / ref.norm()).item()
                s = _time(fn, iters=5, warmup=2)
                row.update(ms=round(s * 1e3, 2), TFLOPs=round(flop / s / 1e12, 1), rel_err_vs_sdpa=f"{err:.2e}")
            except RuntimeError as e:  # kernel not available for this shape / build
                row.update(error=str(e).splitlines()[0][:160])
            row.update(**device_info(dev))
            emit(row, a.json)


if __name__ == "__main__":
    main()
