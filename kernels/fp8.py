"""fp8 (e4m3) activation quantization and GEMM for MAGI-1's two fp8 linear classes."""
from __future__ import annotations

import torch

FP8 = torch.float8_e4m3fn
FP8_MAX = 448.0


def quantize_fp8(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """fp8(bf16(clamp(x_fp32 / scale_fp32, -448, 448))): the reference's double rounding."""
    y = torch.clamp(x.float() / scale.float(), -FP8_MAX, FP8_MAX)
    return y.to(torch.bfloat16).to(FP8)


def fp8_matmul(x_q, w_q, scale_a, scale_b, out_dtype=torch.bfloat16, backend: str | None = None):
    """out_dtype(scale_a[0] * scale_b[0] * (x_q @ w_q^T)); x_q (..., in) fp8, w_q (out, in) fp8."""
    shape = x_q.shape[:-1]
    x2 = x_q.reshape(-1, x_q.shape[-1])
    y = (x2.float() @ w_q.float().t()) * (scale_a.reshape(-1)[0].float() * scale_b.reshape(-1)[0].float())
    return y.to(out_dtype).reshape(*shape, w_q.shape[0])
