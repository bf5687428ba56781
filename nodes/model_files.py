"""Find MAGI-1 models in ComfyUI's model folders (no ComfyUI import: callers pass the folder lists).

MAGI-1 models come as files (ComfyUI style) or as folders (the official layout), so the loaders list both:

- DiT: a folder holding `inference_weight[.fp8][.distill]/`, `model.safetensors.index.json` or
  `model.safetensors`, or a single safetensors file whose keys are a MAGI-1 DiT's;
- VAE: a folder with the official `config.json` (`"_class_name": "ViTVAE"`) + weights, or a single file;
- T5: the official `ckpt/t5` folder (`t5-v1_1-xxl/` inside), a HF T5 folder, or a single `t5xxl_*` file.

Files are told apart by their safetensors header (names only, no tensor data). Names are paths relative to
the model folder with `/` separators on every OS, so shipped workflows name the same file everywhere.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

FILE_SUFFIXES = (".safetensors", ".sft")
MAX_DEPTH = 4
_header_kinds: dict = {}  # (path, size, mtime_ns) -> kind


def kind_of_names(names) -> str | None:
    """'dit' | 'vae' | 't5' | None from tensor names (a key prefix such as 'model.diffusion_model.' is fine)."""
    names = list(names)
    if any(n.endswith("x_embedder.weight") for n in names) and any("videodit_blocks." in n for n in names):
        return "dit"
    if any(n.endswith("encoder.final_layer_norm.weight") for n in names):
        return "t5"
    if any(n.endswith("encoder.cls_token") for n in names) and any(n.endswith("decoder.cls_token") for n in names):
        return "vae"
    return None


def file_kind(path: Path) -> str | None:
    """Kind of one safetensors file from its header (cached by size and mtime); None if unreadable/other."""
    from magi_core.checkpoint import CheckpointError, read_header

    try:
        st = path.stat()
    except OSError:
        return None
    key = (str(path), st.st_size, st.st_mtime_ns)
    if key not in _header_kinds:
        try:
            _header_kinds[key] = kind_of_names(read_header(path).tensors)
        except (CheckpointError, OSError):
            _header_kinds[key] = None
    return _header_kinds[key]


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _has_weights(d: Path) -> bool:
    return any((d / n).is_file() for n in ("model.safetensors.index.json", "model.safetensors", "model.safetensors.zst"))


def dir_kind(d: Path) -> str | None:
    """Kind of a model folder, or None (then its sub-folders are searched)."""
    if any(p.is_dir() and _has_weights(p) for p in d.glob("inference_weight*")):
        return "dit"
    if (d / "t5-v1_1-xxl").is_dir():
        return "t5"
    config = _read_json(d / "config.json") if (d / "config.json").is_file() else {}
    if config.get("_class_name") == "ViTVAE" or (d / "diffusion_pytorch_model.safetensors").is_file():
        return "vae"
    if config.get("model_type") in ("t5", "umt5") or (d / "spiece.model").is_file() and config:
        return "t5"
    index = d / "model.safetensors.index.json"
    if index.is_file():
        return kind_of_names(_read_json(index).get("weight_map", {}))
    single = d / "model.safetensors"
    if single.is_file():
        return file_kind(single)
    return None


def scan(roots, kind: str) -> list[str]:
    """Names ('a/b.safetensors', '4.5B_distill') of every `kind` model under the roots, sorted, unique."""
    found = set()
    for root in roots:
        root = Path(root)
        if not root.is_dir():
            continue
        for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
            d = Path(dirpath)
            depth = len(d.relative_to(root).parts)
            dirnames[:] = sorted(n for n in dirnames if not n.startswith("."))
            if depth > 0:
                k = dir_kind(d)
                if k is not None:
                    if k == kind:
                        found.add(d.relative_to(root).as_posix())
                    dirnames[:] = []
                    continue
            if depth >= MAX_DEPTH:
                dirnames[:] = []
            for f in filenames:
                if f.endswith(FILE_SUFFIXES) and file_kind(d / f) == kind:
                    found.add((d / f).relative_to(root).as_posix())
    return sorted(found)


def resolve(name: str, roots, what: str = "model") -> Path:
    """Full path of a listed name: the first root that holds it."""
    if not name or Path(name).is_absolute() or ".." in Path(name).parts:
        raise ValueError(f"{what} {name!r}: pick a name from the list (a path relative to the model folder)")
    for root in roots:
        p = Path(root) / name
        if p.exists():
            return p
    where = ", ".join(str(r) for r in roots) or "(no folders registered)"
    raise FileNotFoundError(f"{what} {name!r} was not found in {where}: put it there, or pick another one "
                            "(press R in the UI to refresh the lists)")


def special_token_files(roots) -> list[str]:
    """`*.npz` files directly in the MAGI folders (special_tokens.npz and renamed copies)."""
    out = set()
    for root in roots:
        root = Path(root)
        if root.is_dir():
            out.update(p.name for p in root.glob("*.npz"))
    return sorted(out)


def default_special_tokens(pack_asset: Path, roots) -> Path | None:
    """The pack's own copy (install.py downloads it), else models/magi/special_tokens.npz, else None."""
    if pack_asset.is_file():
        return pack_asset
    for root in roots:
        p = Path(root) / "special_tokens.npz"
        if p.is_file():
            return p
    return None


def identity(path: Path) -> tuple:
    """(real path, size, mtime) of a file, or of every file in a folder: changes when the weights change."""
    path = Path(path).resolve()
    if path.is_file():
        st = path.stat()
        return (str(path), st.st_size, st.st_mtime_ns)
    parts = []
    for dirpath, _, files in os.walk(path, followlinks=True):
        for f in sorted(files):
            st = (Path(dirpath) / f).stat()
            parts.append((f, st.st_size, st.st_mtime_ns))
    return (str(path), tuple(sorted(parts)))


def size_on_disk(path: Path) -> int:
    """Bytes of a file or of every file in a folder (an upper bound for what loading it takes)."""
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    return sum((Path(d) / f).stat().st_size for d, _, files in os.walk(path, followlinks=True) for f in files)
