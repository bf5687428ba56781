"""MAGI-1's 3-axis rotary embedding with learnable frequency bands (official `inference/model/dit/dit_module.py`)."""
from __future__ import annotations

import math

import torch
from torch import nn


class LearnableRoPE(nn.Module):
    """Holds `bands` (nb,), one frequency per band, shared by the T, H and W axes."""

    def __init__(self, head_dim: int):
        super().__init__()
        self.num_bands = head_dim // 8
        self.bands = nn.Parameter(self.default_bands(self.num_bands))

    @staticmethod
    def default_bands(nb: int) -> torch.Tensor:
        return 1.0 / (10000.0 ** (torch.arange(nb, dtype=torch.int64).to(torch.float32) / nb))

    def table(self, T: int, H: int, W: int, t_offset: int = 0) -> torch.Tensor:
        """(T*H*W, 6*nb) fp32 `[sin | cos]` for tokens of latent frames t_offset .. t_offset+T-1.

        Time is absolute from the start of the video; space is centred and rescaled to a 16x16 reference area.
        """
        bands = self.bands.float()
        device = bands.device
        T_total = T + t_offset
        r = math.sqrt(H * W / 256)
        ref = (T_total, H / r, W / r)
        coords = []
        for axis, (size, ref_size) in enumerate(zip((T_total, H, W), ref)):
            c = torch.arange(size, device=device, dtype=torch.int64).to(torch.float32)
            if axis > 0:
                c = c - (size - 1) / 2
            if size > 1:
                c = c / (size - 1) * (ref_size - 1)
            coords.append(c)
        c_t, c_h, c_w = coords
        c_t = c_t[t_offset:]
        grid = torch.stack(torch.meshgrid(c_t, c_h, c_w, indexing="ij"), dim=-1)  # (T, H, W, 3)
        pos = (grid[..., None] * bands).reshape(T * H * W, -1)  # column = axis * nb + band
        return torch.cat([pos.sin(), pos.cos()], dim=-1)


def apply_rope(x: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """Rotate-half RoPE on the first 2*n dims of x (..., S, heads, d); dims past 2*n pass through.

    x is fp32; table (S, 2n) = [sin | cos]. Pairs are (i, i + n), as flash-attn's non-interleaved mode.
    """
    n = table.shape[-1] // 2
    sin = table[:, None, :n]
    cos = table[:, None, n:]
    x1, x2, rest = x[..., :n], x[..., n: 2 * n], x[..., 2 * n:]
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos, rest], dim=-1)
