"""What the command lines do before torch starts: hold Ctrl-C and SIGTERM until the libraries are imported,
and choose the CUDA allocator's settings.

A KeyboardInterrupt raised inside an import can be swallowed by a library (the run then goes on as if nothing
happened) or leave a module half-initialized (the next use fails with an unrelated traceback: numpy without
`multiply`, transformers without `T5EncoderModel`). So the command line holds these signals from its start
(`hold`) until its command has imported what it needs; the command then takes the held signal (`take`) and stops
as if it had come just then: "interrupted: nothing written", exit code 128 + the signal's number.
"""
from __future__ import annotations

import os
import signal

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)

_held: list = []
_holding = False


def hold():
    """From now on Ctrl-C and SIGTERM are recorded, not acted on (main thread, at the start of the command line)."""
    global _holding
    for s in STOP_SIGNALS:
        signal.signal(s, lambda signum, _frame: _held.append(signum))
    _holding = True


def take() -> int | None:
    """The first signal held since `hold` (None if none came, or nothing was held); the default handlers are back."""
    global _holding
    if not _holding:
        return None
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    _holding = False
    return _held.pop(0) if _held else None


def import_libraries():
    """Import what a generation uses later (while signals are held): the T5 classes, video and file libraries."""
    import importlib

    for name in ("numpy", "av", "safetensors.torch", "sentencepiece", "tokenizers", "transformers"):
        try:
            importlib.import_module(name)
        except ImportError:  # said where it is needed, with what to install
            pass
    try:
        from transformers import T5Config, T5EncoderModel  # noqa: F401 -- transformers imports these lazily
    except ImportError:
        pass


def allocator_defaults(env=None):
    """The command lines' CUDA allocator (python -m magi_core, torchrun's parallel.run): expandable segments,
    unless the user configured the allocator (PYTORCH_ALLOC_CONF or its older name). Block-swapped 24B-distill at
    720x720 under a 22 GiB cap ran out of memory with 7.6 GiB reserved but unused (fragmentation), and ran with
    them: 18.1 GiB allocated, 22.0 GiB reserved (H100, BENCHMARKS.md session 8). CUDA reads the setting at its
    first allocation: call this before anything runs."""
    env = os.environ if env is None else env
    if not any(env.get(k) for k in ("PYTORCH_ALLOC_CONF", "PYTORCH_CUDA_ALLOC_CONF")):
        env["PYTORCH_CUDA_ALLOC_CONF"] = "expandable_segments:True"
    return env
