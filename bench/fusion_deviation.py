"""How much each fusion changes one full-size DiT forward (GPU machine): the P1 window's velocity with random
weights, eager and compiled, with and without session 10's fusions and GELU epilogue, as relative L2 distances.

  python bench/fusion_deviation.py [--size 4.5B] [--variant base] [--backend cudnn]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import magi_core  # noqa: E402,F401
from magi_core.dit import layer  # noqa: E402

from common import device_info, emit, model_args, random_dit, window_inputs  # noqa: E402

RUNS = {  # name: (compile_ops, FUSIONS, GELU_EPILOGUE, precision)
    "exact eager": (False, False, False, "exact"),
    "eager": (False, False, False, "fast"),
    "eager, again": (False, False, False, "fast"),  # run-to-run nondeterminism (0 if the kernels are deterministic)
    "eager, gelu epilogue": (False, False, True, "fast"),
    "compiled": (True, False, False, "fast"),
    "compiled, fusions": (True, True, False, "fast"),
    "compiled, fusions, gelu epilogue": (True, True, True, "fast"),
}


def main():
    ap = argparse.ArgumentParser()
    model_args(ap)
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    dev = torch.device("cuda")
    name, cfg, model = random_dit(a, dev)
    w = window_inputs(cfg, a.height, a.width, dev, "cached")
    dt = 8.0 if cfg.distill else None
    out = {}
    for run, (compile_ops, fusions, gelu, precision) in RUNS.items():
        layer.FUSIONS, layer.GELU_EPILOGUE = fusions, gelu
        model.compile_ops = compile_ops
        model.set_precision(precision)
        cache = w.prefill(model, dt)
        out[run] = model(*w.args, slice_point=w.slice_point, cache=cache, dt_factor=dt).double()
        del cache
    layer.FUSIONS = layer.GELU_EPILOGUE = True
    rows = {}
    for x in RUNS:
        for y in ("exact eager", "eager", "compiled"):
            if x != y:
                rows[f"{x} vs {y}"] = r = ((out[x] - out[y]).norm() / out[y].norm()).item()
                print(f"{x:34s} vs {y:12s} {r:.3e}", flush=True)
    emit(dict(bench="fusion_deviation", model=name, backend=a.backend or "auto", rel_l2=rows, **device_info(dev)), a.json)


if __name__ == "__main__":
    main()
