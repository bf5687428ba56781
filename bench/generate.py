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
    a = ap.parse_args()
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
                decode_chunk(vae, ch.latents, s.fps)
        sync()
        warmup_s = time.perf_counter() - t0
    sync()
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
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
            frames += decode_chunk(vae, ch.latents, s.fps).shape[0]
            sync()
            decode_s += time.perf_counter() - t1
            first_decoded = first_decoded or time.perf_counter() - t0
    sync()
    total = time.perf_counter() - t0
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
        kv_offload=a.kv_offload, block_swap=a.block_swap, weight_fp8=a.weight_fp8, mem_cap_GiB=a.mem_cap_gib,
        **device_info(dev),
    )
    emit(res, a.json)
    if a.save_latents:
        torch.save(latents, a.save_latents)


if __name__ == "__main__":
    main()
