"""A persistent pool of context-parallel GPU workers, driven from one process (ComfyUI's).

ComfyUI node (one call per run; the pool is started on first use and kept for the same model and devices):

    for ch in generate(model=dit_handle.spec(), prompts=prompts, settings=s, prefix_latents=..., prefix_frames=...,
                       special_tokens=tokens, devices=["cuda:1", "cuda:2"], progress=cb, cancel=interrupted):
        ...                                          # FinishedChunk, latents on the CPU, streamed from rank 0

Library use: `WorkerPool(ModelSpec(...), devices)` with `.sample(...)` (pipeline.sample's arguments) or
`.generate(plan, text, null, noise, ...)` (generate_chunks' arguments), `.close()`.

- One spawned process per device; all of them form one Ulysses CP group (NCCL on GPUs, gloo on CPU).
  Each loads its DiT replica once; the pool stays up across generations.
- The whole sampling loop runs in every worker on the same plan; progress(i, total, chunk) and finished
  chunks come back through a queue.
- cancel(): polled while waiting (also while loading); it sets a shared flag that the ranks agree on at the
  next DiT pass, so all stop at the same call (SamplingCancelled is raised here). Leaving the loop early
  (closing the generator) cancels too.
- Failure is bounded: a dead worker (exit code / signal), an error in any rank, or no message for
  `call_timeout` seconds raises WorkerError and shuts the pool down; the next use starts a fresh one.
  NCCL collectives time out after `collective_timeout` (the watchdog then ends the stuck process).
- Workers start from `_bootstrap.py`: a cleaned environment, magi_core loaded by file path, and none of
  the parent's main script re-run.
"""
from __future__ import annotations

import atexit
import multiprocessing
import os
import queue
import signal
import sys
import tempfile
import threading
import time
import types
import weakref
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

import torch

from ..sampling.executor import FinishedChunk, SamplingCancelled
from . import _bootstrap
from .ulysses import check_cp_size
from .worker import ChunksRequest, ModelSpec, SampleRequest, pack, serve, unpack, validate_request


class WorkerError(RuntimeError):
    """A pool worker died, hung or failed; the pool has been shut down (the next use restarts it)."""


def select_devices(count: int | None = None, skip_first: bool = False) -> list[str]:
    """CUDA devices for the pool: all visible ones (or the first `count`), optionally leaving GPU 0 to ComfyUI."""
    n = torch.cuda.device_count()
    ids = list(range(1 if skip_first else 0, n))
    if count is not None:
        if count > len(ids):
            raise ValueError(f"asked for {count} GPUs but only {len(ids)} are available"
                             + (" after leaving GPU 0 free" if skip_first else "") + f" ({n} visible)")
        ids = ids[:count]
    if not ids:
        raise ValueError("no CUDA GPU available for the multi-GPU pool")
    return [f"cuda:{i}" for i in ids]


_spawn_lock = threading.Lock()


@contextmanager
def _worker_main():
    """Make the spawned children run _bootstrap.py as their main module instead of the parent's script."""
    fake = types.ModuleType("__main__")
    fake.__file__ = str(Path(_bootstrap.__file__).resolve())
    fake.__spec__ = None
    with _spawn_lock:
        old = sys.modules["__main__"]
        sys.modules["__main__"] = fake
        try:
            yield
        finally:
            sys.modules["__main__"] = old


class WorkerPool:
    """One CP group of worker processes holding DiT replicas. See the module docstring."""

    def __init__(self, spec: ModelSpec, devices=None, backend: str | None = None, threads: int = 1,
                 load_timeout: float = 1800.0, call_timeout: float = 600.0, collective_timeout: float = 300.0,
                 poll: float = 0.2):
        devices = [torch.device(d if not isinstance(d, int) else f"cuda:{d}") for d in (devices or select_devices())]
        kinds = {d.type for d in devices}
        if len(kinds) != 1 or kinds - {"cuda", "cpu"}:
            raise ValueError(f"pool devices must be all CUDA or all CPU, got {[str(d) for d in devices]}")
        if kinds == {"cuda"} and len({d.index for d in devices}) != len(devices):
            raise ValueError(f"each GPU may appear once in the pool, got {[str(d) for d in devices]}")
        check_cp_size(spec.config(), len(devices))  # before any process starts
        self.spec, self.devices = spec, devices
        self.backend = backend or ("nccl" if kinds == {"cuda"} else "gloo")
        self.threads, self.poll = threads, poll
        self.load_timeout, self.call_timeout, self.collective_timeout = load_timeout, call_timeout, collective_timeout
        self.info: dict = {}
        self._procs: list = []
        self._job = 0
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ lifecycle
    @property
    def running(self) -> bool:
        return bool(self._procs) and all(p.is_alive() for p in self._procs)

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self._procs]

    @property
    def cfg(self):
        return self.info.get("cfg")

    @property
    def null_caption_embedding(self) -> torch.Tensor | None:
        return self.info.get("null_caption_embedding")

    def start(self, cancel: Callable[[], bool] | None = None):
        """Spawn the workers and wait until every replica is loaded (idempotent). cancel() True while loading:
        the workers are stopped and SamplingCancelled is raised."""
        if self.running:
            return self
        self.close()
        ctx = multiprocessing.get_context("spawn")
        fd, store = tempfile.mkstemp(prefix="magi_cp_store_")
        os.close(fd)
        os.unlink(store)  # FileStore creates it; a fresh name per start
        self._store = store
        self._results = ctx.Queue()
        self._cancel = ctx.Event()
        self._commands = [ctx.Queue() for _ in self.devices]
        for q in self._commands:  # a dead worker never drains its pipe: do not let exit wait for that
            q.cancel_join_thread()
        opts = dict(threads=self.threads, collective_timeout=self.collective_timeout)
        world = len(self.devices)
        with _worker_main():
            for rank, dev in enumerate(self.devices):
                p = ctx.Process(target=serve, name=f"magi-cp-{rank}", daemon=False,
                                args=(rank, world, str(dev), self.backend, f"file://{store}", self.spec,
                                      self._commands[rank], self._results, self._cancel, opts))
                p.start()
                self._procs.append(p)
        _live_pools.add(self)
        self._last = time.monotonic()
        ready = {}
        while len(ready) < world:
            if cancel is not None and cancel():
                self.close(timeout=0.0)  # loading workers read no commands: stop them now
                raise SamplingCancelled()
            msg = self._receive(self.load_timeout, "loading the model", idle_ok=True)
            if msg is not None and msg[0] == "ready":
                ready[msg[1]] = unpack(msg[2])
        self.info = dict(ready[0], ranks=[ready[r] for r in range(world)])
        return self

    def close(self, timeout: float = 10.0):
        """Stop the workers (politely, then by force); safe to call any time."""
        procs, self._procs = self._procs, []
        for p, q in zip(procs, getattr(self, "_commands", [])):
            if p.is_alive():
                try:
                    q.put(("stop",))
                except (OSError, ValueError):
                    pass
        end = time.monotonic() + timeout
        for p in procs:
            p.join(max(0.0, end - time.monotonic()))
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join(5)
        store = getattr(self, "_store", None)
        if store and os.path.exists(store):
            os.unlink(store)
        for q in [getattr(self, "_results", None), *getattr(self, "_commands", [])]:
            if q is not None:  # their feeder threads end; their semaphores go with them (see shutdown_pool)
                q.close()
        self._results, self._commands, self._cancel = None, [], None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.close()

    # ------------------------------------------------------------------ generation
    def generate(self, plan, text, null, noise, prefix=None, kv_offload: bool = False, prev_chunks_scale: float = 0.7,
                 progress: Callable[[int, int, int], None] | None = None,
                 cancel: Callable[[], bool] | None = None) -> Iterator[FinishedChunk]:
        """`generate_chunks` run by the workers (noise: a CPU tensor). Yields FinishedChunk (latents on the CPU)
        as rank 0 finishes them; SamplingCancelled after cancel() turned True; WorkerError if a worker fails."""
        return self._submit(ChunksRequest(plan, text, null, noise, prefix, kv_offload, prev_chunks_scale),
                            progress, cancel)

    def sample(self, prompts, settings, prefix_latents=None, prefix_frames: int = 0, special_tokens=None,
               progress: Callable[[int, int, int], None] | None = None,
               cancel: Callable[[], bool] | None = None) -> Iterator[FinishedChunk]:
        """`pipeline.sample` run by the workers: plan, noise (on each rank's device) and captions are made there."""
        return self._submit(SampleRequest(prompts, settings, prefix_latents, prefix_frames, special_tokens),
                            progress, cancel)

    def _submit(self, req, progress, cancel):
        if not self._lock.acquire(blocking=False):
            raise RuntimeError("this pool is already running a generation")
        try:
            self.start(cancel)
            validate_request(req, self.cfg)
            yield from self._run(req, progress, cancel)
        finally:
            self._lock.release()

    def _run(self, req, progress, cancel):
        self._job += 1
        job, data = self._job, pack(req)
        self._cancel.clear()
        self._last = time.monotonic()
        for q in self._commands:
            q.put(("generate", job, data))
        finished = False
        try:
            while True:
                if cancel is not None and not self._cancel.is_set() and cancel():
                    self._cancel.set()
                msg = self._receive(self.call_timeout, "sampling", idle_ok=True)
                if msg is None or msg[1] != job:  # a poll tick, or a late message of an earlier job
                    continue
                kind = msg[0]
                if kind == "progress" and progress is not None:
                    progress(*msg[2:])
                elif kind == "chunk":
                    yield unpack(msg[2])
                elif kind == "done":
                    finished = True
                    return
                elif kind == "cancelled":
                    finished = True
                    raise SamplingCancelled()
        finally:
            if not finished and self.running:  # consumer stopped early or an error: stop the workers at a call
                self._cancel.set()
                self._drain(job)

    def _drain(self, job):
        self._last = time.monotonic()
        try:
            while True:
                msg = self._receive(self.call_timeout, "stopping a generation", idle_ok=True)
                if msg is not None and msg[0] in ("done", "cancelled") and msg[1] == job:
                    return
        except WorkerError:
            pass

    def _receive(self, timeout: float, doing: str, idle_ok: bool = False):
        """Next message; None after one poll interval if idle_ok. Raises WorkerError when a rank reports an
        error, a worker process is gone, or nothing arrived for `timeout` seconds since the last message."""
        while True:
            try:
                msg = self._results.get(timeout=self.poll)
            except queue.Empty:
                msg = None
            if msg is not None:
                if msg[0] == "error":
                    self._fail(self._report(doing, msg))
                self._last = time.monotonic()
                return msg
            if any(not p.is_alive() for p in self._procs):
                self._fail(self._report(doing))
            if time.monotonic() - self._last > timeout:
                self._fail(f"no message from the workers for {timeout:.0f}s while {doing}: a worker hangs "
                           "(stuck collective or deadlock); the pool was shut down and restarts on the next run")
            if idle_ok:
                return None

    def _report(self, doing: str, error=None) -> str:
        """Dead workers first (the likely cause), then the traceback a rank sent (waited for up to 1 s)."""
        end = time.monotonic() + 1.0
        while error is None and time.monotonic() < end:
            try:
                msg = self._results.get(timeout=0.1)
            except queue.Empty:
                continue
            if msg[0] == "error":
                error = msg
        time.sleep(0.2)  # let a dying peer's exit become visible
        lines = []
        for r, p in enumerate(self._procs):
            code = p.exitcode
            if code is not None and (error is None or r != error[1] or code < 0):
                how = f"was killed by {signal.Signals(-code).name}" if code < 0 else f"exited with code {code}"
                lines.append(f"worker rank {r} ({self.devices[r]}, pid {p.pid}) {how} while {doing}"
                             + (" (out of memory?)" if code == -signal.SIGKILL else ""))
        if error is not None:
            lines.append(f"worker rank {error[1]} ({self.devices[error[1]]}) failed while {doing}:\n{error[3]}")
        lines.append("the pool was shut down; it restarts on the next run")
        return "\n".join(lines)

    def _fail(self, text: str):
        self.close(timeout=2.0)
        raise WorkerError(text)


# ---------------------------------------------------------------------- one pool per process
_pool: WorkerPool | None = None
_live_pools: "weakref.WeakSet[WorkerPool]" = weakref.WeakSet()  # closed at exit (else exit waits on workers)


def get_pool(spec: ModelSpec, devices=None, **options) -> WorkerPool:
    """The process-wide pool for (spec, devices, options), started now; a different key replaces the old pool."""
    return _pool_for(spec, devices, options).start()


def _pool_for(spec, devices, options) -> WorkerPool:
    """The process-wide pool object for this key (not started: generation starts it, interruptibly)."""
    global _pool
    devices = [str(torch.device(d if not isinstance(d, int) else f"cuda:{d}")) for d in (devices or select_devices())]
    key = (spec, tuple(devices), tuple(sorted(options.items())))
    if _pool is not None and getattr(_pool, "_key", None) != key:
        _pool.close()
        _pool = None
    if _pool is None:
        _pool = WorkerPool(spec, devices, **options)
        _pool._key = key
    return _pool


def generate(model, prompts, settings, prefix_latents=None, prefix_frames: int = 0, special_tokens=None,
             devices=None, cp_size: int | None = None, progress=None, cancel=None,
             **options) -> Iterator[FinishedChunk]:
    """The ComfyUI entry: `pipeline.sample` on the process-wide pool (started, or replaced, on first use).

    model: a ModelSpec or the DiT handle's spec() dict; devices: ["cuda:1", ...] (default all GPUs);
    cp_size: use the first cp_size devices (default all); options: WorkerPool's timeouts.
    """
    spec = model if isinstance(model, ModelSpec) else ModelSpec.from_dict(model)
    devices = list(devices or select_devices())
    if cp_size:
        if cp_size > len(devices):
            raise ValueError(f"cp_size {cp_size} needs {cp_size} devices, got {devices}")
        devices = devices[:cp_size]

    def run():
        pool = _pool_for(spec, devices, options)
        yield from pool.sample(prompts, settings, prefix_latents, prefix_frames, special_tokens, progress, cancel)

    return run()


def shutdown_pool():
    """Stop the process-wide pool (frees the GPUs), and the resource tracker process that multiprocessing
    started for the pool's queues (a new one starts with the next pool)."""
    global _pool
    if _pool is not None:
        _pool.close()
        _pool = None
    if not multiprocessing.active_children():  # no worker left that shares the tracker (else _stop would wait)
        import gc
        from multiprocessing import resource_tracker

        gc.collect()  # the closed queues' semaphores unregister from the tracker as they are freed
        resource_tracker._resource_tracker._stop()


def _close_all():
    for pool in list(_live_pools):
        pool.close(timeout=5.0)


atexit.register(_close_all)
