"""One MAGI-1 generation end to end: prompts -> captions per chunk, prefix -> latents, sampling, decoding.

This glues text/, vae/, sampling/ and the DiT together; the ComfyUI nodes and the CLI both call it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterator

import torch

from .sampling import early_first_chunk, make_plan
from .sampling.executor import Caption, FinishedChunk, generate_chunks, make_noise
from .sampling.schedule import num_chunks
from .text import PromptSchedule, apply_special_tokens, null_caption, parse_schedule
from .text.special_tokens import DURATION_MAX, SpecialTokens
from .video import CHUNK_WIDTH, FRAMES_PER_LATENT


@dataclass
class PromptEmbeds:
    """An encoded prompt schedule: which prompt covers which chunks, and each prompt's T5 embedding."""

    schedule: PromptSchedule
    embeds: dict  # prompt text -> (emb (L, C) fp32, mask (L,))
    warnings: list = field(default_factory=list)  # what the caption cleaner removed (text.check_caption), to show

    @property
    def channels(self) -> int:
        return next(iter(self.embeds.values()))[0].shape[-1]


def encode_prompts(t5, prompts: str | PromptSchedule) -> PromptEmbeds:
    """Encode a prompt or a per-chunk schedule ("0-1: ...\\n2-: ...") with a T5TextEncoder.

    Raises ValueError, before encoding anything, for a prompt that the caption cleaner empties."""
    schedule = prompts if isinstance(prompts, PromptSchedule) else parse_schedule(prompts)
    warnings = schedule.check_captions()
    embeds = {}
    for r in schedule.ranges:
        if r.prompt not in embeds:
            emb, mask = t5.encode(r.prompt)
            embeds[r.prompt] = (emb[0], mask[0])
    return PromptEmbeds(schedule, embeds, warnings)


@dataclass
class Settings:
    """What the user chooses for one generation (defaults = the official configs where they exist)."""

    width: int = 720
    height: int = 720
    num_frames: int = 96
    fps: int = 24
    steps: int = 64
    seed: int = 0
    window_size: int = 4
    cfg_number: int | None = None  # None: 3 for base models, 1 for distill / fp8
    cfg_t_range: tuple = (0.0, 0.0217, 0.1, 0.3, 0.999)
    prev_chunk_scales: tuple = (1.5, 1.5, 1.5, 1.0, 1.0)
    text_scales: tuple = (7.5, 7.5, 7.5, 0.0, 0.0)
    noise2clean_kvrange: tuple = (5, 4, 3, 2)
    clean_chunk_kvrange: int = 1
    clean_t: float = 0.9999
    shortcut_mode: str = "8,16,16"
    distill_nearly_clean_threshold: float = 0.3
    prev_chunks_scale: float = 0.7
    use_hq: bool = True
    use_duration: bool = True
    negative_special_tokens: bool = False
    per_chunk_noise: bool = False
    kv_offload: bool = False
    early_first_chunk: bool = False  # finish the first chunk before the others start (sampling.plan.early_first_chunk)
    extra: dict = field(default_factory=dict)


def validate(s: Settings, dit_cfg, prompts: PromptEmbeds | None = None, vae=None, prefix_frames: int = 0,
             special_tokens: SpecialTokens | None = None):
    """Raise ValueError with what to change, before any heavy work."""
    errs = []
    if s.width % 16 or s.height % 16 or s.width <= 0 or s.height <= 0:
        errs.append(f"width and height must be positive multiples of 16, got {s.width}x{s.height}")
    if s.num_frames < FRAMES_PER_LATENT:
        errs.append(f"num_frames must be at least {FRAMES_PER_LATENT}, got {s.num_frames}")
    if s.steps < 1 or s.steps % s.window_size or s.steps % len(s.noise2clean_kvrange):
        errs.append(f"steps ({s.steps}) must be divisible by window_size ({s.window_size}) and by "
                    f"{len(s.noise2clean_kvrange)} (the kv-range stages), e.g. 8, 12, 16, 32 or 64")
    if s.fps < 8:
        errs.append(f"fps must be >= 8 (the VAE decodes tiles of fps//2 frames), got {s.fps}")
    cfg_number = resolved_cfg_number(s, dit_cfg)
    if cfg_number not in (1, 3):
        errs.append(f"cfg_number must be 1 (distill/fp8) or 3 (base), got {cfg_number}")
    if prompts is not None and prompts.channels != dit_cfg.caption_channels:
        errs.append(f"text encoder gives {prompts.channels}-d embeddings, the DiT expects {dit_cfg.caption_channels}"
                    " (use the T5-XXL encoder that ships with MAGI-1)")
    if vae is not None and vae.cfg.z_chans != dit_cfg.vae_channels:
        errs.append(f"VAE latents have {vae.cfg.z_chans} channels, the DiT expects {dit_cfg.vae_channels}")
    if (s.use_hq or s.use_duration or s.negative_special_tokens) and special_tokens is None:
        errs.append("special tokens (special_tokens.npz) are needed for use_hq/use_duration: run install.py "
                    "to fetch them, or turn both off")
    if special_tokens is not None and special_tokens.channels != dit_cfg.caption_channels:
        errs.append(f"special tokens are {special_tokens.channels}-d, the DiT expects {dit_cfg.caption_channels}")
    if errs:
        raise ValueError("; ".join(errs))
    if prompts is not None:
        prompts.schedule.resolve(chunk_count(s, prefix_frames)[1], s.fps)  # generated chunks; raises on gaps etc.


def resolved_cfg_number(s: Settings, dit_cfg) -> int:
    if s.cfg_number is not None:
        return s.cfg_number
    return 1 if (dit_cfg.distill or dit_cfg.fp8_quant) else 3


def prefix_latent_count(prefix_frames: int, fps: int = 24) -> int:
    """Latent frames of a pixel prefix as the reference's VAE encode makes them (temporal tiles of fps // 2
    frames): 1 for an image, 8 for 32 frames, 7 for 25 at 24 fps. ValueError for a count it cannot encode."""
    from .vae.tiling import encoded_frames

    return 0 if prefix_frames <= 0 else encoded_frames(prefix_frames, fps // 2, FRAMES_PER_LATENT)


def chunk_count(s: Settings, prefix_frames: int = 0) -> tuple[int, int]:
    """(total chunks incl. whole prefix chunks, generated chunks): num_frames // 4 new latents on top of the prefix."""
    P = prefix_latent_count(prefix_frames, s.fps)
    n = num_chunks(s.num_frames, P, CHUNK_WIDTH, FRAMES_PER_LATENT)
    return n, n - P // CHUNK_WIDTH


def chunk_captions(prompts: PromptEmbeds, n_chunks: int, offset: int, s: Settings,
                   special_tokens: SpecialTokens | None) -> list[Caption]:
    """One caption per absolute chunk; schedule chunk i = absolute chunk offset + i (prefix chunks: unused).

    Chunks with the same prompt and the same duration token share one Caption: memory does not grow with the
    video's length (the duration token stops changing DURATION_MAX chunks before the end)."""
    per_chunk = prompts.schedule.resolve(n_chunks - offset, s.fps)
    caps, made = [], {}
    for c in range(n_chunks):
        prompt = per_chunk[max(0, c - offset)]
        remaining = n_chunks - 1 - c
        key = (prompt, min(remaining, DURATION_MAX - 1))
        if key not in made:
            emb, mask = prompts.embeds[prompt]
            if special_tokens is not None and (s.use_hq or s.use_duration):
                emb, mask = apply_special_tokens(emb, mask, remaining, special_tokens, s.use_hq, s.use_duration)
            made[key] = Caption(emb[mask.bool()].float())
        caps.append(made[key])
    return caps


def null_chunk_caption(dit, s: Settings, special_tokens: SpecialTokens | None) -> Caption:
    emb, mask = null_caption(dit.y_embedder.null_caption_embedding.detach(), special_tokens,
                             s.negative_special_tokens)
    return Caption(emb[mask.bool()].float())


def sample(dit, prompts: PromptEmbeds, s: Settings, prefix_latents: torch.Tensor | None = None,
           prefix_frames: int = 0, special_tokens: SpecialTokens | None = None,
           progress: Callable[[int, int, int], None] | None = None,
           cancel: Callable[[], bool] | None = None) -> Iterator[FinishedChunk]:
    """Stream the finished chunks' latents (1, 16, frames, H/8, W/8) of one generation."""
    validate(s, dit.cfg, prompts, prefix_frames=prefix_frames, special_tokens=special_tokens)
    n, _ = chunk_count(s, prefix_frames)
    P = prefix_latent_count(prefix_frames, s.fps)
    if P and (prefix_latents is None or prefix_latents.shape[2] < P):
        raise ValueError(f"a {prefix_frames}-frame prefix needs {P} prefix latent frames")
    plan = make_plan(n, s.steps, s.window_size, CHUNK_WIDTH, P, resolved_cfg_number(s, dit.cfg),
                     s.noise2clean_kvrange, s.clean_chunk_kvrange, s.clean_t, s.shortcut_mode, s.cfg_t_range,
                     s.prev_chunk_scales, s.text_scales, s.distill_nearly_clean_threshold)
    if s.early_first_chunk:
        plan = early_first_chunk(plan)
    device = next(dit.parameters()).device
    shape = (1, dit.cfg.vae_channels, n * CHUNK_WIDTH, s.height // 8, s.width // 8)
    # drawn on the device (the reference's random numbers there), kept in host memory: the executor copies each
    # chunk's noise to the device when it starts on it, so device memory does not grow with the video's length
    noise = make_noise(shape, s.seed, device, per_chunk=s.per_chunk_noise, chunk_width=CHUNK_WIDTH).cpu()
    text = chunk_captions(prompts, n, plan.chunk_offset, s, special_tokens)
    null = null_chunk_caption(dit, s, special_tokens)
    if prefix_latents is not None:
        prefix_latents = prefix_latents[:, :, :P].to(device)
    yield from generate_chunks(dit, plan, text, null, noise, prefix=prefix_latents, kv_offload=s.kv_offload,
                               prev_chunks_scale=s.prev_chunks_scale, progress=progress, cancel=cancel,
                               device=device)


def encode_prefix(vae, frames: torch.Tensor, s: Settings, policy: str = "stretch", **tiling) -> torch.Tensor:
    """(T, H, W, 3) frames in [0, 1] (an image: T = 1) -> DiT-space prefix latents (1, 16, P, h, w).

    Frames are resized to the target size with `policy` (reference: stretch; frames read at that size by
    video.read_image / read_video pass unchanged) and all of them go to the VAE (prefix_latent_count)."""
    from .video import resize, to_vae_input
    from .vae import tiled_encode

    frames = resize(frames, s.height, s.width, policy)
    dev = next(vae.parameters()).device
    dtype = next(vae.parameters()).dtype
    x = to_vae_input(frames, dtype=dtype, device=dev)
    return tiled_encode(vae, x, s.fps, **tiling).float()


def decode_chunk(vae, latents: torch.Tensor, fps: int = 24, **tiling) -> torch.Tensor:
    """Latents (1, 16, t, h, w) -> frames (T, H, W, 3) float32 in [0, 1], on the CPU."""
    from .video import from_vae_output
    from .vae import tiled_decode

    dev = next(vae.parameters()).device
    dtype = next(vae.parameters()).dtype
    video = tiled_decode(vae, latents.to(dev, dtype), fps, **tiling)
    return from_vae_output(video).cpu()
