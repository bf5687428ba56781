"""Ulysses context-parallel scaling: one window forward and a short generation at cp = 1, 2, 4 (random weights).

    torchrun --standalone --nproc_per_node 4 bench/cp_scaling.py --size 4.5B --height 720 --width 720 --json out.jsonl
    torchrun --standalone --nproc_per_node 4 bench/cp_scaling.py --size 24B --height 720 --width 1280 --json out.jsonl

Every rank builds the same replica (same seed); cp = c uses ranks 0..c-1 (the others wait). One JSON line per
(bench, cp) from rank 0: time, speedup and scaling efficiency t1 / (c * tc) against cp = 1 of the same run
(or the smallest cp that ran, if cp = 1 ran out of memory), peak VRAM of the busiest rank.
CPU smoke test: torchrun --standalone --nproc_per_node 2 bench/cp_scaling.py --size tiny --height 64 --width 64 --cp 1,2
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import magi_core  # noqa: E402,F401
from magi_core import startup  # noqa: E402
from magi_core.config import preset  # noqa: E402
from magi_core.dit import build_dit, init_random_  # noqa: E402
from magi_core.parallel.run import init_distributed  # noqa: E402
from magi_core.parallel.ulysses import check_cp_size, enable_context_parallel  # noqa: E402
from magi_core.pipeline import sampling_plan  # noqa: E402
from magi_core.settings import SamplingSettings  # noqa: E402
from magi_core.sampling.executor import Caption, generate_chunks, make_noise  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ceilings import dense_and_attention_flops  # noqa: E402
from common import device_info, emit, runtime, sync, window_inputs  # noqa: E402


def timed(fn, dev, iters):
    fn()  # warm-up
    times = []
    for _ in range(iters):
        sync(dev)
        t0 = time.perf_counter()
        fn()
        sync(dev)
        times.append(time.perf_counter() - t0)
    return min(times), times


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", default="4.5B")
    ap.add_argument("--variant", default="distill", choices=["base", "distill", "distill-fp8"])
    ap.add_argument("--height", type=int, default=720)
    ap.add_argument("--width", type=int, default=720)
    ap.add_argument("--cp", default="1,2,4", help="cp sizes to time (each <= the number of ranks)")
    ap.add_argument("--iters", type=int, default=2)
    ap.add_argument("--cap-tokens", type=int, default=100)
    ap.add_argument("--gen-chunks", type=int, default=2, help="short generation: chunks (24 frames each)")
    ap.add_argument("--gen-steps", type=int, default=8)
    ap.add_argument("--skip-gen", action="store_true")
    ap.add_argument("--backend", default=None, help="attention backend (default auto)")
    ap.add_argument("--compile", action="store_true", help="torch.compile the element-wise islands")
    ap.add_argument("--weight-fp8", action="store_true", help="store the bf16 block weights as fp8")
    ap.add_argument("--block-swap", type=int, default=0, metavar="N", help="N layers streamed from host memory")
    ap.add_argument("--mem-cap-gib", type=float, default=None,
                    help="cap each GPU's usable memory (torch.cuda.set_per_process_memory_fraction), e.g. 24 to "
                         "stand for 24 GB cards")
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    startup.allocator_defaults()  # as the command lines set it (before the first CUDA allocation)

    dev = init_distributed()
    rank, world = dist.get_rank(), dist.get_world_size()
    name = a.size if a.variant == "base" else f"{a.size}-{a.variant}"
    cfg = preset(name)
    sizes = [int(c) for c in a.cp.split(",")]
    for c in sizes:
        check_cp_size(cfg, c)
        if c > world:
            raise SystemExit(f"--cp {c} needs {c} ranks, torchrun started {world}")
    groups = {c: dist.new_group(list(range(c))) for c in sizes if c > 1}  # every rank creates every group
    t0 = time.perf_counter()
    rt = runtime(a, dev)
    model = rt.apply(init_random_(build_dit(cfg, "cpu" if dev.type == "cpu" else "meta"), seed=0,
                                  device=rt.load_device))
    if dev.type == "cuda":
        torch.cuda.empty_cache()
        if a.mem_cap_gib:
            total = torch.cuda.get_device_properties(dev).total_memory
            torch.cuda.set_per_process_memory_fraction(min(1.0, a.mem_cap_gib * 2**30 / total), dev)
    build_s = time.perf_counter() - t0
    H, W = a.height // 8, a.width // 8
    w = window_inputs(cfg, a.height, a.width, dev, "extra", a.cap_tokens)
    args, ctn = w.args, w.ctn
    C = cfg.caption_channels
    plan = sampling_plan(SamplingSettings(steps=a.gen_steps).for_model(cfg), a.gen_chunks, 0, rt.precision)
    g = torch.Generator().manual_seed(1)
    text = [Caption(torch.randn(a.cap_tokens, C, generator=g) * 0.1) for _ in range(a.gen_chunks)]
    null = Caption(model.y_embedder.null_caption_embedding[:a.cap_tokens].float())
    noise = make_noise((1, cfg.vae_channels, 6 * a.gen_chunks, H, W), 0, dev)
    dt = 8.0 if cfg.distill else None
    total_flop = sum(dense_and_attention_flops(cfg, ctn, [1, 2, 3, 4, 5], a.cap_tokens))
    base = {}

    def window():
        model(*args, dt_factor=dt)

    def gen():
        for _ in generate_chunks(model, plan, text, null, noise.clone()):
            pass

    benches = [("window_forward", window)] + ([] if a.skip_gen else [("generate", gen)])
    for c in sizes:
        for bench, fn in benches:
            res, status = None, "ok"
            if rank < c:
                model.cp = None
                if c > 1:
                    enable_context_parallel(model, groups[c])
                if dev.type == "cuda":
                    torch.cuda.empty_cache()
                    torch.cuda.reset_peak_memory_stats(dev)
                try:
                    res = timed(fn, dev, a.iters if bench == "window_forward" else 1)
                except torch.OutOfMemoryError:  # only safe to survive at cp = 1 (no peer waits in a collective)
                    status = "oom"
                    torch.cuda.empty_cache()
            busy = dev.type == "cuda" and rank < c
            peak = torch.tensor([torch.cuda.max_memory_allocated(dev) / 2**30 if busy else 0.0], device=dev)
            dist.all_reduce(peak, op=dist.ReduceOp.MAX)
            if rank == 0:
                row = dict(bench=bench, model=name, res=f"{a.height}x{a.width}", cp=c, status=status,
                           tokens=ctn * 5 if bench == "window_forward" else None, world=world)
                if res is not None:
                    best, times = res
                    base.setdefault(bench, (c, best))
                    c0, t_base = base[bench]
                    row.update(time_s=round(best, 4), times=[round(x, 4) for x in times],
                               speedup=round(t_base / best, 3), efficiency=round(t_base * c0 / (best * c), 3),
                               vs_cp=c0)
                    if bench == "window_forward":
                        row["TFLOPs_per_gpu"] = round(total_flop / best / c / 1e12, 1)
                    else:
                        row.update(chunks=a.gen_chunks, steps=a.gen_steps, dit_calls=len(plan.calls))
                row.update(weight_fp8=a.weight_fp8, block_swap=a.block_swap, mem_cap_GiB=a.mem_cap_gib,
                           backend=a.backend or "auto", compile=a.compile)
                row.update(peak_GiB=round(peak.item(), 2), build_s=round(build_s, 1), **device_info(dev))
                emit(row, a.json)
            dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
