"""torch.compile for the DiT's element-wise islands (opt-in: `VideoDiT.compile_ops`).

Eager PyTorch runs each fp32 upcast, norm, RoPE rotation, gate and cast as its own pass over the activations;
Inductor fuses each island into one or two kernels. Only CUDA tensors take the compiled path (CPU runs eager).

Shapes: every size and every int/float argument is a constant of the generated kernels (their index arithmetic
divides by constants), except the dims a call site names as dynamic: the token counts, which change from forward
to forward (1..5 chunks, batches of chunks), so a generation's forwards share one graph per island and head count.
With every size symbolic (`dynamic=True`, sessions 2-8) the norm+RoPE island took 2.16 ms instead of 0.62 ms for
the P1 window's queries on an H100, and the window forward 2.307 s instead of 2.256 s (BENCHMARKS.md, session 9).
"""
from __future__ import annotations

import warnings

import torch
import torch._dynamo
import torch._inductor.config

_compiled: dict = {}
_marked: dict = {}  # (compiled fn, dynamic dims) -> the compiled fn, marking those dims first
ALL_DYNAMIC = False  # benches only: every size symbolic (torch.compile dynamic=True), as sessions 2-8 compiled
CPU_TOO = False  # tests only: compile the islands for CPU tensors too (Inductor's C++ backend), to check them on CPU
# Keep every rounding the code writes: by default Inductor drops a `.to(bf16)` followed by `.float()` inside one
# kernel, so an fp8 quantization fused after a bf16 result would quantize the unrounded fp32 value (1-2 % of the
# fp8 values one step off the unfused islands; tests/test_compiled_ops.py)
_OPTIONS = {"emulate_precision_casts": True} if hasattr(torch._inductor.config, "emulate_precision_casts") else {}
_LIMIT_HIT = getattr(torch._dynamo.exc, "FailOnRecompileLimitHit", ())  # (absent from some torch versions)


def compiled(fn, dynamic: dict[int, tuple[int, ...]] | None = None):
    """fn compiled once per process (whole graph; a new graph for each new value of a static size or argument).

    dynamic: positional argument index -> its dims that may change without a new graph (the token counts)."""
    c = _compiled.get(fn)
    if c is None:
        # one graph per static configuration (head counts, tokens per chunk, eps, ...), a handful per function
        torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
        c = _compiled[fn] = _eager_past_the_limit(fn, torch.compile(fn, dynamic=ALL_DYNAMIC, fullgraph=True,
                                                                     options=_OPTIONS))
    if not dynamic:
        return c
    key = (c, tuple(sorted(dynamic.items())))  # one marking wrapper per call site, not one per forward
    marked = _marked.get(key)
    if marked is None:
        def marked(*args, **kwargs):
            for i, dims in dynamic.items():
                for d in dims:
                    torch._dynamo.maybe_mark_dynamic(args[i], d)
            return c(*args, **kwargs)

        _marked[key] = marked
    return marked


def _eager_past_the_limit(fn, compiled_fn):
    """compiled_fn, until torch.compile refuses one more graph for it (its recompile limit: a server that has made
    videos of many sizes, each with its own tokens per chunk); from then on fn runs eagerly, with one warning."""
    eager = []

    def call(*args, **kwargs):
        if not eager:
            try:
                return compiled_fn(*args, **kwargs)
            except _LIMIT_HIT as e:
                eager.append(True)
                warnings.warn(f"{fn.__name__}: torch.compile made as many graphs as it keeps ({e.__class__.__name__}); "
                              "it runs uncompiled from now on (restart to compile again)", RuntimeWarning, stacklevel=2)
        return fn(*args, **kwargs)

    return call


def compiling(enabled: bool, x: torch.Tensor) -> bool:
    """Whether the islands that x goes through run compiled: asked for (`compile_ops`), and x lives on CUDA."""
    return enabled and (x.is_cuda or CPU_TOO)


def maybe_compiled(fn, enabled: bool, x: torch.Tensor, dynamic: dict[int, tuple[int, ...]] | None = None):
    """The compiled fn (see `compiled`) when `compiling(enabled, x)`, else fn itself."""
    return compiled(fn, dynamic) if compiling(enabled, x) else fn
