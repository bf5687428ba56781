"""What a checkpoint is (size, variant, fp8) from its headers and names, and the tables a model of that config expects."""
from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field

import torch

from ..config import SIZES, DiTConfig
from ..dit.model import build_dit, promote_high_precision
from .layout import Checkpoint, parse_variant
from .safetensors_io import FP8_DTYPES, CheckpointError, _short


FP8_SCALE_KEYS = ("weight_scale", "input_scale", "smooth_scale")


# ----------------------------------------------------------------------------- expected tables


@functools.lru_cache(maxsize=16)
def _expected(cfg: DiTConfig) -> tuple:
    sd = build_dit(cfg).state_dict()
    return tuple((n, tuple(t.shape), t.dtype) for n, t in sd.items())


def expected_params(cfg: DiTConfig) -> dict:
    """{name: (shape, dtype)} of the model for `cfg`; dtype = in-memory dtype after the promotion list."""
    return {n: (s, d) for n, s, d in _expected(cfg)}


@functools.lru_cache(maxsize=16)
def _promoted(cfg: DiTConfig) -> frozenset:
    """Names the promotion list casts to fp32 (found by running it on a meta model held in fp16)."""
    model = build_dit(cfg).half()
    promote_high_precision(model)
    return frozenset(n for n, t in model.state_dict().items() if t.dtype == torch.float32)


def loaded_dtype(cfg: DiTConfig, name: str, stored: torch.dtype) -> torch.dtype:
    """The dtype a stored tensor has in memory once loaded into the model for `cfg`."""
    return torch.float32 if name in _promoted(cfg) and stored.is_floating_point else stored



_ARCH_FIELDS = (
    "num_layers", "hidden_size", "ffn_hidden_size", "num_attention_heads", "num_query_groups", "kv_channels",
    "patch_size", "t_patch_size", "in_channels", "out_channels", "cond_hidden_ratio", "caption_channels",
    "caption_max_length", "xattn_cond_hidden_ratio", "cond_gating_ratio", "gated_linear_unit",
)


@dataclass
class Detection:
    """What a checkpoint is. distill_source: caller | metadata | name | fp8 default | default."""

    size: str  # "4.5B", "24B", "tiny", "tiny-24B" or "custom"
    variant: str
    cfg: DiTConfig
    fp8: bool
    distill: bool
    distill_source: str
    notes: list = field(default_factory=list)


def _architecture(shapes: dict, num_layers: int) -> dict:
    """DiTConfig architecture fields from tensor shapes (layer 0 is never fp8, so its shapes are plain)."""
    h, cin, pt, p, _ = shapes["x_embedder.weight"]
    c = shapes["t_embedder.mlp.0.weight"][0]
    lc, cc = shapes["y_embedder.null_caption_embedding"]
    hx = shapes["y_embedder.y_proj_xattn.0.weight"][0]
    layer = "videodit_blocks.layers.0."
    d = shapes[layer + "self_attention.q_layernorm.weight"][0]
    q = shapes[layer + "self_attention.linear_qkv.q.weight"][-2]
    k = shapes[layer + "self_attention.linear_qkv.k.weight"][-2]
    ffn = shapes[layer + "mlp.linear_fc2.weight"][-1]
    fc1 = shapes[layer + "mlp.linear_fc1.weight"][-2]
    gates = shapes[layer + "ada_modulate_layer.proj.0.weight"][0]
    final = shapes.get("final_linear.linear.weight")  # in the last shard: may be absent in a partial download
    out = final[0] // (p * p * pt) if final else cin
    nb = shapes["rope.bands"][0]
    if nb * 8 != d or q % d or k % d:
        raise CheckpointError(f"inconsistent head sizes (rope bands {nb}, head dim {d}, q rows {q}, k rows {k})")
    arch = dict(
        num_layers=num_layers, hidden_size=h, ffn_hidden_size=ffn, num_attention_heads=q // d,
        num_query_groups=k // d, kv_channels=d, patch_size=p, t_patch_size=pt, in_channels=cin, out_channels=out,
        cond_hidden_ratio=c / h, caption_channels=cc, caption_max_length=lc, xattn_cond_hidden_ratio=hx / h,
        cond_gating_ratio=gates / (2 * h), gated_linear_unit=fc1 == 2 * ffn,
    )
    if int(h * arch["cond_hidden_ratio"]) != c or int(h * arch["xattn_cond_hidden_ratio"]) != hx:
        raise CheckpointError(f"hidden size {h} with cond width {c} / xattn width {hx} cannot be expressed as ratios")
    return arch


def _layer_indices(names) -> list:
    found = {int(m.group(1)) for n in names if (m := re.match(r"videodit_blocks\.layers\.(\d+)\.", n))}
    return sorted(found)


def _is_fp8_key(name: str) -> bool:
    return name.rsplit(".", 1)[-1] in FP8_SCALE_KEYS


def detect(ckpt: Checkpoint, variant: str | None = None) -> Detection:
    """Size and variant of a checkpoint from its headers, names and metadata (reads no tensor data).

    fp8 is told from the weights (float8 tensors / *_scale keys). Distill vs base cannot be told from weights
    (identical keys and shapes): the caller's `variant` wins, then our converter's metadata, then 'distill' or
    'base' in the folder/file name; otherwise fp8 weights count as distilled (every released fp8 checkpoint is)
    and others as base.
    """
    table = ckpt.table()
    shapes = {n: s for n, (s, _) in table.items()}
    layers = _layer_indices(ckpt.names)
    try:
        arch = _architecture(shapes, (layers[-1] + 1) if layers else 0)
    except CheckpointError:
        raise
    except (KeyError, ValueError, TypeError) as e:
        if any(n.startswith("videodit_blocks.layers.") for n in ckpt.names):
            why = "; ".join(ckpt.problems) or f"key {e} is missing or misshaped"
            raise CheckpointError(f"{ckpt.location}: incomplete MAGI-1 DiT checkpoint, cannot tell its size: {why}") from e
        raise CheckpointError(
            f"{ckpt.location} is not a MAGI-1 DiT checkpoint (no x_embedder / videodit_blocks keys; first keys: "
            f"{_short(ckpt.names, 4)}): a VAE, text encoder or another model? Pick the MAGI-1 DiT weights") from e
    notes = []
    fp8_keys = [n for n, (_, dt) in table.items() if dt in FP8_DTYPES or _is_fp8_key(n)]
    fp8 = bool(fp8_keys)
    meta_variant = ckpt.metadata.get("magi1.variant")
    hint = ckpt.name_hint()
    if variant is not None:
        want_fp8, distill = parse_variant(variant)
        if want_fp8 != fp8:
            raise CheckpointError(
                f"wrong variant: {variant!r} was asked for, but {ckpt.location} is "
                + (f"fp8-quantized (e.g. {_short(fp8_keys, 2)}): use 'distill-fp8'" if fp8
                   else "not fp8-quantized (no float8 weights or *_scale keys): use 'base' or 'distill'"))
        source = "caller"
    elif meta_variant:
        distill, source = parse_variant(meta_variant)[1], "metadata"
    elif "distill" in hint:
        distill, source = True, "name"
    elif "base" in hint:
        distill, source = False, "name"
    elif fp8:
        distill, source = True, "fp8 default"
        notes.append("distill assumed: the name does not say, and every released fp8 checkpoint is distilled")
    else:
        distill, source = False, "default"
        notes.append("base assumed: distill and base checkpoints have identical keys and the name does not say "
                     "'distill'; pass variant='distill' if this is a distilled model")
    size = next((name for name, c in SIZES.items() if all(getattr(c, k) == v for k, v in arch.items())), None)
    try:
        if size is not None:
            cfg = SIZES[size].replace(fp8_quant=fp8, distill=distill)
        else:
            size = "custom"
            half = arch["in_channels"] == 32  # the MAGI-1 VAE has 16 latent channels
            cfg = DiTConfig(**arch, half_channel_vae=half, x_rescale_factor=0.1 if half else 1.0,
                            fp8_quant=fp8, distill=distill, name="custom")
            notes.append(f"custom size ({arch['num_layers']} layers, hidden {arch['hidden_size']}); "
                         f"half_channel_vae={half}, x_rescale_factor={cfg.x_rescale_factor} were guessed: pass cfg "
                         "if they are wrong")
            for name, c in SIZES.items():
                if c.hidden_size == arch["hidden_size"] and c.num_layers != arch["num_layers"]:
                    notes.append(f"hidden size {c.hidden_size} is that of {name}, which has {c.num_layers} layers, "
                                 f"not {arch['num_layers']}: an incomplete checkpoint?")
    except ValueError as e:
        raise CheckpointError(f"{ckpt.location}: shapes do not form a valid MAGI-1 DiT ({e})") from e
    if ckpt.prefix:
        notes.append(f"key prefix {ckpt.prefix!r} stripped")
    return Detection(size, cfg.variant(), cfg, fp8, distill, source, notes)

