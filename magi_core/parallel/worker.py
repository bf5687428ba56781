"""One rank of a context-parallel group: load the DiT replica once, then run whole generations on request.

Used by the ComfyUI worker pool (`pool.py`, `serve` is the process entry) and by the torchrun entry (`run.py`).
Every rank runs the unchanged sampling loop (`generate_chunks`) on the same plan, captions and noise; the
cancel check is agreed by all ranks (an all-reduce at every DiT-pass boundary), so they stop at the same call.
"""
from __future__ import annotations

import io
import os
import queue
import sys
import traceback
from dataclasses import dataclass, field
from datetime import timedelta

import torch
import torch.distributed as dist

from ..sampling.executor import SamplingCancelled, check_inputs, generate_chunks
from ..settings import DiTRuntime
from .ulysses import check_cp_size, enable_context_parallel


@dataclass(frozen=True)
class ModelSpec:
    """How each rank gets its DiT replica: a checkpoint `path` (any layout `load_dit` reads), or random weights of
    a `preset` (tests, benchmarks: `overrides` go to DiTConfig.replace, `dtype` sets params_dtype, `seed` feeds
    init_random_, identical on every rank). `runtime`: the DiT run-time settings; each rank applies them on its
    own device (runtime.device is replaced by the rank's)."""

    path: str | None = None
    variant: str | None = None
    preset: str | None = None
    overrides: dict = field(default_factory=dict)
    dtype: torch.dtype | None = None
    seed: int = 0
    runtime: DiTRuntime = field(default_factory=DiTRuntime)

    def __post_init__(self):
        if (self.path is None) == (self.preset is None):
            raise ValueError("ModelSpec needs exactly one of path= (checkpoint) or preset= (random weights)")

    @classmethod
    def from_dict(cls, d: dict) -> "ModelSpec":
        """From the ComfyUI DiT handle's spec(): path, variant, runtime."""
        return cls(path=str(d["path"]), variant=d.get("variant"), runtime=d["runtime"])

    def config(self):
        """The DiTConfig (checkpoints: detected from the file headers, no tensor data read)."""
        if self.path is not None:
            from ..checkpoint import detect, open_checkpoint

            return detect(open_checkpoint(self.path, self.variant), self.variant).cfg
        from ..config import preset

        cfg = preset(self.preset).replace(**self.overrides)
        return cfg if self.dtype is None else cfg.replace(params_dtype=self.dtype)


def build_replica(spec: ModelSpec, device) -> torch.nn.Module:
    """Load or build the VideoDiT on `device`, set up as spec.runtime says."""
    runtime = spec.runtime.replace(device=str(torch.device(device)))
    if spec.path is not None:
        from ..checkpoint import load_dit

        return load_dit(spec.path, runtime, variant=spec.variant)[0]
    from ..dit import build_dit, init_random_

    home = torch.device(runtime.load_device)  # CPU: real tensors at once (meta-device ops pull in torch._dynamo)
    model = init_random_(build_dit(spec.config(), "cpu" if home.type == "cpu" else "meta"), spec.seed, home)
    return runtime.apply(model)


@dataclass
class ChunksRequest:
    """One generation given as the arguments of `generate_chunks` (tensors on the CPU)."""

    plan: object
    text: list
    null: object
    noise: torch.Tensor
    prefix: torch.Tensor | None = None
    kv_offload: bool = False
    prev_chunks_scale: float = 0.7


@dataclass
class SampleRequest:
    """One generation given as the arguments of `pipeline.sample` (plan, noise, captions made on every rank)."""

    prompts: object  # PromptEmbeds
    settings: object  # magi_core.settings.SamplingSettings
    prefix_latents: torch.Tensor | None = None
    prefix_frames: int = 0
    special_tokens: object = None


def validate_request(req, cfg) -> None:
    """Raise the input errors the workers would raise, in the parent and without tensor work (a failing
    worker takes the pool down)."""
    if isinstance(req, SampleRequest):
        from ..pipeline import check_prefix, validate

        validate(req.settings, cfg, req.prompts, None, req.prefix_frames, req.special_tokens)
        check_prefix(req.prefix_latents, req.prefix_frames, req.settings.fps)
        return
    prefix = None if req.prefix is None else req.prefix.to("meta")
    check_inputs(req.plan, req.text, req.noise.to("meta"), prefix)


def run_request(model, req, device, progress=None, cancel=None):
    """The whole sampling loop on this rank's device; yields FinishedChunk."""
    device = torch.device(device)
    if isinstance(req, SampleRequest):
        from ..pipeline import sample

        prefix = None if req.prefix_latents is None else req.prefix_latents.to(device)
        yield from sample(model, req.prompts, req.settings, prefix, req.prefix_frames, req.special_tokens,
                          progress=progress, cancel=cancel)
        return
    prefix = None if req.prefix is None else req.prefix.to(device)
    yield from generate_chunks(model, req.plan, req.text, req.null, req.noise.to(device), prefix=prefix,
                               kv_offload=req.kv_offload, prev_chunks_scale=req.prev_chunks_scale,
                               progress=progress, cancel=cancel)


def agreed(flag: bool, device, group=None) -> bool:
    """True on every rank if any rank's flag is True (all-reduce MAX; a collective: all ranks must call it)."""
    if not dist.is_initialized() or dist.get_world_size(group) == 1:
        return bool(flag)
    t = torch.tensor([int(bool(flag))], dtype=torch.int32, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX, group=group)
    return bool(t.item())


def pack(obj) -> bytes:
    """Serialize for the pool's queues: bytes, so no shared-memory handle outlives a dead worker."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def unpack(data: bytes):
    return torch.load(io.BytesIO(data), weights_only=False)


def init_rank(rank: int, world: int, device, backend: str, init_method: str, timeout_s: float):
    """Bind the device and join the process group."""
    device = torch.device(device)
    kw = {}
    if device.type == "cuda":
        torch.cuda.set_device(device)
        kw["device_id"] = device
    dist.init_process_group(backend, init_method=init_method, rank=rank, world_size=world,
                            timeout=timedelta(seconds=timeout_s), **kw)


def serve(rank, world, device, backend, init_method, spec: ModelSpec, commands, results, cancel_event, opts: dict):
    """Worker process entry (pool.py). Messages to the parent on `results`:
    ("ready", rank, info) | ("progress", job, i, total, chunk) | ("chunk", job, bytes) | ("done", job)
    | ("cancelled", job) | ("error", rank, job, traceback). Only rank 0 reports progress and results."""
    device = torch.device(device)
    try:
        if device.type == "cpu" and opts.get("threads"):
            torch.set_num_threads(opts["threads"])
        init_rank(rank, world, device, backend, init_method, opts.get("collective_timeout", 300))
        check_cp_size(spec.config(), world)  # before loading anything
        model = build_replica(spec, device)
        if world > 1:
            enable_context_parallel(model)
        import magi_core

        root = os.path.dirname(os.path.dirname(os.path.abspath(magi_core.__file__)))
        info = dict(pid=os.getpid(), device=str(device), magi_core=magi_core.__file__,
                    root_on_path=any(os.path.abspath(p or os.getcwd()) == root for p in sys.path),
                    env={k: os.environ.get(k) for k in ("PYTORCH_CUDA_ALLOC_CONF", "NCCL_NVLS_ENABLE")})
        if rank == 0:
            null = model.y_embedder.null_caption_embedding.detach().float().cpu()
            info.update(cfg=model.cfg, null_caption_embedding=null)
        results.put(("ready", rank, pack(info)))
    except BaseException:
        results.put(("error", rank, None, traceback.format_exc()))
        _exit(results, 1)
    parent = _parent()
    while True:
        try:
            cmd = commands.get(timeout=1.0)
        except queue.Empty:
            if parent is not None and not parent.is_alive():
                break  # the parent is gone: do not linger
            continue
        if cmd[0] == "stop":
            break
        _, job, data = cmd
        try:
            req = unpack(data)

            def progress(i, total, chunk):
                if rank == 0:
                    results.put(("progress", job, i, total, chunk))

            def cancel():
                return agreed(cancel_event.is_set(), device)

            for ch in run_request(model, req, device, progress, cancel):
                if rank == 0:
                    ch.latents = ch.latents.cpu()
                    results.put(("chunk", job, pack(ch)))
            if rank == 0:
                results.put(("done", job))
        except SamplingCancelled:
            if rank == 0:
                results.put(("cancelled", job))
        except BaseException:
            results.put(("error", rank, job, traceback.format_exc()))
            _exit(results, 1)  # the group is out of step now; the parent restarts the pool
        finally:
            if device.type == "cuda":
                torch.cuda.empty_cache()
    dist.destroy_process_group()
    _exit(results, 0)


def _parent():
    import multiprocessing

    return multiprocessing.parent_process()


def _exit(results, code: int):
    """Flush the result queue, then leave without running interpreter teardown (collectives may be stuck)."""
    results.close()
    results.join_thread()
    os._exit(code)
