"""End-to-end pipeline on tiny random models in real layouts: t2v / i2v / v2v, CLI demo, input validation."""
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import magi_core  # noqa: F401
from magi_core.checkpoint import load_dit
from magi_core.demo import make_tiny_assets
from magi_core.pipeline import decode_chunk, encode_prefix, encode_prompts, sample, validate
from magi_core.settings import SamplingSettings as Settings
from magi_core.text import T5TextEncoder, load_special_tokens
from magi_core.vae import load_vae
from magi_core.video import read_video, reference_output_frames

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    paths = make_tiny_assets(tmp_path_factory.mktemp("models"))
    dit, info = load_dit(paths["dit"])
    return dict(
        dit=dit, info=info, vae=load_vae(paths["vae"], dtype=torch.float32), t5=T5TextEncoder.load(paths["t5"]),
        tokens=load_special_tokens(paths["special_tokens"]), paths=paths,
    )


def run(tiny, s, prompt="a fox", frames=None):
    prompts = encode_prompts(tiny["t5"], prompt)
    n_prefix, prefix = 0, None
    if frames is not None:
        prefix = encode_prefix(tiny["vae"], frames, s)
        n_prefix = frames.shape[0]
    out = [decode_chunk(tiny["vae"], c.latents, s.fps) for c in sample(tiny["dit"], prompts, s, prefix, n_prefix,
                                                                       tiny["tokens"])]
    return torch.cat(out), n_prefix


def test_detected_and_t2v_frames(tiny):
    assert tiny["info"]["variant"] == "distill" and tiny["info"]["size"] == "tiny"
    s = Settings(width=64, height=48, num_frames=28, steps=4, seed=1)
    video, _ = run(tiny, s, "0: a fox\n1: a cat")
    assert video.shape == (reference_output_frames(28, 0, 24), 48, 64, 3) == (48, 48, 64, 3)
    assert 0 <= video.min() and video.max() <= 1


@pytest.mark.parametrize("mode", ["i2v", "v2v"])
def test_prefix_modes(tiny, mode):
    s = Settings(width=64, height=48, num_frames=24, steps=4, seed=2)
    frames = torch.rand(1 if mode == "i2v" else 30, 40, 56, 3)  # resized to 48x64 (stretch)
    video, n_prefix = run(tiny, s, "a dog", frames)
    P = 1 if mode == "i2v" else 7  # 30 frames: VAE tiles of 12 + 12 + 6 -> 3 + 3 + 1 latents (< one chunk)
    assert n_prefix == (1 if mode == "i2v" else 30)
    assert video.shape[0] == reference_output_frames(24, P, 24)
    assert video.shape[1:] == (48, 64, 3)


# (frames, fps) -> latents of the reference's encode: temporal tiles of fps // 2 frames, floor(n / 4) latents per
# tile, a 1-frame tile 1 latent, a 2- or 3-frame tile a crash (inference/pipeline/video_process.py, VaeHelper)
REFERENCE_PREFIX_LATENTS = {(1, 24): 1, (25, 24): 7, (28, 24): 7, (29, 24): 7, (30, 24): 7, (31, 24): 7, (32, 24): 8,
                            (29, 25): 7, (25, 30): 5, (28, 30): 6, (30, 30): 6, (31, 30): 7, (26, 24): None,
                            (27, 24): None, (27, 25): None, (2, 24): None, (17, 30): None}


@pytest.mark.parametrize("frames, fps", sorted(REFERENCE_PREFIX_LATENTS))
def test_prefix_latents_as_the_reference_vae_makes_them(tiny, frames, fps):
    from magi_core.pipeline import prefix_latent_count

    expected = REFERENCE_PREFIX_LATENTS[frames, fps]
    video = torch.rand(frames, 16, 16, 3)
    s = Settings(width=16, height=16, fps=fps)
    if expected is None:
        with pytest.raises(ValueError, match=r"VAE tile of [23] frames .* use \d+(, \d+)? or \d+ frames"):
            prefix_latent_count(frames, fps)
        with pytest.raises(ValueError, match="1 or at least 4 frames"):
            encode_prefix(tiny["vae"], video, s)
        return
    assert prefix_latent_count(frames, fps) == expected
    assert encode_prefix(tiny["vae"], video, s).shape[2] == expected


def test_short_prefix_keeps_every_frame(tiny):
    """25 frames at 24 fps: all go to the VAE (tiles 12 + 12 + 1), the last one alone as the 7th latent."""
    s = Settings(width=16, height=16)
    video = torch.rand(25, 16, 16, 3)
    z = encode_prefix(tiny["vae"], video, s)
    torch.testing.assert_close(z[:, :, :6], encode_prefix(tiny["vae"], video[:24], s), rtol=0, atol=0)
    torch.testing.assert_close(z[:, :, 6:], encode_prefix(tiny["vae"], video[24:], s), rtol=0, atol=0)


def test_validation_errors_before_work(tiny):
    cfg = tiny["dit"].cfg
    prompts = encode_prompts(tiny["t5"], "0: a\n2: b")
    with pytest.raises(ValueError, match="multiple of 16"):
        Settings(width=60)
    with pytest.raises(ValueError, match="multiple of window_size"):
        Settings(steps=10)
    with pytest.raises(ValueError, match="fps"):
        Settings(fps=6)
    with pytest.raises(ValueError, match="multiple of window_size \\(3\\)"):  # the model's default: 16 steps
        validate(Settings(window_size=3), cfg, special_tokens=tiny["tokens"])
    with pytest.raises(ValueError, match="special tokens"):
        validate(Settings(), cfg)
    with pytest.raises(ValueError, match="(?i)gap|missing|no prompt|nothing covers"):  # chunk 1 has no prompt
        validate(Settings(num_frames=72), cfg, prompts, special_tokens=tiny["tokens"])
    with pytest.raises(ValueError, match="(?i)past|beyond|only"):  # chunk 2 does not exist in a 1-chunk video
        validate(Settings(num_frames=24), cfg, encode_prompts(tiny["t5"], "0: a\n1-2: b"), special_tokens=tiny["tokens"])


def test_cli_demo_writes_playable_mp4(tmp_path):
    out = tmp_path / "demo.mp4"
    r = subprocess.run([sys.executable, "-m", "magi_core", "generate", "--demo", "--output", str(out), "--frames", "24", "--prompt", "a fox",
                        "--width", "64", "--height", "64", "--steps", "4"], cwd=ROOT, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    video = read_video(out)
    assert video.shape == (24, 64, 64, 3)


def test_cli_missing_models_is_a_clear_error():
    r = subprocess.run([sys.executable, "-m", "magi_core", "generate", "--prompt", "x"], cwd=ROOT, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 2 and "--dit" in r.stderr


def test_v2v_schedule_counts_generated_chunks_only(tiny):
    """A 32-frame prefix is 8 latents: 1 whole prefix chunk (cache only); the schedule covers generated chunks."""
    s = Settings(num_frames=48)  # 12 new latents + 8 prefix -> 4 chunks, 3 generated
    cfg = tiny["dit"].cfg
    validate(s, cfg, encode_prompts(tiny["t5"], "0: a\n1: b\n2: c"), prefix_frames=32, special_tokens=tiny["tokens"])
    with pytest.raises(ValueError):
        validate(s, cfg, encode_prompts(tiny["t5"], "0: a\n1: b\n2-3: c"), prefix_frames=32,
                 special_tokens=tiny["tokens"])


def test_cli_low_vram_flags(tmp_path):
    out = tmp_path / "lowvram.mp4"
    r = subprocess.run([sys.executable, "-m", "magi_core", "generate", "--demo", "--output", str(out), "--frames", "24",
                        "--prompt", "a fox", "--width", "64", "--height", "64", "--steps", "4",
                        "--weight-dtype", "fp8_e4m3fn", "--compile", "--early-first-chunk"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert read_video(out).shape == (24, 64, 64, 3)


def test_chunk_captions_are_shared_not_grown_with_length():
    """A long video keeps one caption per (prompt, duration token), each equal to the chunk's own caption."""
    from magi_core.pipeline import PromptEmbeds, chunk_captions
    from magi_core.text import PromptSchedule
    from magi_core.text.special_tokens import apply_special_tokens, special_tokens_from_arrays

    g = torch.Generator().manual_seed(0)
    C = 8
    tok = special_tokens_from_arrays(*(torch.randn(n, C, generator=g).numpy() for n in (1, 1, 100)))
    emb, mask = torch.randn(800, C, generator=g), torch.zeros(800, dtype=torch.long)
    mask[:5] = 1
    prompts = PromptEmbeds(PromptSchedule.single("p"), {"p": (emb, mask)})
    n = 30
    caps = chunk_captions(prompts, n, 0, Settings(), tok)
    assert len(caps) == n and len({id(c) for c in caps}) == 8  # DURATION_1..8
    for c, cap in enumerate(caps):
        e, m = apply_special_tokens(emb, mask, n - 1 - c, tok)
        assert torch.equal(cap.tokens, e[m.bool()].float())
