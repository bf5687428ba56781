"""Ulysses CP on 2 and 4 GPUs (NCCL, bf16) and the worker pool driven the way the ComfyUI sampler node drives it.

    python -m pytest -q -m gpu tests/test_gpu_parallel.py          # on a machine with 2 or 4 GPUs

bf16 parity criterion: CP changes only how the same bf16 arithmetic is batched (GEMMs over fewer rows pick
other kernels, attention per head group), so CP must be as accurate as one GPU: measured against an fp32 run of
the same weights, its relative error may exceed the one-GPU bf16 error by at most 50% + 2e-3, and CP vs one GPU
must agree to 3e-2 relative (fp8 layers: only the latter). Layout errors give relative errors near 1.
"""
import dataclasses
import os
import signal
import threading
import time

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from test_parallel import H, W, forward_suite, generation

import magi_core  # noqa: F401
from magi_core.config import preset
from magi_core.dit import build_dit, init_random_
from magi_core.parallel import (ModelSpec, WorkerError, WorkerPool, enable_context_parallel, select_devices,
                                shutdown_pool)
from magi_core.parallel import pool as pool_mod
from magi_core.pipeline import PromptEmbeds, sample
from magi_core.settings import DiTRuntime, SamplingSettings as Settings
from magi_core.sampling.executor import SamplingCancelled
from magi_core.text import PromptSchedule

pytestmark = pytest.mark.gpu

# name, config overrides, worlds it runs in, with a generation
CASES = [
    ("tiny", dict(), (2, 4), True),
    ("tiny", dict(num_query_groups=2), (4,), False),  # cp 4 > 2 KV groups: replicated KV heads
    ("4.5B", dict(num_layers=2), (2, 4), False),  # real widths: 24 heads, 8 groups
    ("24B", dict(num_layers=2), (2, 4), False),  # 48 heads, GLU, half-channel VAE
    ("tiny-distill-fp8", dict(), (2, 4), False),  # fp8 layers (static scales) on local tokens
]


def need_gpus(n):
    if torch.cuda.device_count() < n:
        pytest.skip(f"needs {n} GPUs, {torch.cuda.device_count()} visible")


def build(name, overrides, device, dtype=None):
    cfg = preset(name).replace(**overrides)
    if dtype is not None:
        cfg = cfg.replace(params_dtype=dtype)
    return init_random_(build_dit(cfg), seed=0, device=device)


def fp32_twin(model):
    """The same (bf16-rounded) weights in an fp32 model: the accuracy yardstick."""
    m = build_dit(model.cfg.replace(params_dtype=torch.float32), model_device(model))
    m.load_state_dict({k: v.float() for k, v in model.state_dict().items()})
    return m


def model_device(m):
    return next(m.parameters()).device


def rel(a, b):
    a = torch.cat([x.float().flatten().cpu() for x in a])
    b = torch.cat([x.float().flatten().cpu() for x in b])
    return ((a - b).norm() / b.norm()).item()


def _gpu_rank(rank, world, store, out):
    dev = torch.device("cuda", rank)
    torch.cuda.set_device(dev)
    dist.init_process_group("nccl", init_method=f"file://{store}", rank=rank, world_size=world, device_id=dev)
    res = {}
    for i, (name, over, worlds, gen) in enumerate(CASES):
        if world not in worlds:
            continue
        m = build(name, over, dev)
        enable_context_parallel(m)
        outs = forward_suite(m) + (generation(m) if gen else [])
        res[i] = [o.cpu() for o in outs]
        del m
    if rank == 0:
        torch.save(res, f"{out}/cp{world}.pt")
    dist.barrier()
    dist.destroy_process_group()


@pytest.mark.parametrize("world", [2, 4])
def test_cp_bf16_nccl_equals_one_gpu(world, tmp_path):
    need_gpus(world)
    mp.spawn(_gpu_rank, args=(world, str(tmp_path / "store"), str(tmp_path)), nprocs=world)
    got = torch.load(tmp_path / f"cp{world}.pt")
    dev = torch.device("cuda", 0)
    for i, (name, over, worlds, gen) in enumerate(CASES):
        if world not in worlds:
            continue
        m = build(name, over, dev)
        one = forward_suite(m) + (generation(m) if gen else [])
        cp_vs_one = rel(got[i], one)
        assert cp_vs_one < 3e-2, (name, over, cp_vs_one)
        if not m.cfg.fp8_quant:
            ref = fp32_twin(m)
            exact = forward_suite(ref) + (generation(ref) if gen else [])
            e_cp, e_one = rel(got[i], exact), rel(one, exact)
            assert e_cp <= 1.5 * e_one + 2e-3, (name, over, e_cp, e_one)
        del m
        torch.cuda.empty_cache()


# ---------------------------------------------------------------------------- the pool as the sampler node uses it
SPEC = ModelSpec(preset="tiny", overrides=dict(num_layers=2), seed=0)  # bf16


def _prompts(C, seed=7):
    emb = torch.randn(9, C, generator=torch.Generator().manual_seed(seed))
    return PromptEmbeds(PromptSchedule.single("p"), {"p": (emb, torch.ones(9))})


def test_pool_like_comfyui_node():
    """Start on first use (ComfyUI's allocator env set in the parent), two generations, interrupt from another
    thread, kill a worker, recover; the parent never blocks for long."""
    need_gpus(2)
    devices = select_devices(2)
    os.environ["PYTORCH_CUDA_ALLOC_CONF"] = "backend:cudaMallocAsync"  # ComfyUI's cuda_malloc.py does this
    try:
        one = init_random_(build_dit(SPEC.config()), seed=0, device="cuda:0")  # ComfyUI's own GPU work
        prompts = _prompts(one.cfg.caption_channels)
        s = Settings(width=8 * W, height=8 * H, num_frames=72, steps=8, seed=11, use_hq=False, use_duration=False)
        ref = [c.latents for c in sample(one, prompts, s)]
        kw = dict(model=SPEC, prompts=prompts, settings=s, devices=devices, call_timeout=60.0)

        for _ in range(2):
            calls = []
            got = [c.latents for c in pool_mod.generate(progress=lambda *a: calls.append(a), **kw)]
            assert len(got) == len(ref) == 3 and rel(got, ref) < 3e-2
            assert calls[-1][0] == calls[-1][1]
        pool = pool_mod._pool
        pids = pool.pids
        assert all(r["env"] == {"PYTORCH_CUDA_ALLOC_CONF": None, "NCCL_NVLS_ENABLE": os.environ.get(
            "NCCL_NVLS_ENABLE", "0")} for r in pool.info["ranks"])

        interrupted = threading.Event()  # ComfyUI: the user presses Cancel; the node polls the flag
        calls = []

        def progress(i, total, chunk):
            calls.append(i)
            if i == 2:
                threading.Thread(target=interrupted.set).start()

        t0 = time.monotonic()
        with pytest.raises(SamplingCancelled):
            for _ in pool_mod.generate(progress=progress, cancel=interrupted.is_set, **kw):
                pass
        assert time.monotonic() - t0 < 60 and max(calls) < 10
        assert pool_mod._pool is pool and pool.pids == pids and pool.running

        def kill(i, total, chunk):
            if i == 2:
                os.kill(pids[1], 9)

        t0 = time.monotonic()
        with pytest.raises(WorkerError, match="rank 1"):
            list(pool_mod.generate(progress=kill, **kw))
        assert time.monotonic() - t0 < 60
        got = [c.latents for c in pool_mod.generate(**kw)]  # recovered: fresh workers
        assert set(pool_mod._pool.pids).isdisjoint(pids) and rel(got, ref) < 3e-2
    finally:
        os.environ.pop("PYTORCH_CUDA_ALLOC_CONF", None)
        shutdown_pool()


def test_pool_block_swap_and_compile():
    """Workers that stream all but one layer from the host (block swap) and compile the element-wise ops give
    the one-GPU result; the reference is built on the CPU like the swapped replicas (CPU and CUDA random
    streams differ)."""
    need_gpus(2)
    spec = dataclasses.replace(SPEC, runtime=DiTRuntime(device="cuda", block_swap=1, compile=True))
    one = init_random_(build_dit(SPEC.config(), "cpu"), seed=0, device="cpu").to("cuda:0")
    prompts = _prompts(one.cfg.caption_channels)
    s = Settings(width=8 * W, height=8 * H, num_frames=72, steps=8, seed=11, use_hq=False, use_duration=False)
    ref = [c.latents for c in sample(one, prompts, s)]
    try:
        got = [c.latents for c in pool_mod.generate(model=spec, prompts=prompts, settings=s, devices=select_devices(2),
                                                    call_timeout=120.0)]
        assert len(got) == len(ref) == 3 and rel(got, ref) < 3e-2
    finally:
        shutdown_pool()


def test_pool_hung_worker_times_out():
    need_gpus(2)
    with WorkerPool(SPEC, select_devices(2), call_timeout=15.0, collective_timeout=120.0) as pool:
        prompts = _prompts(pool.cfg.caption_channels)
        s = Settings(width=8 * W, height=8 * H, num_frames=72, steps=8, use_hq=False, use_duration=False)
        pids = pool.pids

        def hang(i, total, chunk):
            if i == 2:
                os.kill(pids[1], signal.SIGSTOP)

        t0 = time.monotonic()
        with pytest.raises(WorkerError, match="no message from the workers for 15s"):
            list(pool.sample(prompts, s, progress=hang))
        assert time.monotonic() - t0 < 40 and not pool.running
        assert len(list(pool.sample(prompts, s))) == 3  # restarted
