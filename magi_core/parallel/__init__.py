"""Multi-GPU MAGI-1: Ulysses context parallel (ulysses.py), the persistent worker pool used from ComfyUI
(pool.py, worker.py) and the torchrun entry for one or many machines (run.py). See README_parallel in run.py."""
from .pool import WorkerError, WorkerPool, generate, get_pool, select_devices, shutdown_pool
from .ulysses import ContextParallel, check_cp_size, enable_context_parallel, split_sizes
from .worker import ChunksRequest, ModelSpec, SampleRequest, build_replica

__all__ = [
    "ChunksRequest", "ContextParallel", "ModelSpec", "SampleRequest", "WorkerError", "WorkerPool", "build_replica",
    "check_cp_size", "enable_context_parallel", "generate", "get_pool", "select_devices", "shutdown_pool",
    "split_sizes",
]
