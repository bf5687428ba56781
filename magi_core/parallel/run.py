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

import contextlib
import os
import sys
import tempfile
import time

import torch
import torch.distributed as dist

from ..startup import DISK_FULL, Parser, allocator_defaults, disk_full_text
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


def main(argv=None) -> int:
    """The checks, streaming output and Ctrl-C handling of `magi_core generate` (cli_generate), on every rank of
    the group: rank 0 checks everything and opens the output before any rank loads a weight."""
    from ..checkpoint import load_dit
    from ..cli_generate import add_arguments, describe, load_models, open_output, prepare, write_chunks
    from ..pipeline import sample

    p = Parser(prog="torchrun ... -m magi_core.parallel.run", description=__doc__.split("\n")[0])
    add_arguments(p)
    p.add_argument("--debug", action="store_true", help="show the traceback of an error")
    a = p.parse_args(argv)
    device = init_distributed()
    rank, world = dist.get_rank(), dist.get_world_size()
    tmp = tempfile.TemporaryDirectory() if rank == 0 else None
    job = writer = None
    untouched = ""
    try:
        if rank == 0:  # one machine for --demo: the other ranks read the same files
            writer, untouched = open_output(a, tmp.name)
            a.device = a.device or device.type  # each rank runs on its own device (below)
            job = prepare(a)
            check_cp_size(job.dit_cfg, world)
            for w in job.warnings:
                print(f"warning: {w}", file=sys.stderr)
    except (ValueError, OSError) as e:  # every rank must learn it, or the others wait forever
        if writer is not None:
            writer.discard()
        job = e
    job = _broadcast(job if rank == 0 else None)
    if isinstance(job, Exception):
        if rank == 0:
            if a.debug:
                raise job
            print(f"error: {job}", file=sys.stderr)
        dist.destroy_process_group()
        return 2
    if rank == 0:
        print(f"generating {describe(job)} on {world} ranks (cp={world})", flush=True)
    try:
        with writer if rank == 0 else contextlib.nullcontext():  # a failure or Ctrl-C keeps the finished chunks
            t0 = time.perf_counter()
            dit, info = load_dit(job.dit, job.runtime.replace(device=str(device)), variant=job.variant)
            enable_context_parallel(dit)
            cond = None
            if rank == 0:
                try:
                    vae, prompts, prefix = load_models(job, device)
                    cond = dict(prompts=prompts, prefix=prefix)
                except Exception as e:  # every rank must learn it, or the others wait forever
                    cond = e
            cond = _broadcast(cond)
            if isinstance(cond, Exception):
                raise cond
            if rank == 0:
                print(f"loaded {info['size']} {info['variant']} DiT on {world} ranks in "
                      f"{time.perf_counter() - t0:.1f}s", flush=True)
            prefix = None if cond["prefix"] is None else cond["prefix"].to(device)
            chunks = sample(dit, cond["prompts"], job.settings, prefix, job.prefix_frames, job.tokens)
            if rank == 0:
                write_chunks(job, chunks, vae, writer, lambda m: print(m, flush=True))
            else:
                for _ in chunks:
                    pass
    except OSError as e:  # rank 0's video could not be finished (a full disk): one line, not a traceback
        if rank != 0 or a.debug or e.errno not in DISK_FULL:
            raise
        print(f"error: {disk_full_text(e, a.output, writer.frames_written)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # torchrun passes SIGINT on to every rank
        if rank == 0:
            kept = f"kept the finished chunks ({writer.frames_written} frames) in {writer.path}" if writer.frames_written \
                else f"nothing written{untouched}"
            print(f"\ninterrupted: {kept}", file=sys.stderr)
        return 130
    if rank == 0:
        print(f"wrote {a.output}: {writer.frames_written} frames at {job.settings.fps} fps")
    dist.barrier()
    dist.destroy_process_group()
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    allocator_defaults(sanitize_env())  # before any CUDA allocation (each torchrun rank), after a `backend:` is dropped
    sys.exit(main())
