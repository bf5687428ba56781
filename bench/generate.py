"""Time a whole generation at full size with random weights (GPU machine): P2 / P4 / P5 / P7 shapes.

  python bench/generate.py --size 4.5B --variant distill --height 720 --width 720 --frames 96 --steps 16
  python bench/generate.py --size 4.5B --variant base --steps 64          # cfg 3 (three passes per step)
  add --decode for VAE decode of every chunk (random full-size VAE), --t5 for a random T5-XXL encode.
Prints total time (T5 encode + DiT + VAE decode), DiT-only and decode time, time to the first finished chunk
(T5 encode included; with --warmup a warm encode), peak VRAM (from the start of sampling), DiT calls.
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import magi_core  # noqa: E402,F401
from magi_core import startup  # noqa: E402
from magi_core.config import preset  # noqa: E402
from magi_core.dit import build_dit, init_random_  # noqa: E402
from magi_core.pipeline import PromptEmbeds, chunk_count, decode_chunk, sample  # noqa: E402
from magi_core.settings import SamplingSettings  # noqa: E402
from magi_core.text import PromptSchedule  # noqa: E402
from magi_core.text.special_tokens import special_tokens_from_arrays  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import device_info, emit, model_args, runtime, sync  # noqa: E402


def random_t5_encode(dev, n_tokens=100, warm=False):
    """Build a random T5-XXL encoder on the GPU and encode one 100-token prompt; returns (emb, mask, seconds of
    the first encode, seconds of the encode that is reported: the first, or with `warm` a second one, as a
    running ComfyUI server encodes a new prompt)."""
    from transformers import T5Config, T5EncoderModel

    cfg = T5Config(vocab_size=32128, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
                   feed_forward_proj="gated-gelu", is_encoder_decoder=False, use_cache=False)
    with torch.device(dev):
        t5 = T5EncoderModel(cfg).to(torch.bfloat16).eval()
    ids = torch.randint(0, 32000, (1, n_tokens), device=dev)
    times = []
    for _ in range(2 if warm else 1):
        sync()
        t0 = time.perf_counter()
        with torch.no_grad():
            h = t5(input_ids=ids).last_hidden_state.float()
        sync()
        times.append(time.perf_counter() - t0)
    emb = torch.zeros(800, 4096)
    emb[:n_tokens] = h[0].cpu()
    mask = torch.zeros(800, dtype=torch.long)
    mask[:n_tokens] = 1
    del t5
    torch.cuda.empty_cache()
    return emb, mask, times[0], times[-1]


def gpu_time_by_kind(prof, wall_s: float) -> dict:
    """GPU kernel time of a profiled run by kind (bench/profile_forward.py's kinds), and wall time minus it: the
    time the GPU waited for the host (launches, Python, synchronisations) or for copies not listed as kernels."""
    from profile_forward import kind

    by = {}
    for e in prof.key_averages():
        if e.device_type == torch.autograd.DeviceType.CUDA:
            by[kind(e.key)] = by.get(kind(e.key), 0.0) + e.self_device_time_total / 1e6
    busy = sum(by.values())
    res = dict(wall_s=round(wall_s, 2), gpu_busy_s=round(busy, 2), gpu_idle_s=round(wall_s - busy, 2),
               **{f"{k}_s": round(v, 2) for k, v in sorted(by.items(), key=lambda kv: -kv[1])})
    print("profile: " + ", ".join(f"{k} {v}" for k, v in res.items()), flush=True)
    return res


def dit_ideal(cfg, s, a, dev, dit_s: float) -> dict:
    """The DiT's ideal time for this run's sampling plan at ceilings measured now (bf16; with fp8-approx also at
    the FP8 kernel's speed)."""
    from ceilings import ceilings, plan_flops

    from magi_core.pipeline import sampling_plan
    from magi_core.video import CHUNK_WIDTH

    r = s.for_model(cfg)
    plan = sampling_plan(r, chunk_count(r)[0], 0, a.precision)
    ctn = CHUNK_WIDTH * (a.height // 16) * (a.width // 16)  # tokens per chunk: latent frames x (H/16)(W/16) patches
    dense, attn = plan_flops(cfg, plan, ctn)
    fp8 = a.backend == "fp8-approx"
    ceil = ceilings(dev, cfg, ctn, fp8_attention=fp8)
    res = dict(ceilings=ceil, dit_ideal_s=round(dense / (ceil["gemm_TFLOPs"] * 1e12) + attn / (ceil["sdpa_TFLOPs"] * 1e12), 2))
    res["dit_over_ideal"] = round(dit_s / res["dit_ideal_s"], 3)
    if fp8:
        res["dit_ideal_fp8_s"] = round(dense / (ceil["gemm_TFLOPs"] * 1e12) + attn / (ceil["fp8_sdpa_TFLOPs"] * 1e12), 2)
        res["dit_over_ideal_fp8"] = round(dit_s / res["dit_ideal_fp8_s"], 3)
    print("ideal: " + ", ".join(f"{k} {v}" for k, v in res.items()), flush=True)
    return res


def main():
    ap = argparse.ArgumentParser()
    model_args(ap, variant="distill")
    ap.add_argument("--frames", type=int, default=96)
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument("--window", type=int, default=4)
    ap.add_argument("--kv-offload", action="store_true")
    ap.add_argument("--decode", action="store_true")
    ap.add_argument("--t5", action="store_true")
    ap.add_argument("--json", default=None)
    ap.add_argument("--save-latents", default=None, metavar="PATH",
                    help="torch.save the finished chunks' latents (CPU, fp32) to compare two runs")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--block-swap", type=int, default=0, metavar="N",
                    help="P4: N transformer layers live in host memory, streamed in while the model runs")
    ap.add_argument("--weight-fp8", action="store_true", help="P4/P5: store bf16 block weights as fp8")
    ap.add_argument("--mem-cap-gib", type=float, default=None,
                    help="P4b: let this process use at most this much GPU memory (a smaller card's limit)")
    ap.add_argument("--compile", action="store_true", help="torch.compile the element-wise islands")
    ap.add_argument("--early-first-chunk", action="store_true", help="P7: finish the first chunk first")
    ap.add_argument("--warmup", action="store_true",
                    help="run a short 2-chunk generation first (compiles, cuDNN plans) and report it apart; "
                         "with --t5, time a second encode (the first is reported apart)")
    ap.add_argument("--keep-copies", action="store_true",
                    help="fast precision with the reference's distill copies of the first chunk (which fast drops): "
                         "to time and compare what dropping them changes")
    ap.add_argument("--tile-batch", type=int, default=None,
                    help="VAE decode: same-sized tiles per VAE call (magi_core/vae/tiling.py; 1 = the reference, "
                         "default: 16 on CUDA)")
    ap.add_argument("--ideal", action="store_true",
                    help="measure the GEMM/SDPA ceilings after the run and report the DiT's ideal time (the plan's "
                         "FLOPs at those ceilings, bench/ceilings.py) and its ratio")
    ap.add_argument("--profile", action="store_true",
                    help="profile the timed generation (torch profiler, CUDA kernels): GPU time by kind of kernel and "
                         "the time the GPU sat idle; the profiler slows the run, so its times are not P2's")
    a = ap.parse_args()
    if (a.profile or a.ideal) and a.device != "cuda":
        ap.error("--profile and --ideal measure a CUDA GPU")
    if a.keep_copies:
        import magi_core.pipeline

        magi_core.pipeline.without_redundant_copies = lambda plan: plan  # (sampling_plan looks it up at each call)
    startup.allocator_defaults()  # as the command lines set it (before the first CUDA allocation)
    torch.manual_seed(0)  # the random T5 and its prompt: the same in every run (--save-latents comparisons)
    dev = torch.device(a.device)
    name = a.size if a.variant == "base" else f"{a.size}-{a.variant}"
    cfg = preset(name)
    t5_s = t5_first_s = None
    if a.t5:  # with --warmup the reported encode is a second one (the first loads CUDA kernels: t5_first_encode_s)
        emb, mask, t5_first_s, t5_s = random_t5_encode(dev, warm=a.warmup)
    else:
        emb = torch.randn(800, 4096) * 0.1
        mask = torch.zeros(800, dtype=torch.long)
        mask[:100] = 1
    rt = runtime(a, dev)
    if rt.block_swap and dev.type == "cuda":  # random weights drawn on the GPU (minutes faster than the CPU for 24B),
        dit = init_random_(build_dit(cfg), seed=0, device=dev)  # stored fp8 there, then placed on the host where
        if rt.weight_dtype == "fp8_e4m3fn":  # a checkpoint would load them (apply's fp8 storage then finds none)
            from magi_core.dit.weight_fp8 import store_weights_fp8_

            store_weights_fp8_(dit)
        dit = rt.apply(dit.to("cpu"))
        torch.cuda.empty_cache()
    else:
        dit = rt.apply(init_random_(build_dit(cfg), seed=0, device=rt.load_device))
    if a.mem_cap_gib and dev.type == "cuda":  # after the random weights were drawn on the GPU (a checkpoint loads
        total = torch.cuda.get_device_properties(dev).total_memory  # to the host and streams; no GPU copy)
        torch.cuda.empty_cache()
        torch.cuda.set_per_process_memory_fraction(min(1.0, a.mem_cap_gib * 2**30 / total), torch.cuda.current_device())
    vae = None
    if a.decode:
        from magi_core.vae import VAE_PRESETS, ViTVAE

        with torch.device(dev):
            vae = ViTVAE(VAE_PRESETS["magi1"]).to(torch.bfloat16).eval()
    rng = np.random.default_rng(0)
    tokens = special_tokens_from_arrays(rng.normal(size=(1, 4096)), rng.normal(size=(1, 4096)),
                                        rng.normal(size=(100, 4096)))
    if cfg.caption_channels != 4096:  # tiny presets (CPU smoke test)
        C = cfg.caption_channels
        emb, tokens = emb[:, :C], special_tokens_from_arrays(rng.normal(size=(1, C)), rng.normal(size=(1, C)),
                                                             rng.normal(size=(100, C)))
    prompts = PromptEmbeds(PromptSchedule.single("p"), {"p": (emb, mask)})
    s = SamplingSettings(width=a.width, height=a.height, num_frames=a.frames, steps=a.steps, window_size=a.window,
                 kv_offload=a.kv_offload, early_first_chunk=a.early_first_chunk)
    calls = {"n": 0}
    warmup_s = None
    if a.warmup:
        sync()
        t0 = time.perf_counter()
        w = s.replace(num_frames=min(a.frames, 48), steps=math.lcm(a.window, 4), early_first_chunk=False)
        for ch in sample(dit, prompts, w, special_tokens=tokens):
            if vae is not None:
                decode_chunk(vae, ch.latents, s.fps, tile_batch=a.tile_batch)
        sync()
        warmup_s = time.perf_counter() - t0
    sync()
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    prof = None
    if a.profile:
        from torch.profiler import ProfilerActivity, profile

        prof = profile(activities=[ProfilerActivity.CUDA])
        prof.__enter__()
    t0 = time.perf_counter()
    first = first_decoded = None
    frames, decode_s, latents = 0, 0.0, []
    for ch in sample(dit, prompts, s, special_tokens=tokens, progress=lambda i, n, c: calls.update(n=n, i=i)):
        sync()
        t1 = time.perf_counter()
        first = first or t1 - t0
        print(f"chunk {ch.index} finished at {t1 - t0:.1f} s after {calls['i']} DiT calls", flush=True)
        if a.save_latents:
            latents.append(ch.latents.float().cpu())
        if vae is not None:
            frames += decode_chunk(vae, ch.latents, s.fps, tile_batch=a.tile_batch).shape[0]
            sync()
            decode_s += time.perf_counter() - t1
            first_decoded = first_decoded or time.perf_counter() - t0
    sync()
    total = time.perf_counter() - t0
    extra = {}
    if prof is not None:
        prof.__exit__(None, None, None)
        extra["profile"] = gpu_time_by_kind(prof, total)
    if a.ideal:
        extra.update(dit_ideal(cfg, s, a, dev, total - decode_s))
    t5 = t5_s or 0.0
    res = dict(
        bench="generate", model=name, res=f"{a.height}x{a.width}", frames=a.frames, steps=a.steps,
        window=a.window, chunks=chunk_count(s)[0], dit_calls=calls["n"], precision=a.precision,
        backend=a.backend or "auto", compile=a.compile, early_first_chunk=a.early_first_chunk, decode=a.decode,
        redundant_copies_dropped=cfg.distill and a.precision == "fast" and not a.keep_copies,
        frames_out=frames, total_s=round(total + t5, 2), dit_s=round(total - decode_s, 2),
        decode_s=round(decode_s, 2), t5_encode_s=t5_s and round(t5_s, 3),
        t5_first_encode_s=t5_first_s and round(t5_first_s, 3),
        first_chunk_s=round(first + t5, 2), first_chunk_decoded_s=first_decoded and round(first_decoded + t5, 2),
        warmup_s=warmup_s and round(warmup_s, 1), peak_GiB=round(torch.cuda.max_memory_allocated() / 2**30, 2) if dev.type == "cuda" else None,
        peak_reserved_GiB=round(torch.cuda.max_memory_reserved() / 2**30, 2) if dev.type == "cuda" else None,
        tile_batch=a.tile_batch, kv_offload=a.kv_offload, block_swap=a.block_swap, weight_fp8=a.weight_fp8, mem_cap_GiB=a.mem_cap_gib,
        **extra, **device_info(dev),
    )
    emit(res, a.json)
    if a.save_latents:
        torch.save(latents, a.save_latents)


if __name__ == "__main__":
    main()
