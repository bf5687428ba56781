"""Loading a checkpoint into a VideoDiT set up as a `DiTRuntime` says."""
from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor

from ..config import DiTConfig
from ..dit.model import build_dit, promote_high_precision
from ..settings import DiTRuntime
from .detect import detect, expected_params
from .diagnose import check, compare, loaded_table
from .layout import Checkpoint, open_checkpoint, parse_variant
from .safetensors_io import CheckpointError, _read_shard, _short, dtype_name


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


def load_dit(path, runtime: DiTRuntime | None = None, variant: str | None = None, cfg: DiTConfig | None = None):
    """Load a MAGI-1 DiT checkpoint in any layout -> (VideoDiT set up as `runtime` says, info).

    cfg=None detects size and variant; `variant` overrides the detected one (distill cannot be seen in the weights).
    Everything is validated from headers first; a mismatch raises CheckpointError naming keys and likely cause.
    runtime.weight_dtype: None keeps the stored dtypes; "bf16" casts floats stored in an unusual dtype (an fp16 or
    fp32 conversion) to the reference dtypes (fp8 stays fp8); "fp8_e4m3fn" stores the bf16 block weights in fp8
    (dit/weight_fp8.py): loaded on the CPU, converted, then moved, so the device never holds the bf16 copy.
    """
    runtime = DiTRuntime() if runtime is None else runtime
    weight_dtype, device = runtime.weight_dtype, runtime.load_device
    ckpt, det, cfg = _resolve(path, cfg, variant)
    runtime.check_model(cfg, det.fp8)
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
        det.notes.append("block weights stored as fp8 (weight_dtype fp8_e4m3fn)")
    runtime.apply(model)  # fp8 storage on the host, then to the device: the device never holds the bf16 copy
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

