"""Load time of a full-size DiT checkpoint (random weights) written to local disk (GPU machine).

  python bench/load_time.py --size 4.5B --variant distill --dir /tmp/magi_ckpt

Writes the official layout (2 safetensors shards), then times `magi_core.checkpoint.load_dit` to the GPU,
after dropping the page cache when allowed (cold) and again with the files cached (warm); as a floor, plain
`safetensors.torch.load_file` of the same shards to the GPU.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import magi_core  # noqa: E402,F401
from magi_core.checkpoint import load_dit, save_official  # noqa: E402
from magi_core.config import preset  # noqa: E402
from magi_core.dit import build_dit, init_random_  # noqa: E402
from magi_core.settings import DiTRuntime  # noqa: E402

from common import device_info, emit, sync  # noqa: E402


def drop_caches() -> bool:
    try:
        subprocess.run(["sync"], check=True)
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", default="4.5B")
    ap.add_argument("--variant", default="distill")
    ap.add_argument("--dir", default="/tmp/magi_ckpt")
    ap.add_argument("--json", default=None)
    ap.add_argument("--device", default="cuda")
    a = ap.parse_args()
    dev = torch.device(a.device)
    cfg = preset(f"{a.size}-{a.variant}" if a.variant != "base" else a.size)
    model = init_random_(build_dit(cfg), seed=0, device=dev)
    t0 = time.perf_counter()
    folder = save_official(model, a.dir, a.variant)
    write_s = time.perf_counter() - t0
    nbytes = sum(p.stat().st_size for p in folder.iterdir())
    del model
    res = dict(bench="load_time", model=f"{a.size}-{cfg.variant()}", GB=round(nbytes / 1e9, 2), write_s=round(write_s, 1))
    for label in ("cold", "warm"):
        if label == "cold" and not drop_caches():
            res["cold"] = "page cache could not be dropped"
            continue
        sync(dev)
        t0 = time.perf_counter()
        m, _ = load_dit(a.dir, DiTRuntime(device=str(dev)), variant=a.variant)
        sync(dev)
        res[f"load_dit_{label}_s"] = round(time.perf_counter() - t0, 2)
        del m
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    from safetensors.torch import load_file

    t0 = time.perf_counter()
    for f in sorted(folder.glob("*.safetensors")):
        sd = load_file(str(f), device=str(dev))
        del sd
    sync(dev)
    res["safetensors_load_file_warm_s"] = round(time.perf_counter() - t0, 2)
    res.update(GBps_warm=round(nbytes / 1e9 / res["load_dit_warm_s"], 2), **device_info(dev))
    emit(res, a.json)


if __name__ == "__main__":
    main()
