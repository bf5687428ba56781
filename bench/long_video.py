"""Memory of a long video, as the long-video workflow runs it (GPU machine, random full-size weights).

  python bench/long_video.py                                  # 4.5B distill, 320x320, 100 chunks (2400 frames)
  python bench/long_video.py --height 720 --width 720 --chunks 20
  python bench/long_video.py --size tiny --vae tiny --device cpu --height 64 --width 64 --chunks 20  # smoke test

What the workflow does, without ComfyUI: the sampler streams the chunks (each chunk's latent goes to host memory,
as MAGI-1 Sampler keeps them for its LATENT output, and is decoded for its preview: "decoded chunks"), then MAGI-1
Decode to Video File decodes the latent chunk by chunk into an mp4 with magi_core.video.VideoWriter.

Measured, for the sampler and for the writer: the peak VRAM (torch.cuda.max_memory_allocated) over chunks 1-10
and over chunks 91-100 (peak statistics reset after chunk 90), the VRAM allocated after chunk 10 and after chunk
100, and the process RSS after chunk 10 and after chunk 100. Flat memory: the last ten chunks peak no higher
than the first ten. The default size (320x320, 2,400 tokens per chunk) makes 100 chunks of the 4.5B distill model
(16 steps) take a few minutes on an H100; the per-chunk state that grows with the length (the noise and the
latents of the whole video, on the GPU) is 16 x 6 x 40 x 40 x 4 bytes = 0.6 MB per chunk each there, 3.1 MB at
720x720.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import magi_core  # noqa: E402,F401
from magi_core.config import preset  # noqa: E402
from magi_core.dit import build_dit, init_random_  # noqa: E402
from magi_core.pipeline import PromptEmbeds, decode_chunk, sample  # noqa: E402
from magi_core.settings import SamplingSettings  # noqa: E402
from magi_core.text import PromptSchedule  # noqa: E402
from magi_core.text.special_tokens import special_tokens_from_arrays  # noqa: E402
from magi_core.video import VideoWriter  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import device_info, emit, model_args, runtime, sync  # noqa: E402

GiB = 2**30


def rss_GiB() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024 / GiB
    return float("nan")


class Marks:
    """VRAM and RSS at chunk `early` and at the last chunk; peak statistics reset before the last ten chunks."""

    def __init__(self, dev, n: int, early: int = 10):
        self.dev, self.n, self.early, self.out = dev, n, early, {}

    @property
    def cuda(self) -> bool:
        return self.dev.type == "cuda"

    def start(self):
        sync()
        if self.cuda:
            torch.cuda.reset_peak_memory_stats(self.dev)

    def chunk(self, i: int, stage: str):  # i = 1-based count of finished chunks
        if i == self.early or i == self.n:
            sync()
            tag = "first" if i == self.early else "last"
            if self.cuda:
                self.out[f"{stage}_peak_{tag}10_GiB"] = round(torch.cuda.max_memory_allocated(self.dev) / GiB, 3)
                self.out[f"{stage}_allocated_at{i}_GiB"] = round(torch.cuda.memory_allocated(self.dev) / GiB, 3)
            self.out[f"{stage}_rss_at{i}_GiB"] = round(rss_GiB(), 3)
        if i == self.n - self.early and self.cuda:
            sync()
            torch.cuda.reset_peak_memory_stats(self.dev)


def main():
    ap = argparse.ArgumentParser()
    model_args(ap, variant="distill")
    ap.set_defaults(height=320, width=320)
    ap.add_argument("--chunks", type=int, default=100, help="chunks of 24 frames (at least 20)")
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument("--no-preview", action="store_true", help="sampler without the per-chunk preview decode")
    ap.add_argument("--out", default=None, help="mp4 to write (default: a temporary file, removed)")
    ap.add_argument("--vae", default="magi1", help="VAE preset (tiny: a CPU smoke test with --size tiny)")
    ap.add_argument("--json", default=None)
    ap.add_argument("--device", default="cuda")
    a = ap.parse_args()
    if a.chunks < 20:
        ap.error("--chunks must be at least 20 (the first and the last ten are compared)")
    dev = torch.device(a.device)
    name = a.size if a.variant == "base" else f"{a.size}-{a.variant}"
    cfg = preset(name)
    dit = init_random_(build_dit(cfg), seed=0, device=dev)
    runtime(a, dev).configure(dit)
    from magi_core.vae import VAE_PRESETS, ViTVAE

    with torch.device(dev):
        vae = ViTVAE(VAE_PRESETS[a.vae]).to(torch.bfloat16 if dev.type == "cuda" else torch.float32).eval()
    C = cfg.caption_channels
    rng = np.random.default_rng(0)
    emb = torch.randn(800, C) * 0.1
    mask = torch.zeros(800, dtype=torch.long)
    mask[:100] = 1
    tokens = special_tokens_from_arrays(rng.normal(size=(1, C)), rng.normal(size=(1, C)), rng.normal(size=(100, C)))
    prompts = PromptEmbeds(PromptSchedule.single("p"), {"p": (emb, mask)})
    s = SamplingSettings(width=a.width, height=a.height, num_frames=24 * a.chunks, steps=a.steps)
    marks = Marks(dev, a.chunks)

    # the sampler node: latents to host memory, a preview decode per chunk (frames dropped: a long video)
    latents = []
    marks.start()
    t0 = time.perf_counter()
    for ch in sample(dit, prompts, s, special_tokens=tokens):
        latents.append(ch.latents.float().cpu())
        if not a.no_preview:
            decode_chunk(vae, ch.latents, s.fps)
        marks.chunk(ch.index + 1, "sampler")
        if (ch.index + 1) % 10 == 0:
            print(f"sampler: chunk {ch.index + 1}/{a.chunks} at {time.perf_counter() - t0:.1f} s", flush=True)
    sample_s = time.perf_counter() - t0

    # MAGI-1 Decode to Video File: one chunk's frames at a time into the file
    marks.start()
    t1 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(a.out) if a.out else Path(tmp) / "long.mp4"
        with VideoWriter(path, s.fps) as out:
            for i, lat in enumerate(latents):
                out.write(decode_chunk(vae, lat, s.fps))
                marks.chunk(i + 1, "writer")
        frames, size_MB = out.frames_written, path.stat().st_size / 1e6
    write_s = time.perf_counter() - t1
    emit(dict(bench="long_video", model=name, res=f"{a.height}x{a.width}", chunks=a.chunks, steps=a.steps,
              preview=not a.no_preview, frames=frames, file_MB=round(size_MB, 1), sample_s=round(sample_s, 1),
              write_s=round(write_s, 1), **marks.out, **device_info(dev)), a.json)


if __name__ == "__main__":
    main()
