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

Modules: safetensors_io (file I/O), layout (finding the weights), detect (size/variant, expected tables),
diagnose (strict comparison, error text), load (load_dit), write (convert, save_official), report (inspect).
"""
from .detect import FP8_SCALE_KEYS, Detection, detect, expected_params, loaded_dtype
from .diagnose import Comparison, check, compare, loaded_table, mismatch_report
from .layout import INDEX_NAME, SINGLE_NAME, WEIGHTS_DIR, Checkpoint, open_checkpoint, parse_variant
from .load import cast_to_reference_dtypes, load_dit, read_state_dict
from .report import inspect
from .safetensors_io import ST_DTYPES, ST_NAMES, CheckpointError, ShardFile, dtype_name, read_header
from .write import convert, save_official

__all__ = [
    "CheckpointError", "Checkpoint", "Detection", "Comparison", "open_checkpoint", "read_header", "detect",
    "parse_variant", "expected_params", "loaded_dtype", "compare", "check", "read_state_dict", "load_dit",
    "convert", "save_official", "inspect",
]
