"""Ulysses context parallel on CPU (gloo): CP output == single-process output; the worker pool: streaming,
two generations, cancel, early close, a killed and a hung worker (bounded, clear error), restart.

Tolerance: the tiny model runs in fp32, and CP changes only how the same arithmetic is batched (GEMMs over
fewer rows, attention over fewer heads per call, concatenation order), so results differ by float32 rounding:
~2e-6 on outputs of size ~4 (measured), growing a little over Euler steps. We allow 2e-5 for one forward and
1e-4 for a generation; any layout error (wrong head/token order, missing tokens, wrong gates, wrong cache rows)
gives O(1) errors.
"""
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import magi_core  # noqa: F401
from magi_core.config import preset
from magi_core.dit import KVCache, build_dit, init_random_
from magi_core.dit.offload import enable_block_swap
from magi_core.parallel import (ModelSpec, WorkerError, WorkerPool, check_cp_size, enable_context_parallel,
                                select_devices)
from magi_core.parallel._bootstrap import sanitize_env
from magi_core.parallel.worker import build_replica
from magi_core.parallel.ulysses import kv_repeat, split_sizes
from magi_core.sampling import early_first_chunk
from plans import plan_for
from magi_core.sampling.executor import Caption, SamplingCancelled, generate_chunks, make_noise
from magi_core.pipeline import PromptEmbeds, sample
from magi_core.settings import SamplingSettings as Settings
from magi_core.text import PromptSchedule
from magi_core.video import read_video

ROOT = Path(__file__).resolve().parents[1]
TOL_FORWARD, TOL_GENERATION = 2e-5, 1e-4
H, W = 6, 10  # latent size: 3x5 patches, ctn = 90 tokens per chunk (not a multiple of 4: uneven CP splits)
CTN = 6 * (H // 2) * (W // 2)


TINY_OVERRIDES = dict(num_layers=2, num_query_groups=8, num_attention_heads=16, hidden_size=512)


def tiny(groups=8, heads=16, layers=2, seed=0):
    cfg = preset("tiny").replace(num_layers=layers, params_dtype=torch.float32, num_query_groups=groups,
                                 num_attention_heads=heads, hidden_size=32 * heads)
    return init_random_(build_dit(cfg, "cpu"), seed=seed)


def forward_suite(m):
    """A clean chunk written to the KV cache, two chunks reading it (uneven token split), a 3-element uncond batch."""
    dev = next(m.parameters()).device
    g = torch.Generator().manual_seed(1)
    C = m.cfg.caption_channels
    y = torch.randn(3, 7, C, generator=g).to(dev)
    mask = torch.ones(3, 7, device=dev)
    mask[1, 4:] = 0
    cache = KVCache(4)
    x0, x, xb = (torch.randn(s, generator=g).to(dev) for s in ((1, 16, 6, H, W), (1, 16, 12, H, W), (3, 16, 6, H, W)))
    dt = 8.0 if m.cfg.distill else None
    o0 = m(x0, torch.tensor([[0.9999]], device=dev), y[:1], mask[:1], [(0, CTN)], cache=cache, cache_write_chunks=1,
           dt_factor=dt)
    o1 = m(x, torch.tensor([[0.3, 0.1]], device=dev), y[1:], mask[1:], [(0, 2 * CTN), (0, 3 * CTN)], slice_point=1,
           cache=cache, dt_factor=dt)
    o2 = m(xb, torch.tensor([[0.5], [0.2], [0.1]], device=dev), y, mask, [(i * CTN, (i + 1) * CTN) for i in range(3)],
           uncond=True, dt_factor=dt)
    return [o0, o1, o2]


def generation_inputs(C, seed=3, n_chunks=2):
    g = torch.Generator().manual_seed(seed)
    plan = plan_for(n_chunks, 4, cfg_number=3)
    text = [Caption(torch.randn(4 + i, C, generator=g)) for i in range(n_chunks)]
    null = Caption(torch.randn(6, C, generator=g) * 0.2)
    noise = make_noise((1, 16, 6 * n_chunks, H, W), seed, "cpu")
    return plan, text, null, noise


def generation(m, seed=3, early=False):
    plan, text, null, noise = generation_inputs(m.cfg.caption_channels, seed)
    plan = early_first_chunk(plan) if early else plan
    return [c.latents for c in generate_chunks(m, plan, text, null, noise.to(next(m.parameters()).device))]


# ---------------------------------------------------------------------------- CP parity (one 4-process gloo run)
def _parity_rank(rank, world, store, out):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    res = {}
    m = tiny()
    enable_context_parallel(m)  # cp = 4, 8 KV groups: 2 per rank
    res["cp4"] = forward_suite(m) + generation(m)
    m = tiny(groups=2)
    enable_context_parallel(m)  # cp = 4 > 2 KV groups: each KV head on 2 ranks
    res["cp4_g2"] = forward_suite(m)
    pairs = [dist.new_group([0, 1]), dist.new_group([2, 3])]  # every rank creates every group, same order
    trio = dist.new_group([0, 1, 2])
    m = tiny()
    enable_context_parallel(m, pairs[rank // 2])  # two independent cp = 2 groups side by side
    res["cp2"] = forward_suite(m) + generation(m)
    res["cp2_early"] = [None] * 3 + generation(m, early=True)  # kept K/V of chunk 0 per rank (its heads)
    m = build_replica(ModelSpec(preset="tiny", overrides=TINY_OVERRIDES, dtype=torch.float32), "cpu")
    enable_block_swap(m, "cpu", m.cfg.num_layers - 1)  # the streaming mechanics on the host (DiTRuntime: CUDA only)
    assert len(m.block_swap.swapped) == 1
    enable_context_parallel(m, pairs[rank // 2])
    res["cp2_swap"] = [None] * 3 + generation(m)  # the pool's replica with block swap, under CP
    if rank < 3:
        m = tiny(heads=24)
        enable_context_parallel(m, trio)  # 24 heads / 8 groups, cp = 3: KV heads replicated to 24
        res["cp3_h24"] = forward_suite(m)
    torch.save(res, f"{out}/rank{rank}.pt")
    dist.barrier()
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def cp_runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("cp")
    mp.spawn(_parity_rank, args=(4, str(out / "store"), str(out)), nprocs=4)
    ranks = [torch.load(out / f"rank{r}.pt") for r in range(4)]
    return ranks


@pytest.fixture(scope="module")
def single():
    models = {"g8": tiny(), "g2": tiny(groups=2), "h24": tiny(heads=24)}
    models["generation"] = generation(models["g8"])
    return models


def _maxdiff(a, b):
    return max((x - y).abs().max().item() for x, y in zip(a, b))


@pytest.mark.parametrize("case,model,ranks", [("cp4", "g8", 4), ("cp2", "g8", 4), ("cp4_g2", "g2", 4),
                                               ("cp3_h24", "h24", 3)])
def test_cp_forward_with_kv_cache_equals_single_process(cp_runs, single, case, model, ranks):
    ref = forward_suite(single[model])
    for r in range(ranks):
        got = cp_runs[r][case][:3]
        assert all(a.shape == b.shape for a, b in zip(got, ref))
        assert _maxdiff(got, ref) < TOL_FORWARD, (case, r)
        assert _maxdiff(got, cp_runs[0][case][:3]) == 0  # every rank of a group holds the same gathered output


@pytest.mark.parametrize("case", ["cp4", "cp2", "cp2_early", "cp2_swap"])
def test_cp_generation_equals_single_process(cp_runs, single, case):
    ref = single["generation"]
    for r in range(4):
        got = cp_runs[r][case][3:]
        assert len(got) == len(ref) == 2
        assert _maxdiff(got, ref) < TOL_GENERATION, (case, r)


def test_cp_detects_wrong_layout(single):
    """The comparison can fail: a model whose heads are permuted gives an O(1) difference."""
    m = tiny()
    w = m.videodit_blocks.layers[0].self_attention.linear_qkv.q.weight
    w.copy_(w.view(16, 32, -1).roll(1, 0).reshape(w.shape))
    assert _maxdiff(forward_suite(m), forward_suite(single["g8"])) > 1e-2


def test_split_and_head_rules():
    assert split_sizes(10, 4) == [3, 3, 2, 2] and split_sizes(8, 4) == [2, 2, 2, 2]
    assert kv_repeat(8, 2) == 1 and kv_repeat(8, 8) == 1 and kv_repeat(8, 16) == 2 and kv_repeat(8, 3) == 3
    cfg = preset("24B")
    for cp in (1, 2, 3, 4, 6, 8, 12, 16, 24, 48):
        check_cp_size(cfg, cp)
    with pytest.raises(ValueError, match="must divide the model's 24 query heads.*1, 2, 3, 4, 6, 8, 12, 24"):
        check_cp_size(preset("4.5B"), 5)
    with pytest.raises(ValueError, match="must divide"):  # refused before any process starts
        WorkerPool(ModelSpec(preset="tiny"), devices=["cpu"] * 3)


def test_select_devices_without_gpus():
    if torch.cuda.is_available():
        pytest.skip("checks the CPU-only message")
    with pytest.raises(ValueError, match="no CUDA GPU"):
        select_devices()


@pytest.mark.slow  # ~20 s: torchrun + 2 ranks + tiny demo assets; run with -m slow
def test_torchrun_entry_cpu(tmp_path):
    """`torchrun -m magi_core.parallel.run --demo`: env:// rendezvous, 2 gloo ranks, rank 0 encodes/decodes/writes."""
    out = tmp_path / "v.mp4"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m",
           "magi_core.parallel.run", "--demo", "--frames", "24", "--steps", "4", "--width", "64", "--height", "64",
           "--prompt", "a fox", "-o", str(out)]
    r = subprocess.run(cmd, cwd=ROOT, env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True,
                       timeout=240)
    assert r.returncode == 0, r.stdout[-1500:] + r.stderr[-3000:]
    assert "cp=2" in r.stdout and "wrote" in r.stdout
    assert read_video(str(out)).shape[:3] == (24, 64, 64)


def test_memory_table_reproduces_its_calibration():
    """need = weights + activations + KV + overhead must give the measured cp=1 peaks (bench/results: 4.5B and
    4.5B-fp8 window forwards at 720x720 12.26 / 12.88 GiB without their KV; the 24B distill generation at 720x1280
    with fp8 weight storage 43.03 GiB, KV cache included), and cp / block swap must shrink it."""
    from magi_core.parallel.memory import OVERHEAD_GIB, max_resident_layers, need_gib, weights_gib

    ctn = 6 * 45 * 45
    for name, peak in (("4.5B", 12.26), ("4.5B-distill-fp8", 12.88)):
        cfg = preset(name)
        kv = cfg.num_layers * ctn * cfg.num_query_groups * 2 * cfg.kv_channels * 2 / 2**30
        assert abs(need_gib(name, 720, 720, 1) - kv - OVERHEAD_GIB - peak) < 0.3, name
        assert need_gib(name, 720, 720, 4) < need_gib(name, 720, 720, 2) < need_gib(name, 720, 720, 1)
    assert abs(need_gib("24B-distill", 720, 1280, 1, weight_fp8=True) - OVERHEAD_GIB - 43.03) < 0.3
    assert weights_gib(preset("24B-distill-fp8")) > 0.95 * 24e9 / 2**30  # 24B never fits 24 GB with full replicas
    for name, actual in (("4.5B-distill", 4.3649), ("24B-distill", 23.2269)):  # store_weights_fp8_ on meta
        assert abs(weights_gib(preset(name), True) - actual) < 0.01, name
    cfg = preset("24B-distill")
    per_layer = (weights_gib(cfg, True) - weights_gib(cfg, True, block_swap=cfg.num_layers)) / (cfg.num_layers - 2)
    assert 0.4 < per_layer < 0.55  # ~0.5 GB of fp8 weights per 24B layer
    assert 0 < max_resident_layers("24B-distill", 720, 1280, 4, 24) < cfg.num_layers  # 4 x 24 GB: with block swap
    assert max_resident_layers("24B-distill", 720, 1280, 1, 24) == -1  # one 24 GB card: not at this size


def test_sanitize_env():
    env = {"PYTORCH_CUDA_ALLOC_CONF": "backend:cudaMallocAsync", "PYTORCH_ALLOC_CONF": "expandable_segments:True,"
           "backend:cudaMallocAsync", "NCCL_DEBUG": "WARN"}
    sanitize_env(env)
    assert env == {"PYTORCH_ALLOC_CONF": "expandable_segments:True", "NCCL_DEBUG": "WARN", "NCCL_NVLS_ENABLE": "0"}
    env = {"NCCL_NVLS_ENABLE": "1"}
    assert sanitize_env(env)["NCCL_NVLS_ENABLE"] == "1"  # the user's choice stays


# ---------------------------------------------------------------------------- the worker pool
SPEC = ModelSpec(preset="tiny", overrides=dict(num_layers=2), dtype=torch.float32, seed=0)


@pytest.fixture(scope="module")
def pool():
    """Two gloo CPU workers, started the way ComfyUI would: the repo root NOT on sys.path (magi_core by path)."""
    p = WorkerPool(SPEC, devices=["cpu", "cpu"], call_timeout=4.0, collective_timeout=60.0)
    keep, env = list(sys.path), dict(os.environ)
    sys.path[:] = [s for s in sys.path if Path(s or os.getcwd()).resolve() != ROOT]
    os.environ["PYTORCH_CUDA_ALLOC_CONF"] = "backend:cudaMallocAsync"  # what ComfyUI's cuda_malloc.py sets
    os.environ.pop("NCCL_NVLS_ENABLE", None)
    try:
        p.start()
    finally:
        sys.path[:] = keep
        os.environ.clear()
        os.environ.update(env)
    yield p
    p.close()


@pytest.fixture(scope="module")
def pool_ref():
    m = init_random_(build_dit(SPEC.config(), "cpu"), seed=SPEC.seed)
    null = Caption(m.y_embedder.null_caption_embedding[:10].float())
    return m, null


def _inputs(pool_ref, seed):
    m, null = pool_ref
    plan, text, _, noise = generation_inputs(m.cfg.caption_channels, seed, n_chunks=3)
    return plan, text, null, noise


def test_pool_workers_import_magi_core_by_path_with_clean_env(pool):
    for info in pool.info["ranks"]:
        assert not info["root_on_path"]
        assert info["env"] == {"PYTORCH_CUDA_ALLOC_CONF": None, "NCCL_NVLS_ENABLE": "0"}
        assert Path(info["magi_core"]).resolve() == ROOT / "magi_core" / "__init__.py"
    assert torch.equal(pool.null_caption_embedding, init_random_(build_dit(SPEC.config(), "cpu"), 0)
                       .y_embedder.null_caption_embedding.float())


def test_pool_two_generations_stream_and_match(pool, pool_ref):
    pids = pool.pids
    for seed in (3, 4):
        plan, text, null, noise = _inputs(pool_ref, seed)
        ref = list(generate_chunks(pool_ref[0], plan, text, null, noise))
        events = []
        got = []
        for ch in pool.generate(plan, text, null, noise, progress=lambda *a: events.append(a)):
            events.append("chunk")
            got.append(ch)
        assert [c.index for c in got] == [c.index for c in ref] == [0, 1, 2]
        assert _maxdiff([c.latents for c in got], [c.latents for c in ref]) < TOL_GENERATION
        assert [e for e in events if e != "chunk"] == [(i + 1, len(plan.calls), c.chunk_end - 1)
                                                        for i, c in enumerate(plan.calls)]
        assert events.index("chunk") < len(events) - 2  # streamed: the first chunk came before the last call
    assert pool.pids == pids  # the same workers served both


def test_pool_sample_matches_pipeline_and_bad_request(pool, pool_ref):
    """pool.sample = pipeline.sample in the workers (plan, noise and captions made on every rank)."""
    C = pool_ref[0].cfg.caption_channels
    emb, mask = torch.randn(9, C, generator=torch.Generator().manual_seed(7)), torch.ones(9)
    prompts = PromptEmbeds(PromptSchedule.single("p"), {"p": (emb, mask)})
    s = Settings(width=8 * W, height=8 * H, num_frames=48, steps=4, seed=11, use_hq=False, use_duration=False)
    got = [c.latents for c in pool.sample(prompts, s)]
    ref = [c.latents for c in sample(pool_ref[0], prompts, s)]
    assert len(got) == len(ref) == 2 and _maxdiff(got, ref) < TOL_GENERATION
    with pytest.raises(ValueError, match="multiple of window_size"):  # checked in the parent; the pool stays up
        next(pool.sample(prompts, Settings(width=8 * W, height=8 * H, window_size=3, use_hq=False, use_duration=False)))
    plan, text, null, noise = _inputs(pool_ref, 5)
    with pytest.raises(ValueError, match="latent frames"):
        next(pool.generate(plan, text, null, noise[:, :, :6]))
    assert pool.running


def test_pool_cancel_stops_all_ranks_at_one_call(pool, pool_ref):
    plan, text, null, noise = _inputs(pool_ref, 3)
    pids, calls = pool.pids, []
    t0 = time.monotonic()
    with pytest.raises(SamplingCancelled):
        for _ in pool.generate(plan, text, null, noise, progress=lambda *a: calls.append(a),
                               cancel=lambda: len(calls) >= 2):
            pass
    assert time.monotonic() - t0 < 10
    assert 2 <= len(calls) < len(plan.calls)
    # a rank that missed the stop would now be a collective behind: the next run would hang or be wrong
    gen = pool.generate(plan, text, null, noise)
    first = next(gen)
    gen.close()  # leaving early cancels the rest
    ref = list(generate_chunks(pool_ref[0], plan, text, null, noise))
    assert _maxdiff([first.latents], [ref[0].latents]) < TOL_GENERATION
    out = [c.latents for c in pool.generate(plan, text, null, noise)]
    assert _maxdiff(out, [c.latents for c in ref]) < TOL_GENERATION
    assert pool.pids == pids


def test_module_generate_as_the_node_calls_it(pool_ref):
    """pool.generate(model=..., prompts, settings, devices, cp_size, progress, cancel): a process-wide pool,
    started on first use (an interrupt while loading stops it), reused by the next run."""
    from magi_core.parallel import pool as pool_mod

    C = pool_ref[0].cfg.caption_channels
    prompts = PromptEmbeds(PromptSchedule.single("p"), {"p": (torch.randn(5, C), torch.ones(5))})
    s = Settings(width=8 * W, height=8 * H, num_frames=24, steps=4, use_hq=False, use_duration=False)
    kw = dict(model=SPEC, prompts=prompts, settings=s, devices=["cpu"] * 3, cp_size=2, call_timeout=10.0)
    try:
        t0 = time.monotonic()
        with pytest.raises(SamplingCancelled):
            list(pool_mod.generate(cancel=lambda: time.monotonic() - t0 > 0.5, **kw))
        assert not pool_mod._pool.running
        ref = [c.latents for c in sample(pool_ref[0], prompts, s)]
        for _ in range(2):
            got = [c.latents for c in pool_mod.generate(**kw)]
            assert _maxdiff(got, ref) < TOL_GENERATION
            pids = pids if _ else pool_mod._pool.pids
        assert pool_mod._pool.pids == pids and len(pids) == 2
    finally:
        pool_mod.shutdown_pool()


@pytest.mark.parametrize("how", ["killed", "hung"])
def test_pool_dead_or_hung_worker_gives_clear_error_then_restarts(pool, pool_ref, how):
    plan, text, null, noise = _inputs(pool_ref, 3)
    old = pool.pids
    sig = signal.SIGKILL if how == "killed" else signal.SIGSTOP

    def progress(i, total, chunk):
        if i == 1:
            os.kill(old[1], sig)

    t0 = time.monotonic()
    with pytest.raises(WorkerError) as e:
        list(pool.generate(plan, text, null, noise, progress=progress))
    assert time.monotonic() - t0 < 15
    msg = str(e.value)
    expected = ("worker rank 1", "SIGKILL") if how == "killed" else ("no message from the workers for 4s",)
    assert all(s in msg for s in expected), msg
    assert not pool.running
    out = [c.latents for c in pool.generate(plan, text, null, noise)]  # restarted on use
    assert set(pool.pids).isdisjoint(old)
    assert _maxdiff(out, [c.latents for c in generate_chunks(pool_ref[0], plan, text, null, noise)]) < TOL_GENERATION
