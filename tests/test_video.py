"""Tests for magi_core.video: reading, fps resampling, resizing policies, VAE conversion, mp4 writing."""
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from magi_core import video

av = pytest.importorskip("av")
PREFIX_MP4 = Path("/work/shared/magi1/prefix_video.mp4")
IMAGE_JPEG = Path("/work/shared/magi1/image.jpeg")
STEP = 8  # gray level step between synthetic frames: frame i is uniformly 8*i


def _gray_frames(n: int, h: int = 32, w: int = 48) -> torch.Tensor:
    return torch.arange(n, dtype=torch.uint8).mul(STEP).view(n, 1, 1, 1).expand(n, h, w, 3).contiguous()


def _frame_ids(frames: torch.Tensor) -> list[int]:
    return [round(float(f.mean()) * 255 / STEP) for f in frames]


@pytest.fixture(scope="module")
def clip30(tmp_path_factory):
    path = tmp_path_factory.mktemp("video") / "clip30.mp4"
    codec = video.write_mp4(path, _gray_frames(30), fps=30)
    return path, codec


def _ffmpeg_fps_filter(path, fps) -> list[int]:
    """Independent check: run libavfilter's own `fps` filter through PyAV."""
    out = []
    with av.open(str(path)) as c:
        stream = c.streams.video[0]
        graph = av.filter.Graph()
        src, f, sink = graph.add_buffer(template=stream), graph.add("fps", f"fps={fps}"), graph.add("buffersink")
        src.link_to(f)
        f.link_to(sink)
        graph.configure()

        def drain():
            while True:
                try:
                    out.append(graph.pull())
                except (av.BlockingIOError, av.EOFError):
                    return

        for frame in c.decode(stream):
            graph.push(frame)
            drain()
        graph.push(None)
        drain()
    return _frame_ids(torch.stack([torch.from_numpy(o.to_ndarray(format="rgb24")).float() / 255 for o in out]))


def test_write_and_read_roundtrip(clip30):
    path, codec = clip30
    assert codec == ("libx264" if "libx264" in av.codecs_available else "mpeg4")
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        assert (s.width, s.height, float(s.average_rate)) == (48, 32, 30.0)
        if codec == "libx264":
            assert s.codec_context.name == "h264" and s.codec_context.pix_fmt == "yuv420p"
    frames = video.read_video(path)
    assert frames.shape == (30, 32, 48, 3) and frames.dtype == torch.float32
    assert 0 <= float(frames.min()) and float(frames.max()) <= 1
    assert _frame_ids(frames) == list(range(30))


def test_write_float_and_odd_size(tmp_path):
    frames = torch.full((4, 33, 47, 3), 0.5)
    video.write_mp4(tmp_path / "odd.mp4", frames, fps=24)
    back = video.read_video(tmp_path / "odd.mp4")
    assert back.shape == (4, 34, 48, 3)
    assert (back - 0.5).abs().max() < 3 / 255
    with pytest.raises(ValueError, match=r"\(T, H, W, 3\)"):
        video.write_mp4(tmp_path / "x.mp4", torch.zeros(4, 8, 8), fps=24)


@pytest.mark.parametrize("fps", [24, 30, 48, 12, 25, 7.5])
def test_fps_resampling_matches_libavfilter(clip30, fps):
    path, _ = clip30
    ours = _frame_ids(video.read_video(path, fps=fps))
    assert ours == _ffmpeg_fps_filter(path, fps)


def test_fps_resample_indices_by_hand():
    times = [i / 30 for i in range(10)]  # 10 frames at 30 fps, ending at 1/3 s
    # slots round(t*24): 0,1,2,2,3,4,5,6,6,7 -> the later frame wins a shared slot; 8 slots (round(8.0))
    assert video.fps_resample_indices(times, 10 / 30, 24) == [0, 1, 3, 4, 5, 6, 8, 9]
    # 24 -> 48: every frame twice (slot 2i; slot 2i+1 repeats)
    assert video.fps_resample_indices([i / 24 for i in range(3)], 3 / 24, 48) == [0, 0, 1, 1, 2, 2]
    assert video.fps_resample_indices([0.0, 0.1], 0.2, 10) == [0, 1]  # same rate: identity
    assert video.fps_resample_indices([], 1.0, 24) == []


def test_read_video_take_and_max_frames(clip30):
    path, _ = clip30
    assert _frame_ids(video.read_video(path, max_frames=5)) == [25, 26, 27, 28, 29]
    assert _frame_ids(video.read_video(path, max_frames=5, take="start")) == [0, 1, 2, 3, 4]
    full = video.fps_resample_indices([i / 30 for i in range(30)], 1.0, 24)
    assert _frame_ids(video.read_video(path, fps=24, max_frames=6)) == full[-6:]
    with pytest.raises(ValueError, match="take"):
        video.read_video(path, max_frames=5, take="middle")
    with pytest.raises(ValueError, match="max_frames"):
        video.read_video(path, max_frames=0)


def test_read_image_png_exact(tmp_path):
    from PIL import Image

    rgb = np.random.default_rng(0).integers(0, 256, size=(20, 30, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "img.png")  # written by an independent library
    img = video.read_image(tmp_path / "img.png")
    assert img.shape == (1, 20, 30, 3) and img.dtype == torch.float32
    assert torch.equal((img[0] * 255).round().to(torch.uint8), torch.from_numpy(rgb))
    with pytest.raises(FileNotFoundError):
        video.read_image(tmp_path / "nope.png")
    (tmp_path / "junk.png").write_bytes(b"not an image")
    with pytest.raises(ValueError, match="cannot (open|decode)"):
        video.read_image(tmp_path / "junk.png")


def test_reference_assets():
    if not (PREFIX_MP4.is_file() and IMAGE_JPEG.is_file()):
        pytest.skip("reference assets (/work/shared/magi1) not present")
    img = video.read_image(IMAGE_JPEG)
    assert img.dim() == 4 and img.shape[0] == 1 and img.shape[-1] == 3
    clip = video.read_video(PREFIX_MP4, fps=24, max_frames=32, take="start")  # the reference's v2v prefix
    assert clip.shape == (32, 720, 1280, 3)


def _columns(h: int, w: int) -> torch.Tensor:
    """One frame whose red channel encodes the column (x / (w-1)) and green the row."""
    x = torch.linspace(0, 1, w).view(1, 1, w).expand(1, h, w)
    y = torch.linspace(0, 1, h).view(1, h, 1).expand(1, h, w)
    return torch.stack([x, y, torch.zeros_like(x)], dim=-1)


def test_resize_policies():
    frames = _columns(40, 80)  # 2:1 wide
    out = video.resize(frames, 20, 20, "stretch")
    assert out.shape == (1, 20, 20, 3)
    assert out[0, :, 0, 0].max() < 0.05 and out[0, :, -1, 0].min() > 0.95  # full width kept
    crop = video.resize(frames, 20, 20, "crop")
    # the centre 40 of 80 columns survive: x from ~0.25 to ~0.75
    assert abs(float(crop[0, :, 0, 0].mean()) - 20 / 79) < 0.03
    assert abs(float(crop[0, :, -1, 0].mean()) - 59 / 79) < 0.03
    torch.testing.assert_close(crop, video.resize(frames[:, :, 20:60], 20, 20, "stretch"))
    pad = video.resize(frames, 20, 20, "pad")  # fits as 20x10, centred vertically on black
    assert pad[0, :5].abs().max() == 0 and pad[0, 15:].abs().max() == 0
    torch.testing.assert_close(pad[:, 5:15], video.resize(frames, 10, 20, "stretch"))
    const = torch.full((3, 17, 23, 3), 64 / 255)  # frames are scaled as uint8 (the reference's pixels)
    for policy in video.POLICIES:
        assert torch.equal(video.resize(const, 16, 16, policy)[:, 4:12, 4:12], const[:, :8, :8])
    with pytest.raises(ValueError, match="policy"):
        video.resize(frames, 16, 16, "fit")


def test_vae_conversion():
    u8 = torch.randint(0, 256, (5, 8, 16, 3), dtype=torch.uint8)
    x = video.to_vae_input(u8)
    assert x.shape == (1, 3, 5, 8, 16) and x.dtype == torch.float32
    expect = u8.double().permute(3, 0, 1, 2)[None] / 127.5 - 1
    torch.testing.assert_close(x.double(), expect, rtol=0, atol=1e-7)
    f = u8.float() / 255
    torch.testing.assert_close(video.to_vae_input(f), x, rtol=0, atol=1e-6)
    assert video.to_vae_input(f, dtype=torch.bfloat16).dtype == torch.bfloat16
    back = video.from_vae_output(x)
    torch.testing.assert_close(back, f, rtol=0, atol=1e-6)
    assert torch.equal(video.to_uint8(back), u8)
    assert video.from_vae_output(torch.full((1, 3, 1, 2, 2), 3.0)).max() == 1  # clamped


def test_select_prefix_frames():
    frames = _gray_frames(30).float() / 255
    assert _frame_ids(video.select_prefix_frames(frames)) == list(range(30))  # all of them: the VAE decides
    assert _frame_ids(video.select_prefix_frames(frames, 10, take="start")) == list(range(10))
    assert _frame_ids(video.select_prefix_frames(frames, 25)) == list(range(5, 30))
    with pytest.raises(ValueError, match="max_frames"):
        video.select_prefix_frames(frames, 0)


@pytest.mark.parametrize(
    "num_frames, prefix_latents, fps, expected",
    [
        (96, 0, 24, 96),  # t2v
        (100, 0, 24, 120),  # rounded up to whole chunks
        (96, 1, 24, 120),  # i2v: one chunk longer, image latent kept
        (96, 8, 24, 109),  # v2v with the reference's 32-frame prefix: 13 + 4 * 24
        (24, 0, 8, 6),  # fps 8: tiles of one latent -> 1 frame each
    ],
)
def test_reference_output_frames(num_frames, prefix_latents, fps, expected):
    assert video.reference_output_frames(num_frames, prefix_latents, fps) == expected


def test_reference_output_frames_needs_fps_8():
    with pytest.raises(ValueError, match="fps >= 8"):
        video.reference_output_frames(96, 0, fps=7)


# ---------------------------------------------------------------- the reference's pixels (ffmpeg command line)
# The reference (inference/pipeline/video_process.py, ffmpeg_i2v / ffmpeg_v2v) runs the ffmpeg binary through
# ffmpeg-python; these are the command lines it builds. Our PyAV path must give the same uint8 pixels.
FFMPEG = shutil.which("ffmpeg")
needs_ffmpeg = pytest.mark.skipif(FFMPEG is None, reason="the ffmpeg binary (the reference's reader and scaler) "
                                                         "is not installed")
SIZES = [(96, 160), (160, 96), (64, 64), (208, 304)]  # (height, width): landscape, portrait, square, upscale


def _ffmpeg_image(path, size) -> np.ndarray:
    h, w = size
    cmd = [FFMPEG, "-v", "error", "-f", "image2pipe", "-i", "pipe:0", "-filter_complex", f"[0]scale={w}:{h}[s0]",
           "-map", "[s0]", "-f", "rawvideo", "-pix_fmt", "rgb24", "-vframes", "1", "pipe:"]
    out = subprocess.run(cmd, input=Path(path).read_bytes(), capture_output=True, check=True).stdout
    return np.frombuffer(out, np.uint8).reshape(h, w, 3)


def _ffmpeg_video(path, fps, size) -> np.ndarray:
    h, w = size
    cmd = [FFMPEG, "-v", "error", "-f", "mp4", "-ss", "0", "-i", str(path), "-filter_complex",
           f"[0]fps=fps={fps}[s0];[s0]scale={w}:{h}[s1]", "-map", "[s1]", "-f", "rawvideo", "-nostdin",
           "-pix_fmt", "rgb24", "pipe:"]
    out = subprocess.run(cmd, capture_output=True, check=True).stdout
    return np.frombuffer(out, np.uint8).reshape(-1, h, w, 3)[:32]  # the reference keeps the first 32 frames


def _pixels(frames: torch.Tensor) -> np.ndarray:
    u8 = (frames * 255).round().to(torch.uint8)
    assert torch.equal(u8.float() / 255, frames)  # exactly uint8 levels, as the reference's frames
    return u8.numpy()


def _picture(h: int, w: int, seed: int = 0) -> np.ndarray:
    """Colour gradients, fine detail and noise: every channel and frequency matters to the scaler."""
    y, x = np.mgrid[0:h, 0:w]
    img = np.stack([x * 255 / w, y * 255 / h, 128 + 90 * np.sin(x / 5.0) * np.cos(y / 3.0)], -1)
    img += np.random.default_rng(seed).normal(0, 12, img.shape)
    img[h // 3: h // 2, w // 3: w // 2] = (240, 20, 40)
    return np.clip(img, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def pictures(tmp_path_factory):
    """name -> file: PNGs (300 x 199, portrait 120 x 199, odd width 301 x 199), colour and grey JPEG and JPEGs
    with each EXIF orientation (301 x 199)."""
    from PIL import Image

    d = tmp_path_factory.mktemp("pictures")
    rgb = _picture(199, 301)
    Image.fromarray(rgb[:, :300]).save(d / "rgb.png")
    Image.fromarray(rgb[:, :120]).save(d / "tall.png")
    Image.fromarray(rgb).save(d / "odd.png")
    Image.fromarray(rgb).save(d / "colour.jpg", quality=90)
    Image.fromarray(rgb).convert("L").save(d / "grey.jpg", quality=90)
    for o in range(2, 9):
        exif = Image.Exif()
        exif[0x0112] = o
        Image.fromarray(rgb).save(d / f"exif{o}.jpg", quality=90, exif=exif.tobytes())
    return {p.stem: p for p in d.iterdir()}


@needs_ffmpeg
@pytest.mark.parametrize("name", ["rgb", "tall", "colour", "grey"] + [f"exif{o}" for o in range(2, 9)])
def test_read_image_gives_the_reference_pixels(pictures, name):
    for size in SIZES:
        ours = _pixels(video.read_image(pictures[name], size=size))[0]
        np.testing.assert_array_equal(ours, _ffmpeg_image(pictures[name], size), err_msg=f"{name} at {size}")


def test_read_image_applies_exif_orientation_like_comfyui(pictures):
    """ComfyUI's LoadImage turns photos upright with PIL.ImageOps.exif_transpose (its nodes.py). Of the 8 ways
    to lay the picture out, ours is the one PIL gives (the JPEG decoders differ by a few levels, so: nearest)."""
    from PIL import Image, ImageOps

    layouts = [lambda a: a, np.fliplr, np.flipud, lambda a: np.rot90(a, 2), lambda a: a.transpose(1, 0, 2),
               lambda a: np.rot90(a, -1), lambda a: np.rot90(a, 1), lambda a: np.rot90(a, 2).transpose(1, 0, 2)]
    for o in range(2, 9):
        with Image.open(pictures[f"exif{o}"]) as im:
            raw = np.asarray(im.convert("RGB")).astype(np.float32)
            upright = np.asarray(ImageOps.exif_transpose(im).convert("RGB")).astype(np.float32)
        ours = video.read_image(pictures[f"exif{o}"])[0].numpy() * 255
        errors = [np.abs(ours - f(raw)).mean() if f(raw).shape == ours.shape else np.inf for f in layouts]
        assert np.abs(ours - upright).mean() == min(errors) < 0.5 * sorted(errors)[1], (o, errors)
    assert video.read_image(pictures["exif6"]).shape == (1, 301, 199, 3)


@needs_ffmpeg
def test_odd_width_rgb_halved_is_the_one_scaler_difference(pictures):
    """RGB sources (PNG; every ComfyUI IMAGE) of odd width scaled to half their width or less: libswscale up to
    FFmpeg 7 (the ffmpeg binary, the reference's) pairs pixels for the chroma, FFmpeg 8 (PyAV >= 16 bundles it)
    only pairs them in even widths. Wider targets are exact; narrower ones exact with an older PyAV, else
    close (README: Differences from the official pipeline)."""
    for size in SIZES:
        ours = _pixels(video.read_image(pictures["odd"], size=size))[0].astype(int)
        diff = np.abs(ours - _ffmpeg_image(pictures["odd"], size))
        if size[1] > 301 // 2:
            assert diff.max() == 0, size
        else:
            assert diff.mean() < 3, (size, diff.mean())  # 2.2 levels on this noisy picture, 0.12 on a photo


@needs_ffmpeg
def test_resize_of_decoded_rgb_gives_the_reference_pixels(pictures):
    """ComfyUI hands the node RGB frames (LoadImage: PIL, / 255): for a PNG they are the file's pixels, and
    scaling them gives exactly what the reference's ffmpeg gives from the file."""
    from PIL import Image

    comfy = torch.from_numpy(np.asarray(Image.open(pictures["rgb"]).convert("RGB")).astype(np.float32) / 255.0)[None]
    for size in SIZES:
        np.testing.assert_array_equal(_pixels(video.resize(comfy, *size))[0], _ffmpeg_image(pictures["rgb"], size))


@needs_ffmpeg
def test_reference_image_gives_the_reference_pixels(shared_file):
    path = shared_file("image.jpeg")
    for size in [(720, 720), (480, 848)]:
        np.testing.assert_array_equal(_pixels(video.read_image(path, size=size))[0], _ffmpeg_image(path, size))


def _write_clip(path, fps, n, rotation=0, size=(120, 200)):
    from fractions import Fraction

    h, w = size
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264" if "libx264" in av.codecs_available else "mpeg4",
                         rate=Fraction(fps).limit_denominator(1001))
        s.width, s.height, s.pix_fmt = w, h, "yuv420p"
        if rotation:
            if not hasattr(av.video.stream.VideoStream, "set_display_rotation"):
                pytest.skip("this PyAV cannot write a display rotation")
            s.set_display_rotation(rotation)
        for i in range(n):
            frame = np.roll(_picture(h, w, seed=i), 3 * i, axis=1)
            for p in s.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return path


@needs_ffmpeg
@pytest.mark.parametrize("src_fps, frames, fps", [(24, 25, 24), (25, 31, 24), (30, 28, 24), (30, 31, 30),
                                                  (24, 27, 25), (30, 26, 24)])
def test_read_video_gives_the_reference_pixels(tmp_path, src_fps, frames, fps):
    path = _write_clip(tmp_path / "clip.mp4", src_fps, frames)
    for size in SIZES[:3]:
        ours = _pixels(video.read_video(path, fps=fps, max_frames=32, take="start", size=size))
        ref = _ffmpeg_video(path, fps, size)
        assert ours.shape == ref.shape
        np.testing.assert_array_equal(ours, ref, err_msg=f"{size}")


@needs_ffmpeg
@pytest.mark.parametrize("rotation", [90, -90, 180])
def test_read_video_turns_rotated_videos_like_ffmpeg(tmp_path, rotation):
    path = _write_clip(tmp_path / "phone.mp4", 30, 9, rotation=rotation)
    upright = video.read_video(path)
    assert upright.shape[1:3] == ((120, 200) if rotation == 180 else (200, 120))
    np.testing.assert_array_equal(_pixels(video.read_video(path, fps=24, size=(96, 64))),
                                  _ffmpeg_video(path, 24, (96, 64)))


@needs_ffmpeg
def test_reference_video_gives_the_reference_pixels(shared_file):
    path = shared_file("prefix_video.mp4")
    ours = video.read_video(path, fps=24, max_frames=32, take="start", size=(720, 720))
    np.testing.assert_array_equal(_pixels(ours), _ffmpeg_video(path, 24, (720, 720)))


@needs_ffmpeg
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_vae_input_is_the_reference_tensor(pictures, tmp_path, monkeypatch, dtype):
    """What enters the VAE (image and video prefixes, read as the command line reads them) is the reference's
    VaeHelper.encode input: uint8 / 127.5 - 1 in fp32, then cast to the VAE's dtype."""
    import magi_core.vae
    from magi_core.pipeline import encode_prefix
    from magi_core.settings import SamplingSettings as Settings

    seen = []

    def spy(vae, x, fps, **kw):
        seen.append(x)
        return torch.zeros(1, 16, 1, 1, 1)

    monkeypatch.setattr(magi_core.vae, "tiled_encode", spy)
    vae = torch.nn.Linear(1, 1).to(dtype)
    s = Settings(width=160, height=96)
    clip = _write_clip(tmp_path / "clip.mp4", 30, 31)
    for frames, ref in [(video.read_image(pictures["colour"], size=(96, 160)), _ffmpeg_image(pictures["colour"], (96, 160))[None]),
                        (video.read_video(clip, fps=24, size=(96, 160)), _ffmpeg_video(clip, 24, (96, 160)))]:
        encode_prefix(vae, frames, s)
        expect = (torch.from_numpy(ref.copy()).permute(3, 0, 1, 2)[None].float() / 127.5 - 1.0).to(dtype)
        assert seen[-1].dtype == dtype and torch.equal(seen[-1], expect)


# ---------------------------------------------------------------- VideoWriter: nothing a user made is lost
def _frames_in(path):
    import av

    with av.open(str(path)) as c:
        return sum(1 for _ in c.decode(video=0))


def test_video_writer_keeps_finished_frames_on_interrupt_and_never_clobbers(tmp_path):
    out = tmp_path / "clip.mp4"
    video.write_mp4(out, _gray_frames(8), fps=24)
    before = out.read_bytes()
    with pytest.raises(RuntimeError):  # a failure before any frame: the file already there is untouched
        with video.VideoWriter(out, 24):
            raise RuntimeError("boom")
    assert out.read_bytes() == before
    for n in (1, 2):  # Ctrl-C after 5 frames: a playable file of those 5 beside the existing one, kept as it was
        with pytest.raises(KeyboardInterrupt):
            with video.VideoWriter(out, 24) as w:
                w.write(_gray_frames(5))
                raise KeyboardInterrupt
        assert w.interrupted and w.path.name == ("clip.partial.mp4" if n == 1 else "clip.partial-2.mp4")
        assert _frames_in(w.path) == 5 and out.read_bytes() == before
    new = tmp_path / "new.mp4"
    with pytest.raises(KeyboardInterrupt):  # no file there: the partial video takes the name asked for
        with video.VideoWriter(new, 24) as w:
            w.write(_gray_frames(3))
            raise KeyboardInterrupt
    assert w.path == new and _frames_in(new) == 3
    names = sorted(p.name for p in tmp_path.iterdir())  # no temporary file left behind
    assert names == ["clip.mp4", "clip.partial-2.mp4", "clip.partial.mp4", "new.mp4"]


def test_video_writer_refuses_bad_locations_up_front(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        video.VideoWriter(tmp_path / "missing" / "a.mp4", 24)
    with pytest.raises(ValueError, match=r"\.mp4"):
        video.VideoWriter(tmp_path / "a.gif", 24)


def test_video_writer_output_has_the_usual_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        video.write_mp4(tmp_path / "p.mp4", _gray_frames(2), fps=24)
    finally:
        os.umask(old)
    assert (tmp_path / "p.mp4").stat().st_mode & 0o777 == 0o644


def test_a_writer_that_cannot_finish_leaves_no_file(tmp_path, monkeypatch):
    """A full disk at the end (here: the rename fails): the error is raised, the temporary file removed, and the
    target untouched; keep() after an interrupt returns the playable file, or None when nothing was written."""
    import errno
    import os

    from magi_core.video import VideoWriter

    w = VideoWriter(tmp_path / "a.mp4", 24)
    w.write(torch.rand(4, 16, 16, 3))

    def full(*_):
        raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as m:
        m.setattr(os, "replace", full)
        with pytest.raises(OSError, match="No space"):
            w.close()
    assert list(tmp_path.iterdir()) == []
    w = VideoWriter(tmp_path / "b.mp4", 24)
    assert w.keep() is None and list(tmp_path.iterdir()) == []
    w = VideoWriter(tmp_path / "c.mp4", 24)
    w.write(torch.rand(4, 16, 16, 3))
    assert w.keep() == tmp_path / "c.mp4" and w.interrupted and video.read_video(tmp_path / "c.mp4").shape[0] == 4


def test_a_file_that_is_no_image_is_said_in_words(tmp_path):
    """FFmpeg's message without its error number ('[Errno 1094995529] Invalid data ...' was shown)."""
    from magi_core.video import read_image

    bad = tmp_path / "notes.png"
    bad.write_text("not an image")
    with pytest.raises(ValueError, match=r"cannot (open|decode) .*notes.png(| as an image or video): [A-Z]") as e:
        read_image(bad)
    assert "Errno" not in str(e.value)


def test_a_file_ffmpeg_cannot_open_is_said_in_words(tmp_path):
    """The open branch too: garbage bytes named .mp4 fail when FFmpeg opens them, not when it decodes."""
    bad = tmp_path / "clip.mp4"
    bad.write_bytes(b"\x00garbage" * 200)
    with pytest.raises(ValueError, match=r"cannot open .*clip.mp4 as an image or video: [A-Z]") as e:
        video.read_video(bad)
    assert "Errno" not in str(e.value)
