"""What a sampler run that stops early (Cancel, an error) keeps: its finished chunks, as a file (no ComfyUI import).

The sampler's LATENT output exists only for a finished run: ComfyUI caches a node's output by its inputs, so a
partial latent must never become that output. When a run stops after some chunks finished, those chunks go to the
output folder instead: an mp4 decoded with the sampler's VAE (reusing the frames already decoded for the
previews), or, without a VAE or when that fails, the latent as a `.latent` file in ComfyUI's format (native Load
Latent reads it from the input folder; MAGI VAE Decode then decodes it).
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from magi_core.pipeline import decode_chunk
from magi_core.video import VideoWriter

from .latents import DEFAULT_TILING, split_chunks, tiling_kwargs

PREFIX = "MAGI-1_unfinished"  # file names in the output folder: MAGI-1_unfinished_00001_.mp4


class StoppedSaving(Exception):
    """Cancel pressed again while the finished chunks were being decoded for the video."""


def save_unfinished(latent: dict, frames: list, vae, stem: Path, crf: int = 23, stop=lambda: False,
                    progress=lambda done, total: None) -> list[Path]:
    """Write the finished chunks of `latent` (nodes.latents.video_latent) next to `stem` (a path without suffix).

    frames: the decoded frames (T, H, W, 3) of the first len(frames) chunks (the sampler's previews); the other
    chunks are decoded with `vae` (a VAEHandle, or None), unless stop() turns true (a second Cancel: decoding a
    long video again takes a while). Returns the files written: the mp4; the .latent file without a VAE, or as
    well when the video could not be finished (stopped, or an error, which is logged; the chunks written so far
    stay a playable mp4)."""
    fps = int(latent["magi_fps"])
    if vae is None:
        return [save_latent(latent, stem.with_name(stem.name + ".latent"))]
    out = None
    pieces = split_chunks(latent)
    try:
        with VideoWriter(stem.with_name(stem.name + ".mp4"), fps, crf=crf) as out:
            for i, piece in enumerate(pieces):
                if i >= len(frames) and stop():
                    raise StoppedSaving()
                out.write(frames[i] if i < len(frames) else
                          decode_chunk(vae.model, piece, fps, **tiling_kwargs(DEFAULT_TILING, fps)))
                progress(i + 1, len(pieces))
        return [out.path]
    except Exception as e:  # noqa: BLE001 -- stopped, or e.g. out of memory again: keep the whole latent too
        why = "cancelled again" if isinstance(e, StoppedSaving) else f"{type(e).__name__}: {e}"
        logging.warning("MAGI-1: the finished chunks were not all written as a video (%s); keeping their latent too",
                        why)
        kept = [out.path] if out is not None and out.interrupted else []
        return kept + [save_latent(latent, stem.with_name(stem.name + ".latent"))]


def save_latent(latent: dict, path: Path) -> Path:
    """LATENT -> ComfyUI's .latent file (what native Save Latent writes and Load Latent reads), written to a
    temporary name and renamed; MAGI's chunk sizes and fps go in the file's metadata."""
    from safetensors.torch import save_file

    tensors = {"latent_tensor": latent["samples"].contiguous(), "latent_format_version_0": torch.tensor([])}
    meta = {"magi_chunks": json.dumps(latent.get("magi_chunks")), "magi_fps": str(latent.get("magi_fps"))}
    tmp = path.with_name(f".{path.name}.part")
    save_file(tensors, str(tmp), metadata=meta)
    tmp.replace(path)
    return path
