"""MAGI-1 transformer VAE (official `inference/model/vae/vae_model.py`, `vae_module.py`):
ViT encoder/decoder, 8x spatial, 4x temporal, 16 channels.

State-dict names and shapes follow the official `ViTVAE` checkpoint (`ckpt/vae`). Latents here are
VAE-native (NOT multiplied by the 0.18215 scale factor; `tiling.tiled_encode/tiled_decode` do that).
"""
from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

# ddconfig keys the reference accepts but that do nothing at inference
_IGNORED_KEYS = ("qk_scale", "drop_rate", "attn_drop_rate", "drop_path_rate")


@dataclass(frozen=True)
class VAEConfig:
    """The official `ddconfig` (ckpt/vae/config.json). Defaults = the released MAGI-1 VAE."""

    video_size: int = 256  # pos-embed grid = (video_length / patch_length, video_size / patch_size, ...)
    video_length: int = 16
    patch_size: int = 8  # spatial compression
    patch_length: int = 4  # temporal compression
    in_chans: int = 3
    z_chans: int = 16
    double_z: bool = True
    embed_dim: int = 1024
    depth: int = 24
    num_heads: int = 16
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    with_cls_token: bool = True
    norm_code: bool = False
    ln_in_attn: bool = True
    conv_last_layer: bool = True
    use_rope: bool = False
    use_final_proj: bool = False
    model_type: str = "vit"

    def __post_init__(self):
        if self.model_type != "vit":
            raise ValueError(f"VAE model_type {self.model_type!r} is not supported; only 'vit' (the released VAE)")
        if not self.double_z:
            raise ValueError("VAE double_z must be true (the encoder outputs mean and logvar)")
        if not self.conv_last_layer:
            raise ValueError("VAE conv_last_layer must be true (the decoder ends with a 3x3x3 Conv3d)")
        if self.use_rope:
            raise ValueError("VAE use_rope=true is not supported (the released VAE uses learned pos-embeds)")
        if self.embed_dim % self.num_heads:
            raise ValueError(f"VAE embed_dim ({self.embed_dim}) must be a multiple of num_heads ({self.num_heads})")
        cells = self.patch_size * self.patch_size * self.patch_length
        if not self.use_final_proj and self.embed_dim % cells:
            raise ValueError(f"VAE embed_dim ({self.embed_dim}) must be a multiple of patch_size^2*patch_length ({cells})")
        if self.video_size % self.patch_size or self.video_length % self.patch_length:
            raise ValueError("VAE video_size/video_length must be multiples of patch_size/patch_length")

    @property
    def pos_grid(self) -> tuple[int, int, int]:
        """Token grid (T', H', W') the learned pos-embeds were trained on."""
        s = self.video_size // self.patch_size
        return (self.video_length // self.patch_length, s, s)

    @property
    def unpatch_channels(self) -> int:
        """Channels per pixel after the decoder's token -> pixel reshape."""
        if self.use_final_proj:
            return 4
        return self.embed_dim // (self.patch_size * self.patch_size * self.patch_length)

    @classmethod
    def from_official(cls, raw: dict) -> "VAEConfig":
        """From the official config.json dict ({"_class_name": "ViTVAE", "model_type", "ddconfig": {...}})."""
        if raw.get("_class_name", "ViTVAE") != "ViTVAE":
            raise ValueError(f"not a MAGI-1 VAE config: _class_name is {raw['_class_name']!r}, expected 'ViTVAE'")
        if "ddconfig" not in raw:
            raise ValueError("not a MAGI-1 VAE config: no 'ddconfig' section")
        dd = {k: v for k, v in raw["ddconfig"].items() if k not in _IGNORED_KEYS}
        known = {f.name for f in dataclasses.fields(cls)} - {"model_type"}
        unknown = sorted(set(dd) - known)
        if unknown:
            raise ValueError(f"unknown VAE ddconfig keys {unknown}")
        return cls(**dd, model_type=raw.get("model_type", "vit"))

    def to_official(self) -> dict:
        """The official config.json dict."""
        dd = dataclasses.asdict(self)
        model_type = dd.pop("model_type")
        return {"_class_name": "ViTVAE", "model_type": model_type, "ddconfig": dd}


VAE_PRESETS = {
    "magi1": VAEConfig(),
    # same layout and flags, small widths: 1 unpatch channel, pos grid 2x8x8, 2 blocks per side
    "tiny": VAEConfig(video_size=64, video_length=8, embed_dim=256, depth=2, num_heads=4),
}


def head_norm(x: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Parameter-free norm over the last dim with eps added to the (biased) std: (x - mean) / (std + eps)."""
    mean = x.mean(dim=-1, keepdim=True)
    std = x.std(dim=-1, keepdim=True, unbiased=False)
    return (x - mean) / (std + eps)


def resize_pos_embed(pos_embed: torch.Tensor, src: tuple, dst: tuple, n_cls: int) -> torch.Tensor:
    """Pos-embeds (1, n_cls + prod(src), C) -> (1, n_cls + prod(dst), C); grid part trilinear, align_corners=False."""
    if tuple(src) == tuple(dst):
        return pos_embed
    cls_part, grid = pos_embed[:, :n_cls], pos_embed[:, n_cls:]
    grid = grid.reshape(1, *src, -1).permute(0, 4, 1, 2, 3)
    grid = F.interpolate(grid, size=tuple(dst), mode="trilinear", align_corners=False)
    grid = grid.permute(0, 2, 3, 4, 1).reshape(1, -1, pos_embed.shape[-1])
    return torch.cat([cls_part, grid], dim=1)


class Attention(nn.Module):
    """Bidirectional MHSA; with ln_in_attn, q, k and v are each head-normalised (no affine) before SDPA."""

    def __init__(self, cfg: VAEConfig):
        super().__init__()
        self.num_heads, self.ln_in_attn = cfg.num_heads, cfg.ln_in_attn
        self.qkv = nn.Linear(cfg.embed_dim, 3 * cfg.embed_dim, bias=cfg.qkv_bias)
        self.proj = nn.Linear(cfg.embed_dim, cfg.embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, C // self.num_heads)
        if self.ln_in_attn:
            qkv = head_norm(qkv)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, heads, N, d)
        out = F.scaled_dot_product_attention(q, k, v)  # scale 1/sqrt(d)
        return self.proj(out.transpose(1, 2).reshape(B, N, C))


class Mlp(nn.Module):
    """fc1 -> exact GELU -> fc2."""

    def __init__(self, cfg: VAEConfig):
        super().__init__()
        hidden = int(cfg.embed_dim * cfg.mlp_ratio)
        self.fc1 = nn.Linear(cfg.embed_dim, hidden)
        self.fc2 = nn.Linear(hidden, cfg.embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class Block(nn.Module):
    """x + Attn(norm1(x)), then x + MLP(norm2(x)); norm1 is absent (identity) when ln_in_attn."""

    def __init__(self, cfg: VAEConfig):
        super().__init__()
        self.norm1 = nn.Identity() if cfg.ln_in_attn else nn.LayerNorm(cfg.embed_dim)
        self.attn = Attention(cfg)
        self.norm2 = nn.LayerNorm(cfg.embed_dim)
        self.mlp = Mlp(cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class _Trunk(nn.Module):
    """Shared ViT body: [CLS] + tokens, + (resized) pos-embeds, blocks, final LayerNorm, CLS dropped."""

    def __init__(self, cfg: VAEConfig):
        super().__init__()
        self.cfg = cfg
        self.n_cls = 1 if cfg.with_cls_token else 0
        n_tok = cfg.pos_grid[0] * cfg.pos_grid[1] * cfg.pos_grid[2]
        if cfg.with_cls_token:
            self.cls_token = nn.Parameter(torch.randn(1, 1, cfg.embed_dim) * 0.02)
        self.pos_embed = nn.Parameter(torch.randn(1, self.n_cls + n_tok, cfg.embed_dim) * 0.02)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(cfg.embed_dim)

    def trunk(self, x: torch.Tensor, grid: tuple) -> torch.Tensor:
        """x: (B, T'*H'*W', C) tokens in (t, h, w) order -> same shape after the transformer."""
        if self.n_cls:
            x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        x = x + resize_pos_embed(self.pos_embed, self.cfg.pos_grid, grid, self.n_cls)
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x)[:, self.n_cls:]


class PatchEmbed(nn.Module):
    """Conv3d with kernel = stride = (patch_length, patch_size, patch_size)."""

    def __init__(self, cfg: VAEConfig):
        super().__init__()
        k = (cfg.patch_length, cfg.patch_size, cfg.patch_size)
        self.proj = nn.Conv3d(cfg.in_chans, cfg.embed_dim, kernel_size=k, stride=k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


class ViTEncoder(_Trunk):
    """(B, 3, T, H, W) -> moments (B, 2*z, T/4, H/8, W/8): channels [0:z] mean, [z:2z] logvar."""

    def __init__(self, cfg: VAEConfig):
        super().__init__(cfg)
        self.patch_embed = PatchEmbed(cfg)
        self.last_layer = nn.Linear(cfg.embed_dim, 2 * cfg.z_chans)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)
        B, _, T, H, W = x.shape
        x = self.last_layer(self.trunk(x.flatten(2).transpose(1, 2), (T, H, W)))
        x = x.reshape(B, T, H, W, -1).permute(0, 4, 1, 2, 3)
        if self.cfg.norm_code:
            x = (x.float() / torch.linalg.vector_norm(x.float(), dim=1, keepdim=True)).to(x.dtype)
        return x


class ViTDecoder(_Trunk):
    """(B, z, T', H', W') -> video (B, 3, 4T', 8H', 8W'); no output activation (nominal range [-1, 1])."""

    def __init__(self, cfg: VAEConfig):
        super().__init__(cfg)
        self.proj_in = nn.Linear(cfg.z_chans, cfg.embed_dim)
        if cfg.use_final_proj:
            cells = cfg.unpatch_channels * cfg.patch_size * cfg.patch_size * cfg.patch_length
            self.final_proj = nn.Linear(cfg.embed_dim, cells)
            self.final_norm = nn.LayerNorm(cells)
        self.last_layer = nn.Conv3d(cfg.unpatch_channels, 3, kernel_size=3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        cfg = self.cfg
        B, C, T, H, W = z.shape
        x = self.trunk(self.proj_in(z.permute(0, 2, 3, 4, 1).reshape(B, T * H * W, C)), (T, H, W))
        if cfg.use_final_proj:
            x = self.final_norm(self.final_proj(x))
        pt, p, c = cfg.patch_length, cfg.patch_size, cfg.unpatch_channels
        # token feature layout is (pT, pH, pW, C), C fastest
        x = x.reshape(B, T, H, W, pt, p, p, c).permute(0, 7, 1, 4, 2, 5, 3, 6)
        return self.last_layer(x.reshape(B, c, T * pt, H * p, W * p))


class ViTVAE(nn.Module):
    """The MAGI-1 VAE. `encode` -> posterior mean, `decode` -> video; both VAE-native (unscaled) latents."""

    def __init__(self, cfg: VAEConfig = VAEConfig()):
        super().__init__()
        self.cfg = cfg
        self.encoder = ViTEncoder(cfg)
        self.decoder = ViTDecoder(cfg)

    @property
    def dtype(self) -> torch.dtype:
        return self.decoder.proj_in.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.decoder.proj_in.weight.device

    def check_video(self, x: torch.Tensor) -> None:
        """Raise a clear error for a pixel tensor the encoder cannot take."""
        cfg = self.cfg
        if x.ndim != 5 or x.shape[1] != cfg.in_chans:
            raise ValueError(f"VAE encode expects a (B, {cfg.in_chans}, T, H, W) video in [-1, 1], got {tuple(x.shape)}")
        if not x.is_floating_point():
            raise ValueError(f"VAE encode expects floats in [-1, 1], got {x.dtype}; convert uint8 with x / 127.5 - 1")
        T, H, W = x.shape[2:]
        if H % cfg.patch_size or W % cfg.patch_size:
            raise ValueError(f"VAE encode needs H and W divisible by {cfg.patch_size}, got {H}x{W}; resize or crop")
        if T != 1 and T < cfg.patch_length:
            raise ValueError(f"VAE encode needs 1 or at least {cfg.patch_length} frames, got {T}")

    def check_latent(self, z: torch.Tensor) -> None:
        """Raise a clear error for a latent tensor the decoder cannot take."""
        if z.ndim != 5 or z.shape[1] != self.cfg.z_chans or min(z.shape[2:]) < 1:
            raise ValueError(f"VAE decode expects a (B, {self.cfg.z_chans}, T', H', W') latent, got {tuple(z.shape)}")

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Video (B, 3, T, H, W) in [-1, 1] -> posterior mean (B, z, T//4, H/8, W/8), unscaled.

        Runs in the weights' dtype (the reference runs the encoder purely in bf16). A single frame is
        repeated to `patch_length` frames and gives 1 latent frame; frames beyond a multiple of 4 are dropped.
        """
        self.check_video(x)
        x = x.to(self.device, self.dtype)
        if x.shape[2] == 1:
            x = x.expand(-1, -1, self.cfg.patch_length, -1, -1)
        return self.encoder(x)[:, : self.cfg.z_chans]

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Latent (B, z, T', H', W'), unscaled -> video (B, 3, 4T', 8H', 8W'); a 1-frame latent gives 1 frame.

        On CUDA with bf16/fp16 weights it runs under autocast like the reference (LayerNorms in fp32).
        """
        self.check_latent(z)
        z = z.to(self.device, self.dtype)
        with self._autocast():
            x = self.decoder(z)
        return x[:, :, :1] if z.shape[2] == 1 else x

    def _autocast(self):
        if self.device.type == "cuda" and self.dtype in (torch.bfloat16, torch.float16):
            return torch.autocast("cuda", dtype=self.dtype)
        return contextlib.nullcontext()
