"""Context-parallel generation under torchrun: one CP group over every GPU of one or many machines.

Run from the repo root (it holds `magi_core/`). Arguments are those of `python -m magi_core generate`.

One machine, 4 GPUs:

    torchrun --standalone --nproc_per_node 4 -m magi_core.parallel.run \\
        --dit ckpt/24B_distill_quant --vae ckpt/vae --t5 ckpt/t5 --prompt "a red fox" -o fox.mp4

N machines with G GPUs each (the same command on every machine; HOST0 = an address of machine 0 that the
others can reach; every machine needs the repo and the DiT checkpoint at the same path, VAE and T5 are only
read on global rank 0):

    torchrun --nnodes N --nproc_per_node G --rdzv_backend c10d --rdzv_endpoint HOST0:29500 --rdzv_id magi1 \\
        -m magi_core.parallel.run --dit ... --vae ... --t5 ... --prompt "..." -o out.mp4

The cp size is N*G; it must divide the query heads (4.5B: 24, 24B: 48). Rendezvous and transport are
torch.distributed's own (c10d store, NCCL; across machines NCCL uses InfiniBand/RoCE when present, else TCP:
set NCCL_SOCKET_IFNAME to the right interface). Ulysses all-to-alls every layer are latency-bound across
machines without a fast fabric; prefer one machine. CPU smoke test (gloo):
`torchrun --standalone --nproc_per_node 2 -m magi_core.parallel.run --demo`.

Every rank loads its DiT replica, runs the unchanged sampler on the same plan, captions and noise; global
rank 0 encodes the prompt and prefix (T5, VAE) and broadcasts them, then decodes the chunks and writes the video.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import torch
import torch.distributed as dist

from ._bootstrap import sanitize_env
from .ulysses import check_cp_size, enable_context_parallel


def init_distributed(backend: str | None = None) -> torch.device:
    """Join the group torchrun set up (env:// rendezvous) and bind this rank's GPU (LOCAL_RANK); returns it."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        raise RuntimeError("start this under torchrun (it sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR)")
    sanitize_env()  # before the CUDA allocator and NCCL read their settings
    kw = {}
    if torch.cuda.is_available():
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
        kw["device_id"] = device
    else:
        device = torch.device("cpu")
    dist.init_process_group(backend or ("nccl" if device.type == "cuda" else "gloo"), **kw)
    return device


def _broadcast(obj):
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _encode(a, s, dit_cfg, device):
    """Rank 0: special tokens, T5 prompts, prefix latents (the same steps as `magi_core generate`)."""
    from ..cli_generate import DEFAULT_TOKENS
    from ..pipeline import encode_prefix, encode_prompts, validate
    from ..text import T5TextEncoder, load_special_tokens
    from ..vae import load_vae
    from ..video import read_image, read_video

    tokens_path = a.special_tokens or str(DEFAULT_TOKENS)
    tokens = load_special_tokens(tokens_path) if os.path.exists(tokens_path) else None
    size = (s.height, s.width)  # scaled from the decoded pixels, as the reference's ffmpeg read
    frames = read_image(a.image, size=size, policy=a.resize) if a.image else (
        read_video(a.video, fps=s.fps, max_frames=a.prefix_frames, take=a.prefix_from, size=size, policy=a.resize)
        if a.video else None)
    vae = load_vae(a.vae, device=device, dtype=torch.bfloat16 if device.type == "cuda" else torch.float32)
    prompt = open(a.prompt_file).read() if a.prompt_file else a.prompt
    prompts = encode_prompts(T5TextEncoder.load(a.t5, tokenizer=a.t5_tokenizer, device="cpu"), prompt)
    n_prefix = 0 if frames is None else frames.shape[0]
    validate(s, dit_cfg, prompts, vae, n_prefix, tokens)
    prefix = None
    if frames is not None:
        prefix = encode_prefix(vae, frames, s, policy=a.resize).cpu()
    return vae, dict(prompts=prompts, prefix=prefix, n_prefix=n_prefix, tokens=tokens)


def main(argv=None) -> int:
    from ..checkpoint import load_dit
    from ..cli_generate import _settings, add_arguments
    from ..pipeline import decode_chunk, sample
    from ..video import write_mp4

    p = argparse.ArgumentParser(prog="torchrun ... -m magi_core.parallel.run", description=__doc__.split("\n")[0])
    add_arguments(p)
    a = p.parse_args(argv)
    device = init_distributed()
    rank, world = dist.get_rank(), dist.get_world_size()
    tmp = None
    if a.demo:  # tiny random models written by rank 0 (one machine: the others read the same files)
        from ..demo import make_tiny_assets

        if rank == 0:
            tmp = tempfile.TemporaryDirectory()
            paths = {k: str(v) for k, v in make_tiny_assets(tmp.name).items()}
        paths = _broadcast(paths if rank == 0 else None)
        a.dit, a.vae, a.t5, a.special_tokens = paths["dit"], paths["vae"], paths["t5"], paths["special_tokens"]
        a.prompt = a.prompt or "0: a red fox runs through the snowy forest\n1-: a cat sleeps on a sunny windowsill"
        a.width, a.height, a.frames, a.steps = a.width or 128, a.height or 128, a.frames or 48, a.steps or 8
    if not (a.dit and a.vae and a.t5) or not (a.prompt or a.prompt_file):
        if rank == 0:
            print("error: pass --dit, --vae, --t5 and --prompt (or --demo)", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    dit, info = load_dit(a.dit, device="cpu" if a.block_swap else device, variant=a.variant,
                         weight_dtype=a.weight_dtype)
    check_cp_size(dit.cfg, world)
    if a.block_swap:  # every rank streams the same layers from its own host memory
        from ..dit.offload import enable_block_swap

        if not 0 < a.block_swap <= dit.cfg.num_layers:
            if rank == 0:
                print(f"error: --block-swap must be 0..{dit.cfg.num_layers}, got {a.block_swap}", file=sys.stderr)
            return 2
        enable_block_swap(dit, device, dit.cfg.num_layers - a.block_swap)
    dit.set_precision(a.precision)
    dit.attn_backend, dit.compile_ops = a.attention, a.compile
    enable_context_parallel(dit)
    s = _settings(a, dit.cfg)
    vae, cond = None, None
    if rank == 0:
        try:
            vae, cond = _encode(a, s, dit.cfg, device)
        except Exception as e:  # every rank must learn it, or the others wait forever
            cond = e
    cond = _broadcast(cond)
    if isinstance(cond, Exception):
        if rank == 0:
            print(f"error: {cond}", file=sys.stderr)
        return 2
    if rank == 0:
        print(f"loaded {info['size']} {info['variant']} DiT on {world} ranks (cp={world}) in "
              f"{time.perf_counter() - t0:.1f}s")

    def progress(i, total, chunk):
        print(f"\rDiT call {i}/{total} (chunk {chunk})", end="", flush=True)

    prefix = None if cond["prefix"] is None else cond["prefix"].to(device)
    out, t1 = [], time.perf_counter()
    for ch in sample(dit, cond["prompts"], s, prefix, cond["n_prefix"], cond["tokens"],
                     progress=progress if rank == 0 else None):
        if rank == 0:
            out.append(decode_chunk(vae, ch.latents, s.fps, temporal_overlap=a.temporal_overlap))
            print(f"\nchunk {ch.index}: {out[-1].shape[0]} frames at {time.perf_counter() - t1:.1f}s", flush=True)
    if rank == 0:
        video = torch.cat(out)
        write_mp4(a.output, video, s.fps)
        print(f"wrote {a.output}: {video.shape[0]} frames {video.shape[2]}x{video.shape[1]} at {s.fps} fps")
    dist.barrier()
    dist.destroy_process_group()
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
