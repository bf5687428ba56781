"""One sampler-node run without ComfyUI: check everything, load, stream chunks, decode previews, build the LATENT.

The node supplies `Hooks` (ComfyUI's memory manager, progress bar, interrupt flag, websocket); tests supply
plain ones. Everything that can be wrong with the inputs raises ValueError before any weights load.
"""
from __future__ import annotations

import functools
import logging
from pathlib import Path

import torch

from magi_core.pipeline import chunk_count, decode_chunk, sample, validate
from magi_core.settings import SamplingSettings

from .handles import DiTHandle, MultiGPUSettings, VAEHandle
from .latents import DEFAULT_TILING, decode_key, prefix_from_latent, tiling_kwargs, video_latent
from .multigpu import check_heads, pool_generate


# The sampler keeps the frames it decoded for its previews (for MAGI VAE Decode to reuse) only for videos of at
# most this many chunks: a longer one would hold every frame in memory (10,000 frames at 720x720 are 62 GB); MAGI
# Decode to Video File (or MAGI VAE Decode, decoding again) takes those.
KEEP_DECODED_CHUNKS = 16


class Hooks:
    """What the caller does around a run (the sampler node: ComfyUI's memory manager, progress bar, interrupt)."""

    def load_dit(self, handle: DiTHandle, vae: VAEHandle | None):
        """The DiT, ready on its device (and the VAE beside it)."""
        raise NotImplementedError

    def progress(self, i: int, total: int, chunk: int) -> None:
        """After every DiT call; may raise to stop."""

    def cancelled(self) -> bool:
        """Polled between DiT passes."""
        return False

    def chunk_done(self, index: int, total: int, frames) -> None:
        """Each finished chunk, with its frames (T, H, W, 3) when decoded for a preview, else None."""

    def note(self, text: str) -> None:
        """Something the user should know about this run's settings (it still runs)."""
        logging.warning("MAGI-1 Sampler: %s", text)

    def keep_unfinished(self, latent: dict, frames: list, vae: VAEHandle | None) -> None:
        """The run stopped (cancel, an error) after these chunks finished: `latent` (video_latent of them) and the
        frames decoded for the previews of the first len(frames). The node saves them (nodes/unfinished.py)."""


@functools.lru_cache(maxsize=4)
def _tokens(path: str, mtime: int):
    from magi_core.text import load_special_tokens

    return load_special_tokens(path)


def special_tokens(path: Path | None):
    if path is None:
        return None
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"special tokens file {path} is missing: run `python install.py` in the pack folder, "
                         "or pick another file on the MAGI DiT loader")
    return _tokens(str(path), path.stat().st_mtime_ns)


def check(model: DiTHandle, conditioning, s: SamplingSettings, prefix: dict | None, vae: VAEHandle | None,
          multigpu: MultiGPUSettings | None):
    """All input checks, before any weights load. -> (prefix latents, prefix frames, special tokens)."""
    prefix_latents, prefix_frames = prefix_from_latent(prefix, s.width, s.height, model.cfg.vae_channels, s.fps)
    tokens = special_tokens(model.special_tokens)
    validate(s, model.cfg, conditioning, vae.model.cfg if vae is not None else None, prefix_frames, tokens)
    if multigpu is not None:
        check_heads(multigpu, model.cfg.num_attention_heads)
    return prefix_latents, prefix_frames, tokens


# settings a run does not use, by the guidance passes it runs: widget (or Sampler Options) names
_GUIDANCE_ONLY = (("text_scales", "text_scale / text_scales"), ("prev_chunk_scales", "prev_chunk_scale / prev_chunk_scales"))
_ONE_PASS_ONLY = (("prev_chunks_scale", "prev_chunks_scale"),)


def unused_settings(cfg, s: SamplingSettings) -> str | None:
    """A note naming the settings changed from their defaults that this model will not use, or None: the guidance
    scales when one pass runs (distill / fp8 models, or cfg_number 1), prev_chunks_scale when three run."""
    default, passes = SamplingSettings(), s.for_model(cfg).cfg_number
    names = _GUIDANCE_ONLY if passes == 1 else _ONE_PASS_ONLY
    changed = [label for field, label in names if getattr(s, field) != getattr(default, field)]
    if not changed:
        return None
    if passes == 1:
        why = "a distill model" if (cfg.distill or cfg.fp8_quant) else "cfg_number 1"
        return f"{', '.join(changed)} not used: this run makes one pass per step, without guidance ({why})"
    return f"{', '.join(changed)} not used: it weighs the distill models' pass; this model runs three guidance passes"


def create_video_fps_notes(prompt: dict | None, sampler_id, fps: int) -> list[str]:
    """Notes for native Create Video nodes fed (through one node, the decoder) by this sampler that play at another
    fps: the video would run faster or slower than made. The UI warns while editing (js/magi.js); this note is
    for API prompts too. prompt: ComfyUI's prompt (hidden input), {id: {class_type, inputs}}; links are [id, slot]."""
    if not prompt or sampler_id is None:
        return []

    def fed(node, src):  # one of node's inputs is src's first output
        return any(isinstance(v, list) and len(v) == 2 and str(v[0]) == str(src) and v[1] == 0
                   for v in node.get("inputs", {}).values())

    notes = []
    for dec_id, dec in prompt.items():
        if not fed(dec, sampler_id):
            continue
        for cv_id, cv in prompt.items():
            other = cv.get("inputs", {}).get("fps")
            if cv.get("class_type") != "CreateVideo" or not fed(cv, dec_id) or not isinstance(other, (int, float)):
                continue
            speed = float(other) / fps
            if abs(speed - 1) >= 0.01:  # (23.976 against 24 is not worth a word)
                notes.append(f"Create Video (node {cv_id}) plays at {other:g} fps but this video is made for {fps} "
                             f"fps: it will run {speed:.3g}x as fast; give both the same fps")
    return notes


def run(model: DiTHandle, conditioning, s: SamplingSettings, hooks: Hooks, prefix: dict | None = None,
        vae: VAEHandle | None = None, preview: bool = True, multigpu: MultiGPUSettings | None = None) -> dict:
    """Generate; returns the LATENT dict (with the decoded frames when every chunk was decoded for previews)."""
    prefix_latents, prefix_frames, tokens = check(model, conditioning, s, prefix, vae, multigpu)
    no_vae = ("preview 'decoded chunks' needs the vae input: connect the VAE loader to the sampler to see each "
              "chunk (no previews this run)") if preview and vae is None else None
    for note in [unused_settings(model.cfg, s), no_vae] + conditioning.schedule.moved_times(s.fps):
        if note:
            hooks.note(note)
    _, n_out = chunk_count(s, prefix_frames)
    args = dict(prompts=conditioning, settings=s, prefix_latents=prefix_latents, prefix_frames=prefix_frames,
                special_tokens=tokens, progress=hooks.progress, cancel=hooks.cancelled)
    if multigpu is not None and multigpu.wants_pool:
        chunks = pool_generate(model=model.spec(), devices=multigpu.devices, cp_size=multigpu.cp_size, **args)
    else:
        dit = hooks.load_dit(model, vae)  # set up as model.runtime says (nodes/loading.load_dit_weights)
        chunks = sample(dit, conditioning, s, prefix_latents, prefix_frames, tokens,
                        progress=hooks.progress, cancel=hooks.cancelled)
    latents, frames = [], []
    decode = vae is not None and preview
    keep = decode and n_out <= KEEP_DECODED_CHUNKS
    try:
        for ch in chunks:
            latents.append(ch.latents.float().cpu())
            f = decode_chunk(vae.model, ch.latents, s.fps, **tiling_kwargs(DEFAULT_TILING, s.fps)) if decode else None
            if keep:
                frames.append(f)
            hooks.chunk_done(ch.index, n_out, f)
            del f
    except BaseException:  # cancel (SamplingCancelled, ComfyUI's interrupt), an error, Ctrl-C: keep what finished
        close = getattr(chunks, "close", None)
        if close is not None:  # stop sampling first (a pool's workers too), freeing its memory for the save
            close()
        if latents:
            try:
                hooks.keep_unfinished(video_latent(latents, s.fps), frames, vae)
            except Exception as e:  # noqa: BLE001 -- never hide why the run stopped
                logging.error("MAGI-1: could not keep the %d finished chunk(s): %s: %s", len(latents),
                              type(e).__name__, e)
        raise
    decoded = None
    if keep and frames:
        decoded = {"key": decode_key(vae.key, DEFAULT_TILING, s.fps), "frames": torch.cat(frames)}
    return video_latent(latents, s.fps, decoded)
