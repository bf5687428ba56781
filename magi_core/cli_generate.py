"""`python -m magi_core generate`: text-to-video, image-to-video and video continuation from the command line."""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

HELP = "generate a video (t2v / i2v / v2v, per-chunk prompts); --demo runs a tiny random model offline"
DEFAULT_TOKENS = Path(__file__).resolve().parent / "assets" / "special_tokens.npz"


def add_arguments(p: argparse.ArgumentParser):
    p.add_argument("--dit", help="DiT checkpoint: official folder (…/4.5B_distill) or one .safetensors file")
    p.add_argument("--variant", help="base | distill | distill-fp8 (when the path does not say it)")
    p.add_argument("--vae", help="VAE folder (ckpt/vae) or .safetensors")
    p.add_argument("--t5", help="T5 folder (ckpt/t5) or a t5xxl .safetensors file")
    p.add_argument("--t5-tokenizer", help="spiece.model / tokenizer.json when --t5 is a single file")
    p.add_argument("--special-tokens", default=None, help=f"special_tokens.npz (default {DEFAULT_TOKENS})")
    p.add_argument("--config", help="an official MAGI-1 config JSON: its sampler settings are the defaults")
    p.add_argument("--prompt", default="", help='a prompt, or a per-chunk schedule: "0-1: a fox\\n2-: a bird"')
    p.add_argument("--prompt-file", help="read the prompt / schedule from this file")
    p.add_argument("--image", help="image-to-video: the first frame")
    p.add_argument("--video", help="video continuation: the prefix video")
    p.add_argument("--prefix-frames", type=int, default=None, help="v2v: prefix frames to use (default: all)")
    p.add_argument("--prefix-from", default="end", choices=["end", "start"], help="v2v: take the prefix from")
    p.add_argument("--resize", default="stretch", choices=["stretch", "crop", "pad"], help="prefix resize policy")
    p.add_argument("--width", type=int, default=None)
    p.add_argument("--height", type=int, default=None)
    p.add_argument("--frames", type=int, default=None, help="new frames to generate (rounded up to 24-frame chunks)")
    p.add_argument("--fps", type=int, default=None)
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--window", type=int, default=None, help="chunks denoised at once (4; 1 = lowest memory)")
    p.add_argument("--per-chunk-noise", action="store_true", help="noise that does not change with video length")
    p.add_argument("--no-hq", action="store_true", help="do not prepend the HQ special token")
    p.add_argument("--no-duration", action="store_true", help="do not prepend the DURATION countdown token")
    p.add_argument("--kv-offload", action="store_true", help="keep the KV cache in host memory")
    p.add_argument("--precision", default="fast", choices=["fast", "exact"])
    p.add_argument("--weight-dtype", default=None, choices=["bf16", "fp8_e4m3fn"],
                   help="fp8_e4m3fn: keep the DiT block weights in fp8 (half the VRAM)")
    p.add_argument("--block-swap", type=int, default=0, metavar="N",
                   help="N transformer layers stay in host memory and stream to the GPU during each forward")
    p.add_argument("--attention", default=None,
                   help="attention backend: sdpa | cudnn | flex | flash | magi (default auto)")
    p.add_argument("--compile", action="store_true", help="torch.compile the element-wise ops (CUDA; ~9%% faster)")
    p.add_argument("--early-first-chunk", action="store_true",
                   help="finish the first chunk before the others start (same result; more memory)")
    p.add_argument("--temporal-overlap", type=int, default=0, help="VAE decode: latent frames shared by tiles")
    p.add_argument("--device", default=None, help="cuda, cuda:1, cpu (default: cuda if available)")
    p.add_argument("--output", "-o", default="magi_output.mp4")
    p.add_argument("--demo", action="store_true", help="tiny random models, CPU, offline (writes a real mp4)")


def _settings(a, dit_cfg):
    from .config import load_official_config
    from .pipeline import Settings

    s = Settings()
    if a.config:
        sc = load_official_config(a.config).sampler
        s = Settings(width=sc.video_size_w, height=sc.video_size_h, num_frames=sc.num_frames, fps=sc.fps,
                     steps=sc.num_steps, seed=sc.seed, window_size=sc.window_size, cfg_number=sc.cfg_number,
                     cfg_t_range=tuple(sc.cfg_t_range), prev_chunk_scales=tuple(sc.prev_chunk_scales),
                     text_scales=tuple(sc.text_scales), noise2clean_kvrange=tuple(sc.noise2clean_kvrange),
                     clean_chunk_kvrange=sc.clean_chunk_kvrange, clean_t=sc.clean_t, shortcut_mode=sc.shortcut_mode,
                     distill_nearly_clean_threshold=sc.distill_nearly_clean_chunk_threshold)
    elif dit_cfg.distill and dit_cfg.name == "24B":
        s.steps = 16
    for field, value in (("width", a.width), ("height", a.height), ("num_frames", a.frames), ("fps", a.fps),
                         ("steps", a.steps), ("seed", a.seed), ("window_size", a.window)):
        if value is not None:
            setattr(s, field, value)
    s.use_hq, s.use_duration = not a.no_hq, not a.no_duration
    s.per_chunk_noise, s.kv_offload = a.per_chunk_noise, a.kv_offload
    s.early_first_chunk = a.early_first_chunk
    return s


def run(a) -> int:
    from .checkpoint import load_dit
    from .pipeline import decode_chunk, encode_prefix, encode_prompts, sample, validate
    from .text import T5TextEncoder, load_special_tokens
    from .vae import load_vae
    from .video import read_image, read_video, write_mp4

    tmp = None
    if a.demo:
        from .demo import make_tiny_assets

        tmp = tempfile.TemporaryDirectory()
        paths = make_tiny_assets(tmp.name)
        a.dit, a.vae, a.t5 = str(paths["dit"]), str(paths["vae"]), str(paths["t5"])
        a.special_tokens = str(paths["special_tokens"])
        a.device = a.device or "cpu"
        a.prompt = a.prompt or "0: a red fox runs through the snowy forest\n1-: a cat sleeps on a sunny windowsill"
        a.width, a.height = a.width or 128, a.height or 128
        a.frames, a.steps = a.frames or 48, a.steps or 8
    prompt = Path(a.prompt_file).read_text() if a.prompt_file else a.prompt
    missing = [n for n in ("dit", "vae", "t5") if not getattr(a, n)]
    if missing:
        print(f"error: pass --{' --'.join(missing)} (model paths), or --demo", file=sys.stderr)
        return 2
    if not prompt.strip():
        print("error: pass --prompt (or --prompt-file)", file=sys.stderr)
        return 2
    if a.image and a.video:
        print("error: pass --image or --video, not both", file=sys.stderr)
        return 2
    device = torch.device(a.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    tokens_path = Path(a.special_tokens) if a.special_tokens else DEFAULT_TOKENS
    tokens = load_special_tokens(tokens_path) if tokens_path.exists() else None

    t0 = time.perf_counter()
    load_device = "cpu" if a.block_swap else device
    dit, info = load_dit(a.dit, device=load_device, variant=a.variant, weight_dtype=a.weight_dtype)
    if a.block_swap:
        from .dit.offload import enable_block_swap

        if not 0 < a.block_swap <= dit.cfg.num_layers:
            print(f"error: --block-swap must be 0..{dit.cfg.num_layers} (this model's layers), got {a.block_swap}",
                  file=sys.stderr)
            return 2
        enable_block_swap(dit, device, dit.cfg.num_layers - a.block_swap)
    dit.set_precision(a.precision)
    dit.attn_backend, dit.compile_ops = a.attention, a.compile
    s = _settings(a, dit.cfg)
    if tokens is None and (s.use_hq or s.use_duration):
        print(f"error: special tokens not found at {tokens_path}: run `python install.py` or pass "
              "--special-tokens PATH (or --no-hq --no-duration)", file=sys.stderr)
        return 2
    frames = None
    size = (s.height, s.width)  # scaled from the decoded pixels, as the reference's ffmpeg read
    if a.image:
        frames = read_image(a.image, size=size, policy=a.resize)
    elif a.video:
        frames = read_video(a.video, fps=s.fps, max_frames=a.prefix_frames, take=a.prefix_from, size=size,
                            policy=a.resize)
    vae_dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    vae = load_vae(a.vae, device=device, dtype=vae_dtype)
    t5 = T5TextEncoder.load(a.t5, tokenizer=a.t5_tokenizer, device="cpu")
    prompts = encode_prompts(t5, prompt)
    n_prefix = 0 if frames is None else frames.shape[0]
    validate(s, dit.cfg, prompts, vae, n_prefix, tokens)
    print(f"loaded {info['size']} {info['variant']} DiT ({info['num_params']:,} params) in "
          f"{time.perf_counter() - t0:.1f}s on {device}")
    prefix = None
    if frames is not None:
        prefix = encode_prefix(vae, frames, s, policy=a.resize)

    def progress(i, total, chunk):
        print(f"\rDiT call {i}/{total} (chunk {chunk})", end="", flush=True)

    out = []
    t1 = time.perf_counter()
    for ch in sample(dit, prompts, s, prefix, n_prefix, tokens, progress=progress):
        out.append(decode_chunk(vae, ch.latents, s.fps, temporal_overlap=a.temporal_overlap))
        print(f"\nchunk {ch.index}: {out[-1].shape[0]} frames at {time.perf_counter() - t1:.1f}s", flush=True)
    video = torch.cat(out)
    codec = write_mp4(a.output, video, s.fps)
    print(f"wrote {a.output} ({codec}): {video.shape[0]} frames {video.shape[2]}x{video.shape[1]} at {s.fps} fps")
    if tmp is not None:
        tmp.cleanup()
    return 0
