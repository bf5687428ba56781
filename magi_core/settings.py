"""The two settings objects of a run; every entry point (ComfyUI nodes, CLI, torchrun, worker pool) only builds them.

- `SamplingSettings`: what one generation does (size, length, steps, guidance, KV ranges, special tokens, noise).
  The sampling planner (`sampling/plan.py`) reads it; `config.load_official_config` returns one.
- `DiTRuntime`: how the DiT runs (device, precision, attention backend, compile, block swap, weight dtype).
  `checkpoint.load_dit` applies it (`DiTRuntime.apply`).

Each field is defined, defaulted, documented and validated here and nowhere else. Both objects are frozen and
check themselves when built, so a bad value fails before any file is opened or any weight is loaded. Values
that depend on the model (steps, cfg_number, how many layers block swap may stream) are resolved by
`SamplingSettings.for_model` / `DiTRuntime.check_model`, from the DiTConfig that the checkpoint headers give.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch

from .sampling.executor import SEED_LIMIT
from .sampling.schedule import check_shortcut_mode
from .video import FRAMES_PER_LATENT

SIZE_MULTIPLE = 16  # VAE stride 8 x DiT patch 2
FPS_MIN, FPS_MAX = 8, 120  # below 8 the VAE's fps // 2 frame tiles are too short; 120 is ComfyUI's usual video maximum
CFG_NUMBERS = (1, 3)  # 1: distill / fp8 models (one pass); 3: base models (text, previous-chunk, unconditional)


def default_steps(dit_cfg) -> int:
    """Denoising steps when the user gives none: 16 for distill models (any size; what they are distilled for,
    and what the README and the sampler node use), 64 for the 4.5B base model and 32 for the 24B base model (the
    official base configs, `example/*/…_base_config.json`). The official 4.5B distill configs still say 64; pass
    --config or --steps 64 to run them that way."""
    if dit_cfg.distill:
        return 16
    return 32 if dit_cfg.name.startswith("24B") else 64


def default_cfg_number(dit_cfg) -> int:
    """3 guidance passes for base models, 1 for distill / fp8 models (as every official config)."""
    return 1 if (dit_cfg.distill or dit_cfg.fp8_quant) else 3


def _int(name, v, lo=None):
    if isinstance(v, bool) or not isinstance(v, int):
        raise ValueError(f"{name} must be a whole number, got {v!r}")
    if lo is not None and v < lo:
        raise ValueError(f"{name} must be at least {lo}, got {v}")
    return v


def _floats(name, v, n=None):
    try:
        t = tuple(float(x) for x in v)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a list of numbers, got {v!r}") from None
    if n is not None and len(t) != n:
        raise ValueError(f"{name} needs {n} values (one per cfg_t_range entry), got {len(t)}: {list(t)}")
    return t


def size_problem(name: str, v: int) -> str | None:
    """Why `v` cannot be the video's width or height (`name`), or None. Also asked at queue time by the nodes."""
    if v <= 0 or v % SIZE_MULTIPLE:
        return (f"{name} must be a positive multiple of {SIZE_MULTIPLE}, got {v} (e.g. "
                f"{max(SIZE_MULTIPLE, v // SIZE_MULTIPLE * SIZE_MULTIPLE)})")
    return None


def steps_problem(steps: int, window_size: int, stages: int | None = None) -> str | None:
    """Why `steps` cannot run with this window_size (and this many noise2clean_kvrange stages, when known), or
    None. The sampler node asks it at queue time with the stages unknown (MAGI Sampler Options may change them)."""
    q = stages or 1
    if steps >= 1 and window_size >= 1 and not steps % window_size and not steps % q:
        return None
    m = math.lcm(max(window_size, 1), q)
    ok = [n for n in (8, 12, 16, 24, 32, 48, 64) if n % m == 0] or [m, 2 * m, 3 * m]
    stage_text = f" and of {stages} (the noise2clean_kvrange stages)" if stages else ""
    return (f"steps must be a positive multiple of window_size ({window_size}){stage_text}, got {steps}; "
            f"e.g. {', '.join(map(str, ok[:5]))}")


@dataclass(frozen=True)
class SamplingSettings:
    """What one generation does. Defaults are the official configs' (`runtime_config`) where they exist."""

    width: int = 720  # pixels; a positive multiple of 16
    height: int = 720  # pixels; a positive multiple of 16
    # New frames to generate. The reference makes num_frames // 4 latent frames, rounded up to whole chunks of 6
    # (24 pixel frames): 4-27 frames give 24, 28-51 give 48, ... (video.reference_output_frames).
    num_frames: int = 96
    fps: int = 24  # FPS_MIN..FPS_MAX (the VAE decodes tiles of fps // 2 frames); the model is trained at 24
    steps: int | None = None  # Euler steps per chunk; None: the model's default (`default_steps`)
    seed: int = 0  # (the official configs say 1234)
    window_size: int = 4  # chunks denoised together (4 = reference; 1 = least memory)
    cfg_number: int | None = None  # None: the model's default (`default_cfg_number`)
    # classifier-free guidance per flow-time bin: bin b covers t in [cfg_t_range[b], cfg_t_range[b+1])
    cfg_t_range: tuple = (0.0, 0.0217, 0.1, 0.3, 0.999)
    prev_chunk_scales: tuple = (1.5, 1.5, 1.5, 1.0, 1.0)
    text_scales: tuple = (7.5, 7.5, 7.5, 0.0, 0.0)
    noise2clean_kvrange: tuple = (5, 4, 3, 2)  # chunks a noisy chunk sees, per quarter of the steps
    clean_chunk_kvrange: int = 1  # chunks a clean chunk sees (-1: the last noise2clean_kvrange entry)
    clean_t: float = 0.9999  # DiT time of a clean chunk
    shortcut_mode: str = "8,16,16"  # the 12-step distill grid
    distill_nearly_clean_threshold: float = 0.3  # official `distill_nearly_clean_chunk_threshold`
    prev_chunks_scale: float = 0.7  # distill: weight of the with-context pass of the nearly clean chunk
    use_hq: bool = True  # prepend the HQ special token
    use_duration: bool = True  # prepend the chunks-remaining special token
    negative_special_tokens: bool = False  # special tokens on the null caption too
    per_chunk_noise: bool = False  # noise that does not change with the video length (not the reference's)
    kv_offload: bool = False  # keep the KV cache in host memory
    early_first_chunk: bool = False  # finish the first chunk before the others start (sampling.plan)

    def __post_init__(self):
        set_ = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731 (frozen: normalise once, here)
        for k in ("width", "height"):
            problem = size_problem(k, _int(k, getattr(self, k)))
            if problem:
                raise ValueError(problem)
        if _int("num_frames", self.num_frames) < FRAMES_PER_LATENT:
            raise ValueError(f"num_frames must be at least {FRAMES_PER_LATENT} (one latent frame), got "
                             f"{self.num_frames}; the video is made of chunks of 24 frames")
        if not FPS_MIN <= _int("fps", self.fps) <= FPS_MAX:
            raise ValueError(f"fps must be between {FPS_MIN} (the VAE decodes tiles of fps // 2 frames) and {FPS_MAX}, "
                             f"got {self.fps}; the model is trained at 24")
        if not 0 <= _int("seed", self.seed) < SEED_LIMIT:
            raise ValueError(f"seed must be between 0 and {SEED_LIMIT - 1} (2**64 - 1), got {self.seed}")
        _int("window_size", self.window_size, 1)
        if self.cfg_number is not None and self.cfg_number not in CFG_NUMBERS:
            raise ValueError(f"cfg_number must be 1 (distill/fp8 models) or 3 (base models), got {self.cfg_number!r}")
        r = _floats("cfg_t_range", self.cfg_t_range)
        if not r or list(r) != sorted(r) or not 0 <= r[-1] <= 1 or r[0] > 0:
            raise ValueError(f"cfg_t_range must be ascending within [0, 1] and start at 0, got {list(r)}")
        set_("cfg_t_range", r)
        set_("prev_chunk_scales", _floats("prev_chunk_scales", self.prev_chunk_scales, len(r)))
        set_("text_scales", _floats("text_scales", self.text_scales, len(r)))
        kv = tuple(self.noise2clean_kvrange)
        if not kv or any(isinstance(x, bool) or not isinstance(x, int) or x < 1 for x in kv):
            raise ValueError(f"noise2clean_kvrange must be positive chunk counts, e.g. 5, 4, 3, 2; got {list(kv)}")
        set_("noise2clean_kvrange", kv)
        if _int("clean_chunk_kvrange", self.clean_chunk_kvrange) != -1 and self.clean_chunk_kvrange < 1:
            raise ValueError(f"clean_chunk_kvrange must be >= 1 (or -1), got {self.clean_chunk_kvrange}")
        if not 0 < self.clean_t <= 1:
            raise ValueError(f"clean_t must be in (0, 1], got {self.clean_t}")
        check_shortcut_mode(self.shortcut_mode)
        for k in ("distill_nearly_clean_threshold", "prev_chunks_scale"):
            if not 0 <= float(getattr(self, k)) <= 1:
                raise ValueError(f"{k} must be in [0, 1], got {getattr(self, k)}")
        if self.steps is not None:
            problem = steps_problem(_int("steps", self.steps), self.window_size, len(kv))
            if problem:
                raise ValueError(problem)

    def replace(self, **changes) -> "SamplingSettings":
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def for_model(self, dit_cfg) -> "SamplingSettings":
        """The settings with the model-dependent defaults (steps, cfg_number) filled in for this DiT."""
        return self.replace(steps=default_steps(dit_cfg) if self.steps is None else self.steps,
                            cfg_number=default_cfg_number(dit_cfg) if self.cfg_number is None else self.cfg_number)

    @property
    def resolved(self) -> bool:
        return self.steps is not None and self.cfg_number is not None


def device_problem(dev: torch.device) -> str | None:
    """Why the DiT cannot run on `dev` here, or None."""
    if dev.type not in ("cpu", "cuda"):
        return "MAGI-1 runs on cpu or cuda"
    if dev.type == "cuda":
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n == 0:
            return (f"no CUDA GPU is available here (PyTorch {torch.__version__} sees none); use --device cpu, "
                    "or run where a GPU is")
        if dev.index is not None and dev.index >= n:
            return f"only {n} CUDA GPU(s) visible (cuda:0..cuda:{n - 1})"
    return None


def block_swap_problem(dev: torch.device) -> str | None:
    """Why block swap cannot be used on `dev` (README: CUDA only), or None."""
    if dev.type != "cuda":
        return (f"block swap streams layers from host memory to a CUDA GPU, but the DiT runs on {dev}, where every "
                "weight is in host memory already: set block swap to 0")
    return None


def block_swap_layers_problem(block_swap: int, num_layers: int) -> str | None:
    """Why a model of num_layers transformer layers cannot stream block_swap of them, or None."""
    if block_swap > num_layers:
        return (f"block swap {block_swap} is more than this model's {num_layers} transformer layers: the maximum "
                f"is {num_layers} (every layer streamed)")
    return None


@dataclass(frozen=True)
class DiTRuntime:
    """How the DiT runs; applied by `checkpoint.load_dit` (and `apply` for a model built otherwise)."""

    device: str = "cpu"  # 'cpu', 'cuda', 'cuda:1'
    precision: str = "fast"  # 'fast' or 'exact' (README: the reference's op order and dtypes)
    attention: str | None = None  # attention backend (kernels/attention.py BACKENDS); None = automatic
    compile: bool = False  # torch.compile the element-wise ops (CUDA)
    block_swap: int = 0  # transformer layers streamed from host memory at every forward (CUDA); 0 = none
    weight_dtype: str | None = None  # None: as stored; 'bf16': reference dtypes; 'fp8_e4m3fn': fp8 block weights

    def __post_init__(self):
        from .dit.model import PRECISIONS
        from .kernels.attention import BACKENDS, settings_problem

        try:
            dev = torch.device(self.device)
        except (RuntimeError, TypeError):
            raise ValueError(f"device {self.device!r} is not a device name: use cpu, cuda or cuda:N") from None
        problem = device_problem(dev)
        if problem:
            raise ValueError(f"device {self.device!r}: {problem}")
        object.__setattr__(self, "device", str(dev))
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.attention == "auto":
            object.__setattr__(self, "attention", None)
        if self.attention is not None and self.attention not in BACKENDS:
            raise ValueError(f"attention backend {self.attention!r} is not one of auto, {', '.join(BACKENDS)}")
        problem = settings_problem(self.attention, dev)
        if problem:
            raise ValueError(problem)
        if self.weight_dtype == "auto":
            object.__setattr__(self, "weight_dtype", None)
        if self.weight_dtype not in (None, "bf16", "fp8_e4m3fn"):
            raise ValueError(f"weight_dtype must be auto, bf16 or fp8_e4m3fn, got {self.weight_dtype!r}")
        _int("block_swap", self.block_swap, 0)
        if self.block_swap and block_swap_problem(dev):
            raise ValueError(block_swap_problem(dev))
        object.__setattr__(self, "compile", bool(self.compile))

    def replace(self, **changes) -> "DiTRuntime":
        return dataclasses.replace(self, **changes)

    @property
    def load_device(self) -> str:
        """Where the weights are read to: the host with block swap (the resident part moves after), else device."""
        return "cpu" if self.block_swap else self.device

    def check_model(self, dit_cfg, fp8_checkpoint: bool = False) -> None:
        """The checks that need the model (from its headers): block swap range, weight dtype vs fp8 storage."""
        problem = block_swap_layers_problem(self.block_swap, dit_cfg.num_layers)
        if problem:
            raise ValueError(problem)
        if self.weight_dtype == "bf16" and fp8_checkpoint:
            raise ValueError("this is an fp8 checkpoint: weight_dtype 'bf16' would not apply to its fp8 layers; "
                             "use 'auto'")

    def apply(self, model):
        """Put a VideoDiT (loaded on `load_device`, or built anywhere) into this run-time state: fp8 weight
        storage, weights placed (moved to `device`, or block swap set up), then `configure`. Returns the model."""
        self.check_model(model.cfg)
        if self.weight_dtype == "fp8_e4m3fn":
            from .dit.weight_fp8 import store_weights_fp8_

            store_weights_fp8_(model)
        if self.block_swap:
            from .dit.offload import enable_block_swap

            enable_block_swap(model, self.device, resident=model.cfg.num_layers - self.block_swap)
        else:
            model.to(self.device)
        return self.configure(model)

    def configure(self, model):
        """The settings that do not move weights (precision, attention backend, compile): a model shared by
        several runs gets the current run's."""
        model.set_precision(self.precision)
        model.attn_backend = self.attention
        if self.attention == "fp8-approx":
            import warnings

            from .kernels import attention_fp8

            if attention_fp8.why_unusable_on(self.device):  # said once here, not at every attention call
                warnings.warn(attention_fp8.choice_note(self.device), RuntimeWarning, stacklevel=2)
                model.attn_backend = None
        model.compile_ops = self.compile
        return model
