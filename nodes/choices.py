"""Combo options of the MAGI nodes and their validation (ComfyUI's `execution.py` checks V1 list combos only).

ComfyUI (`execution.py`, validate_inputs) attaches whatever a node's `validate_inputs` returns to every input the
method takes as a parameter (and skips its own min/max check for those): a method taking four inputs shows one
problem four times. So a node's `validate_inputs` takes only the inputs whose mistakes would otherwise surface after
a model has loaded (a model file that is not there, the video's size, a prompt, the sampler options' text fields),
and every message names the input it is about; the other combos are checked with `require_all` first thing in
`execute`, before anything loads, and reported once.
"""
from __future__ import annotations

ATTENTION = ["auto", "sdpa", "cudnn", "flex", "flash", "magi", "fp8-approx"]
PRECISION = ["fast", "exact"]
VARIANT = ["auto", "base", "distill", "distill-fp8"]
DIT_WEIGHT_DTYPE = ["auto", "bf16", "fp8_e4m3fn"]
VAE_DTYPE = ["bf16", "fp32", "fp16"]
T5_DTYPE = ["bf16", "fp32"]
RESIZE = ["stretch", "crop", "pad"]
TAKE = ["end", "start"]
PREVIEW = ["decoded chunks", "off"]
CFG_NUMBER = ["auto", "1", "3"]
SPECIAL_TOKENS_FIXED = ["auto", "none"]

DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}


def devices(cuda_count: int) -> list[str]:
    """'auto' (ComfyUI's device for this kind of model), 'cpu', then one entry per visible GPU."""
    return ["auto", "cpu"] + [f"cuda:{i}" for i in range(cuda_count)]


def device_check(value, cuda_count: int) -> tuple:
    """A loader's `device` for check/require_all: its choices and a hint that says why a GPU name is not there."""
    hint = ("no CUDA GPU is visible to this ComfyUI (PyTorch sees none): use auto or cpu" if not cuda_count else
            f"GPU numbers follow CUDA_VISIBLE_DEVICES: cuda:0..cuda:{cuda_count - 1} are visible")
    return "device", value, devices(cuda_count), hint


def gpu_sets(cuda_count: int) -> list[str]:
    """The multi-GPU node's device choices: 'all', the first k GPUs for k = 2..count, and 'cpu' (two CPU ranks,
    for tests). The sampler also takes any list like '1,3' (API prompts; magi_nodes.multigpu.parse_devices)."""
    return ["all"] + [",".join(str(i) for i in range(k)) for k in range(2, cuda_count + 1)] + ["cpu"]


def check(name: str, value, options, hint: str = "") -> str | None:
    """None if `value` is one of `options`, else an error message that names the input and the choices."""
    if value in options:
        return None
    shown = ", ".join(repr(o) for o in options[:12]) + (f", ... ({len(options)} in all)" if len(options) > 12 else "")
    msg = f"{name}: {value!r} is not one of the choices ({shown or 'none available'})"
    return msg + (f"; {hint}" if hint else "")


def check_all(pairs) -> bool | str:
    """pairs: (name, value, options[, hint]). True, or all the errors joined (V3 `validate_inputs` result).

    A value of None (the input is linked, so not known at validation time) is skipped."""
    errors = [check(*p) for p in pairs if p[1] is not None]
    errors = [e for e in errors if e]
    return "; ".join(errors) if errors else True


def require_all(pairs) -> None:
    """check_all, raising ValueError with the errors (the start of a node's execute)."""
    result = check_all(pairs)
    if result is not True:
        raise ValueError(result)


def torch_dtype(name: str):
    import torch

    try:
        return getattr(torch, DTYPES[name])
    except KeyError:
        raise ValueError(f"dtype {name!r} is not one of {list(DTYPES)}") from None
