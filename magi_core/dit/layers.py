"""Building blocks of the MAGI-1 DiT: norms, fp8 linears, embedders (official `inference/model/dit/dit_module.py`)."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from magi_core.kernels.compiled import maybe_compiled
from magi_core.kernels.fp8 import FP8, fp8_matmul, quantize_fp8

from ..config import DiTConfig


class LayerNorm1p(nn.Module):
    """LayerNorm with zero-centred gamma: uses weight + 1 (computed in the weight's dtype) and bias."""

    def __init__(self, size: int, eps: float, one_plus: bool = True, dtype=None):
        super().__init__()
        self.eps, self.one_plus = eps, one_plus
        self.weight = nn.Parameter(torch.empty(size, dtype=dtype))
        self.bias = nn.Parameter(torch.empty(size, dtype=dtype))

    def forward(self, x):
        w = self.weight + 1 if self.one_plus else self.weight
        return F.layer_norm(x, x.shape[-1:], w, self.bias, self.eps)


def _quantized(x, scale, compile_ops: bool):
    """x / scale in fp8 (compiled on CUDA when asked; every dim but the channels may change between forwards)."""
    return maybe_compiled(quantize_fp8, compile_ops, x, {0: tuple(range(x.dim() - 1))})(x, scale)


class PerTensorFp8Linear(nn.Module):
    """Reference `PerTensorQuantizedFp8Linear`: x / input_scale (vector) -> fp8, dequant by input_scale[0]."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight = nn.Parameter(torch.empty(1, out_features, in_features, dtype=FP8), requires_grad=False)
        self.weight_scale = nn.Parameter(torch.empty(1, dtype=torch.float32), requires_grad=False)
        self.input_scale = nn.Parameter(torch.empty(in_features, dtype=torch.float32), requires_grad=False)
        self.compile_ops = False

    @property
    def quant_scale(self):
        """What a bf16 input is divided by before it is cast to fp8."""
        return self.input_scale

    def forward(self, x):
        """x: bf16, or already fp8 (quantized with `quant_scale` by a fused island of layer.py)."""
        x_q = x if x.dtype == FP8 else _quantized(x, self.input_scale, self.compile_ops)
        return fp8_matmul(x_q, self.weight[0], self.input_scale, self.weight_scale, torch.bfloat16)


class PerChannelFp8Linear(nn.Module):
    """Reference `PerChannelQuantizedFp8Linear` (SmoothQuant): x / smooth_scale -> fp8, dequant by input_scale."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight = nn.Parameter(torch.empty(1, out_features, in_features, dtype=FP8), requires_grad=False)
        self.weight_scale = nn.Parameter(torch.empty(1, dtype=torch.float32), requires_grad=False)
        self.input_scale = nn.Parameter(torch.empty(1, dtype=torch.float32), requires_grad=False)
        self.smooth_scale = nn.Parameter(torch.empty(1, in_features, dtype=torch.float32), requires_grad=False)
        self.compile_ops = False

    @property
    def quant_scale(self):
        """What a bf16 input is divided by before it is cast to fp8."""
        return self.smooth_scale

    def forward(self, x, cols=None):
        """x: bf16, or already fp8 (quantized with `quant_scale` by a fused island of layer.py).
        cols: x's channels are this layer's input channels in this order (layer.py's planar [self | cross] input,
        `fast`): the smoothing scales and the weight's columns are taken in the same order."""
        scale, w = self.smooth_scale, self.weight[0]
        if cols is not None:
            scale, w = scale[:, cols], w.view(torch.uint8).index_select(1, cols).view(FP8)
        x_q = x if x.dtype == FP8 else _quantized(x, scale, self.compile_ops)
        return fp8_matmul(x_q, w, self.input_scale, self.weight_scale, torch.bfloat16)


def fp8_input_scale(layer: nn.Module):
    """The scale a layer's bf16 input is divided by before its fp8 GEMM; None for a bf16 layer."""
    return getattr(layer, "quant_scale", None)


def make_linear(cfg: DiTConfig, layer: int, fin: int, fout: int, fp8_cls=None) -> nn.Module:
    if fp8_cls is not None and cfg.is_quantized_layer(layer):
        return fp8_cls(fin, fout)
    return nn.Linear(fin, fout, bias=False, dtype=cfg.params_dtype)


def linear_fp32(x, layer: nn.Linear):
    """The reference's autocast(fp32) linear: input and weight upcast, fp32 output."""
    bias = None if layer.bias is None else layer.bias.float()
    return F.linear(x.float(), layer.weight.float(), bias)


_zero_bias: dict = {}


def linear_gelu(x, layer: nn.Module):
    """gelu(layer(x)) with the GELU in the GEMM's epilogue (`torch._addmm_activation`: cuBLASLt on CUDA), applied
    to the fp32 accumulator before the one rounding: no bf16 round trip of fc1's output through memory. `fast`
    precision only: the reference rounds fc1's output to bf16 and applies the erf GELU, and the CUDA epilogue
    computes GELU's tanh form (BENCHMARKS.md session 10 measures the difference). layer: nn.Linear, or fp8 storage
    (weight_fp8.py Fp8WeightLinear, whose `weight` is the dequantized matrix)."""
    w = layer.weight
    bias = layer.bias
    if bias is None:  # the epilogue takes a bias: zeros (MAGI-1's linears have none)
        key = (w.shape[0], w.dtype, w.device)
        bias = _zero_bias.get(key)
        if bias is None:
            bias = _zero_bias[key] = torch.zeros(w.shape[0], dtype=w.dtype, device=w.device)
    y = torch._addmm_activation(bias, x.reshape(-1, x.shape[-1]), w.t(), use_gelu=True)
    return y.view(*x.shape[:-1], w.shape[0])


class TimestepEmbedder(nn.Module):
    """t in [0,1] (1 = clean) -> sinusoid of (t*f)*1000, [cos, sin], rounded to bf16 -> fp32 MLP."""

    def __init__(self, cfg: DiTConfig, freq_dim: int = 256):
        super().__init__()
        c = cfg.cond_dim
        self.freq_dim = freq_dim
        self.round_dtype = cfg.params_dtype
        self.mlp = nn.Sequential(nn.Linear(freq_dim, c, dtype=cfg.params_dtype), nn.SiLU(),
                                 nn.Linear(c, c, dtype=cfg.params_dtype))

    def sinusoid(self, t: torch.Tensor) -> torch.Tensor:
        half = self.freq_dim // 2
        freqs = torch.exp(-math.log(10000) * torch.arange(0, half, dtype=torch.float32) / half).to(t.device)
        args = t[:, None].float() * freqs[None] * 1000
        return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        emb = self.sinusoid(t.float()).to(self.round_dtype)
        h = F.silu(linear_fp32(emb, self.mlp[0]))
        return linear_fp32(h, self.mlp[2])


class CaptionEmbedder(nn.Module):
    """Cross-attention caption projection, adaLN token projection and the 800-row null caption."""

    def __init__(self, cfg: DiTConfig):
        super().__init__()
        self.null_caption_embedding = nn.Parameter(
            torch.empty(cfg.caption_max_length, cfg.caption_channels, dtype=cfg.params_dtype))
        self.y_proj_xattn = nn.Sequential(
            nn.Linear(cfg.caption_channels, cfg.xattn_dim, dtype=cfg.params_dtype), nn.SiLU())
        self.y_proj_adaln = nn.Sequential(nn.Linear(cfg.caption_channels, cfg.cond_dim, dtype=cfg.params_dtype))

    def xattn_tokens(self, y: torch.Tensor, valid: torch.Tensor, padded: bool = False) -> torch.Tensor:
        """(rows, L, Cc) captions, (rows, L) bool valid tokens -> (valid tokens, hx) fp32.

        padded: project every row padded to caption_max_length and keep the valid tokens, as the reference does
        (`inference/model/dit/dit_model.py` `get_embedding_and_meta`): its GEMM shape, hence its rounding (a GEMM
        of 1-3 rows rounds differently from one of 800). Otherwise only the valid tokens are projected."""
        if not padded:
            return F.silu(linear_fp32(y[valid], self.y_proj_xattn[0]))
        pad = self.null_caption_embedding.shape[0] - y.shape[1]
        if pad > 0:
            y, valid = F.pad(y, (0, 0, 0, pad)), F.pad(valid, (0, pad))
        return F.silu(linear_fp32(y, self.y_proj_xattn[0]))[valid]

    def adaln(self, uncond: torch.Tensor) -> torch.Tensor:
        """(N,) bool -> (N, c): projection of null-caption row 799 (uncond) or 798 (cond)."""
        rows = torch.where(uncond[:, None], self.null_caption_embedding[-1][None], self.null_caption_embedding[-2][None])
        return linear_fp32(rows, self.y_proj_adaln[0])


class FinalLinear(nn.Module):
    def __init__(self, cfg: DiTConfig):
        super().__init__()
        out = cfg.patch_size * cfg.patch_size * cfg.t_patch_size * cfg.out_channels
        self.linear = nn.Linear(cfg.hidden_size, out, bias=False, dtype=cfg.params_dtype)

    def forward(self, x):
        return linear_fp32(x, self.linear)
