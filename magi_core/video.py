"""Images and videos <-> tensors for MAGI-1 (magi1-pipeline.md §6), without ffmpeg binaries (PyAV).

Frames are float32 tensors (T, H, W, 3) in [0, 1] (ComfyUI's IMAGE layout). The reference:
  * i2v: the image is stretched to W x H (ffmpeg `scale`, aspect not kept) -> 1 frame;
  * v2v: the video is resampled to the run's fps (ffmpeg `fps` filter), stretched, and its FIRST 32 frames
    are kept (8 latent frames). Here any length is allowed (a multiple of 4 frames, one latent per 4),
    taken from the END of the video by default (the frames the continuation joins), or from the start;
  * output: mp4, H.264 yuv420p, CRF 23 (x264 defaults).
Resizing is torch bicubic with antialiasing (close to, not bit-equal with, ffmpeg's swscale bicubic).

Frame counts of the reference (`reference_output_frames`): with L = num_frames // 4 new latent frames and
P prefix latents, n_chunks = ceil((L + P) / 6); chunks wholly inside the prefix are not output, the
prefix latents are cut from the first output chunk (except i2v, whose image latent is output); each chunk
is decoded alone in temporal tiles of fps//2//4 latents, a tile of t > 1 latents giving 4t frames and a
tile of 1 latent giving 1 frame. t2v 96 -> 96 frames, 100 -> 120; i2v 96 -> 120; v2v (32-frame prefix)
96 -> 13 + 4*24 = 109.
"""
from __future__ import annotations

import math
import os
import tempfile
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

FRAMES_PER_LATENT = 4  # temporal_downsample_factor
CHUNK_WIDTH = 6  # latent frames per chunk
POLICIES = ("stretch", "crop", "pad")


# ---------------------------------------------------------------- reading
def _open(path):
    import av

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"file not found: {path}")
    try:
        return av.open(str(path))
    except Exception as e:  # PyAV raises several error types for unreadable files
        raise ValueError(f"cannot open {path} as an image or video: {e}") from None


def _to_float(rgb: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(rgb).float().div_(255.0)


def read_image(path) -> torch.Tensor:
    """An image file as (1, H, W, 3) float32 in [0, 1] (first frame for animated files; EXIF rotation is not
    applied, as in the reference's ffmpeg read)."""
    import av

    with _open(path) as container:
        if not container.streams.video:
            raise ValueError(f"{path} has no image stream")
        try:
            for frame in container.decode(video=0):
                return _to_float(frame.to_ndarray(format="rgb24"))[None]
        except av.FFmpegError as e:
            raise ValueError(f"cannot decode {path}: {e}") from None
    raise ValueError(f"{path}: no frame could be decoded")


def fps_resample_indices(times: list[float], end: float, fps: float) -> list[int]:
    """Source frame index for each output frame, as ffmpeg's `fps` filter (defaults) picks them.

    Each source frame gets the output slot round(t * fps) (halves away from zero); slot n shows the
    latest frame whose slot is <= n, so frames sharing a slot keep the last one and empty slots repeat the
    previous frame. Slots run from the first frame's slot to round(end * fps) - 1, `end` being the time the
    last frame ends. `times` are presentation times in seconds, ascending."""
    if fps <= 0:
        raise ValueError(f"fps must be > 0, got {fps}")
    if not times:
        return []

    def slot(t: float) -> int:
        x = t * fps
        return int(math.floor(abs(x) + 0.5)) * (1 if x >= 0 else -1)

    slots = [slot(t) for t in times]
    out, i = [], 0
    for n in range(slots[0], slot(end)):
        while i + 1 < len(slots) and slots[i + 1] <= n:
            i += 1
        out.append(i)
    return out


def _take(n: int, max_frames: int | None, take: str) -> range:
    if take not in ("end", "start"):
        raise ValueError(f"take must be 'end' or 'start', got {take!r}")
    k = n if max_frames is None else min(n, max_frames)
    return range(n - k, n) if take == "end" else range(k)


def read_video(path, fps: float | None = None, max_frames: int | None = None, take: str = "end") -> torch.Tensor:
    """A video file as (T, H, W, 3) float32 in [0, 1].

    fps: resample to this rate like ffmpeg's fps filter (None keeps every frame). max_frames: keep at
    most this many frames of the (resampled) video, from its end (take="end") or its start ("start")."""
    import av

    if max_frames is not None and max_frames < 1:
        raise ValueError(f"max_frames must be >= 1, got {max_frames}")
    # pass 1: timestamps only (demux, no decoding)
    with _open(path) as container:
        if not container.streams.video:
            raise ValueError(f"{path} has no video stream")
        stream = container.streams.video[0]
        tb = stream.time_base
        packets = sorted((p.pts, p.duration or 0) for p in container.demux(stream) if p.pts is not None)
        rate = stream.average_rate or stream.guessed_rate or 24
    if not packets:
        raise ValueError(f"{path}: the video stream has no frames")
    pts = [p for p, _ in packets]
    t0 = pts[0]
    times = [float((p - t0) * tb) for p in pts]
    last_duration = float(packets[-1][1] * tb) if packets[-1][1] else 1.0 / float(rate)
    timeline = list(range(len(pts))) if fps is None else fps_resample_indices(times, times[-1] + last_duration, fps)
    chosen = [timeline[j] for j in _take(len(timeline), max_frames, take)]
    needed = {pts[i] for i in chosen}
    # pass 2: decode, converting only the frames used
    got: dict[int, torch.Tensor] = {}
    with _open(path) as container:
        try:
            for frame in container.decode(video=0):
                if frame.pts in needed and frame.pts not in got:
                    got[frame.pts] = _to_float(frame.to_ndarray(format="rgb24"))
                    if len(got) == len(needed):
                        break
        except av.FFmpegError as e:
            raise ValueError(f"cannot decode {path}: {e}") from None
    lost = sorted(needed - set(got))
    if lost:
        raise ValueError(f"{path}: {len(lost)} frames could not be decoded (first at t={float((lost[0] - t0) * tb):.3f}s); "
                         "re-encode the video")
    return torch.stack([got[pts[i]] for i in chosen])


# ---------------------------------------------------------------- frames
def _check_frames(frames: torch.Tensor, name: str = "frames"):
    if not isinstance(frames, torch.Tensor) or frames.dim() != 4 or frames.shape[-1] != 3:
        shape = tuple(frames.shape) if isinstance(frames, torch.Tensor) else type(frames).__name__
        raise ValueError(f"{name} must be a (T, H, W, 3) tensor, got {shape}")


def _interpolate(frames: torch.Tensor, h: int, w: int, batch: int = 16) -> torch.Tensor:
    if frames.shape[1:3] == (h, w):
        return frames.clone()
    out = []
    for part in frames.split(batch):
        x = part.permute(0, 3, 1, 2).float()
        x = F.interpolate(x, size=(h, w), mode="bicubic", antialias=True, align_corners=False)
        out.append(x.clamp_(0, 1).permute(0, 2, 3, 1))
    return torch.cat(out)


def resize(frames: torch.Tensor, height: int, width: int, policy: str = "stretch") -> torch.Tensor:
    """Resize (T, H, W, 3) float frames to (T, height, width, 3).

    stretch: plain resize, aspect not kept (the reference); crop: centre crop to the target aspect, then
    resize; pad: resize to fit inside, then centre on black."""
    _check_frames(frames)
    if policy not in POLICIES:
        raise ValueError(f"resize policy must be one of {POLICIES}, got {policy!r}")
    if height < 1 or width < 1:
        raise ValueError(f"target size must be positive, got {width}x{height}")
    _, H, W, _ = frames.shape
    if policy == "stretch":
        return _interpolate(frames, height, width)
    if policy == "crop":
        if W * height > H * width:  # too wide
            cw = max(1, round(H * width / height))
            x0 = (W - cw) // 2
            frames = frames[:, :, x0 : x0 + cw]
        else:
            ch = max(1, round(W * height / width))
            y0 = (H - ch) // 2
            frames = frames[:, y0 : y0 + ch]
        return _interpolate(frames, height, width)
    scale = min(height / H, width / W)
    nh, nw = min(height, max(1, round(H * scale))), min(width, max(1, round(W * scale)))
    out = frames.new_zeros(frames.shape[0], height, width, 3, dtype=torch.float32)
    y0, x0 = (height - nh) // 2, (width - nw) // 2
    out[:, y0 : y0 + nh, x0 : x0 + nw] = _interpolate(frames, nh, nw)
    return out


def select_prefix_frames(frames: torch.Tensor, max_frames: int | None = None, take: str = "end") -> torch.Tensor:
    """Frames for a v2v prefix: the most frames <= max_frames that are a multiple of 4 (one latent frame
    each), from the end of the clip (the frames the continuation joins) or from its start. The reference
    uses the first 32 frames."""
    _check_frames(frames)
    limit = frames.shape[0] if max_frames is None else min(max_frames, frames.shape[0])
    n = limit // FRAMES_PER_LATENT * FRAMES_PER_LATENT
    if n == 0:
        raise ValueError(f"a prefix video needs at least {FRAMES_PER_LATENT} frames, got {limit}; "
                         "use image-to-video for a single frame")
    return frames[list(_take(frames.shape[0], n, take))]


def to_uint8(frames: torch.Tensor) -> torch.Tensor:
    """Float [0, 1] frames -> uint8 (rounded); uint8 frames pass through."""
    if frames.dtype == torch.uint8:
        return frames
    return (frames.float() * 255.0).round_().clamp_(0, 255).to(torch.uint8)


def to_vae_input(frames: torch.Tensor, dtype: torch.dtype = torch.float32, device=None) -> torch.Tensor:
    """(T, H, W, 3) frames (uint8, or float in [0, 1]) -> VAE input (1, 3, T, H, W) in [-1, 1].

    uint8 uses the reference's u / 127.5 - 1 (computed in fp32, then cast to `dtype`)."""
    _check_frames(frames)
    x = frames.to(device) if device is not None else frames
    x = x.float() / 127.5 - 1.0 if x.dtype == torch.uint8 else x.float() * 2.0 - 1.0
    return x.permute(3, 0, 1, 2).unsqueeze(0).to(dtype)


def from_vae_output(x: torch.Tensor) -> torch.Tensor:
    """VAE output (1, 3, T, H, W) or (3, T, H, W) in [-1, 1] -> (T, H, W, 3) float32 in [0, 1]."""
    if x.dim() == 5:
        if x.shape[0] != 1:
            raise ValueError(f"expected batch 1, got {tuple(x.shape)}")
        x = x[0]
    if x.dim() != 4 or x.shape[0] != 3:
        raise ValueError(f"VAE output must be (1, 3, T, H, W), got {tuple(x.shape)}")
    return ((x.float() + 1.0) / 2.0).clamp_(0, 1).permute(1, 2, 3, 0)


# ---------------------------------------------------------------- writing
def _video_codec() -> str:
    import av

    try:
        av.codec.Codec("libx264", "w")
        return "libx264"
    except Exception:
        return "mpeg4"


CONTAINERS = {".mp4": "mp4", ".mov": "mov", ".mkv": "matroska"}  # output extension -> container (H.264 in all)


def output_container(path) -> str:
    """The container for an output file name, or ValueError naming the extensions we write."""
    ext = Path(path).suffix.lower()
    if ext not in CONTAINERS:
        raise ValueError(f"cannot write video to {str(path)!r}: the file name must end in "
                         f"{', '.join(CONTAINERS)} (H.264 video)")
    return CONTAINERS[ext]


class VideoWriter:
    """Append frames to a video file as they are made; `path` appears, complete and playable, only when closed.

    Frames go to a temporary file in the same folder (created at once, so a missing or read-only folder fails
    before any work), which `close()` renames over `path` in one step: a failed run never leaves a corrupt
    file and never destroys a file already there. Used as a context manager, an exception (KeyboardInterrupt
    included) still closes the file when frames were written, keeping what was finished (`interrupted` tells),
    and removes the temporary file otherwise. Memory does not grow with the video's length.

    H.264 (libx264, yuv420p, CRF `crf`, preset medium: the reference's settings) when PyAV has it, else MPEG-4
    part 2. An odd width or height is padded by repeating the last column / row."""

    def __init__(self, path, fps: float, crf: int = 23):
        import av

        if fps <= 0:
            raise ValueError(f"fps must be > 0, got {fps}")
        self.path = Path(path)
        fmt = output_container(self.path)
        folder = self.path.parent
        if not folder.is_dir():
            raise ValueError(f"cannot write {str(self.path)!r}: the folder {str(folder)!r} does not exist")
        try:
            fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".part", dir=folder)
        except OSError as e:
            raise ValueError(f"cannot write {str(self.path)!r}: {e.strerror} in {str(folder)!r}") from None
        os.close(fd)
        self._tmp = Path(tmp)
        self.fps, self.crf = fps, crf
        self.codec = _video_codec()
        self.frames_written = 0
        self.size = None  # (height, width) of the frames, fixed by the first write
        self.interrupted = False
        self._stream = None
        self._container = av.open(str(self._tmp), mode="w", format=fmt)

    def write(self, frames) -> None:
        """Append (T, H, W, 3) frames: uint8, or float in [0, 1]; tensor or array."""
        import av

        frames = torch.as_tensor(frames)
        _check_frames(frames)
        data = to_uint8(frames.cpu())
        _, h, w, _ = data.shape
        if self.size is None:
            self.size = (h, w)
            stream = self._container.add_stream(self.codec, rate=Fraction(self.fps).limit_denominator(1001))
            stream.width, stream.height = w + w % 2, h + h % 2
            stream.pix_fmt = "yuv420p"
            if self.codec == "libx264":
                stream.options = {"crf": str(self.crf), "preset": "medium"}
            else:
                stream.bit_rate = 8_000_000
            self._stream = stream
        elif self.size != (h, w):
            raise ValueError(f"frames of {w}x{h} cannot follow frames of {self.size[1]}x{self.size[0]} in one video")
        if h % 2 or w % 2:
            data = F.pad(data.permute(0, 3, 1, 2).float(), (0, w % 2, 0, h % 2), mode="replicate")
            data = data.to(torch.uint8).permute(0, 2, 3, 1)
        for rgb in data.contiguous().numpy():
            for packet in self._stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                self._container.mux(packet)
        self.frames_written += data.shape[0]

    def close(self) -> Path:
        """Finish the file and move it to `path`."""
        if self.frames_written == 0:
            self.discard()
            raise ValueError("no frames to write")
        for packet in self._stream.encode():
            self._container.mux(packet)
        self._container.close()
        os.replace(self._tmp, self.path)
        return self.path

    def discard(self) -> None:
        """Drop the temporary file; `path` is left as it was."""
        try:
            self._container.close()
        except Exception:
            pass
        self._tmp.unlink(missing_ok=True)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.close()
        elif self.frames_written:
            self.interrupted = True
            self.close()
        else:
            self.discard()
        return False


def write_mp4(path, frames, fps: float, crf: int = 23) -> str:
    """Write (T, H, W, 3) frames (uint8, or float in [0, 1]) to a video file at once (see VideoWriter).
    Returns the codec used."""
    frames = torch.as_tensor(frames)
    _check_frames(frames)
    if frames.shape[0] == 0:
        raise ValueError("no frames to write")
    with VideoWriter(path, fps, crf) as out:
        out.write(frames)
    return out.codec


# ---------------------------------------------------------------- frame counts (reference rules)
def reference_output_frames(num_frames: int, prefix_latents: int = 0, fps: int = 24) -> int:
    """Pixel frames the reference writes for `num_frames` requested (see the module doc).

    prefix_latents: 0 for t2v, 1 for i2v, pixel prefix frames // 4 for v2v (32 frames -> 8)."""
    tile = fps // 2 // FRAMES_PER_LATENT
    if tile < 1:
        raise ValueError(f"the reference's VAE tiling needs fps >= 8, got {fps}")
    from .sampling.schedule import num_chunks

    n_chunks = num_chunks(num_frames, prefix_latents, CHUNK_WIDTH, FRAMES_PER_LATENT)
    total = 0
    for c in range(n_chunks):
        start, stop = c * CHUNK_WIDTH, (c + 1) * CHUNK_WIDTH
        if prefix_latents and not (c == 0 and prefix_latents == 1):  # i2v keeps its image latent
            if stop <= prefix_latents:
                continue
            start = max(start, prefix_latents)
        for t0 in range(start, stop, tile):
            t = min(tile, stop - t0)
            total += FRAMES_PER_LATENT * t if t > 1 else 1
    return total
