"""Where a DiT checkpoint's weights are: official folders (index + shards, model.safetensors, any of them `.zst`) or one file."""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from .safetensors_io import CheckpointError, _short, read_header


INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"
WEIGHTS_DIR = "inference_weight"


def parse_variant(variant: str) -> tuple[bool, bool]:
    """'base' | 'distill' | 'fp8' | 'distill-fp8' (also 'distill_quant', ...) -> (fp8, distill)."""
    words = set(re.split(r"[-_.+ ]+", variant.lower())) - {""}
    if not words or words - {"base", "distill", "fp8", "quant"} or ("base" in words and len(words) > 1):
        raise CheckpointError(f"unknown variant {variant!r}: use base, distill or distill-fp8")
    return bool(words & {"fp8", "quant"}), "distill" in words



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

