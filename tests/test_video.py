"""Tests for magi_core.video: reading, fps resampling, resizing policies, VAE conversion, mp4 writing."""
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
    const = torch.full((3, 17, 23, 3), 0.25)
    for policy in video.POLICIES:
        assert torch.allclose(video.resize(const, 16, 16, policy)[:, 4:12, 4:12], torch.tensor(0.25), atol=1e-6)
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
    end = video.select_prefix_frames(frames)
    assert _frame_ids(end) == list(range(2, 30))  # 28 = 7 latents, the last frames
    assert _frame_ids(video.select_prefix_frames(frames, 10, take="start")) == list(range(8))
    assert _frame_ids(video.select_prefix_frames(frames, 32)) == list(range(2, 30))
    with pytest.raises(ValueError, match="at least 4"):
        video.select_prefix_frames(frames[:3])


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
