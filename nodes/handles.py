"""What flows through the MAGI sockets, and the cache that keeps loaded weights from loading twice.

No ComfyUI import. Loaded models are shared through `SharedModels`, a weak cache keyed by what decides the
weights (file identity, variant, dtype, block swap, device): while any node output still holds a model
(ComfyUI's own output cache does, for unchanged loader inputs), a loader asking for the same weights gets that
model instead of reading the file again; once ComfyUI drops the outputs (/free, cache eviction), the memory goes.
Run-time settings (attention backend, precision, compile) live on the handle's DiTRuntime, not in the key: changing them never
reloads. Block swap is in the key: it decides where the weights sit (a swapped model is a different object).
"""
from __future__ import annotations

import threading
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable


class Loaded:
    """A model in memory plus ComfyUI's ModelPatcher for it (set by the memory layer)."""

    def __init__(self, model, info: dict | None = None):
        self.model, self.info, self.patcher = model, info or {}, None


class SharedModels:
    """key -> Loaded, weakly held; `get(key, load)` loads at most once per key while the model is alive."""

    def __init__(self):
        self._items: weakref.WeakValueDictionary = weakref.WeakValueDictionary()
        self._lock = threading.Lock()

    def peek(self, key) -> Loaded | None:
        return self._items.get(key)

    def get(self, key, load: Callable[[], Loaded]) -> Loaded:
        with self._lock:
            item = self._items.get(key)
            if item is None:
                item = load()
                self._items[key] = item
            return item

    def __len__(self):
        return len(self._items)


SHARED = SharedModels()


@dataclass
class DiTHandle:
    """MAGI_MODEL: a DiT checkpoint, what it is (from its headers), and how to run it. Weights load lazily
    (the sampler loads them on the chosen device, or the multi-GPU workers load their own)."""

    name: str
    path: Path
    key: tuple  # weights: (file identity, variant, weight dtype, block swap); the device is added when loading
    detection: Any  # magi_core.checkpoint.Detection
    variant: str | None  # None: as detected
    runtime: Any  # magi_core.settings.DiTRuntime: device (resolved), precision, attention, compile, block swap, ...
    special_tokens: Path | None
    nbytes: int = 0  # weights in memory, from the headers
    layer_nbytes: int = 0  # the largest transformer layer's weights, from the headers (block swap sizing)
    loaded: Loaded | None = None

    @property
    def cfg(self):
        return self.detection.cfg

    @property
    def streamed_nbytes(self) -> int:
        """Device memory of the swapped layers in flight (the running one and the prefetched one)."""
        return min(self.runtime.block_swap, 2) * self.layer_nbytes

    @property
    def resident_nbytes(self) -> int:
        """Weights on the device while the model runs: everything, less the swapped layers but two in flight."""
        return self.nbytes - self.runtime.block_swap * self.layer_nbytes + self.streamed_nbytes

    def describe(self) -> str:
        d, r = self.detection, self.runtime
        notes = "".join(f"\n- {n}" for n in d.notes)
        tokens = self.special_tokens.name if self.special_tokens else (
            "none (the sampler's use_hq and use_duration need special_tokens.npz: get it with `python install.py` "
            "in the pack folder and pick auto here, or turn both off)")
        import torch

        cuda = r.device.startswith("cuda") or (r.device == "auto" and torch.cuda.is_available())
        perf = "".join([f", weights stored as {r.weight_dtype}" if r.weight_dtype not in (None, "auto") else "",
                        (", compiled element-wise ops" if cuda else f", compile: no effect on {r.device} (CUDA only)")
                        if r.compile else "",
                        f", block swap {r.block_swap} of {d.cfg.num_layers} layers" if r.block_swap else ""])
        why = {"caller": "variant set on the loader", "metadata": "variant from the file's metadata",
               "name": "variant from the file name", "fp8 default": "the official fp8 weights are distill",
               "default": "nothing in the name says distill; set variant if it is"}
        return (f"MAGI-1 {d.size} {d.variant} ({why.get(d.distill_source, d.distill_source)})\n"
                f"attention {r.attention or 'auto'}, precision {r.precision}, device {r.device}{perf}, "
                f"special tokens {tokens}{notes}{_attention_note(r)}")

    def spec(self) -> dict:
        """What a worker process needs to load the same weights itself (multi-GPU): each worker applies the same
        run-time settings on its own device (block swap: streaming from its own host memory)."""
        return dict(path=str(self.path), variant=self.variant or self.detection.variant, runtime=self.runtime)


def _attention_note(runtime) -> str:
    """What the info panel says about an approximate or unavailable attention choice (before any run)."""
    from magi_core.kernels import attention_fp8
    from magi_core.kernels.attention import FP8

    return f"\n- {attention_fp8.choice_note(runtime.device)}" if runtime.attention == FP8 else ""


@dataclass
class VAEHandle:
    """MAGI_VAE: a loaded MAGI-1 VAE."""

    name: str
    key: tuple
    loaded: Loaded

    @property
    def model(self):
        return self.loaded.model


@dataclass
class T5Handle:
    """MAGI_T5: a loaded T5 encoder (magi_core.text.T5TextEncoder)."""

    name: str
    key: tuple
    loaded: Loaded

    @property
    def encoder(self):
        return self.loaded.model


@dataclass
class MultiGPUSettings:
    """MAGI_MULTIGPU: which devices the worker pool uses and the context-parallel size."""

    devices: list = field(default_factory=list)  # ["cuda:0", ...] or ["cpu", "cpu"] (gloo, tests)
    cp_size: int = 1

    @property
    def wants_pool(self) -> bool:
        return self.cp_size > 1
