"""fp8 (e4m3) activation quantization and GEMM for MAGI-1's two fp8 linear classes
(official `inference/model/dit/dit_module.py`; docs/model.md).

The reference runs flashinfer `bmm_fp8` (cuBLASLt, fp32 accumulation with FAST_ACCUM, per-tensor scales read
from element 0 of the scale tensors). Backends of `fp8_matmul`:
- "scaled_mm": `torch._scaled_mm`, the same cuBLASLt GEMM (sm89+; also runs on CPU, used by tests). Needs
  in/out features that are multiples of 16; other shapes fall back to "dequant".
- "dequant":   exact fallback: dequantize to fp32, fp32 matmul, scale, round once to out_dtype.
- None / "auto": "scaled_mm" on sm89+ CUDA tensors, else "dequant".
"""
from __future__ import annotations

import warnings

import torch

from . import capability

FP8 = torch.float8_e4m3fn
FP8_MAX = 448.0
BACKENDS = ("scaled_mm", "dequant")
_default_backend: str | None = None


def quantize_fp8(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """fp8(bf16(clamp(x_fp32 / scale_fp32, -448, 448))): the reference's double rounding."""
    y = torch.clamp(x.float() / scale.float(), -FP8_MAX, FP8_MAX)
    return y.to(torch.bfloat16).to(FP8)


def set_default_backend(name: str | None):
    """Backend used when fp8_matmul gets backend=None; None or 'auto' restores automatic choice."""
    global _default_backend
    if name not in (None, "auto") and name not in BACKENDS:
        raise ValueError(f"unknown fp8 GEMM backend {name!r}; choose one of {', '.join(BACKENDS)} or None/'auto'")
    _default_backend = None if name == "auto" else name


def _scaled_mm_shape_ok(in_features: int, out_features: int) -> bool:
    return in_features % 16 == 0 and out_features % 16 == 0


def _resolve(backend, x_q, w_q) -> str:
    name = backend if backend not in (None, "auto") else _default_backend
    if name is None:
        ok = capability.fp8_gemm_supported(x_q.device) and _scaled_mm_shape_ok(w_q.shape[1], w_q.shape[0])
        return "scaled_mm" if ok else "dequant"
    if name not in BACKENDS:
        raise ValueError(f"unknown fp8 GEMM backend {name!r}; choose one of {', '.join(BACKENDS)} or None/'auto'")
    if name == "scaled_mm":
        if x_q.is_cuda and not capability.fp8_gemm_supported(x_q.device):
            raise RuntimeError(f"fp8 backend 'scaled_mm' needs an sm89+ GPU (Ada/Hopper); this one is "
                               f"sm{''.join(map(str, capability.cuda_capability(x_q.device)))}. Use 'dequant'.")
        if not _scaled_mm_shape_ok(w_q.shape[1], w_q.shape[0]):
            warnings.warn(f"torch._scaled_mm needs in/out features divisible by 16, got weight {tuple(w_q.shape)}; "
                          "using the dequantized fp8 GEMM", RuntimeWarning, stacklevel=3)
            return "dequant"
    return name


def fp8_matmul(x_q, w_q, scale_a, scale_b, out_dtype=torch.bfloat16, backend: str | None = None):
    """out_dtype(scale_a[0] * scale_b[0] * (x_q @ w_q^T)); x_q (..., in) fp8, w_q (out, in) fp8.

    Only element 0 of scale_a / scale_b is used (cuBLASLt per-tensor scale pointers), as in the reference.
    """
    if x_q.dtype != FP8 or w_q.dtype != FP8:
        raise ValueError(f"fp8_matmul expects float8_e4m3fn operands (quantize_fp8 first); got {x_q.dtype}, {w_q.dtype}")
    if w_q.dim() != 2 or x_q.shape[-1] != w_q.shape[1]:
        raise ValueError(f"fp8_matmul expects x_q (..., in) and w_q (out, in); got {tuple(x_q.shape)}, {tuple(w_q.shape)}")
    shape = x_q.shape[:-1]
    x2 = x_q.reshape(-1, x_q.shape[-1])
    sa, sb = scale_a.reshape(-1)[0].float(), scale_b.reshape(-1)[0].float()
    if _resolve(backend, x_q, w_q) == "scaled_mm":
        # row-major A, column-major B (the transposed view of the row-major (out, in) weight), scalar fp32 scales
        y = torch._scaled_mm(x2.contiguous(), w_q.contiguous().t(), scale_a=sa, scale_b=sb, out_dtype=out_dtype,
                             use_fast_accum=True)
        y = y[0] if isinstance(y, tuple) else y  # torch < 2.5 returned (out, amax)
    else:
        y = ((x2.float() @ w_q.float().t()) * (sa * sb)).to(out_dtype)
    return y.reshape(*shape, w_q.shape[0])
