"""comfy.model_management glue: devices, freeing VRAM before loads, ModelPatcher registration, interrupt.

MAGI models are plain nn.Modules (not built from comfy.ops), so ComfyUI moves them whole: each gets a
ModelPatcher (load device / offload device) and is loaded with `load_models_gpu(force_full_load=True)`.
ComfyUI then offloads them like its own models (memory pressure, /free, OOM handling).

Block swap (DiT loader `block_swap` N > 0): ComfyUI must never move the whole DiT (that would put the swapped
layers on the GPU and defeat the swap), yet it must still count, free and offload what does sit there. So the
patcher of a swapped DiT holds only its resident part (`MagiDiTResident`: embedders, final layers, the first
num_layers - N transformer layers; loading.resident_modules). ComfyUI sizes it, loads it, offloads it (/free,
memory pressure, force_offload) and brings it back like any model; the N swapped layers are never in the
patcher: they stay in pinned host memory and `magi_core.dit.offload` streams them in during each forward. Room
for the two swapped layers in flight (the running one and the prefetched one) is asked for with
`use(memory_required=...)`, and before loading `free_for` frees the resident bytes plus those two layers. When
ComfyUI unloads a swapped DiT, the swap's prefetched layer is dropped too, so nothing of it stays on the GPU.

The multi-GPU worker pool (its processes hold their own DiT replicas) is listed among ComfyUI's loaded models as
`MagiWorkerPool` on ComfyUI's device, with size 0 (its memory is in the workers): when ComfyUI unloads it (/free
with unload_models, `unload_all_models`, memory pressure on that device: being size 0 it goes first, even when its
workers use other GPUs), the workers stop and the GPUs are free; the next multi-GPU run starts them again. Server exit closes them too (magi_core/parallel/pool.py).
"""
from __future__ import annotations

import weakref

import torch
import comfy.model_management as mm
import comfy.model_patcher
from comfy.patcher_extension import CallbacksMP

from .handles import Loaded
from .loading import resident_modules

_DEVICE = {"dit": mm.get_torch_device, "vae": mm.vae_device, "t5": mm.text_encoder_device}
_OFFLOAD = {"dit": mm.unet_offload_device, "vae": mm.vae_offload_device, "t5": mm.text_encoder_offload_device}


class Holder(torch.nn.Module):
    """Container that lets ModelPatcher set `.device` (HF models have a read-only one)."""

    def __init__(self, inner: torch.nn.Module):
        super().__init__()
        self.inner = inner


class MagiDiT(Holder):
    pass


class MagiDiTResident(Holder):
    """The on-device part of a block-swapped DiT (see the module doc)."""


class MagiVAE(Holder):
    pass


class MagiT5(Holder):
    pass


class MagiWorkerPool(torch.nn.Module):
    """Stands for the multi-GPU worker pool in ComfyUI's loaded-model list (no weights here)."""


_HOLDERS = {"dit": MagiDiT, "vae": MagiVAE, "t5": MagiT5}  # class names show in ComfyUI's memory log


def cuda_count() -> int:
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def resolve_device(choice: str, kind: str) -> torch.device:
    """'auto' -> ComfyUI's device for this kind of model; else the named device."""
    return torch.device(_DEVICE[kind]() if choice == "auto" else choice)


def free_for(nbytes: int, device: torch.device):
    """Make room on a GPU before reading weights onto it (ComfyUI unloads its least recently used models)."""
    if device.type != "cpu":
        mm.free_memory(int(nbytes * 1.1), device)
        mm.soft_empty_cache()


_recent: dict = {}  # kind -> the last used model, kept while ComfyUI keeps it on its device


def register(loaded: Loaded, module: torch.nn.Module, kind: str, device: torch.device, holder=None) -> None:
    """Give a freshly loaded model (weights already on `device`) a ModelPatcher, once. `module`: what ComfyUI
    moves (the whole model, or a block-swapped DiT's resident part with holder=MagiDiTResident)."""
    if loaded.patcher is None:
        held = (holder or _HOLDERS[kind])(module)
        held.device = device
        loaded.patcher = comfy.model_patcher.ModelPatcher(held, load_device=device, offload_device=_OFFLOAD[kind]())
        ref = weakref.ref(loaded)

        def detached(*_):  # ComfyUI unloaded it (/free, memory pressure): stop keeping it alive
            item = ref()
            swap = getattr(getattr(item, "model", None), "block_swap", None)
            if swap is not None:  # the layer prefetched for the next forward would stay on the GPU
                swap.release()
            if _recent.get(kind) is item:
                _recent.pop(kind, None)

        loaded.patcher.add_callback(CallbacksMP.ON_DETACH, detached)


def register_dit(loaded: Loaded, device: torch.device) -> None:
    """The DiT's ModelPatcher: the whole model, or only the resident part of a block-swapped one (module doc)."""
    if loaded.model.block_swap is None:
        register(loaded, loaded.model, "dit", device)
    else:
        register(loaded, resident_modules(loaded.model), "dit", device, holder=MagiDiTResident)


def keep(kind: str, loaded: Loaded) -> None:
    """Keep the last used model of a kind alive even when the node output that holds it goes away (ComfyUI drops
    a loader's output when any of its inputs change, e.g. only the attention backend): the next run reuses it.
    Released when ComfyUI unloads it."""
    _recent[kind] = loaded


_pool_patcher = None


def track_pool(release) -> None:
    """Let ComfyUI free the worker pool like a model (module doc): `release()` runs when ComfyUI unloads it."""
    global _pool_patcher
    if _pool_patcher is None:
        device = mm.get_torch_device()
        holder = MagiWorkerPool()
        holder.device = device
        patcher = comfy.model_patcher.ModelPatcher(holder, load_device=device, offload_device=device)

        def detached(*_):
            global _pool_patcher
            if _pool_patcher is patcher:  # (a patcher also detaches when garbage collected)
                _pool_patcher = None
                release()

        patcher.add_callback(CallbacksMP.ON_DETACH, detached)
        _pool_patcher = patcher
    mm.load_models_gpu([_pool_patcher], force_full_load=True)


def use(*loaded: Loaded, memory_required: int = 0) -> None:
    """Put the models on their load devices together (freeing others as needed); a no-op when they are there."""
    mm.load_models_gpu([x.patcher for x in loaded], memory_required=memory_required, force_full_load=True)


def offload(loaded: Loaded) -> None:
    """Move one model to its offload device now and drop it from ComfyUI's loaded list."""
    for i, lm in enumerate(list(mm.current_loaded_models)):
        if lm.model is loaded.patcher:
            lm.model_unload()
            mm.current_loaded_models.pop(i)
            break
    else:
        loaded.patcher.detach()
    mm.soft_empty_cache()


def interrupted() -> bool:
    return mm.processing_interrupted()


def clear_interrupt():
    """Forget a Cancel that was already acted on (the next one is a new request)."""
    mm.interrupt_current_processing(False)


def raise_interrupt():
    """Raise ComfyUI's InterruptProcessingException (shown as 'interrupted', not as an error)."""
    mm.throw_exception_if_processing_interrupted()
    raise mm.InterruptProcessingException()
