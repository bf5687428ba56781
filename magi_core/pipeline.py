"""One MAGI-1 generation end to end: prompts -> captions per chunk, prefix -> latents, sampling, decoding.

This glues text/, vae/, sampling/ and the DiT together; the ComfyUI nodes and the CLI both call it.
"""
from __future__ import annotations


from dataclasses import dataclass, field
from typing import Callable, Iterator

import torch

from .sampling import early_first_chunk, make_plan, without_redundant_copies
from .sampling.executor import Caption, FinishedChunk, generate_chunks, make_noise
from .sampling.schedule import num_chunks
from .settings import SamplingSettings
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


def validate(s: SamplingSettings, dit_cfg, prompts: PromptEmbeds | None = None, vae_cfg=None, prefix_frames: int = 0,
             special_tokens: SpecialTokens | None = None):
    """The checks between the settings and the models / prompts / prefix (each object checked itself when
    built). Raise ValueError with what to change, before any heavy work."""
    errs = []
    try:
        s.for_model(dit_cfg)
    except ValueError as e:
        errs.append(str(e))
    if prompts is not None and prompts.channels != dit_cfg.caption_channels:
        errs.append(f"text encoder gives {prompts.channels}-d embeddings, the DiT expects {dit_cfg.caption_channels}"
                    " (use the T5-XXL encoder that ships with MAGI-1)")
    if vae_cfg is not None and vae_cfg.z_chans != dit_cfg.vae_channels:
        errs.append(f"VAE latents have {vae_cfg.z_chans} channels, the DiT expects {dit_cfg.vae_channels} (use "
                    f"the VAE that ships with MAGI-1)")
    if (s.use_hq or s.use_duration or s.negative_special_tokens) and special_tokens is None:
        errs.append("special tokens (special_tokens.npz) are needed for use_hq/use_duration: run install.py "
                    "to fetch them, or turn both off")
    if special_tokens is not None and special_tokens.channels != dit_cfg.caption_channels:
        errs.append(f"special tokens are {special_tokens.channels}-d, the DiT expects {dit_cfg.caption_channels}")
    if errs:
        raise ValueError("; ".join(errs))
    if prompts is not None:
        prompts.schedule.resolve(chunk_count(s, prefix_frames)[1], s.fps)  # generated chunks; raises on gaps etc.


def prefix_latent_count(prefix_frames: int, fps: int = 24) -> int:
    """Latent frames of a pixel prefix as the reference's VAE encode makes them (temporal tiles of fps // 2
    frames): 1 for an image, 8 for 32 frames, 7 for 25 at 24 fps. ValueError for a count it cannot encode."""
    from .vae.tiling import encoded_frames

    return 0 if prefix_frames <= 0 else encoded_frames(prefix_frames, fps // 2, FRAMES_PER_LATENT)


def check_prefix(prefix_latents: torch.Tensor | None, prefix_frames: int, fps: int):
    """The prefix latents cover the prefix frames (shape only)."""
    P = prefix_latent_count(prefix_frames, fps)
    if P and (prefix_latents is None or prefix_latents.shape[2] < P):
        raise ValueError(f"a {prefix_frames}-frame prefix needs {P} prefix latent frames")


def frames_note(num_frames: int, fps: int, prefix_frames: int = 0) -> tuple[int, str]:
    """(pixel frames the video will have, why that differs from num_frames, or '' when it does not)."""
    from .video import chunk_output_frames, reference_output_frames

    P = prefix_latent_count(prefix_frames, fps)
    frames = reference_output_frames(num_frames, P, fps)
    if frames == num_frames:
        return frames, ""
    why = []
    if (num_frames // 4 + P) % CHUNK_WIDTH or num_frames % 4:
        why.append("the video is generated in whole chunks of 24 frames" + (" (the prefix fills the first ones)"
                                                                            if P > 1 else ""))
    if P == 1:
        why.append("the image is one more latent frame, output with the video")
    elif P:
        why.append(f"the new frames follow the {prefix_frames}-frame prefix, which is not output")
    per_chunk = chunk_output_frames(fps)
    if per_chunk != CHUNK_WIDTH * FRAMES_PER_LATENT:
        why.append(f"at {fps} fps a chunk decodes to {per_chunk} frames (the VAE works in tiles of fps/2 frames, "
                   "as the reference; MAGI-1 is trained at 24 fps)")
    return frames, f"{num_frames} frames asked -> {frames} out: " + "; ".join(why)


def chunk_count(s: SamplingSettings, prefix_frames: int = 0) -> tuple[int, int]:
    """(total chunks incl. whole prefix chunks, generated chunks): num_frames // 4 new latents on top of the prefix."""
    P = prefix_latent_count(prefix_frames, s.fps)
    n = num_chunks(s.num_frames, P, CHUNK_WIDTH, FRAMES_PER_LATENT)
    return n, n - P // CHUNK_WIDTH


def chunk_captions(prompts: PromptEmbeds, n_chunks: int, offset: int, s: SamplingSettings,
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


def null_chunk_caption(dit, s: SamplingSettings, special_tokens: SpecialTokens | None) -> Caption:
    emb, mask = null_caption(dit.y_embedder.null_caption_embedding.detach(), special_tokens,
                             s.negative_special_tokens)
    return Caption(emb[mask.bool()].float())


def sampling_plan(s: SamplingSettings, n_chunks: int, prefix_latents: int = 0, precision: str = "fast"):
    """The DiT calls `sample` makes (settings resolved for the model): the reference's plan, in early_first_chunk's
    order if asked, without the distill copies that repeat a forward in `fast` precision (README, Precision)."""
    plan = make_plan(s, n_chunks, prefix_latents)
    if s.early_first_chunk:
        plan = early_first_chunk(plan)
    return without_redundant_copies(plan) if precision == "fast" else plan


def sample(dit, prompts: PromptEmbeds, s: SamplingSettings, prefix_latents: torch.Tensor | None = None,
           prefix_frames: int = 0, special_tokens: SpecialTokens | None = None,
           progress: Callable[[int, int, int], None] | None = None,
           cancel: Callable[[], bool] | None = None) -> Iterator[FinishedChunk]:
    """Stream the finished chunks' latents (1, 16, frames, H/8, W/8) of one generation."""
    validate(s, dit.cfg, prompts, prefix_frames=prefix_frames, special_tokens=special_tokens)
    check_prefix(prefix_latents, prefix_frames, s.fps)
    s = s.for_model(dit.cfg)
    n, _ = chunk_count(s, prefix_frames)
    P = prefix_latent_count(prefix_frames, s.fps)
    plan = sampling_plan(s, n, P, dit.precision)
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


def encode_prefix(vae, frames: torch.Tensor, s: SamplingSettings, policy: str = "stretch", **tiling) -> torch.Tensor:
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
