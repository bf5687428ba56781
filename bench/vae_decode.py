"""Time the tiled VAE decode of one 720x720 chunk (6 latent frames -> 24 frames) with random full-size weights (GPU
machine), one tile per VAE call (the reference) against several same-sized tiles per call (`tile_batch`), and the
relative L2 difference of the frames.

  python bench/vae_decode.py [--height 720] [--width 720] [--batches 1,4,16] [--iters 3]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import magi_core  # noqa: E402,F401
from magi_core.vae import VAE_PRESETS, ViTVAE, tiled_decode  # noqa: E402

from common import device_info, emit, sync  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--height", type=int, default=720)
    ap.add_argument("--width", type=int, default=720)
    ap.add_argument("--batches", default="1,4,16")
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    dev = torch.device("cuda")
    torch.manual_seed(0)
    with torch.device(dev):
        vae = ViTVAE(VAE_PRESETS["magi1"]).to(torch.bfloat16).eval()
    z = torch.randn(1, 16, 6, a.height // 8, a.width // 8, device=dev) * 0.2
    rows, ref = {}, None
    for b in [int(v) for v in a.batches.split(",")]:
        tiled_decode(vae, z, 24, tile_batch=b)  # warm-up (cuDNN / cuBLAS plans)
        torch.cuda.reset_peak_memory_stats()
        times = []
        for _ in range(a.iters):
            sync()
            t0 = time.perf_counter()
            y = tiled_decode(vae, z, 24, tile_batch=b)
            sync()
            times.append(time.perf_counter() - t0)
        y = y.float()
        ref = y if ref is None else ref
        rel = ((y - ref).norm() / ref.norm()).item()
        rows[b] = dict(s=round(min(times), 4), rel_l2_vs_first=f"{rel:.2e}", peak_GiB=round(torch.cuda.max_memory_allocated() / 2**30, 2))
        print(f"tile_batch {b:3d}: {min(times) * 1e3:8.1f} ms per chunk, frames differ from tile_batch "
              f"{a.batches.split(',')[0]} by {rel:.2e} rel L2", flush=True)
    emit(dict(bench="vae_decode", res=f"{a.height}x{a.width}", rows=rows, **device_info(dev)), a.json)


if __name__ == "__main__":
    main()
