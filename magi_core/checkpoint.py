"""MAGI-1 DiT weights in every layout -> VideoDiT, with size/variant detection and strict checks.

Layouts (official `inference/infra/checkpoint/checkpointing.py`; docs/model.md), all read the same way:

- official: `<dir>/inference_weight[.fp8][.distill]/` holding `model.safetensors.index.json` + shards, or one
  `model.safetensors`; any shard may be stored as `<shard>.zst` (decompressed in memory, streamed);
  `<dir>` itself or the weights subfolder may be given;
- a single safetensors file with any name (ComfyUI `models/diffusion_models`), optionally with a key prefix
  such as `model.diffusion_model.` (stripped).

Only headers are read to detect, inspect and validate; tensor data is read once, straight to the target
device where safetensors allows, and assigned to a meta-built model (stored dtype wins, then the fp32
promotion list, docs/model.md). Unlike the reference, loading is strict: every key must exist with the right shape.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import re
import struct
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from .config import SIZES, DiTConfig, preset
from .dit.model import build_dit, promote_high_precision

INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"
WEIGHTS_DIR = "inference_weight"
FP8_SCALE_KEYS = ("weight_scale", "input_scale", "smooth_scale")

# safetensors header dtype strings <-> torch dtypes
ST_DTYPES = {
    "BOOL": torch.bool, "U8": torch.uint8, "I8": torch.int8, "I16": torch.int16, "I32": torch.int32,
    "I64": torch.int64, "F16": torch.float16, "BF16": torch.bfloat16, "F32": torch.float32, "F64": torch.float64,
    "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
}
ST_NAMES = {v: k for k, v in ST_DTYPES.items()}
FP8_DTYPES = (torch.float8_e4m3fn, torch.float8_e5m2)
_MAX_HEADER = 100 << 20


class CheckpointError(ValueError):
    """A checkpoint that cannot be found, read or loaded; the message says what is wrong and what to do."""


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _short(names, n: int = 5) -> str:
    names = list(names)
    more = f", ... ({len(names)} in total)" if len(names) > n else ""
    return ", ".join(str(x) for x in names[:n]) + more


# ----------------------------------------------------------------------------- one safetensors file


@dataclass
class ShardFile:
    """Header of one safetensors file (plain or `.zst`): raw name -> (shape, dtype, begin, end) in the data."""

    path: Path
    data_start: int
    tensors: dict
    metadata: dict
    problems: list = field(default_factory=list)

    @property
    def compressed(self) -> bool:
        return self.path.suffix == ".zst"


def _open_raw(path: Path):
    f = open(path, "rb")
    if path.suffix != ".zst":
        return f
    import zstandard

    return zstandard.ZstdDecompressor().stream_reader(f, closefd=True)


def _read_exact(stream, n: int, path: Path) -> bytearray:
    buf = bytearray(n)
    view, got = memoryview(buf), 0
    try:
        while got < n:
            k = stream.readinto(view[got:])
            if not k:
                raise CheckpointError(f"{path} ends early (truncated or incomplete download?): re-download this file")
            got += k
    except CheckpointError:
        raise
    except Exception as e:  # zstd errors, I/O errors
        raise CheckpointError(f"{path} cannot be read ({e}): the file is corrupt or truncated, re-download it") from e
    return buf


def read_header(path: str | Path) -> ShardFile:
    """Parse the JSON header of a `.safetensors` (or `.safetensors.zst`) file; reads no tensor data."""
    path = Path(path)
    with _open_raw(path) as f:
        head = bytes(_read_exact(f, 8, path))
        if head.startswith(b"version "):
            raise CheckpointError(f"{path} is a git-lfs pointer, not the weights: download the real file "
                                  "(git lfs pull, or huggingface-cli download)")
        (n,) = struct.unpack("<Q", head)
        if n > _MAX_HEADER:
            raise CheckpointError(f"{path} is not a safetensors file (bad header length): wrong or corrupt file")
        try:
            raw = json.loads(bytes(_read_exact(f, n, path)))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise CheckpointError(f"{path} is not a safetensors file (header is not JSON): wrong or corrupt file") from e
    metadata = raw.pop("__metadata__", None) or {}
    tensors, end = {}, 0
    for name, t in raw.items():
        try:
            dtype, shape, (a, b) = ST_DTYPES[t["dtype"]], tuple(t["shape"]), t["data_offsets"]
        except (KeyError, TypeError, ValueError) as e:
            raise CheckpointError(f"{path}: bad header entry for {name!r} ({e}): corrupt file") from e
        if b - a != math.prod(shape) * dtype.itemsize:
            raise CheckpointError(f"{path}: header entry {name!r} has inconsistent sizes: corrupt file")
        tensors[name] = (shape, dtype, a, b)
        end = max(end, b)
    shard = ShardFile(path, 8 + n, tensors, metadata)
    if not shard.compressed and path.stat().st_size < shard.data_start + end:
        shard.problems.append(f"{path.name} is truncated ({path.stat().st_size:,} bytes, its header needs "
                              f"{shard.data_start + end:,}): incomplete download, re-download it")
    return shard


def _iter_bytes(shard: ShardFile, raw_names, chunk: int | None = None):
    """Yield (raw name, bytes) in file order; with `chunk`, big tensors come as several consecutive pieces."""
    order = sorted(raw_names, key=lambda r: shard.tensors[r][2])
    with _open_raw(shard.path) as f:
        for raw in order:
            _, _, a, b = shard.tensors[raw]
            f.seek(shard.data_start + a)  # forward-only for .zst (decompresses and discards)
            left = b - a
            while True:
                k = left if chunk is None else min(chunk, left)
                yield raw, _read_exact(f, k, shard.path)
                left -= k
                if left == 0:
                    break


def _tensor_from_bytes(buf: bytearray, shape, dtype) -> torch.Tensor:
    if len(buf) == 0:
        return torch.empty(shape, dtype=dtype)
    return torch.frombuffer(buf, dtype=dtype).reshape(shape)


def _read_shard(shard: ShardFile, names: dict, device) -> dict:
    """names: raw -> canonical. Returns canonical -> tensor on `device`."""
    if not shard.compressed:
        from safetensors import safe_open

        with safe_open(str(shard.path), framework="pt", device=str(device)) as f:
            return {canon: _fresh(f.get_tensor(raw)) for raw, canon in names.items()}
    out = {}
    for raw, buf in _iter_bytes(shard, names):
        shape, dtype = shard.tensors[raw][:2]
        out[names[raw]] = _fresh(_tensor_from_bytes(buf, shape, dtype).to(device))
    return out


def _fresh(t: torch.Tensor) -> torch.Tensor:
    """A CPU tensor read from a file sits at the file's byte offset (e.g. data_ptr % 64 == 56), which sends CPU
    GEMMs down another path than the reference's freshly allocated weights: copy it into its own storage."""
    return t.clone() if t.device.type == "cpu" else t


# ----------------------------------------------------------------------------- layouts


@dataclass
class Checkpoint:
    """A DiT checkpoint found on disk (headers only). `names`: canonical name -> (shard or None, raw name)."""

    source: Path
    location: Path  # the weights directory or the single file
    layout: str  # "index" (index + shards), "single" (official model.safetensors), "file" (any single file)
    shards: list
    names: dict
    prefix: str = ""
    metadata: dict = field(default_factory=dict)
    problems: list = field(default_factory=list)

    def table(self) -> dict:
        """name -> (shape, stored dtype) for every tensor whose file is present."""
        return {n: s.tensors[r][:2] for n, (s, r) in self.names.items() if s is not None}

    def describe(self) -> str:
        zst = " (.zst)" if any(s.compressed for s in self.shards) else ""
        if self.layout == "index":
            return f"index + {len(self.shards)} shard(s){zst}"
        return ("official model.safetensors" if self.layout == "single" else "single file") + zst

    def name_hint(self) -> str:
        """Lower-cased folder/file names that may say 'distill' / 'base' / 'quant' (generic names look upward)."""
        parts, p = [], self.location
        for _ in range(3):
            parts.append(p.name.lower())
            if not re.match(r"^(model(-\d+-of-\d+)?\.safetensors.*|inference_weight.*)$", p.name):
                break
            p = p.parent
        return " ".join(parts)


def _find(dirpath: Path, name: str) -> Path | None:
    for cand in (dirpath / name, dirpath / (name + ".zst")):
        if cand.is_file():
            return cand
    return None


def _weights_location(path: Path, variant: str | None) -> tuple[str, Path]:
    if path.is_file():
        if path.name.endswith(".index.json"):
            return "index", path.parent
        return "file", path
    if (path / INDEX_NAME).is_file():
        return "index", path
    if _find(path, SINGLE_NAME):
        return "single", path
    subdirs = sorted(p for p in path.glob(WEIGHTS_DIR + "*") if p.is_dir())
    if variant is not None and subdirs:
        fp8, distill = parse_variant(variant)
        want = path / (WEIGHTS_DIR + (".fp8" if fp8 else "") + (".distill" if distill else ""))
        if want in subdirs:
            subdirs = [want]
    if len(subdirs) == 1:
        return _weights_location(subdirs[0], variant)
    if subdirs:
        raise CheckpointError(f"{path} holds several weight folders ({', '.join(p.name for p in subdirs)}): "
                              "point at one of them or pass the variant")
    files = sorted(path.glob("*.safetensors")) or sorted(path.glob("*.safetensors.zst"))
    if len(files) == 1:
        return "file", files[0]
    raise CheckpointError(
        f"no MAGI-1 DiT weights in {path}: expected {INDEX_NAME} + shards, {SINGLE_NAME}, an "
        f"{WEIGHTS_DIR}[.fp8][.distill]/ folder, or exactly one .safetensors file"
        + (f" (found {len(files)}: {_short(p.name for p in files)})" if files else ""))


def _strip_prefix(raw_names) -> str:
    """Prefix such as 'model.diffusion_model.' in front of 'x_embedder.weight', or ''."""
    anchor = next((n for n in raw_names if n.endswith("x_embedder.weight")), None)
    if anchor is None:
        return ""
    prefix = anchor[: -len("x_embedder.weight")]
    return prefix if prefix.endswith(".") else ""


def open_checkpoint(path: str | Path, variant: str | None = None) -> Checkpoint:
    """Find the weights under `path` (any layout) and read every header; no tensor data is read."""
    src = Path(path).expanduser()
    if not src.exists():
        raise CheckpointError(f"{src} does not exist: give a MAGI-1 weights folder or .safetensors file")
    layout, loc = _weights_location(src, variant)
    problems, metadata = [], {}
    if layout == "index":
        try:
            index = json.loads((loc / INDEX_NAME).read_text())
            weight_map = index["weight_map"]
        except (OSError, ValueError, KeyError) as e:
            raise CheckpointError(f"{loc / INDEX_NAME} is not a valid index ({e}): re-download it") from e
        metadata = dict(index.get("metadata") or {})
        by_file = {}
        for name, fname in weight_map.items():
            by_file.setdefault(fname, []).append(name)
        shards, placed = [], {}
        for fname, names in by_file.items():
            f = _find(loc, fname)
            if f is None:
                problems.append(f"shard file {fname} is missing ({len(names)} tensors): incomplete download, "
                                "re-download it")
                placed.update({n: None for n in names})
                continue
            shard = read_header(f)
            shards.append(shard)
            problems += shard.problems
            absent = [n for n in names if n not in shard.tensors]
            if absent:
                problems.append(f"{f.name} lacks {len(absent)} tensors the index assigns to it ({_short(absent, 3)}): "
                                "shard and index come from different downloads, or the shard is corrupt")
            placed.update({n: (shard if n in shard.tensors else None) for n in names})
        raw = {n: (s, n) for n, s in placed.items()}
    else:
        f = _find(loc, SINGLE_NAME) if layout == "single" else loc
        shard = read_header(f)
        shards, problems = [shard], list(shard.problems)
        raw = {n: (shard, n) for n in shard.tensors}
        metadata = dict(shard.metadata)
    prefix = _strip_prefix(raw)
    names = {(n[len(prefix):] if prefix and n.startswith(prefix) else n): v for n, v in raw.items()}
    return Checkpoint(src, loc, layout, shards, names, prefix, metadata, problems)


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


# ----------------------------------------------------------------------------- detection


def parse_variant(variant: str) -> tuple[bool, bool]:
    """'base' | 'distill' | 'fp8' | 'distill-fp8' (also 'distill_quant', ...) -> (fp8, distill)."""
    words = set(re.split(r"[-_.+ ]+", variant.lower())) - {""}
    if not words or words - {"base", "distill", "fp8", "quant"} or ("base" in words and len(words) > 1):
        raise CheckpointError(f"unknown variant {variant!r}: use base, distill, fp8 or distill-fp8")
    return bool(words & {"fp8", "quant"}), "distill" in words


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


# ----------------------------------------------------------------------------- strict comparison


@dataclass
class Comparison:
    """Checkpoint table (loaded dtypes) vs the model's expected table."""

    missing: list
    unexpected: list
    misshaped: list  # (name, checkpoint shape, expected shape)
    dtype_changes: list  # (name, loaded dtype, expected dtype): allowed, the stored dtype wins

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.misshaped)


def compare(found: dict, expected: dict) -> Comparison:
    """found/expected: name -> (shape, dtype)."""
    return Comparison(
        missing=[n for n in expected if n not in found],
        unexpected=[n for n in found if n not in expected],
        misshaped=[(n, found[n][0], s) for n, (s, _) in expected.items() if n in found and found[n][0] != s],
        dtype_changes=[(n, found[n][1], d) for n, (s, d) in expected.items()
                       if n in found and found[n][0] == s and found[n][1] != d],
    )


def loaded_table(ckpt: Checkpoint, cfg: DiTConfig) -> dict:
    """name -> (shape, in-memory dtype once loaded into the model for cfg)."""
    return {n: (s, loaded_dtype(cfg, n, d)) for n, (s, d) in ckpt.table().items()}


def _causes(cmp: Comparison, ckpt: Checkpoint, det: Detection | None, cfg: DiTConfig) -> list:
    causes = list(ckpt.problems)
    if det is None or not (set(ckpt.names) & set(expected_params(cfg))):
        return causes + ["this is not a MAGI-1 DiT checkpoint (a VAE, text encoder or another model?)"]
    if any(_is_fp8_key(n) for n in cmp.unexpected):
        causes.append("wrong variant: the checkpoint is fp8-quantized but the model was set up without fp8; "
                      "load it as variant 'distill-fp8'")
    if any(_is_fp8_key(n) for n in cmp.missing) and not det.fp8:
        causes.append("wrong variant: the model was set up for fp8 weights but the checkpoint is not quantized; "
                      "load it as 'base' or 'distill'")
    diffs = [f"{k}={getattr(det.cfg, k)} vs {getattr(cfg, k)}" for k in _ARCH_FIELDS
             if getattr(det.cfg, k) != getattr(cfg, k)]
    if diffs:
        causes.append(f"wrong model size: the checkpoint is {det.size}, the model is {cfg.name} "
                      f"(checkpoint vs model: {', '.join(diffs)})")
    if not causes and cmp.missing and not (cmp.unexpected or cmp.misshaped):
        layers = _layer_indices(cmp.missing)
        where = "" if not layers else f" (layer {layers[0]})" if len(layers) == 1 else f" (layers {layers[0]}..{layers[-1]})"
        causes.append(f"incomplete checkpoint: {len(cmp.missing)} tensors are absent{where}: a truncated or "
                      "partial download? re-download it")
    return causes or ["the file was edited or written by a different tool/version of MAGI-1"]


def mismatch_report(ckpt: Checkpoint, cmp: Comparison, det: Detection | None, cfg: DiTConfig) -> str:
    """Human-readable error: the keys (first few + count) and the likely cause."""
    lines = [f"MAGI-1 DiT checkpoint {ckpt.location} does not fit the {cfg.name} {cfg.variant()} model:"]
    if cmp.missing:
        lines.append(f"  missing keys ({len(cmp.missing)}): {_short(cmp.missing)}")
    if cmp.unexpected:
        lines.append(f"  unexpected keys ({len(cmp.unexpected)}): {_short(cmp.unexpected)}")
    if cmp.misshaped:
        shown = [f"{n} {tuple(a)} in the checkpoint vs {tuple(b)}" for n, a, b in cmp.misshaped]
        lines.append(f"  misshaped keys ({len(cmp.misshaped)}): {_short(shown, 3)}")
    lines += ["  likely cause: " + c for c in _causes(cmp, ckpt, det, cfg)]
    return "\n".join(lines)


def check(ckpt: Checkpoint, cfg: DiTConfig, det: Detection | None = None) -> Comparison:
    """Strict check from headers; raises CheckpointError naming the keys and the likely cause."""
    cmp = compare(loaded_table(ckpt, cfg), expected_params(cfg))
    if not cmp.ok or ckpt.problems:
        raise CheckpointError(mismatch_report(ckpt, cmp, det, cfg))
    return cmp


# ----------------------------------------------------------------------------- loading


def _resolve(path, cfg: DiTConfig | None, variant: str | None):
    ckpt = open_checkpoint(path, variant)
    det = detect(ckpt, variant)
    if cfg is None:
        cfg = det.cfg
    elif variant is not None:
        fp8, distill = parse_variant(variant)
        cfg = cfg.replace(fp8_quant=fp8, distill=distill)
    if cfg.distill != det.distill and det.distill_source in ("metadata", "name"):
        det.notes.append(f"the given config says distill={cfg.distill}, the checkpoint's {det.distill_source} "
                         f"says distill={det.distill}; using the config")
    return ckpt, det, cfg


def read_state_dict(ckpt: Checkpoint, device="cpu", names=None) -> dict:
    """canonical name -> tensor (stored dtype) on `device`; shards are read in parallel threads."""
    groups = {}
    for n, (shard, raw) in ckpt.names.items():
        if names is not None and n not in names:
            continue
        if shard is None:
            raise CheckpointError(f"{n} is in a missing shard file: " + "; ".join(ckpt.problems))
        groups.setdefault(id(shard), (shard, {}))[1][raw] = n
    sd = {}
    with ThreadPoolExecutor(max_workers=max(1, min(8, len(groups)))) as pool:
        for part in pool.map(lambda g: _read_shard(g[0], g[1], device), groups.values()):
            sd.update(part)
    return sd


WEIGHT_DTYPES = (None, "auto", "bf16", "fp8_e4m3fn")


def cast_to_reference_dtypes(model) -> int:
    """Cast float weights stored in an unusual dtype to the reference's (bf16; fp32 for the promotion list).
    fp8 weights are left alone. Returns how many tensors changed."""
    expected = expected_params(model.cfg)
    changed = 0
    for name, p in model.named_parameters():
        want = expected[name][1]
        if p.dtype != want and p.dtype.is_floating_point and p.dtype.itemsize > 1 and want.itemsize > 1:
            p.data = p.data.to(want)
            changed += 1
    return changed


def load_dit(path, cfg: DiTConfig | None = None, device="cpu", variant: str | None = None,
             weight_dtype: str | None = None):
    """Load a MAGI-1 DiT checkpoint in any layout -> (VideoDiT, info).

    cfg=None detects size and variant; `variant` overrides the detected one (distill cannot be seen in the weights).
    Everything is validated from headers first; a mismatch raises CheckpointError naming keys and likely cause.
    weight_dtype: None/"auto" keeps the stored dtypes; "bf16" casts floats stored in an unusual dtype (an fp16 or
    fp32 conversion) to the reference dtypes (fp8 stays fp8); "fp8_e4m3fn" stores the bf16 block weights in fp8
    (dit/weight_fp8.py): loaded on the CPU, converted, then moved, so the device never holds the bf16 copy.
    """
    if weight_dtype not in WEIGHT_DTYPES:
        raise ValueError(f"weight_dtype must be one of {WEIGHT_DTYPES}, got {weight_dtype!r}")
    ckpt, det, cfg = _resolve(path, cfg, variant)
    check(ckpt, cfg, det)
    model = build_dit(cfg)
    fp8_store = weight_dtype == "fp8_e4m3fn"
    sd = read_state_dict(ckpt, "cpu" if fp8_store else device)
    model.load_state_dict(sd, strict=True, assign=True)  # the stored dtype wins
    del sd
    promote_high_precision(model).eval().requires_grad_(False)
    recast = cast_to_reference_dtypes(model) if weight_dtype == "bf16" else 0
    if recast:
        det.notes.append(f"{recast} tensors cast to the reference dtypes (weight_dtype bf16)")
    if fp8_store:
        from .dit.weight_fp8 import store_weights_fp8_

        det.notes.append(f"{store_weights_fp8_(model)} block weights stored as fp8 (weight_dtype fp8_e4m3fn)")
        model.to(device)
    table = loaded_table(ckpt, cfg)
    changes = compare(table, expected_params(cfg)).dtype_changes
    if changes:
        det.notes.append(f"{len(changes)} tensors are stored in an unusual dtype and kept so: "
                         + _short(f"{n} {dtype_name(a)} (usually {dtype_name(b)})" for n, a, b in changes))
    info = dict(
        size=det.size, variant=cfg.variant(), cfg=cfg, distill_source=det.distill_source, notes=det.notes,
        layout=ckpt.describe(), location=str(ckpt.location), files=[str(s.path) for s in ckpt.shards],
        prefix=ckpt.prefix, recast=recast, num_tensors=len(table), num_params=sum(math.prod(s) for s, _ in table.values()),
    )
    return model, info


# ----------------------------------------------------------------------------- writing


def _write_safetensors_header(f, entries: list, metadata: dict) -> None:
    """entries: (name, shape, dtype, nbytes) in data order; data must follow contiguously."""
    header, pos = {"__metadata__": {k: str(v) for k, v in metadata.items()}}, 0
    for name, shape, dtype, nbytes in entries:
        header[name] = {"dtype": ST_NAMES[dtype], "shape": list(shape), "data_offsets": [pos, pos + nbytes]}
        pos += nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    f.write(struct.pack("<Q", len(raw)) + raw)


def convert(src, out_file, variant: str | None = None, cfg: DiTConfig | None = None) -> dict:
    """Official directory (or any layout) -> one safetensors file with the same names, dtypes and bytes.

    Validated strictly first; then copied shard by shard in 64 MiB pieces (RAM stays small, .zst included).
    The metadata records size and variant (`magi1.size`, `magi1.variant`) so the file needs no name hint.
    """
    known = variant is not None or cfg is not None
    ckpt, det, cfg = _resolve(src, cfg, variant)
    check(ckpt, cfg, det)
    out_file = Path(out_file).expanduser()
    if out_file.exists() and out_file.is_dir():
        raise CheckpointError(f"{out_file} is a directory: give the output .safetensors file name")
    plan = []  # (shard, [raw names in file order])
    for shard in ckpt.shards:
        mine = [r for (s, r) in ckpt.names.values() if s is shard]
        plan.append((shard, sorted(mine, key=lambda r: shard.tensors[r][2])))
    canon = {(id(s), r): n for n, (s, r) in ckpt.names.items()}
    entries = [(canon[id(s), r], s.tensors[r][0], s.tensors[r][1], s.tensors[r][3] - s.tensors[r][2])
               for s, raws in plan for r in raws]
    meta = {"format": "pt", "magi1.size": det.size, "magi1.source": ckpt.location.name}
    if known or det.distill_source not in ("default", "fp8 default"):
        meta["magi1.variant"] = cfg.variant()  # recorded only when known, not when guessed
    out_file.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_file.with_name(out_file.name + ".part")
    with open(tmp, "wb") as f:
        _write_safetensors_header(f, entries, meta)
        for shard, raws in plan:
            for _, piece in _iter_bytes(shard, raws, chunk=64 << 20):
                f.write(piece)
    os.replace(tmp, out_file)
    return dict(size=det.size, variant=cfg.variant(), num_tensors=len(entries), path=str(out_file),
                bytes=out_file.stat().st_size)


def save_official(model_or_state_dict, out_dir, variant: str, shards: int = 2, zst: bool = False,
                  single_file: bool = False) -> Path:
    """Write weights the way the official release lays them out; returns the `inference_weight*` folder.

    `<out_dir>/inference_weight[.fp8][.distill]/`: index + `shards` files, or one model.safetensors
    (`single_file`); with `zst` every file is replaced by `<file>.zst`. Used by tests and benchmarks.
    """
    from safetensors.torch import save_file

    sd = model_or_state_dict.state_dict() if isinstance(model_or_state_dict, nn.Module) else model_or_state_dict
    sd = {n: t.detach().contiguous().cpu() for n, t in sd.items()}
    fp8, distill = parse_variant(variant)
    folder = Path(out_dir) / (WEIGHTS_DIR + (".fp8" if fp8 else "") + (".distill" if distill else ""))
    folder.mkdir(parents=True, exist_ok=True)
    if single_file:
        files = {SINGLE_NAME: sd}
    else:
        total = sum(t.nbytes for t in sd.values())
        files, acc = {}, 0
        names = [f"model-{i + 1:05d}-of-{shards:05d}.safetensors" for i in range(shards)]
        for n, t in sd.items():
            i = min(shards - 1, acc * shards // max(total, 1))
            files.setdefault(names[i], {})[n] = t
            acc += t.nbytes
        weight_map = {n: fname for fname, part in files.items() for n in part}
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (folder / INDEX_NAME).write_text(json.dumps(index, indent=2))
    for fname, part in files.items():
        save_file(part, str(folder / fname), metadata={"format": "pt"})
        if zst:
            import zstandard

            with open(folder / fname, "rb") as fin, open(folder / (fname + ".zst"), "wb") as fout:
                zstandard.ZstdCompressor(level=3).copy_stream(fin, fout)
            (folder / fname).unlink()
    return folder


# ----------------------------------------------------------------------------- inspect


def _config_dict(cfg: DiTConfig) -> dict:
    return {k: (dtype_name(v) if isinstance(v, torch.dtype) else v) for k, v in dataclasses.asdict(cfg).items()}


def _params_json(table: dict) -> dict:
    return {n: {"shape": list(s), "dtype": dtype_name(d)} for n, (s, d) in table.items()}


def inspect(source: str, variant: str | None = None) -> dict:
    """Report for a checkpoint (headers only) or a preset name: size, variant, counts, parameter table and,
    for a checkpoint, the comparison against the expected table. Key 'ok' says whether it would load."""
    path = Path(source).expanduser()
    if not path.exists():
        try:
            cfg = preset(source)
        except ValueError as e:
            raise CheckpointError(f"{source!r} is neither an existing file/folder nor a preset ({e})") from None
        if variant is not None:
            fp8, distill = parse_variant(variant)
            cfg = cfg.replace(fp8_quant=fp8, distill=distill)
        table = expected_params(cfg)
        return dict(kind="preset", source=source, ok=True, size=cfg.name, variant=cfg.variant(),
                    num_params=sum(math.prod(s) for s, _ in table.values()), num_tensors=len(table),
                    config=_config_dict(cfg), params=_params_json(table))
    ckpt = open_checkpoint(path, variant)
    stored = ckpt.table()
    report = dict(kind="checkpoint", source=str(path), location=str(ckpt.location), layout=ckpt.describe(),
                  files=[str(s.path) for s in ckpt.shards], prefix=ckpt.prefix,
                  num_params=sum(math.prod(s) for s, _ in stored.values()), num_tensors=len(stored))
    try:
        det = detect(ckpt, variant)
    except CheckpointError as e:
        report.update(ok=False, size=None, variant=None, error=str(e), params=_params_json(stored))
        return report
    cfg = det.cfg
    table = loaded_table(ckpt, cfg)
    cmp = compare(table, expected_params(cfg))
    ok = cmp.ok and not ckpt.problems
    report.update(
        ok=ok, size=det.size, variant=det.variant, distill_source=det.distill_source, notes=det.notes,
        config=_config_dict(cfg), params=_params_json(table),
        stored_dtypes={n: dtype_name(d) for n, (_, d) in stored.items() if d != table[n][1]},  # before promotion
        comparison=dict(
            ok=ok, missing=cmp.missing, unexpected=cmp.unexpected, problems=ckpt.problems,
            misshaped=[dict(name=n, shape=list(a), expected=list(b)) for n, a, b in cmp.misshaped],
            dtype_changes=[dict(name=n, dtype=dtype_name(a), expected=dtype_name(b)) for n, a, b in cmp.dtype_changes],
            report=None if ok else mismatch_report(ckpt, cmp, det, cfg),
        ),
    )
    return report


__all__ = [
    "CheckpointError", "Checkpoint", "Detection", "Comparison", "open_checkpoint", "read_header", "detect",
    "parse_variant", "expected_params", "loaded_dtype", "compare", "check", "read_state_dict", "load_dit",
    "convert", "save_official", "inspect",
]
