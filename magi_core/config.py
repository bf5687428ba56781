"""MAGI-1 configs: DiT architecture, presets, official JSON reader (its sampler part: settings.SamplingSettings)."""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import torch

_DTYPES = {"torch.bfloat16": torch.bfloat16, "torch.float16": torch.float16, "torch.float32": torch.float32}


@dataclass(frozen=True)
class DiTConfig:
    """Architecture of the VideoDiT (official `model_config`) plus the two weight-format flags."""

    num_layers: int
    hidden_size: int
    ffn_hidden_size: int
    num_attention_heads: int
    num_query_groups: int = 8
    kv_channels: int = 128
    layernorm_epsilon: float = 1e-6
    apply_layernorm_1p: bool = True
    x_rescale_factor: float = 1.0
    half_channel_vae: bool = False
    params_dtype: torch.dtype = torch.bfloat16
    patch_size: int = 2
    t_patch_size: int = 1
    in_channels: int = 16
    out_channels: int = 16
    cond_hidden_ratio: float = 0.25
    caption_channels: int = 4096
    caption_max_length: int = 800
    xattn_cond_hidden_ratio: float = 1.0
    cond_gating_ratio: float = 1.0
    gated_linear_unit: bool = False
    # weight format (official engine_config): fp8 layers 1..L-2, distill step embedding
    fp8_quant: bool = False
    distill: bool = False
    name: str = "custom"

    def __post_init__(self):
        nh, g = self.num_attention_heads, self.num_query_groups
        if nh % g:
            raise ValueError(f"num_attention_heads ({nh}) must be a multiple of num_query_groups ({g})")
        if self.hidden_size % nh or self.hidden_size // nh != self.kv_channels:
            raise ValueError("hidden_size / num_attention_heads must equal kv_channels (both MAGI-1 models use 128)")
        if nh % 8:
            raise ValueError("num_attention_heads must be a multiple of 8 (linear_proj's 8-slice layout)")
        if self.kv_channels % 8:
            raise ValueError("kv_channels must be a multiple of 8 (3-axis RoPE uses 6/8 of the head dims)")

    # derived sizes (docs/model.md, notation)
    @property
    def cond_dim(self) -> int:  # c
        return int(self.hidden_size * self.cond_hidden_ratio)

    @property
    def xattn_dim(self) -> int:  # hx
        return int(self.hidden_size * self.xattn_cond_hidden_ratio)

    @property
    def q_dim(self) -> int:  # Q
        return self.num_attention_heads * self.kv_channels

    @property
    def kv_dim(self) -> int:  # K
        return self.num_query_groups * self.kv_channels

    @property
    def rope_bands(self) -> int:  # nb
        return (self.hidden_size // self.num_attention_heads) // 8

    @property
    def vae_channels(self) -> int:
        """Latent channels the sampler/VAE see (16 for both released models)."""
        return self.in_channels // 2 if self.half_channel_vae else self.in_channels

    def variant(self) -> str:
        """'base', 'distill' or 'distill-fp8' (also 'fp8' for an fp8 base, which no release ships)."""
        if self.fp8_quant:
            return "distill-fp8" if self.distill else "fp8"
        return "distill" if self.distill else "base"

    def is_quantized_layer(self, i: int) -> bool:
        return self.fp8_quant and 0 < i < self.num_layers - 1

    def replace(self, **kw) -> "DiTConfig":
        return dataclasses.replace(self, **kw)


_45B = DiTConfig(
    name="4.5B", num_layers=34, hidden_size=3072, ffn_hidden_size=12288, num_attention_heads=24,
    gated_linear_unit=False, in_channels=16, out_channels=16, x_rescale_factor=1.0, half_channel_vae=False,
)
_24B = DiTConfig(
    name="24B", num_layers=48, hidden_size=6144, ffn_hidden_size=16384, num_attention_heads=48,
    gated_linear_unit=True, in_channels=32, out_channels=32, x_rescale_factor=0.1, half_channel_vae=True,
)
# Same layout as the real models (16 heads, 8 KV groups, 3-axis RoPE on 3/4 of the head dims, 8-way
# linear_proj slicing, 800 caption rows), tiny widths: head dim 32, 4 RoPE bands per axis.
_TINY = DiTConfig(
    name="tiny", num_layers=3, hidden_size=512, ffn_hidden_size=1024, num_attention_heads=16, kv_channels=32,
    gated_linear_unit=False, caption_channels=64, caption_max_length=800,
)
_TINY_24B = _TINY.replace(
    name="tiny-24B", gated_linear_unit=True, in_channels=32, out_channels=32, x_rescale_factor=0.1, half_channel_vae=True
)

SIZES = {"4.5B": _45B, "24B": _24B, "tiny": _TINY, "tiny-24B": _TINY_24B}
VARIANTS = {"base": dict(), "distill": dict(distill=True), "distill-fp8": dict(distill=True, fp8_quant=True)}


def preset(name: str) -> DiTConfig:
    """`4.5B`, `4.5B-distill`, `4.5B-distill-fp8`, `24B...`, `tiny...` (any case) -> DiTConfig."""
    low = name.lower()
    for size in sorted(SIZES, key=len, reverse=True):
        if low == size.lower() or low.startswith(size.lower() + "-"):
            variant = low[len(size) + 1:] or "base"
            if variant not in VARIANTS:
                break
            return SIZES[size].replace(**VARIANTS[variant])
    names = [s + ("" if v == "base" else "-" + v) for s in SIZES for v in VARIANTS]
    raise ValueError(f"unknown preset {name!r}; choose one of: {', '.join(names)}")


@dataclass
class OfficialConfig:
    """One of the six official JSON configs, mapped onto ours."""

    dit: DiTConfig
    sampler: "SamplingSettings"  # magi_core.settings
    engine: dict
    paths: dict


_MODEL_KEYS = [
    "num_layers", "hidden_size", "ffn_hidden_size", "num_attention_heads", "num_query_groups", "kv_channels",
    "layernorm_epsilon", "apply_layernorm_1p", "x_rescale_factor", "half_channel_vae", "params_dtype", "patch_size",
    "t_patch_size", "in_channels", "out_channels", "cond_hidden_ratio", "caption_channels", "caption_max_length",
    "xattn_cond_hidden_ratio", "cond_gating_ratio", "gated_linear_unit",
]
_PATH_KEYS = ["load", "t5_pretrained", "t5_device", "vae_pretrained"]


def load_official_config(path: str | Path) -> OfficialConfig:
    """Read an official MAGI-1 config JSON (example/*/…_config.json)."""
    raw = json.loads(Path(path).read_text())
    try:
        mc, rc, ec = raw["model_config"], raw["runtime_config"], raw["engine_config"]
    except KeyError as e:
        raise ValueError(f"{path}: not an official MAGI-1 config (missing section {e})") from None
    missing = [k for k in _MODEL_KEYS if k not in mc]
    if missing:
        raise ValueError(f"{path}: model_config lacks {missing}")
    kw = {k: mc[k] for k in _MODEL_KEYS}
    kw["params_dtype"] = _DTYPES[mc["params_dtype"]]
    kw["x_rescale_factor"] = float(kw["x_rescale_factor"])
    size = {3072: "4.5B", 6144: "24B"}.get(mc["hidden_size"], "custom")
    dit = DiTConfig(**kw, fp8_quant=bool(ec.get("fp8_quant")), distill=bool(ec.get("distill")), name=size)
    sampler = _sampling_settings(path, rc, ec)
    from .settings import default_cfg_number

    if sampler.cfg_number != default_cfg_number(dit):
        raise ValueError(f"{path}: a {dit.variant()} model needs cfg_number {default_cfg_number(dit)}, "
                         f"got {sampler.cfg_number}")
    paths = {k: rc[k] for k in _PATH_KEYS if k in rc}
    return OfficialConfig(dit=dit, sampler=sampler, engine=dict(ec), paths=paths)


# official runtime_config / engine_config key -> SamplingSettings field
_SAMPLING_KEYS = {
    "video_size_w": "width", "video_size_h": "height", "num_frames": "num_frames", "fps": "fps", "num_steps": "steps",
    "seed": "seed", "window_size": "window_size", "cfg_number": "cfg_number", "cfg_t_range": "cfg_t_range",
    "prev_chunk_scales": "prev_chunk_scales", "text_scales": "text_scales",
    "noise2clean_kvrange": "noise2clean_kvrange", "clean_chunk_kvrange": "clean_chunk_kvrange", "clean_t": "clean_t",
    "distill_nearly_clean_chunk_threshold": "distill_nearly_clean_threshold", "shortcut_mode": "shortcut_mode",
}


def _sampling_settings(path, rc: dict, ec: dict):
    """The sampler part of an official config; its fixed geometry must be ours (chunks of 6 latents, 4x time)."""
    from .settings import SamplingSettings
    from .video import CHUNK_WIDTH, FRAMES_PER_LATENT

    for key, ours in (("chunk_width", CHUNK_WIDTH), ("temporal_downsample_factor", FRAMES_PER_LATENT)):
        if rc.get(key, ours) != ours:
            raise ValueError(f"{path}: {key} {rc[key]} is not supported (MAGI-1 uses {ours})")
    kw = {field: src[key] for src in (rc, ec) for key, field in _SAMPLING_KEYS.items() if key in src}
    if "noise2clean_kvrange" in kw:
        kw["noise2clean_kvrange"] = tuple(kw["noise2clean_kvrange"])
    try:
        return SamplingSettings(**kw)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None
