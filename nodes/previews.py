"""Previews of finished chunks: a still for the progress bar and an animated WebP for the node (no ComfyUI import)."""
from __future__ import annotations

import uuid
from pathlib import Path

import torch

MAX_SIZE = 512  # longest side of a preview, like ComfyUI's --preview-size default


def _pil(frame: torch.Tensor, max_size: int):
    from PIL import Image

    img = Image.fromarray((frame.float().clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy())
    if max(img.size) > max_size:
        img.thumbnail((max_size, max_size))
    return img


def still(frames: torch.Tensor, max_size: int = MAX_SIZE):
    """The middle frame of (T, H, W, 3) frames as a PIL image."""
    return _pil(frames[frames.shape[0] // 2], max_size)


def save_animation(frames: torch.Tensor, folder: str | Path, stem: str, fps: int, max_size: int = MAX_SIZE,
                   subfolder: str = "magi_previews") -> dict:
    """Write (T, H, W, 3) frames as an animated WebP; returns ComfyUI's {filename, subfolder, type: temp}."""
    out_dir = Path(folder) / subfolder
    out_dir.mkdir(parents=True, exist_ok=True)
    name = f"{stem}_{uuid.uuid4().hex[:8]}.webp"
    images = [_pil(f, max_size) for f in frames]
    images[0].save(out_dir / name, save_all=True, append_images=images[1:], duration=max(1, round(1000 / fps)),
                   loop=0, lossless=False, quality=80, method=0)
    return {"filename": name, "subfolder": subfolder, "type": "temp"}


def frame_count(path: str | Path) -> int:
    from PIL import Image

    with Image.open(path) as im:
        return getattr(im, "n_frames", 1)

