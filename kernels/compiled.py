"""torch.compile for the DiT's element-wise islands (opt-in: `VideoDiT.compile_ops`).

Eager PyTorch runs each fp32 upcast, norm, RoPE rotation, gate and cast as its own pass over the activations;
Inductor fuses each island into one or two kernels. Only CUDA tensors take the compiled path (CPU runs eager).
The functions are compiled with dynamic shapes, so the 1..5-chunk forwards of a generation share one graph.
"""
from __future__ import annotations

import torch

_compiled: dict = {}


def compiled(fn):
    """fn compiled once per process (dynamic shapes, whole graph)."""
    c = _compiled.get(fn)
    if c is None:
        import torch._dynamo

        # one graph per function, but its int/bool arguments (chunks, eps) may take several values
        torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
        c = _compiled[fn] = torch.compile(fn, dynamic=True, fullgraph=True)
    return c


def maybe_compiled(fn, enabled: bool, x: torch.Tensor):
    """The compiled fn when enabled and x lives on CUDA, else fn itself."""
    return compiled(fn) if enabled and x.is_cuda else fn
