"""Images and videos <-> tensors for MAGI-1
(official `inference/pipeline/video_process.py`), without ffmpeg binaries (PyAV).

Frames are float32 tensors (T, H, W, 3) in [0, 1] (ComfyUI's IMAGE layout). The reference
(`inference/pipeline/video_process.py`, which runs the ffmpeg command line):
  * i2v: the image is stretched to W x H (ffmpeg `scale`, aspect not kept) -> 1 frame;
  * v2v: the video is resampled to the run's fps (ffmpeg `fps` filter), stretched, and its FIRST 32 frames
    are kept (8 latent frames). Here any length the VAE can encode is allowed (`prefix_latent_frames`),
    taken from the END of the video by default (the frames the continuation joins), or from the start;
  * output: mp4, H.264 yuv420p, CRF 23 (x264 defaults).
Scaling is libswscale through a libavfilter graph (PyAV), built the way the ffmpeg command line builds it:
the photo / video orientation first (ffmpeg's autorotate; EXIF orientation for images, as ComfyUI's
loader), then `scale=W:H` (bicubic) straight from the decoded pixel format (YUV for JPEG and video) to
rgb24. Reading a file with `size` therefore gives the reference's uint8 pixels bit for bit; `resize` on
frames already in RGB (ComfyUI IMAGE) scales rgb24 -> rgb24 with the same filter.

Frame counts of the reference (`reference_output_frames`): with L = num_frames // 4 new latent frames and
P prefix latents, n_chunks = ceil((L + P) / 6); chunks wholly inside the prefix are not output, the
prefix latents are cut from the first output chunk (except i2v, whose image latent is output); each chunk
is decoded alone in temporal tiles of fps//2//4 latents, a tile of t > 1 latents giving 4t frames and a
tile of 1 latent giving 1 frame. t2v 96 -> 96 frames, 100 -> 120; i2v 96 -> 120; v2v (32-frame prefix)
96 -> 13 + 4*24 = 109.
"""
from __future__ import annotations

import glob
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
def _words(e: Exception) -> str:
    """An FFmpeg (PyAV) error in words: its message without the error number and the call or path it names."""
    return getattr(e, "strerror", None) or str(e)


def _open(path):
    import av

    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a folder: give the path of an image or video file in it")
    if not path.is_file():
        raise FileNotFoundError(f"file not found: {path}")
    try:
        return av.open(str(path))
    except Exception as e:  # PyAV raises several error types for unreadable files
        raise ValueError(f"cannot open {path} as an image or video: {_words(e)}") from None


def _to_float(rgb: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(rgb).float().div_(255.0)


# EXIF orientation -> the filters that turn the picture upright (as ffmpeg's autorotate and PIL's exif_transpose)
_ORIENTATION_FILTERS = {
    2: [("hflip", None)],
    3: [("hflip", None), ("vflip", None)],
    4: [("vflip", None)],
    5: [("transpose", "cclock_flip")],
    6: [("transpose", "clock")],
    7: [("transpose", "clock_flip")],
    8: [("transpose", "cclock")],
}
_ROTATION_ORIENTATION = {-90: 6, 90: 8, 180: 3, -180: 3}  # a video's display rotation (degrees ccw)


def _exif_orientation(path) -> int:
    """EXIF orientation (1-8) of an image file, 1 when it has none (read with Pillow, like ComfyUI's loader)."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            o = im.getexif().get(0x0112, 1)
    except Exception:  # a file Pillow cannot read has no orientation for us (PyAV reports unreadable files)
        return 1
    return o if o in _ORIENTATION_FILTERS else 1


def _check_target(size, policy: str) -> None:
    if policy not in POLICIES:
        raise ValueError(f"resize policy must be one of {POLICIES}, got {policy!r}")
    if size is not None and (size[0] < 1 or size[1] < 1):
        raise ValueError(f"target size must be positive, got {size[1]}x{size[0]}")


def _scale_filters(width: int, height: int, orientation: int, size, policy: str) -> list:
    """The filter chain for one input: orientation, then the resize policy, ending in rgb24.

    stretch: `scale=W:H` (the reference); crop: centre crop to the target aspect, then scale; pad: scale to fit
    inside, then centre on black. size None: no resize. Scaling straight to rgb24 (no intermediate format) is
    what the ffmpeg command line negotiates for `-vf scale=W:H -pix_fmt rgb24`."""
    chain = list(_ORIENTATION_FILTERS.get(orientation, []))
    if orientation >= 5:
        width, height = height, width
    if size is None:
        return chain + [("scale", "flags=bicubic"), ("format", "rgb24")]
    h, w = size
    if policy == "crop":
        if width * h > height * w:  # too wide
            cw = max(1, round(height * w / h))
            chain.append(("crop", f"{cw}:{height}:{(width - cw) // 2}:0"))
        else:
            ch = max(1, round(width * h / w))
            chain.append(("crop", f"{width}:{ch}:0:{(height - ch) // 2}"))
    if policy == "pad":
        scale = min(h / height, w / width)
        nh, nw = min(h, max(1, round(height * scale))), min(w, max(1, round(width * scale)))
        return chain + [("scale", f"{nw}:{nh}:flags=bicubic"), ("format", "rgb24"),
                        ("pad", f"{w}:{h}:{(w - nw) // 2}:{(h - nh) // 2}:black")]
    return chain + [("scale", f"{w}:{h}:flags=bicubic"), ("format", "rgb24")]


class _ToRGB:
    """Decoded frames -> rgb24 arrays through one libavfilter graph per input geometry (see `_scale_filters`)."""

    def __init__(self, size=None, policy: str = "stretch", orientation: int | None = None):
        _check_target(size, policy)
        self.size, self.policy, self.orientation = size, policy, orientation
        self._key = self._graph = None

    def __call__(self, frame) -> np.ndarray:
        import av

        orientation = self.orientation
        if orientation is None:  # a video: the stream's display rotation, as ffmpeg's autorotate
            orientation = _ROTATION_ORIENTATION.get(int(frame.rotation), 1)
        key = (frame.width, frame.height, frame.format.name, orientation)
        if key != self._key:
            graph = av.filter.Graph()
            nodes = [graph.add_buffer(width=frame.width, height=frame.height, format=frame.format.name,
                                      time_base=Fraction(1, 1000))]
            for name, args in _scale_filters(frame.width, frame.height, orientation, self.size, self.policy):
                nodes.append(graph.add(name, args))
            nodes.append(graph.add("buffersink"))
            graph.link_nodes(*nodes).configure()
            self._key, self._graph = key, graph
        self._graph.push(frame)
        return self._graph.pull().to_ndarray()


def frame_count(path) -> int:
    """Frames in the file's first video stream (1 for a still image), from its packets (no decoding)."""
    with _open(path) as container:
        if not container.streams.video:
            return 0
        return sum(1 for p in container.demux(container.streams.video[0]) if p.size)


def read_image(path, size: tuple[int, int] | None = None, policy: str = "stretch") -> torch.Tensor:
    """An image file as (1, H, W, 3) float32 in [0, 1] (first frame for animated files), turned upright by its
    EXIF orientation. size=(height, width): scaled there from the decoded pixels with `policy`, as the
    reference's ffmpeg read does (`resize` after reading would scale the RGB instead)."""
    import av

    to_rgb = _ToRGB(size, policy, _exif_orientation(path))
    with _open(path) as container:
        if not container.streams.video:
            raise ValueError(f"{path} has no image stream")
        try:
            for frame in container.decode(video=0):
                return _to_float(to_rgb(frame))[None]
        except av.FFmpegError as e:
            raise ValueError(f"cannot decode {path}: {_words(e)}") from None
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


def read_video(path, fps: float | None = None, max_frames: int | None = None, take: str = "end",
               size: tuple[int, int] | None = None, policy: str = "stretch") -> torch.Tensor:
    """A video file as (T, H, W, 3) float32 in [0, 1], turned upright by its display rotation.

    fps: resample to this rate like ffmpeg's fps filter (None keeps every frame). max_frames: keep at
    most this many frames of the (resampled) video, from its end (take="end") or its start ("start").
    size=(height, width): scale each frame there from its decoded pixels with `policy` (see read_image)."""
    import av

    to_rgb = _ToRGB(size, policy)

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
                    got[frame.pts] = _to_float(to_rgb(frame))
                    if len(got) == len(needed):
                        break
        except av.FFmpegError as e:
            raise ValueError(f"cannot decode {path}: {_words(e)}") from None
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


def resize(frames: torch.Tensor, height: int, width: int, policy: str = "stretch") -> torch.Tensor:
    """Resize (T, H, W, 3) frames (float in [0, 1], or uint8) to (T, height, width, 3) float32 in [0, 1].

    The frames are quantised to uint8 (the reference's frames are) and scaled rgb24 -> rgb24 by libswscale with
    the reference's filter (`scale=W:H`, bicubic; see `_scale_filters` for the crop and pad policies); frames
    already of that size are only quantised."""
    import av

    _check_frames(frames)
    to_rgb = _ToRGB((height, width), policy, orientation=1)
    rgb = to_uint8(frames.cpu()).contiguous().numpy()
    if frames.shape[1:3] == (height, width):
        return _to_float(rgb)
    return torch.stack([_to_float(to_rgb(av.VideoFrame.from_ndarray(f, format="rgb24"))) for f in rgb])


def select_prefix_frames(frames: torch.Tensor, max_frames: int | None = None, take: str = "end") -> torch.Tensor:
    """Frames for a v2v prefix: at most max_frames of them, from the end of the clip (the frames the
    continuation joins) or from its start. All of them go to the VAE, as in the reference (which keeps the
    first 32); `pipeline.prefix_latent_count` says how many latents they give."""
    _check_frames(frames)
    if max_frames is not None and max_frames < 1:
        raise ValueError(f"max_frames must be >= 1, got {max_frames}")
    return frames[list(_take(frames.shape[0], max_frames, take))]


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
    included) still closes the file when frames were written, keeping what was finished (`interrupted` tells;
    when `path` already exists, the partial video goes to `NAME.partial.EXT` beside it and `path` is left as it
    was; `self.path` says where), and removes the temporary file otherwise. Memory does not grow with the video's length.

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
            fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".part", dir=folder)  # see temporary_files
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
        """Finish the file and move it to `path`. If that fails (a full disk), the temporary file is removed and
        the error raised: no unplayable file is left behind."""
        if self.frames_written == 0:
            self.discard()
            raise ValueError("no frames to write")
        try:
            for packet in self._stream.encode():
                self._container.mux(packet)
            self._container.close()
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(self._tmp, 0o666 & ~umask)  # mkstemp made it private; a finished video gets the usual permissions
            os.replace(self._tmp, self.path)
        except BaseException:
            self.discard()
            raise
        return self.path

    def keep(self) -> Path | None:
        """After a failure or an interrupt: close what was written as a playable file and return where it went
        (`NAME.partial.EXT` beside `path` when a file of that name exists, so an older video is never replaced
        by a partial one), or remove the temporary file and return None when no frame was written."""
        if not self.frames_written:
            self.discard()
            return None
        if self.path.exists():
            self.path = _free_name(self.path.with_name(f"{self.path.stem}.partial{self.path.suffix}"))
        path = self.close()
        self.interrupted = True
        return path

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
        else:
            try:
                self.keep()
            except Exception:  # noqa: BLE001 -- e.g. the disk is full: the block's own error goes on (nothing kept)
                pass
        return False


def temporary_files(path) -> list[Path]:
    """The hidden temporary files VideoWriter makes for `path` (`.NAME.XXXXXXXX.part`: mkstemp's 8 characters)
    that are there now: a run writing it, or one killed before it could remove it."""
    path = Path(path).expanduser()
    return sorted(path.parent.glob(f".{glob.escape(path.name)}.{'?' * 8}.part"))


def _free_name(path: Path) -> Path:
    """`path`, or `stem-2.ext`, `stem-3.ext`, ... : the first name no file has."""
    n, p = 1, path
    while p.exists():
        n += 1
        p = path.with_name(f"{path.stem}-{n}{path.suffix}")
    return p


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
def chunk_output_frames(fps: int) -> int:
    """Pixel frames one chunk of 6 latent frames decodes to at this fps, in the VAE's time tiles of fps // 2
    frames: 24 at most rates; 6 below 16 fps (a tile holds one latent frame, which decodes to one frame); 21 at
    40-47 fps (tiles of 5 latent frames and 1)."""
    return reference_output_frames(CHUNK_WIDTH * FRAMES_PER_LATENT, 0, int(fps))


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
