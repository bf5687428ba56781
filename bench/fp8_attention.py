"""FP8 attention (backend "fp8-approx", kernels/attention_fp8.py) against bf16 at MAGI-1's shapes (GPU machine).

  python bench/fp8_attention.py kernel --size 4.5B --keys 1,3,5        # speed and error of one attention call
  python bench/fp8_attention.py dit --size 4.5B                         # per-forward error of the DiT velocity
  python bench/fp8_attention.py compare a.pt b.pt                       # deviation of two saved generations
  python bench/fp8_attention.py quant --device cpu                      # the compiled quantization alone
  python bench/fp8_attention.py profile --size 4.5B                     # GPU kernels of one P1-window call

kernel: one chunk of queries (all heads) against 1..5 chunks of keys, random inputs (N(0,1), and the same with a
common offset added to K and V, which real activations have), for bf16 cuDNN SDPA (native GQA), the fp8 backend
(quantization + cuDNN FP8 SDPA + dequantization) and the FP8 kernel alone; relative L2 error against bf16 SDPA for
the scale choices (smoothing off, one scale per tensor, P scale 1). Also the cross-attention shape.
dit: the P1 window (4 noisy chunks, one cached clean chunk) with random full-size weights, one forward with the
bf16 cuDNN backend and one with fp8: relative L2 of the velocity.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import magi_core  # noqa: E402,F401
from magi_core.config import preset  # noqa: E402
from magi_core.kernels import attention_fp8  # noqa: E402
from magi_core.kernels.attention_fp8 import MIN_KEYS  # noqa: E402
from magi_core.kernels.attention import range_attention  # noqa: E402

from ceilings import _time  # noqa: E402
from common import device_info, emit  # noqa: E402


def rel(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def bf16_sdpa(q, k, v):
    with sdpa_kernel([SDPBackend.CUDNN_ATTENTION]):
        return F.scaled_dot_product_attention(q.transpose(0, 1)[None], k.transpose(0, 1)[None],
                                              v.transpose(0, 1)[None], enable_gqa=True)[0].transpose(0, 1)


def kernel(a, dev):
    cfg = preset(a.size)
    nh, g, d = cfg.num_attention_heads, cfg.num_query_groups, cfg.kv_channels
    ctn = 6 * (a.height // 16) * (a.width // 16)
    gen = torch.Generator(device=dev).manual_seed(0)
    q = torch.randn(ctn, nh, d, device=dev, dtype=torch.bfloat16, generator=gen)
    for nk in [int(x) for x in a.keys.split(",")]:
        for inputs in ("randn", "offset"):
            k = torch.randn(nk * ctn, g, d, device=dev, dtype=torch.bfloat16, generator=gen)
            v = torch.randn_like(k)
            if inputs == "offset":  # a shared component in every key and value (softmax / the output ignore / keep it)
                k = k + 3 * torch.randn(1, g, d, device=dev, generator=gen).to(k.dtype)
                v = v + 3 * torch.randn(1, g, d, device=dev, generator=gen).to(v.dtype)
            ref = bf16_sdpa(q, k, v)
            qr, kr = [(0, ctn)], [(0, nk * ctn)]
            row = dict(bench="fp8_attention_kernel", model=a.size, res=f"{a.height}x{a.width}", q_tokens=ctn,
                       key_chunks=nk, inputs=inputs)
            variants = {"fp8": {}, "fp8_no_smooth": dict(smooth=False), "fp8_per_tensor": dict(per_head=False)}
            for name, kw in variants.items():
                try:
                    row[f"err_{name}"] = f"{rel(attention_fp8.fp8_range_attention(q, k, v, qr, kr, **kw), ref):.3e}"
                except Exception as e:  # noqa: BLE001 -- report and go on
                    row[f"err_{name}"] = f"{type(e).__name__}: {str(e)[:300]}"
            saved = attention_fp8.P_SCALE
            try:
                attention_fp8.P_SCALE = 1.0
                row["err_fp8_p_scale_1"] = f"{rel(attention_fp8.fp8_range_attention(q, k, v, qr, kr), ref):.3e}"
            except Exception as e:  # noqa: BLE001
                row["err_fp8_p_scale_1"] = f"{type(e).__name__}: {str(e)[:300]}"
            finally:
                attention_fp8.P_SCALE = saved
            row["native_gqa"] = attention_fp8._native_gqa
            if inputs == "randn":
                flop = 4 * nh * d * ctn * nk * ctn
                t_bf16 = _time(lambda: bf16_sdpa(q, k, v), iters=5, warmup=2)
                t_fp8 = _time(lambda: attention_fp8.fp8_range_attention(q, k, v, qr, kr), iters=5, warmup=2)
                q8, k8, v8, dq, _, _ = attention_fp8.quantize_qkv(q, k, v)
                if attention_fp8._native_gqa is False:
                    k8, v8 = (x.repeat_interleave(nh // g, dim=1) for x in (k8, v8))
                o8 = torch.empty(q.shape, dtype=torch.float8_e4m3fn, device=dev)
                live = list(zip(qr, kr))
                t_kern = _time(lambda: attention_fp8.run_ranges(q8, k8, v8, o8, live, dq, d ** -0.5), iters=5, warmup=2)
                row.update(ms_bf16=round(t_bf16 * 1e3, 2), ms_fp8=round(t_fp8 * 1e3, 2), ms_fp8_kernel=round(t_kern * 1e3, 2),
                           TFLOPs_bf16=round(flop / t_bf16 / 1e12, 1), TFLOPs_fp8=round(flop / t_fp8 / 1e12, 1),
                           TFLOPs_fp8_kernel=round(flop / t_kern / 1e12, 1))
            row.update(**device_info(dev))
            emit(row, a.json)
    # cross-attention: 4 chunks of queries, each against its own 100 caption tokens
    qx = torch.randn(4 * ctn, nh, d, device=dev, dtype=torch.bfloat16, generator=gen)
    kx = torch.randn(400, g, d, device=dev, dtype=torch.bfloat16, generator=gen)
    vx = torch.randn_like(kx)
    qr = [(i * ctn, (i + 1) * ctn) for i in range(4)]
    kr = [(i * 100, (i + 1) * 100) for i in range(4)]
    ref = range_attention(qx, kx, vx, qr, kr, backend="cudnn")
    t_bf16 = _time(lambda: range_attention(qx, kx, vx, qr, kr, backend="cudnn"), iters=5, warmup=2)
    attention_fp8.MIN_KEYS = 0  # what FP8 would cost and gain here (the backend keeps such calls in bf16)
    t_fp8 = _time(lambda: range_attention(qx, kx, vx, qr, kr, backend="fp8-approx"), iters=5, warmup=2)
    err = rel(range_attention(qx, kx, vx, qr, kr, backend="fp8-approx"), ref)
    attention_fp8.MIN_KEYS = MIN_KEYS
    emit(dict(bench="fp8_attention_cross", model=a.size, q_tokens=4 * ctn, keys_per_range=100, err_fp8=f"{err:.3e}",
              ms_bf16=round(t_bf16 * 1e3, 3), ms_fp8=round(t_fp8 * 1e3, 3), **device_info(dev)), a.json)


def diag(a, dev):
    """Three calls in a row with fresh inputs (cached graph), then the same with a wait after the kernel and with
    the graph cache cleared: tells stale buffers, a missing stream order and a wrong first build apart."""
    import time as _t

    gen = torch.Generator(device=dev).manual_seed(1)
    real_run = attention_fp8.run_ranges

    def waiting(*args):
        o = real_run(*args)
        torch.cuda.synchronize()
        _t.sleep(0.05)
        return o

    for mode in ("cached", "wait", "fresh"):
        errs = []
        for _ in range(3):
            q = torch.randn(2048, 24, 128, device=dev, generator=gen).bfloat16()
            k, v = (torch.randn(4096, 8, 128, device=dev, generator=gen).bfloat16() for _ in range(2))
            if mode == "fresh":
                attention_fp8._graphs.clear()
            attention_fp8.run_ranges = waiting if mode == "wait" else real_run
            errs.append(f"{rel(attention_fp8.fp8_range_attention(q, k, v, [(0, 2048)], [(0, 4096)]), bf16_sdpa(q, k, v)):.2e}")
        attention_fp8.run_ranges = real_run
        emit(dict(bench="fp8_attention_diag", mode=mode, errs=errs), a.json)


def dit(a, dev):
    from magi_core.dit import build_dit, init_random_

    from common import window_inputs

    name = a.size if a.variant == "base" else f"{a.size}-{a.variant}"
    cfg = preset(name)
    t0 = time.perf_counter()
    model = init_random_(build_dit(cfg), seed=0, device=dev).set_precision("fast")
    if a.weight_fp8:
        from magi_core.dit.weight_fp8 import store_weights_fp8_

        store_weights_fp8_(model)
    build_s = time.perf_counter() - t0
    w = window_inputs(cfg, a.height, a.width, dev, "cached")
    dt = 8.0 if cfg.distill else None
    outs, times = {}, {}
    # bf16 twice (its run-to-run difference is the floor); fp8 twice (the first compiles the quantization kernels);
    # "fp8" is the backend as shipped (the caption's cross-attention stays bf16), "fp8-all" puts it in fp8 too
    # "fp8-bf16-q": the queries leave the norm+RoPE island in bf16 and the backend quantizes them (amax per head)
    for run in ("cudnn", "fp8", "cudnn", "fp8-all", "fp8", "fp8-bf16-q"):
        model.e4m3_queries = run != "fp8-bf16-q"
        model.attn_backend = "cudnn"
        w.gen.manual_seed(1)
        cache = w.prefill(model, dt)  # the same bf16 cache for every run
        model.attn_backend = "cudnn" if run == "cudnn" else "fp8-approx"
        attention_fp8.MIN_KEYS = 0 if run == "fp8-all" else MIN_KEYS
        torch.cuda.synchronize()
        t1 = time.perf_counter()
        with torch.no_grad():
            o = model(*w.args, slice_point=w.slice_point, cache=cache, dt_factor=dt)
        torch.cuda.synchronize()
        times[run] = round(time.perf_counter() - t1, 3)  # eager forward; the last run of each name is kept
        outs.setdefault(run, []).append(o.float())
        del cache
    attention_fp8.MIN_KEYS = MIN_KEYS
    ref = outs["cudnn"][0]
    emit(dict(bench="fp8_attention_dit", model=name, res=f"{a.height}x{a.width}", window="P1 (cached)",
              weight_fp8=a.weight_fp8, velocity_rel_l2_fp8=f"{rel(outs['fp8'][0], ref):.3e}",
              velocity_rel_l2_fp8_again=f"{rel(outs['fp8'][1], ref):.3e}",
              velocity_rel_l2_bf16_rerun=f"{rel(outs['cudnn'][1], ref):.3e}",
              velocity_rel_l2_fp8_all=f"{rel(outs['fp8-all'][0], ref):.3e}",
              velocity_rel_l2_fp8_bf16_q=f"{rel(outs['fp8-bf16-q'][0], ref):.3e}", eager_s=times, build_s=round(build_s, 1),
              peak_GiB=round(torch.cuda.max_memory_allocated() / 2**30, 2), **device_info(dev)), a.json)


def p1_qkv(a, dev):
    """Random bf16 q (4 chunks), k, v (5 chunks) at the P1 window's self-attention shapes -> q, k, v, tokens/chunk."""
    cfg = preset(a.size)
    nh, g, d = cfg.num_attention_heads, cfg.num_query_groups, cfg.kv_channels
    ctn = 6 * (a.height // 16) * (a.width // 16)
    gen = torch.Generator(device=dev).manual_seed(0)
    q = torch.randn(4 * ctn, nh, d, device=dev, generator=gen).bfloat16()
    k, v = (torch.randn(5 * ctn, g, d, device=dev, generator=gen).bfloat16() for _ in range(2))
    return q, k, v, ctn


def quant(a, dev):
    """The compiled quantize_qkv alone at the P1 window's shapes (4 query chunks, 5 key chunks), median of 5."""
    q, k, v, ctn = p1_qkv(a, dev)
    fn = torch.compile(attention_fp8.quantize_qkv, dynamic=True, fullgraph=True)
    times = []
    for i in range(7):
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn(q, k, v)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    emit(dict(bench="fp8_quantize", model=a.size, res=f"{a.height}x{a.width}", q_tokens=4 * ctn, k_tokens=5 * ctn,
              ms=round(sorted(times[2:])[2] * 1e3, 2), device=str(dev), torch=torch.__version__), a.json)


def profile(a, dev):
    """torch.profiler over one self-attention call of the P1 window (4 query chunks, block-causal over 5 key
    chunks) with the fp8 backend and with bf16 cuDNN: the GPU time of each kernel, to see where the
    quantization overhead goes."""
    from torch.profiler import ProfilerActivity, profile as prof

    q, k, v, ctn = p1_qkv(a, dev)
    qr = [(i * ctn, (i + 1) * ctn) for i in range(4)]
    kr = [(0, (i + 2) * ctn) for i in range(4)]
    out = torch.empty_like(q)
    # "fp8-e4m3-q": queries made in e4m3 by the layer's norm+RoPE island (the DiT's path): no Q passes here
    q8, q_descale = attention_fp8.quantize_q_bound(q.float(), attention_fp8.E4M3_MAX / (2 * q.float().abs().amax()))
    calls = {"cudnn": lambda: range_attention(q, k, v, qr, kr, backend="cudnn", out=out),
             "fp8-approx": lambda: range_attention(q, k, v, qr, kr, backend="fp8-approx", out=out),
             "fp8-e4m3-q": lambda: attention_fp8.fp8_range_attention(q8, k, v, qr, kr, out=out, q_descale=q_descale)}
    for backend, call in calls.items():
        ms = _time(call, iters=5, warmup=3) * 1e3
        with prof(activities=[ProfilerActivity.CUDA]) as p:
            for _ in range(3):
                call()
            torch.cuda.synchronize()
        rows = sorted(((e.key, e.device_time_total / 3e3, e.count // 3) for e in p.key_averages()
                       if e.device_time_total > 0), key=lambda r: -r[1])
        print(f"{backend}: {ms:.2f} ms per call (timed), GPU kernels per call:")
        for name, t, n in rows[:12]:
            print(f"  {t:7.3f} ms  x{n:<3d} {name[:110]}")
        emit(dict(bench="fp8_attention_profile", model=a.size, backend=backend, ms=round(ms, 2),
                  kernels=[[name[:80], round(t, 3), n] for name, t, n in rows[:12]], **device_info(dev)), a.json)


def compare(a):
    x, y = torch.load(a.files[0]), torch.load(a.files[1])
    per_chunk = [f"{rel(p, q):.3e}" for p, q in zip(x, y)]
    total = rel(torch.cat([p.flatten() for p in x]), torch.cat([q.flatten() for q in y]))
    emit(dict(bench="fp8_attention_generation", files=a.files, latents_rel_l2=f"{total:.3e}",
              per_chunk_rel_l2=per_chunk), a.json)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("what", choices=["kernel", "dit", "compare", "diag", "quant", "profile"])
    ap.add_argument("files", nargs="*")
    ap.add_argument("--size", default="4.5B")
    ap.add_argument("--variant", default="distill", choices=["base", "distill", "distill-fp8"])
    ap.add_argument("--height", type=int, default=720)
    ap.add_argument("--width", type=int, default=720)
    ap.add_argument("--keys", default="1,3,5")
    ap.add_argument("--weight-fp8", action="store_true")
    ap.add_argument("--json", default=None)
    ap.add_argument("--device", default="cuda", help="quant: cpu works too")
    a = ap.parse_args()
    if a.what == "compare":
        return compare(a)
    dev = torch.device(a.device)
    {"kernel": kernel, "dit": dit, "diag": diag, "quant": quant, "profile": profile}[a.what](a, dev)


if __name__ == "__main__":
    main()
