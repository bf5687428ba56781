"""What the command lines do before torch starts: hold Ctrl-C, SIGTERM and SIGHUP until the libraries are imported,
and choose the CUDA allocator's settings.

A KeyboardInterrupt raised inside an import can be swallowed by a library (the run then goes on as if nothing
happened) or leave a module half-initialized (the next use fails with an unrelated traceback: numpy without
`multiply`, transformers without `T5EncoderModel`). So the command line holds these signals from its start
(`hold`) until its command has imported what it needs; the command then takes the held signal (`take`) and stops
as if it had come just then: "interrupted: nothing written", exit code 128 + the signal's number.
"""
from __future__ import annotations

import argparse
import errno
import os
import signal
import sys


def _stop_signals() -> tuple:
    """Ctrl-C, SIGTERM (a job system, `kill`) and SIGHUP (the terminal closed), unless SIGHUP came in ignored
    (`nohup`: the user asked the run to outlive the terminal) or does not exist (Windows)."""
    hup = getattr(signal, "SIGHUP", None)
    keep_hup = hup is not None and signal.getsignal(hup) is not signal.SIG_IGN
    return (signal.SIGINT, signal.SIGTERM) + ((hup,) if keep_hup else ())


STOP_SIGNALS = _stop_signals()
ALLOC_VARS = ("PYTORCH_ALLOC_CONF", "PYTORCH_CUDA_ALLOC_CONF", "PYTORCH_HIP_ALLOC_CONF")

_held: list = []  # signals that came while holding
_originals: dict = {}  # the handlers hold() replaced (an inherited "ignore" included)


def _record(signum, _frame):
    if _held and signum == signal.SIGINT:  # Ctrl-C again while holding (a slow or stuck import): act on it now
        release()
        raise KeyboardInterrupt
    if not _held:  # (a closed terminal sends SIGHUP twice, a job system may repeat SIGTERM: the first one counts)
        _held.append(signum)


def hold():
    """From now on Ctrl-C, SIGTERM and SIGHUP are recorded, not acted on (main thread, at the start of the command line);
    a second Ctrl-C stops at once (KeyboardInterrupt)."""
    _originals.update({s: signal.signal(s, _record) for s in STOP_SIGNALS})


def take() -> int | None:
    """The first signal held since `hold` (None if none came); call it once the caller's own handlers are in
    (none is lost in between: until then they are still recorded)."""
    return _held.pop(0) if _held else None


def release() -> int | None:
    """`take` for a command without handlers of its own: the handlers hold() replaced are back first."""
    for s, handler in _originals.items():
        if signal.getsignal(s) is _record:
            signal.signal(s, handler)
    return take()


def original(signum: int, handler):
    """handler, or, if it is hold()'s recorder, the handler hold() replaced (what a block restores after it)."""
    return _originals.get(signum, signal.SIG_DFL) if handler is _record else handler


def stopped_by(signum: int) -> str:
    """How an interrupted command says it stopped: 'interrupted' (Ctrl-C) or 'stopped by SIGTERM' (or SIGHUP)."""
    return "interrupted" if signum == signal.SIGINT else f"stopped by {signal.Signals(signum).name}"


def say(message: str, file=None, end: str = "\n"):
    """print() that never stops a command: when the reader is gone (`| head`: EPIPE; a closed terminal: EIO), that
    stream goes to os.devnull from then on and the work goes on."""
    stream = sys.stdout if file is None else file
    try:
        print(message, end=end, file=stream, flush=True)
    except OSError as e:
        if e.errno not in (errno.EPIPE, errno.EIO):
            raise
        try:
            null = os.open(os.devnull, os.O_WRONLY)
            os.dup2(null, stream.fileno())
            os.close(null)
        except (OSError, ValueError):  # no file descriptor (a test's captured stream)
            pass


def import_libraries():
    """Import the video and file libraries a generation uses later (fast; while signals are held)."""
    import importlib

    for name in ("numpy", "av", "safetensors.torch", "sentencepiece", "tokenizers"):
        try:
            importlib.import_module(name)
        except ImportError:  # said where it is needed, with what to install
            pass


def import_text_encoder():
    """Import transformers' T5 classes (about 2 s: after the options are checked, with signals deferred)."""
    try:
        from transformers import T5Config, T5EncoderModel  # noqa: F401 -- transformers imports these lazily
    except ImportError:  # said where it is needed, with what to install
        pass


def allocator_defaults(env=None):
    """The command lines' CUDA allocator (python -m magi_core, torchrun's parallel.run): expandable segments,
    unless the user configured the allocator (PYTORCH_ALLOC_CONF, or its older names for CUDA and ROCm). Block-
    swapped 24B-distill at 720x720 under a 22 GiB cap ran out of memory with 7.6 GiB reserved but unused
    (fragmentation), and ran with them: 18.1 GiB allocated, 22.0 GiB reserved (H100, BENCHMARKS.md session 8).
    Linux only (elsewhere torch does not support them and says so). torch reads the setting when CUDA first
    allocates: call this before anything runs. The older name is used because every torch version reads it."""
    env = os.environ if env is None else env
    if sys.platform.startswith("linux") and not any(env.get(k) for k in ALLOC_VARS):
        env["PYTORCH_CUDA_ALLOC_CONF"] = "expandable_segments:True"
    return env


DISK_FULL = (errno.ENOSPC, errno.EDQUOT)  # OSErrors that are no mistake in the command: exit code 1, not 2


def disk_full_text(e: OSError, path, frames: int) -> str:
    """What to say when the video at `path` could not be finished (VideoWriter removed its temporary file)."""
    return (f"{e.strerror or e} while writing {path}: the {frames} frames made could not be saved (the temporary file "
            "was removed)" + ("; free some space there or choose another --output" if e.errno in DISK_FULL else ""))


class Parser(argparse.ArgumentParser):
    """argparse with a short error: one usage line pointing at --help, then the error (argparse's own prints the
    whole usage block, 20 lines for generate, and the one line that matters last)."""

    def error(self, message):
        usage = self.format_usage()
        if usage.count("\n") > 3:
            usage = f"usage: {self.prog} [options]  (--help lists them)\n"
        self.exit(2, f"{usage}error: {message}\n")
