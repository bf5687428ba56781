"""Writing checkpoints: `convert` (any layout -> one safetensors file) and `save_official` (the release layout)."""
from __future__ import annotations

import json
import os
from pathlib import Path

from torch import nn

from ..config import DiTConfig
from .diagnose import check
from .layout import INDEX_NAME, SINGLE_NAME, WEIGHTS_DIR, parse_variant
from .load import _resolve
from .safetensors_io import CheckpointError, _iter_bytes, _write_safetensors_header


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
    try:
        with open(tmp, "wb") as f:
            _write_safetensors_header(f, entries, meta)
            for shard, raws in plan:
                for _, piece in _iter_bytes(shard, raws, chunk=64 << 20):
                    f.write(piece)
    except BaseException:  # Ctrl-C, a full disk: no half-written file left behind (out_file is untouched)
        tmp.unlink(missing_ok=True)
        raise
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

