"""Strict comparison of a checkpoint against the model it should load into, and the error that names the likely cause."""
from __future__ import annotations

from dataclasses import dataclass

from ..config import DiTConfig
from .detect import _ARCH_FIELDS, Detection, _is_fp8_key, _layer_indices, expected_params, loaded_dtype
from .layout import Checkpoint
from .safetensors_io import CheckpointError, _short


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

