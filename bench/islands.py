"""The compiled element-wise islands at the P1 window's shapes (GPU machine): time per call and memory speed,
compiled as the DiT does now (sizes constant except the token dims, kernels/compiled.py) and with every size
symbolic (torch.compile(dynamic=True), sessions 2-8).

  python bench/islands.py [--size 4.5B] [--chunks 4] [--all-dynamic]

Also (session 10) the gated residual that makes the next pre-norm in the same kernel, the cross-attention query
norm, and fc1 with GELU in its GEMM epilogue against fc1 then GELU (with which GELU formula the epilogue matches).

--all-dynamic: torch.compile(dynamic=True), the way sessions 2-8 compiled (kernels/compiled.py ALL_DYNAMIC).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import magi_core  # noqa: E402,F401
from magi_core.config import preset  # noqa: E402
from magi_core.dit.layer import (GATED_TOKEN_DIMS, TOKEN_DIMS, _gated_residual, _gated_residual_pre_norm,  # noqa: E402
                                 layer_norm_as_cuda, norm_rope, norm_rope_e4m3)
from magi_core.dit.layers import linear_gelu  # noqa: E402
from magi_core.dit.rope import LearnableRoPE  # noqa: E402
from magi_core.kernels import compiled as compiled_mod  # noqa: E402
from magi_core.kernels.compiled import compiled  # noqa: E402

from ceilings import _time  # noqa: E402
from common import device_info, emit  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", default="4.5B")
    ap.add_argument("--chunks", type=int, default=4)
    ap.add_argument("--all-dynamic", action="store_true")
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    compiled_mod.ALL_DYNAMIC = a.all_dynamic
    cfg, dev = preset(a.size), torch.device("cuda")
    d, nh, g, h = cfg.kv_channels, cfg.num_attention_heads, cfg.num_query_groups, cfg.hidden_size
    rope = LearnableRoPE(d).table(6 * a.chunks, 45, 45).to(dev)  # 720x720: 45x45 tokens per latent frame
    S = rope.shape[0]
    ctn = S // a.chunks
    w, b = torch.randn(d, device=dev) * 0.1, torch.randn(d, device=dev) * 0.1
    hw, hb = torch.randn(h, device=dev) * 0.1, torch.randn(h, device=dev) * 0.1
    xq = torch.randn(1, S, nh * d, device=dev).bfloat16()
    xk = torch.randn(1, S, g * d, device=dev).bfloat16()
    y, res = torch.randn(1, S, h, device=dev).bfloat16(), torch.randn(1, S, h, device=dev).bfloat16()
    gate = torch.randn(1, a.chunks, h, device=dev).bfloat16()
    cases = {  # name: (fn, args, dynamic dims, bytes moved at least)
        "norm_rope q": (norm_rope, (xq, nh, d, w, b, 1e-6, True, rope), TOKEN_DIMS, 2 * xq.nbytes),
        "norm_rope k": (norm_rope, (xk, g, d, w, b, 1e-6, True, rope), TOKEN_DIMS, 2 * xk.nbytes),
        "norm_rope_e4m3 q": (norm_rope_e4m3, (xq, nh, d, w, b, 1e-6, True, rope), TOKEN_DIMS, 1.5 * xq.nbytes),
        "gated_residual": (_gated_residual, (y, res, gate, hw, hb, 1e-6, True, ctn), GATED_TOKEN_DIMS, 3 * y.nbytes),
        "gated_residual+pre_norm": (_gated_residual_pre_norm, (y, res, gate, hw, hb, 1e-6, True, ctn,
                                    hw.bfloat16() + 1, hb.bfloat16(), 1e-6), GATED_TOKEN_DIMS, 4 * y.nbytes),
        "head_norm (cross q)": (layer_norm_as_cuda, (xq.view(S, nh, d), w.bfloat16() + 1, b.bfloat16(), 1e-6),
                                {0: (0,)}, 2 * xq.nbytes),
    }
    rows = {}
    mode = "dynamic=True" if a.all_dynamic else "static sizes"
    for name, (fn, args, dims, nbytes) in cases.items():
        f = compiled(fn, dims)
        t = _time(lambda: f(*args), iters=20)
        rows[name] = dict(ms=round(t * 1e3, 3), GBps=round(nbytes / t / 1e9))
        print(f"{name:18s} {mode:13s} {t * 1e3:7.3f} ms  {nbytes / t / 1e9:6.0f} GB/s", flush=True)
    ln = torch.nn.LayerNorm(h, eps=1e-6, dtype=torch.bfloat16, device=dev)  # the eager passes the fusions replace
    eager = {"eager pre-norm": (lambda: ln(y), y), "eager head_norm": (lambda: torch.nn.functional.layer_norm(
        xq.view(S, nh, d), (d,), w.bfloat16() + 1, b.bfloat16(), 1e-6), xq)}
    for name, (fn, x_in) in eager.items():
        t = _time(fn, iters=20)
        rows[name] = dict(ms=round(t * 1e3, 3), GBps=round(2 * x_in.nbytes / t / 1e9))
        print(f"{name:18s} {'eager':13s} {t * 1e3:7.3f} ms", flush=True)
    if not cfg.gated_linear_unit:  # 4.5B: fc1 + GELU as two passes vs GELU in the GEMM's epilogue
        fc1 = torch.nn.Linear(h, cfg.ffn_hidden_size, bias=False, dtype=torch.bfloat16, device=dev)
        x = torch.randn(S, h, device=dev).bfloat16()
        for name, fn in {"fc1": lambda: fc1(x), "fc1 then gelu": lambda: torch.nn.functional.gelu(fc1(x)),
                         "fc1 gelu epilogue": lambda: linear_gelu(x, fc1)}.items():
            t = _time(fn, iters=10)
            rows[name] = dict(ms=round(t * 1e3, 3))
            print(f"{name:18s} {'':13s} {t * 1e3:7.3f} ms", flush=True)
        exact = torch.nn.functional.linear(x.float(), fc1.weight.float())
        got = linear_gelu(x, fc1).float()
        for form in ("none", "tanh"):  # which GELU the epilogue computes, and its error against fp32 math
            ref = torch.nn.functional.gelu(exact, approximate=form)
            rows[f"epilogue vs fp32 gelu({form})"] = dict(rel_l2=float((got - ref).norm() / ref.norm()),
                                                          max_abs=float((got - ref).abs().max()))
        ref = torch.nn.functional.gelu(exact)
        two = torch.nn.functional.gelu(fc1(x)).float()
        rows["two passes vs fp32 gelu(none)"] = dict(rel_l2=float((two - ref).norm() / ref.norm()),
                                                     max_abs=float((two - ref).abs().max()))
        for k in [r for r in rows if " vs " in r]:
            print(f"{k:34s} rel L2 {rows[k]['rel_l2']:.3e}  max abs {rows[k]['max_abs']:.3e}", flush=True)
    emit(dict(bench="islands", model=a.size, tokens=S, compile=mode, rows=rows, **device_info(dev)), a.json)


if __name__ == "__main__":
    main()
