"""`inspect`: what a checkpoint or preset is and whether it would load (headers only), as a JSON-ready dict."""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import torch

from ..config import DiTConfig, preset
from .detect import detect, expected_params
from .diagnose import compare, loaded_table, mismatch_report
from .layout import open_checkpoint, parse_variant
from .safetensors_io import CheckpointError, dtype_name


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

