"""The node layer's logic without ComfyUI: model discovery, combo checks, schedules, the CLIP bridge, settings,
latents, multi-GPU settings, shared model cache, one whole sampler run on tiny models, shipped workflow files."""
from __future__ import annotations

import gc
import json
import os
import re
import sys
import types
from pathlib import Path

import pytest
import torch
from magi_core.settings import DiTRuntime
from comfyui_harness import node_logic

ROOT = Path(__file__).resolve().parents[1]


mod = node_logic  # nodes/ modules without ComfyUI (nodes/__init__.py, which registers them, is not run)
model_files, choices, conditioning = mod("model_files"), mod("choices"), mod("conditioning")
latents, sampler_settings, handles = mod("latents"), mod("sampler_settings"), mod("handles")
multigpu, loading, generation, previews = mod("multigpu"), mod("loading"), mod("generation"), mod("previews")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from magi_core.demo import make_tiny_assets

    root = tmp_path_factory.mktemp("models")
    return dict(root=root, **make_tiny_assets(root))


@pytest.fixture(scope="module")
def t5(tiny):
    from magi_core.text import T5TextEncoder

    return T5TextEncoder.load(tiny["t5"], cache=None)


@pytest.fixture(scope="module")
def vae(tiny):
    from magi_core.vae import load_vae

    return handles.VAEHandle("vae", ("vae", "tiny"), handles.Loaded(load_vae(tiny["vae"], dtype=torch.float32)))


def dit_handle(tiny, variant="auto", special_tokens="default", **runtime):
    """open_dit as the loader node calls it; `runtime`: DiTRuntime fields (device cpu, sdpa, fast by default)."""
    rt = DiTRuntime(**{**dict(device="cpu", attention="sdpa", precision="fast"), **runtime})
    tokens = tiny["special_tokens"] if special_tokens == "default" else special_tokens
    return loading.open_dit("tiny", tiny["dit"], variant, rt, tokens)


@pytest.fixture
def fake_gpu(monkeypatch):
    """Header-only checks for a CUDA device on a machine without one (nothing is loaded there)."""
    import magi_core.settings

    monkeypatch.setattr(magi_core.settings, "device_problem", lambda dev: None)


# ----------------------------------------------------------------------------- model files
def test_scan_finds_each_kind_in_every_layout(tiny, tmp_path):
    from magi_core.checkpoint import save_official
    from safetensors.torch import load_file, save_file

    root = tmp_path / "magi"
    sd = load_file(str(tiny["dit"]))
    save_official(sd, root / "4.5B_distill", "distill", shards=2)  # official folder: index + shards
    (root / "sub").mkdir()
    save_file({"model.diffusion_model." + k: v for k, v in sd.items()}, str(root / "sub" / "prefixed.safetensors"))
    save_file({"foo.weight": torch.zeros(2)}, str(root / "not_magi.safetensors"))
    (root / ".hidden").mkdir()
    save_file(sd, str(root / ".hidden" / "x.safetensors"))
    os.symlink(tiny["vae"], root / "vae")
    os.symlink(tiny["t5"], root / "t5")
    roots = [root, tiny["root"] / "diffusion_models"]
    assert model_files.scan(roots, "dit") == ["4.5B_distill", "magi1_tiny_distill.safetensors",
                                              "sub/prefixed.safetensors"]
    assert model_files.scan(roots, "vae") == ["vae"]
    assert model_files.scan(roots, "t5") == ["t5"]
    assert model_files.resolve("sub/prefixed.safetensors", roots) == root / "sub" / "prefixed.safetensors"
    assert model_files.resolve("magi1_tiny_distill.safetensors", roots) == tiny["dit"]
    for bad in ("../x", "/etc/passwd", ""):
        with pytest.raises(ValueError, match="pick a name"):
            model_files.resolve(bad, roots)
    with pytest.raises(FileNotFoundError, match="not found in"):
        model_files.resolve("missing.safetensors", roots)


def test_identity_changes_with_the_file(tmp_path):
    f = tmp_path / "a.safetensors"
    f.write_bytes(b"1234")
    before = model_files.identity(f)
    f.write_bytes(b"12345")
    assert model_files.identity(f) != before
    d = tmp_path / "dir"
    d.mkdir()
    (d / "x").write_bytes(b"1")
    before = model_files.identity(d)
    (d / "y").write_bytes(b"2")
    assert model_files.identity(d) != before
    assert model_files.size_on_disk(d) == 2


def test_special_tokens_default(tmp_path):
    asset, magi = tmp_path / "asset.npz", tmp_path / "magi"
    magi.mkdir()
    assert model_files.default_special_tokens(asset, [magi]) is None
    (magi / "special_tokens.npz").write_bytes(b"x")
    (magi / "other.npz").write_bytes(b"x")
    assert model_files.default_special_tokens(asset, [magi]) == magi / "special_tokens.npz"
    asset.write_bytes(b"x")
    assert model_files.default_special_tokens(asset, [magi]) == asset
    assert model_files.special_token_files([magi]) == ["other.npz", "special_tokens.npz"]


# ----------------------------------------------------------------------------- combo validation
def test_combo_check_names_input_value_and_choices():
    assert choices.check("variant", "base", choices.VARIANT) is None
    msg = choices.check("variant", "fp16", choices.VARIANT, "a hint")
    assert "variant" in msg and "'fp16'" in msg and "'distill-fp8'" in msg and msg.endswith("a hint")
    assert choices.check_all([("a", None, ["x"]), ("b", "x", ["x"])]) is True  # None = linked input
    both = choices.check_all([("a", "y", ["x"]), ("b", "z", ["x"])])
    assert "a: 'y'" in both and "b: 'z'" in both
    assert "none available" in choices.check("model", "m", [])
    assert choices.devices(2) == ["auto", "cpu", "cuda:0", "cuda:1"]


# ----------------------------------------------------------------------------- prompt schedules
@pytest.mark.parametrize("text, needle", [
    ("0-2: a fox\n2-: a bird", "overlap"),
    ("0: a fox\n2-: a bird", "nothing covers chunk(s) 1 between"),
    ("0: a fox\n3-: a bird", "chunk(s) 1-2"),
    ("1-: a bird", "must start at 0"),
    ("0-: a fox\n2-: a bird", "runs to the end, so it overlaps"),
    ("0s-2s: a fox\n2.5s-: a bird", "seconds 2s-2.5s"),
    ("0s-2s: a fox\n1s-: a bird", "overlap"),
    ("0-1: a fox\n2-: ", "no prompt after"),
    ("3-1: a fox", "ends before it starts"),
    ("0-1s: a fox", "seconds ('s') on both ends"),
    ("   \n ", "the prompt is empty"),
])
def test_schedule_errors(text, needle):
    with pytest.raises(ValueError, match=None) as e:
        conditioning.check_schedule(text)
    assert needle in str(e.value), str(e.value)


def test_schedule_accepts_good_text():
    assert len(conditioning.check_schedule("a fox in the snow").ranges) == 1
    s = conditioning.check_schedule("0-1: a fox\n  runs fast\n2: a bird\n3-: a cat")
    assert [r.prompt for r in s.ranges] == ["a fox runs fast", "a bird", "a cat"]
    assert len(conditioning.check_schedule("0s-2s: a\n2s-: b").ranges) == 2


def test_chunk_info_by_hand():
    # t2v: 96 frames -> 24 latents -> 4 chunks of 6; each chunk decodes as 2 tiles of 3 latents = 24 frames
    t2v = conditioning.chunk_info(96, 24)
    assert (t2v["chunks"], t2v["generated_chunks"], t2v["output_frames"], t2v["seconds"]) == (4, 4, 96, 4.0)
    # i2v: 1 image latent + 6 new -> 2 whole chunks (12 latents); chunk 0 keeps its image latent: 24 + 24 frames
    i2v = conditioning.chunk_info(24, 24, prefix_frames=1)
    assert (i2v["chunks"], i2v["generated_chunks"], i2v["output_frames"]) == (2, 2, 48)
    # v2v: 8 prefix frames = 2 latents; chunk 0 emits latents 2..5 (tiles of 3 + 1 -> 12 + 1 frames, a 1-latent
    # tile decodes to 1 frame), chunk 1 latents 6..11 (24 frames)
    v2v = conditioning.chunk_info(24, 24, prefix_frames=8)
    assert (v2v["chunks"], v2v["schedule_chunks"], v2v["output_frames"]) == (2, 2, 37)
    # a 32-frame prefix (8 latents) + 24 new latents = 32 -> 6 chunks; the all-prefix chunk 0 gets no prompt
    long = conditioning.chunk_info(96, 24, prefix_frames=32)
    assert (long["chunks"], long["schedule_chunks"]) == (6, 5)
    assert conditioning.chunk_info(96, 30)["chunk_seconds"] == pytest.approx(0.8)


def test_schedule_timeline():
    r = conditioning.schedule_info("0-1: a fox\n2-: a bird", 96, 24)
    assert r["ok"] and [(g["first_chunk"], g["last_chunk"]) for g in r["ranges"]] == [(0, 1), (2, 3)]
    assert [(g["start_s"], g["end_s"]) for g in r["ranges"]] == [(0, 2), (2, 4)]
    assert r["per_chunk"] == ["a fox", "a fox", "a bird", "a bird"]
    # seconds at 30 fps: a chunk lasts 0.8 s, 2 s is boundary floor(2 / 0.8 + 0.5) = 3; 120 frames = 5 chunks
    r = conditioning.schedule_info("0s-2s: a\n2s-: b", 120, 30)
    assert [(g["first_chunk"], g["last_chunk"]) for g in r["ranges"]] == [(0, 2), (3, 4)]
    r = conditioning.schedule_info("0-5: a", 48, 24)
    assert not r["ok"] and "only 2 chunks" in r["error"]


# ----------------------------------------------------------------------------- native CLIP bridge
class FakeClip:
    """ComfyUI's CLIP interface: tokens are one id per word (+ end token 1); the embedding of a sequence is a
    function of every id (like a bidirectional encoder), so cutting after encoding would be caught."""

    def __init__(self, keys=("t5xxl",), extra_out=0, dim=8):
        self.keys, self.extra_out, self.dim, self.calls = keys, extra_out, dim, []

    def tokenize(self, text, **kw):
        self.calls.append(("tokenize", text, kw))
        ids = [(10 + len(w), 1.0) for w in text.split()] + [(1, 1.0)]
        return {k: [list(ids)] for k in self.keys}

    def encode_from_tokens(self, tokens, return_dict=False):
        self.calls.append(("encode", tokens))
        ids = torch.tensor([t for t, _ in tokens["t5xxl"][0]], dtype=torch.float64)
        n = len(ids) + self.extra_out
        base = torch.arange(self.dim, dtype=torch.float64)
        cond = (ids.sum() + torch.arange(n, dtype=torch.float64)[:, None]) * 0.001 + base
        return {"cond": cond[None].float()}


def test_clip_bridge_cleans_pads_and_truncates():
    clip = FakeClip(keys=("t5xxl", "l", "g"))
    emb, mask = conditioning.clip_encode(clip, "A <b>Red</b> FOX   https://x.com/a", max_length=800)
    kind, text, kw = clip.calls[0]
    from magi_core.text import clean_caption

    assert text == clean_caption("A <b>Red</b> FOX   https://x.com/a") and text == text.lower()
    assert kw == {"disable_weights": True, "tokenizer_options": {"t5xxl_min_length": 1}}
    sent = clip.calls[1][1]
    assert sent["l"] == [] and sent["g"] == []  # only T5 tokens are encoded
    n = len(text.split()) + 1
    assert emb.shape == (800, 8) and mask.dtype == torch.int64 and int(mask.sum()) == n
    assert torch.all(emb[n:] == 0) and torch.all(mask[:n] == 1)
    long = " ".join(["word"] * 1000)
    emb, mask = conditioning.clip_encode(FakeClip(), long, max_length=800)
    clip = FakeClip()
    conditioning.clip_encode(clip, long, max_length=800)
    ids = [t for t, _ in clip.calls[1][1]["t5xxl"][0]]
    assert len(ids) == 800 and ids[-1] == 1 and ids[:-1] == [14] * 799  # cut before encoding, end token kept
    assert int(mask.sum()) == 800


def test_clip_bridge_errors():
    with pytest.raises(ValueError, match="no T5-XXL"):
        conditioning.clip_encode(FakeClip(keys=("l", "g")), "a fox")
    with pytest.raises(ValueError, match="T5-only CLIP"):
        conditioning.clip_encode(FakeClip(extra_out=77), "a fox")


def test_clip_bridge_encodes_each_prompt_once():
    from magi_core.pipeline import encode_prompts

    clip = FakeClip()
    pe = encode_prompts(conditioning.ClipT5(clip), conditioning.check_schedule("0: a fox\n1: a bird\n2-: a fox"))
    assert sorted(pe.embeds) == ["a bird", "a fox"] and pe.channels == 8
    assert sum(1 for c in clip.calls if c[0] == "encode") == 2


# ----------------------------------------------------------------------------- sampler settings
def test_build_settings_maps_scalars_to_ranges():
    s = sampler_settings.build_settings(64, 48, 24, 24, 8, 3, 2, 6.0, 1.25, 0.6, False, True)
    assert (s.width, s.height, s.num_frames, s.steps, s.seed, s.window_size) == (64, 48, 24, 8, 3, 2)
    assert s.text_scales == (6.0, 6.0, 6.0, 0.0, 0.0) and s.prev_chunk_scales == (1.25, 1.25, 1.25, 1.0, 1.0)
    assert s.prev_chunks_scale == 0.6 and not s.use_hq and s.use_duration
    opts = sampler_settings.sampler_options(cfg_number="3", text_scales="1,2,3,4,5", noise2clean_kvrange="3; 2",
                                            kv_offload=True)
    s = sampler_settings.build_settings(64, 64, 24, 24, 8, 0, 4, 7.5, 1.5, 0.7, True, True, opts)
    assert s.cfg_number == 3 and s.text_scales == (1, 2, 3, 4, 5) and s.noise2clean_kvrange == (3, 2)
    assert s.kv_offload and s.prev_chunk_scales == (1.5, 1.5, 1.5, 1.0, 1.0)


def test_early_first_chunk_reaches_settings():
    from magi_core.settings import SamplingSettings as Settings

    plain = sampler_settings.build_settings(64, 64, 24, 24, 8, 0, 4, 7.5, 1.5, 0.7, True, True,
                                            sampler_settings.sampler_options())
    assert plain.early_first_chunk is False and Settings().early_first_chunk is False
    opts = sampler_settings.sampler_options(early_first_chunk=True, kv_offload=True)
    assert opts["early_first_chunk"] is True
    s = sampler_settings.build_settings(64, 64, 24, 24, 8, 0, 4, 7.5, 1.5, 0.7, True, True, opts)
    assert isinstance(s, Settings) and s.early_first_chunk is True and s.kv_offload is True


@pytest.mark.parametrize("kw, needle", [
    (dict(text_scales="1,2,3"), "give 5 values"),
    (dict(cfg_t_range="0, 0.5, 0.2, 0.3, 1"), "must be ascending"),
    (dict(prev_chunk_scales="a,b,c,d,e"), "not a comma-separated list"),
    (dict(noise2clean_kvrange="0,1"), "positive chunk counts"),
    (dict(shortcut_mode="8,16"), "give 3 values"),
    (dict(clean_t=0.0), "clean_t must be"),
    (dict(cfg_number="2"), "cfg_number"),
])
def test_sampler_option_errors(kw, needle):
    with pytest.raises(ValueError) as e:
        sampler_settings.sampler_options(**kw)
    assert needle in str(e.value)


def test_sampler_option_errors_come_together():
    """Five mistakes in one queue: all five are named in one message (not one per queue)."""
    with pytest.raises(ValueError) as e:
        sampler_settings.sampler_options(cfg_number="2", cfg_t_range="abc", text_scales="1,2",
                                         shortcut_mode="8,16", clean_t=0.0)
    msg = str(e.value)
    for needle in ("cfg_number must be auto, 1 or 3", "cfg_t_range: 'abc' is not", "text_scales: give 5 values",
                   "shortcut_mode: give 3 values", "clean_t must be"):
        assert needle in msg, needle


# ----------------------------------------------------------------------------- latents
def test_prefix_latent_checks():
    assert latents.prefix_from_latent(None, 64, 64, 16) == (None, 0)
    x = torch.zeros(1, 16, 2, 8, 8)
    assert latents.prefix_from_latent({"samples": x, "magi_chunks": [2]}, 64, 64, 16)[1] == 8  # 2 latents = 8 frames
    assert latents.prefix_from_latent({"samples": x[:, :, :1], "magi_prefix_frames": 1}, 64, 64, 16)[1] == 1  # image
    assert latents.prefix_from_latent({"samples": x, "magi_prefix_frames": 11}, 64, 64, 16)[1] == 11
    seven = torch.zeros(1, 16, 7, 8, 8)  # 25 frames at 24 fps: VAE tiles of 12 + 12 + 1 frames
    assert latents.prefix_from_latent({"samples": seven, "magi_prefix_frames": 25, "magi_fps": 24}, 64, 64, 16, 24)[1] == 25
    with pytest.raises(ValueError, match="encoded for 24 fps but the sampler makes 30 fps"):
        latents.prefix_from_latent({"samples": seven, "magi_prefix_frames": 25, "magi_fps": 24}, 64, 64, 16, 30)
    with pytest.raises(ValueError, match="stands for 25 pixel frames, which give 5 at 30 fps"):
        latents.prefix_from_latent({"samples": seven, "magi_prefix_frames": 25}, 64, 64, 16, 30)
    mark = {"magi_prefix_frames": 1}
    for lat, needle in [({"samples": torch.zeros(2, 16, 1, 8, 8), **mark}, "batch 2"),
                        ({"samples": torch.zeros(1, 4, 1, 8, 8), **mark}, "4 channels"),
                        ({"samples": torch.zeros(1, 16, 1, 8, 10), **mark},
                         "prefix latent is 80x64 but the sampler makes 64x64"),
                        ({"samples": torch.zeros(1, 16, 8, 8)}, "MAGI video latent"),
                        ({"samples": x}, "not made by MAGI VAE Encode"),  # e.g. EmptyHunyuanLatentVideo
                        ({"samples": x, "magi_prefix_frames": 20}, "stands for 20")]:
        with pytest.raises(ValueError, match=None) as e:
            latents.prefix_from_latent(lat, 64, 64, 16)
        assert needle in str(e.value)


def test_split_chunks_and_latent_dict():
    a, b = torch.randn(1, 16, 6, 2, 2), torch.randn(1, 16, 2, 2, 2)
    lat = latents.video_latent([a, b], 24)
    assert lat["samples"].shape == (1, 16, 8, 2, 2) and lat["magi_chunks"] == [6, 2] and lat["magi_fps"] == 24
    pieces = latents.split_chunks(lat)
    assert torch.equal(pieces[0], a) and torch.equal(pieces[1], b)
    assert len(latents.split_chunks({"samples": lat["samples"]})) == 1
    assert len(latents.split_chunks({"samples": lat["samples"], "magi_chunks": [3, 3]})) == 1  # inconsistent
    with pytest.raises(ValueError, match="no chunk"):
        latents.video_latent([], 24)


# ----------------------------------------------------------------------------- multi-GPU settings
def test_multigpu_devices():
    assert multigpu.parse_devices("all", 4) == ["cuda:0", "cuda:1", "cuda:2", "cuda:3"]
    assert multigpu.parse_devices("all", 4, leave_gpu0_free=True) == ["cuda:1", "cuda:2", "cuda:3"]
    assert multigpu.parse_devices(" 2, 0 ", 4) == ["cuda:2", "cuda:0"]
    assert multigpu.parse_devices("cpu", 0, cp_size=2) == ["cpu", "cpu"]
    for text, n, free, needle in [("all", 0, False, "no usable CUDA GPU (0 visible): disconnect MAGI-1 Multi-GPU "
                                                    "Settings"),
                                  ("all", 1, True, "(1 visible, GPU 0 left free): turn leave_gpu0_free off"),
                                  ("0,4", 4, False, "names GPU(s) [4], but the visible GPUs are 0..3"),
                                  ("1,1", 4, False, "names GPU(s) [1] more than once"), ("x", 4, False, "not 'all'"),
                                  ("0,1", 4, True, "leave_gpu0_free"), (",", 4, False, "names no GPU"),
                                  ("1,3", 0, False, "'1,3' names GPUs, but no CUDA GPU is visible here: use 'cpu'")]:
        with pytest.raises(ValueError, match=None) as e:
            multigpu.parse_devices(text, n, free)
        assert needle in str(e.value)
    s = multigpu.make_settings("all", 0, False, 4)
    assert s.cp_size == 4 and s.wants_pool
    s = multigpu.make_settings("0,1,2", 2, False, 4)
    assert s.devices == ["cuda:0", "cuda:1"] and s.cp_size == 2
    assert not multigpu.make_settings("3", 0, False, 4).wants_pool
    with pytest.raises(ValueError, match="needs 4 devices"):
        multigpu.make_settings("0,1", 4, False, 4)
    with pytest.raises(ValueError, match="does not divide the model's 24 attention heads"):
        multigpu.check_heads(handles.MultiGPUSettings(["cpu"] * 5, 5), 24)


def test_pool_generate_hands_over_to_the_pool(monkeypatch):
    import magi_core

    fake = types.ModuleType("magi_core.parallel.pool")
    fake.generate = lambda **kw: iter([kw])
    parallel = types.ModuleType("magi_core.parallel")
    parallel.pool = fake
    monkeypatch.setitem(sys.modules, "magi_core.parallel", parallel)
    monkeypatch.setitem(sys.modules, "magi_core.parallel.pool", fake)
    monkeypatch.setattr(magi_core, "parallel", parallel, raising=False)
    assert next(multigpu.pool_generate(devices=["cpu"], cp_size=2)) == {"devices": ["cpu"], "cp_size": 2}


# ----------------------------------------------------------------------------- shared model cache
def test_shared_models_load_once_while_alive():
    cache, calls = handles.SharedModels(), []

    def load():
        calls.append(1)
        return handles.Loaded(object())

    a = cache.get(("k",), load)
    assert cache.get(("k",), load) is a and cache.peek(("k",)) is a and len(calls) == 1
    del a
    gc.collect()
    assert cache.peek(("k",)) is None  # nothing holds it: the memory is gone
    cache.get(("k",), load)
    assert len(calls) == 2


# ----------------------------------------------------------------------------- loading
def test_open_dit_reads_headers_only(tiny):
    h = dit_handle(tiny)
    assert (h.detection.size, h.detection.variant, h.cfg.distill) == ("tiny", "distill", True)
    from safetensors.torch import load_file

    assert h.nbytes == sum(t.numel() * t.element_size() for t in load_file(str(tiny["dit"])).values())
    assert h.loaded is None
    assert "tiny distill (variant from the file name)" in h.describe()
    assert "special tokens special_tokens.npz" in h.describe() and "install.py" not in h.describe()
    # without a tokens file the panel says, before any run, what the sampler's defaults will need
    assert "special tokens none (the sampler's use_hq and use_duration need special_tokens.npz: get it with " \
           "`python install.py`" in dit_handle(tiny, special_tokens=None).describe()
    assert dit_handle(tiny, variant="base").detection.variant == "base"
    assert "tiny base (variant set on the loader)" in dit_handle(tiny, variant="base").describe()
    with pytest.raises(Exception, match="wrong variant"):
        dit_handle(tiny, variant="distill-fp8")


def test_fp8_checkpoint_rejects_bf16_cast(tmp_path):
    from magi_core.config import preset
    from magi_core.dit import build_dit, init_random_
    from safetensors.torch import save_file

    dit = init_random_(build_dit(preset("tiny-distill-fp8")))
    f = tmp_path / "fp8.safetensors"
    save_file({k: v.contiguous() for k, v in dit.state_dict().items()}, str(f))
    h = loading.open_dit("fp8", f, "auto", DiTRuntime(attention="auto"), None)
    assert h.detection.fp8 and h.runtime.attention is None
    with pytest.raises(ValueError, match="fp8 checkpoint"):
        loading.open_dit("fp8", f, "auto", DiTRuntime(weight_dtype="bf16"), None)


def test_bf16_weight_dtype_restores_reference_dtypes(tiny, tmp_path):
    from magi_core.checkpoint import expected_params
    from safetensors.torch import load_file, save_file

    sd = load_file(str(tiny["dit"]))
    f = tmp_path / "magi1_tiny_distill_fp32.safetensors"
    save_file({k: v.float() for k, v in sd.items()}, str(f))
    h = loading.open_dit("fp32", f, "auto", DiTRuntime(weight_dtype="bf16"), None)
    loaded = loading.load_dit_weights(h, torch.device("cpu"))
    expected = expected_params(loaded.model.cfg)
    assert loaded.info["recast"] > 0
    assert all(p.dtype == expected[n][1] for n, p in loaded.model.named_parameters())
    h2 = loading.open_dit("fp32", f, "auto", DiTRuntime(weight_dtype="bf16", attention="sdpa", precision="exact"), None)
    assert h2.loaded is loaded  # same weights, other run-time settings: no reload
    assert loading.load_dit_weights(h2, torch.device("cpu")) is loaded


# ----------------------------------------------------------------------------- one sampler run
def run_settings(**kw):
    args = dict(width=32, height=32, num_frames=48, fps=24, steps=4, seed=1, window_size=4, text_scale=7.5,
                prev_chunk_scale=1.5, prev_chunks_scale=0.7, use_hq=True, use_duration=True)
    args.update(kw)
    return sampler_settings.build_settings(**args)


class RecordingHooks(generation.Hooks):
    def __init__(self, cancel_after=None):
        self.events, self.loads, self.cancel_after, self.calls = [], 0, cancel_after, 0

    def load_dit(self, handle, vae):
        self.loads += 1
        return loading.load_dit_weights(handle, torch.device("cpu")).model

    def progress(self, i, total, chunk):
        self.calls = i
        self.events.append(("progress", i, total, chunk))

    def cancelled(self):
        return self.cancel_after is not None and self.calls >= self.cancel_after

    def chunk_done(self, index, total, frames):
        self.events.append(("chunk", index, total, None if frames is None else tuple(frames.shape)))


def test_generation_streams_chunks_and_reuses_preview_frames(tiny, t5, vae):
    from magi_core.pipeline import encode_prompts

    cond = encode_prompts(t5, conditioning.check_schedule("0: a red fox\n1-: a cat sleeps"))
    hooks = RecordingHooks()
    lat = generation.run(dit_handle(tiny), cond, run_settings(), hooks, vae=vae)
    assert lat["samples"].shape == (1, 16, 12, 4, 4) and lat["magi_chunks"] == [6, 6]
    chunks = [e for e in hooks.events if e[0] == "chunk"]
    assert chunks == [("chunk", 0, 2, (24, 32, 32, 3)), ("chunk", 1, 2, (24, 32, 32, 3))]
    progress = [e for e in hooks.events if e[0] == "progress"]
    assert [p[1] for p in progress] == list(range(1, progress[0][2] + 1))  # every DiT call, in order
    frames = latents.decode_video(vae.model, lat, latents.DEFAULT_TILING, vae_key=vae.key)
    assert frames is lat["magi_decoded"]["frames"]  # reused, not decoded again
    scaled = latents.decode_video(vae.model, {**lat, "samples": lat["samples"] * 0},  # LatentMultiply x0 keeps keys
                                  latents.DEFAULT_TILING, vae_key=vae.key)
    assert scaled is not frames and not torch.allclose(scaled, frames, atol=1e-3)
    fresh = latents.decode_video(vae.model, {k: v for k, v in lat.items() if k != "magi_decoded"},
                                 latents.DEFAULT_TILING, vae_key=vae.key)
    assert torch.allclose(fresh, frames, atol=1e-5)
    other = latents.decode_video(vae.model, lat, dict(latents.DEFAULT_TILING, tile_size=16, tile_overlap=0.5),
                                  vae_key=vae.key)
    assert other is not frames and other.shape == frames.shape
    lat["samples"].mul_(0)  # the sampler's own tensor, changed in place since: decoded again
    assert latents.decode_video(vae.model, lat, latents.DEFAULT_TILING, vae_key=vae.key) is not frames


def test_generation_image_prefix_and_no_preview(tiny, t5, vae):
    from magi_core.pipeline import encode_prefix, encode_prompts
    from magi_core.settings import SamplingSettings as Settings

    cond = encode_prompts(t5, "a red fox")
    img = torch.rand(1, 40, 56, 3)
    prefix = {"samples": encode_prefix(vae.model, img, Settings(width=32, height=32), tile_frames=12),
              "magi_prefix_frames": 1}
    hooks = RecordingHooks()
    lat = generation.run(dit_handle(tiny), cond, run_settings(num_frames=24), hooks, prefix=prefix, vae=vae,
                         preview=False)
    assert lat["magi_chunks"] == [6, 6] and "magi_decoded" not in lat
    assert [e[3] for e in hooks.events if e[0] == "chunk"] == [None, None]
    frames = latents.decode_video(vae.model, lat, latents.DEFAULT_TILING)
    assert frames.shape == (48, 32, 32, 3)  # see test_chunk_info_by_hand


def test_generation_checks_before_loading_and_cancels(tiny, t5):
    from magi_core.pipeline import encode_prompts
    from magi_core.sampling.executor import SamplingCancelled

    cond = encode_prompts(t5, conditioning.check_schedule("0-5: a fox"))
    for kw, needle in [(dict(width=40), "multiple of 16"), (dict(steps=6), "multiple of window_size")]:
        with pytest.raises(ValueError, match=needle):  # the sampler node's settings are checked when built
            run_settings(**kw)
    hooks = RecordingHooks()
    with pytest.raises(ValueError, match="only 2 chunks"):
        generation.run(dit_handle(tiny), cond, run_settings(), hooks)
    assert hooks.loads == 0
    hooks = RecordingHooks()
    with pytest.raises(ValueError, match="special tokens"):
        generation.run(dit_handle(tiny, special_tokens=None), encode_prompts(t5, "a fox"), run_settings(), hooks)
    hooks = RecordingHooks(cancel_after=1)
    with pytest.raises(SamplingCancelled):
        generation.run(dit_handle(tiny), encode_prompts(t5, "a fox"), run_settings(), hooks)
    assert hooks.calls == 1 and not [e for e in hooks.events if e[0] == "chunk"]


class StopAfterChunk(RecordingHooks):
    """Cancels after `chunks` chunks finished, or raises `error` from the preview of the chunk after them; records
    what keep_unfinished got."""

    def __init__(self, chunks=1, error=None):
        super().__init__()
        self.after, self.error, self.kept = chunks, error, None

    def cancelled(self):
        return self.error is None and len([e for e in self.events if e[0] == "chunk"]) >= self.after

    def chunk_done(self, index, total, frames):
        if self.error is not None and index == self.after:
            raise self.error
        super().chunk_done(index, total, frames)

    def keep_unfinished(self, latent, frames, vae):
        self.kept = (latent, list(frames), vae)


def read_frames(path):
    from magi_core.video import read_video

    return read_video(path)


def test_a_stopped_run_keeps_its_finished_chunks(tiny, t5, vae, tmp_path):
    from magi_core.pipeline import encode_prompts
    from magi_core.sampling.executor import SamplingCancelled

    unfinished = mod("unfinished")
    cond = encode_prompts(t5, "a red fox")
    hooks = StopAfterChunk(chunks=1)
    with pytest.raises(SamplingCancelled):
        generation.run(dit_handle(tiny), cond, run_settings(num_frames=72), hooks, vae=vae)
    latent, frames, got_vae = hooks.kept
    assert latent["magi_chunks"] == [6] and latent["magi_fps"] == 24 and len(frames) == 1 and got_vae is vae
    # the same seed run to the end: its first chunk is the one kept (later chunks never change earlier ones)
    whole = generation.run(dit_handle(tiny), cond, run_settings(num_frames=72), RecordingHooks(), vae=vae)
    assert torch.equal(latent["samples"], whole["samples"][:, :, :6])

    # with the preview frames: an mp4 of those frames, as write_mp4 encodes them (32x32 noise loses much to H.264's
    # 4:2:0 chroma, so compare two encodings of the same frames, and the mean brightness)
    from magi_core.video import write_mp4

    [mp4] = unfinished.save_unfinished(latent, frames, vae, tmp_path / "a")
    video = read_frames(mp4)
    write_mp4(tmp_path / "ref.mp4", frames[0], 24)
    ref = read_frames(tmp_path / "ref.mp4")  # x264's threads make two encodings differ slightly (mean 0.002 here,
    assert mp4.name == "a.mp4" and (video - ref).abs().mean() < 0.02  # where each is 0.17 away from the frames)
    assert abs(video.mean() - frames[0].mean()) < 0.02
    # without them (a long video keeps no preview frames): decoded again, the same video
    [mp4b] = unfinished.save_unfinished(latent, [], vae, tmp_path / "b")
    assert (read_frames(mp4b) - video).abs().mean() < 0.02
    # without a VAE: ComfyUI's .latent file (what native Load Latent reads)
    from safetensors import safe_open

    [lat] = unfinished.save_unfinished(latent, [], None, tmp_path / "c")
    with safe_open(str(lat), "pt") as f:
        assert set(f.keys()) == {"latent_tensor", "latent_format_version_0"}
        assert torch.equal(f.get_tensor("latent_tensor"), latent["samples"])
        assert f.metadata()["magi_chunks"] == "[6]"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.mp4", "b.mp4", "c.latent", "ref.mp4"]  # no temp file


def test_a_run_that_fails_keeps_its_finished_chunks_and_its_error(tiny, t5, vae, tmp_path):
    from magi_core.pipeline import encode_prompts

    unfinished = mod("unfinished")
    hooks = StopAfterChunk(chunks=1, error=RuntimeError("out of memory (simulated)"))
    with pytest.raises(RuntimeError, match="simulated"):  # the run's own error, not one from the saving
        generation.run(dit_handle(tiny), encode_prompts(t5, "a fox"), run_settings(num_frames=72), hooks, vae=vae)
    latent, frames, _ = hooks.kept
    assert latent["magi_chunks"] == [6, 6] and len(frames) == 2  # the failing chunk's latent had finished too

    class Broken:  # a VAE that fails to decode: the latent is kept instead
        model = None

    files = unfinished.save_unfinished(latent, [], Broken(), tmp_path / "d")
    assert [p.name for p in files] == ["d.latent"]
    files = unfinished.save_unfinished(latent, frames[:1], Broken(), tmp_path / "e")  # fails at chunk 2
    assert [p.name for p in files] == ["e.mp4", "e.latent"] and read_frames(files[0]).shape[0] == 24
    # Cancel pressed again while chunks are decoded for the video: the decoding stops, the latent is kept whole
    asked = []
    files = unfinished.save_unfinished(latent, [], vae, tmp_path / "f", stop=lambda: asked.append(1) or len(asked) > 1)
    assert [p.name for p in files] == ["f.mp4", "f.latent"] and read_frames(files[0]).shape[0] == 24
    assert len(asked) == 2  # asked before each decode, not for the preview frames it already had


def test_settings_the_model_will_not_use_are_named(tiny, t5, caplog):
    """A distill model runs one pass: a changed text_scale is said (console and node), the default one is not."""
    from magi_core.pipeline import encode_prompts

    class NoteHooks(RecordingHooks):
        def note(self, text):
            super().note(text)
            self.events.append(("note", text))

    cond = encode_prompts(t5, "a red fox")
    cfg = dit_handle(tiny, variant="distill").cfg
    assert generation.unused_settings(cfg, run_settings()) is None
    note = generation.unused_settings(cfg, run_settings(text_scale=3.0))
    assert note.startswith("text_scale / text_scales not used") and "distill" in note
    assert generation.unused_settings(dit_handle(tiny, variant="base").cfg, run_settings(prev_chunks_scale=0.5))
    hooks = NoteHooks()
    with caplog.at_level("WARNING"):
        generation.run(dit_handle(tiny, variant="distill"), cond, run_settings(num_frames=24, text_scale=3.0), hooks)
    assert ("note", note) in hooks.events and note in caplog.text
    hooks = NoteHooks()  # previews asked for (the default) without a VAE: said, not silently skipped
    generation.run(dit_handle(tiny), cond, run_settings(num_frames=24), hooks, vae=None, preview=True)
    assert [e[1] for e in hooks.events if e[0] == "note"] == [
        "preview 'decoded chunks' needs the vae input: connect the VAE loader to the sampler to see each chunk "
        "(no previews this run)"]


# ----------------------------------------------------------------------------- performance switches
class ModelHooks(RecordingHooks):
    """Records the DiT the run got and its compile_ops at every DiT call."""

    def __init__(self):
        super().__init__()
        self.model, self.compile_seen = None, []

    def load_dit(self, handle, vae):
        self.model = super().load_dit(handle, vae)
        return self.model

    def progress(self, i, total, chunk):
        super().progress(i, total, chunk)
        self.compile_seen.append(self.model.compile_ops)


def test_info_panel_says_when_fp8_attention_cannot_run(tiny, monkeypatch):
    from magi_core.kernels import attention_fp8

    assert "fp8" not in dit_handle(tiny).describe()
    text = dit_handle(tiny, attention="fp8-approx").describe()
    assert "fp8-approx can't run here (it needs a CUDA GPU): the exact bf16 attention runs instead" in text
    monkeypatch.setattr(attention_fp8, "why_unusable", lambda q: None)  # as on an H100 with the package
    assert "fp8-approx is APPROXIMATE" in dit_handle(tiny, attention="fp8-approx").describe()


def test_loader_panel_names_weight_storage_and_compile_where_it_works(tiny, fake_gpu):
    assert "compiled element-wise ops" in dit_handle(tiny, compile=True, device="cuda:0").describe()
    assert "weights stored as fp8_e4m3fn" in dit_handle(tiny, weight_dtype="fp8_e4m3fn").describe()
    assert "weights stored" not in dit_handle(tiny).describe()


def test_decoding_a_latent_without_the_samplers_keys_is_said():
    x = torch.zeros(1, 16, 6, 4, 4)
    note = latents.missing_keys_note({"samples": x})  # what native Load Latent returns
    assert "decoded at 24 fps in one piece" in note
    assert latents.missing_keys_note(latents.video_latent([x], 12)) is None


def test_compile_is_a_run_time_setting_that_reaches_the_dit_and_the_workers(tiny, t5):
    from magi_core.parallel.worker import ModelSpec
    from magi_core.pipeline import encode_prompts

    on, off = dit_handle(tiny, compile=True), dit_handle(tiny)
    assert on.runtime.compile and not off.runtime.compile and on.key == off.key  # not part of the weights
    assert ModelSpec.from_dict(on.spec()).runtime.compile and not ModelSpec.from_dict(off.spec()).runtime.compile
    assert "compile: no effect on cpu (CUDA only)" in on.describe() and "compile" not in off.describe()
    cond = encode_prompts(t5, "a red fox")
    runs = []
    for handle in (on, off, on):
        hooks = ModelHooks()
        generation.run(handle, cond, run_settings(num_frames=24), hooks)
        runs.append(hooks)
    assert runs[0].model is runs[1].model is runs[2].model  # toggling compile never reloads
    assert runs[0].compile_seen and set(runs[0].compile_seen) == {True}
    assert set(runs[1].compile_seen) == {False} and set(runs[2].compile_seen) == {True}


def test_block_swap_limits_are_checked_before_loading(tiny, fake_gpu):
    layers = 3  # the tiny model
    for n, needle in [(layers + 1, f"the maximum is {layers}"), (64, f"the maximum is {layers}"),
                      (-1, "must be at least 0")]:
        with pytest.raises(ValueError, match=None) as e:
            dit_handle(tiny, device="cuda:0", block_swap=n)
        assert needle in str(e.value) and "block" in str(e.value), str(e.value)
    with pytest.raises(ValueError, match=None) as e:  # CPU: every layer is in host memory already
        dit_handle(tiny, device="cpu", block_swap=1)
    assert "CUDA GPU" in str(e.value) and "set block swap to 0" in str(e.value)

    h = dit_handle(tiny, device="cuda:0", block_swap=layers)  # all layers streamed is allowed; headers only
    plain = dit_handle(tiny, device="cuda:0")
    assert h.key != plain.key  # part of how the weights sit in memory: a separate model
    assert h.layer_nbytes > 0 and h.layer_nbytes * layers < h.nbytes
    assert h.streamed_nbytes == 2 * h.layer_nbytes and h.resident_nbytes == h.nbytes - h.layer_nbytes
    assert plain.resident_nbytes == plain.nbytes and plain.streamed_nbytes == 0
    assert f"block swap {layers} of {layers} layers" in h.describe()
    calls = []
    with pytest.raises(ValueError, match="set block swap to 0"):  # the sampler's device is the CPU after all
        loading.load_dit_weights(h, torch.device("cpu"), before_load=lambda: calls.append(1))
    assert not calls  # refused before anything was freed or read


def test_block_swap_reaches_the_pool_workers(tiny, fake_gpu):
    """With Multi-GPU Settings every worker streams the same layers from its own host memory."""
    from magi_core.parallel.worker import ModelSpec

    h = dit_handle(tiny, device="cuda:0", block_swap=1)
    assert ModelSpec.from_dict(h.spec()).runtime.block_swap == 1
    assert ModelSpec.from_dict(dit_handle(tiny).spec()).runtime.block_swap == 0


def test_block_swap_loads_swapped_and_gives_the_same_video(tiny, t5, monkeypatch):
    """The loading path with block swap, on the CPU (the node refuses CPU; the check is bypassed here): the
    layers past the resident ones are swapped, the resident part (what ComfyUI's ModelPatcher manages) is the
    rest of the model, and the generated latents are those of the unswapped model."""
    import magi_core.settings
    from magi_core.pipeline import encode_prompts

    monkeypatch.setattr(magi_core.settings, "block_swap_problem", lambda dev: None)
    cond = encode_prompts(t5, "a red fox")
    ref_hooks, swap_hooks = ModelHooks(), ModelHooks()
    ref = generation.run(dit_handle(tiny), cond, run_settings(num_frames=24), ref_hooks)
    h = dit_handle(tiny, block_swap=2)
    out = generation.run(h, cond, run_settings(num_frames=24), swap_hooks)
    model = swap_hooks.model
    assert model is not ref_hooks.model  # another weights key: loaded separately
    layers = list(model.videodit_blocks.layers)
    assert model.block_swap.swapped == layers[1:]  # resident = num_layers - block_swap
    assert loading.load_dit_weights(h, torch.device("cpu")).model is model  # enabled once, then shared
    resident = loading.resident_modules(model)
    held = {id(p) for p in resident.parameters()}
    swapped = {id(p) for layer in layers[1:] for p in layer.parameters()}
    assert not held & swapped and held | swapped == {id(p) for p in model.parameters()}
    assert layers[0] in list(resident) and model.x_embedder in list(resident)
    assert loading.resident_modules(ref_hooks.model)[0] is ref_hooks.model  # no swap: the whole model
    assert torch.equal(out["samples"], ref["samples"])


def test_previews(tmp_path):
    frames = torch.rand(7, 600, 300, 3)
    img = previews.still(frames)
    assert max(img.size) == previews.MAX_SIZE and img.size[0] < img.size[1]
    saved = previews.save_animation(frames, tmp_path, "magi_5_chunk000", fps=24)
    assert saved["type"] == "temp" and saved["subfolder"] == "magi_previews"
    assert previews.frame_count(tmp_path / "magi_previews" / saved["filename"]) == 7


# ----------------------------------------------------------------------------- shipped workflows (structure)
CORE_NODES = {"CreateVideo", "SaveVideo", "LoadImage", "LoadVideo", "GetVideoComponents", "CLIPLoader", "Note"}


def ui_workflows():
    return sorted((ROOT / "workflows").glob("*.json"))


def api_twin_path(path):
    return ROOT / "workflows" / "api" / f"{json.loads(path.read_text())['extra']['magi_api']}.json"


def test_every_workflow_has_api_twin_and_thumbnail():
    names = [json.loads(p.read_text())["extra"]["magi_api"] for p in ui_workflows()]
    assert {"magi1_t2v", "magi1_i2v", "magi1_v2v", "magi1_prompt_schedule", "magi1_long_video",
            "magi1_t2v_multigpu"} <= set(names)
    assert len(set(names)) == len(names)
    for p in ui_workflows():
        assert (p.with_suffix(".jpg")).is_file(), f"{p.name} has no thumbnail"
        assert api_twin_path(p).is_file(), f"{p.name} has no API twin"


@pytest.mark.parametrize("path", ui_workflows(), ids=lambda p: p.stem)
def test_workflow_structure(path):
    wf = json.loads(path.read_text())
    api = json.loads(api_twin_path(path).read_text())
    assert wf["version"] == 0.4
    nodes = {n["id"]: n for n in wf["nodes"]}
    assert len(nodes) == len(wf["nodes"]) and wf["last_node_id"] == max(nodes)
    for n in wf["nodes"]:
        assert n["type"].startswith("Magi") or n["type"] in CORE_NODES, n["type"]
        for v in n.get("widgets_values", []):
            assert not (isinstance(v, str) and "\\" in v), f"OS-specific path {v!r}"
    real = {str(i): n for i, n in nodes.items() if n["type"] != "Note"}
    assert set(api) == set(real) and all(api[i]["class_type"] == real[i]["type"] for i in api)
    for lid, src, slot, dst, dslot, typ in wf["links"]:
        assert nodes[dst]["inputs"][dslot]["link"] == lid and lid in nodes[src]["outputs"][slot]["links"]
        assert nodes[src]["outputs"][slot]["type"] == typ
        assert api[str(dst)]["inputs"][nodes[dst]["inputs"][dslot]["name"]] == [str(src), slot]
    api_links = sum(1 for n in api.values() for v in n["inputs"].values() if isinstance(v, list))
    assert api_links == len(wf["links"])


# ----------------------------------------------------------------------------- install.py (offline: planning)
def _install():
    import importlib.util

    if "magi_install" not in sys.modules:
        spec = importlib.util.spec_from_file_location("magi_install", ROOT / "install.py")
        m = importlib.util.module_from_spec(spec)
        sys.modules["magi_install"] = m  # dataclasses look their module up there
        spec.loader.exec_module(m)
    return sys.modules["magi_install"]


REMOTE = {
    "ckpt/magi/4.5B_distill/inference_weight.distill/model-00001-of-00002.safetensors": 10,
    "ckpt/magi/4.5B_distill/inference_weight.distill/model-00002-of-00002.safetensors": 20,
    "ckpt/magi/4.5B_distill/inference_weight.distill/model.safetensors.index.json": 5,
    "ckpt/magi/4.5B_base/inference_weight/model.safetensors": 99,
    "ckpt/vae/config.json": 3, "ckpt/vae/diffusion_pytorch_model.safetensors": 7,
    "ckpt/t5/t5-v1_1-xxl/config.json": 2, "ckpt/t5/t5-v1_1-xxl/spiece.model": 4,
}


def test_install_plan(tmp_path):
    inst = _install()
    items = inst.items_for(["4.5B-distill"])
    assert items == ["4.5B-distill", "vae", "t5"] and inst.items_for(["vae"]) == ["vae"]
    assert inst.items_for(["4.5B-distill"], with_t5=False) == ["4.5B-distill", "vae"]
    with pytest.raises(SystemExit, match="unknown download 4B"):
        inst.items_for(["4B"])
    # the folder names the workflows and the DiT loader show, and '_' or any case for '-'
    assert inst.items_for(["4.5b_distill"], False, False) == ["4.5B-distill"]
    assert inst.items_for(["24B_distill_quant", "24B-distill-fp8"], False, False) == ["24B-distill-fp8"]
    assert inst.items_for(["T5"]) == ["t5"]
    (tmp_path / "magi" / "vae").mkdir(parents=True)
    (tmp_path / "magi" / "vae" / "config.json").write_bytes(b"abc")  # complete
    (tmp_path / "text_encoders" / "t5-v1_1-xxl").mkdir(parents=True)
    (tmp_path / "text_encoders" / "t5-v1_1-xxl" / "spiece.model").write_bytes(b"x")  # wrong size
    actions = {a.repo_path: a for a in inst.plan(items, REMOTE, tmp_path)}
    assert "ckpt/magi/4.5B_base/inference_weight/model.safetensors" not in actions
    assert actions["ckpt/vae/config.json"].state == "done"
    assert actions["ckpt/t5/t5-v1_1-xxl/spiece.model"].state == "replace"
    shard = actions["ckpt/magi/4.5B_distill/inference_weight.distill/model-00002-of-00002.safetensors"]
    assert shard.state == "download"
    assert shard.dest == tmp_path / "magi" / "4.5B_distill" / "inference_weight.distill" / "model-00002-of-00002.safetensors"
    assert inst.check_space(list(actions.values()), tmp_path, free=10**9) == 10 + 20 + 5 + 7 + 2 + 4
    with pytest.raises(SystemExit, match="not enough disk space"):
        inst.check_space(list(actions.values()), tmp_path, free=47)
    with pytest.raises(SystemExit, match="lists no files"):
        inst.plan(["24B-base"], REMOTE, tmp_path)


def test_install_layout_matches_shipped_workflows():
    inst = _install()
    names = set()
    for p in (ROOT / "workflows" / "api").glob("*.json"):
        for node in json.loads(p.read_text()).values():
            for key in ("model", "vae", "t5"):
                if node["class_type"].endswith("Loader") and isinstance(node["inputs"].get(key), str):
                    names.add(node["inputs"][key])
    targets = {dst.split("/", 1)[1] for _, dst in inst.ITEMS.values()}
    assert names and names <= targets, names - targets


def test_install_fetch_moves_only_complete_files(tmp_path):
    inst = _install()
    actions = inst.plan(["vae"], REMOTE, tmp_path)

    def download(repo_path, staging, short=0):
        f = Path(staging) / repo_path
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_bytes(b"x" * (REMOTE[repo_path] - short))
        return f

    with pytest.raises(SystemExit, match="downloaded 2 bytes, the hub lists 3"):
        inst.fetch(actions, tmp_path, lambda p, s: download(p, s, short=1))
    assert not (tmp_path / "magi" / "vae" / "config.json").exists()  # never moved into place
    inst.fetch(inst.plan(["vae"], REMOTE, tmp_path), tmp_path, download)
    assert (tmp_path / "magi" / "vae" / "diffusion_pytorch_model.safetensors").stat().st_size == 7
    assert not (tmp_path / "magi" / ".download").exists()
    assert all(a.state == "done" for a in inst.plan(["vae"], REMOTE, tmp_path))  # a rerun downloads nothing


def test_install_special_tokens_checked_by_hash(tmp_path):
    import hashlib

    inst = _install()
    src = tmp_path / "tokens.npz"
    src.write_bytes(b"not really an npz")
    good = hashlib.sha256(src.read_bytes()).hexdigest()
    dest = tmp_path / "assets" / "special_tokens.npz"
    with pytest.raises(SystemExit, match=re.escape(str(src)) + " has SHA-256 .*expected 00.*not MAGI-1's special_tokens.npz"):
        inst.install_tokens(str(src), dest, expected="00" * 32)  # the file it names is the one given
    assert not dest.exists()
    assert inst.install_tokens(str(src), dest, expected=good).startswith("wrote")
    assert "up to date" in inst.install_tokens(str(src), dest, expected=good)
    assert inst.TOKENS["dest"] == ROOT / "magi_core" / "assets" / "special_tokens.npz"


def test_install_finds_comfyui_models(tmp_path):
    inst = _install()
    pack = tmp_path / "ComfyUI" / "custom_nodes" / "ComfyUI-MAGI1"
    pack.mkdir(parents=True)
    assert inst.comfyui_models_dir(pack) is None
    (tmp_path / "ComfyUI" / "folder_paths.py").write_text("")
    assert inst.comfyui_models_dir(pack) == tmp_path / "ComfyUI" / "models"


def test_install_matches_the_reference_tokens(shared_file):
    inst = _install()
    assert inst.sha256(shared_file("special_tokens.npz")) == inst.TOKENS["sha256"]


def test_install_exits_non_zero_when_the_special_tokens_fail(monkeypatch, capsys):
    inst = _install()

    def offline(source=None):
        raise OSError("network is unreachable")

    monkeypatch.setattr(inst, "install_tokens", offline)
    assert inst.main([]) == 1
    assert "special_tokens.npz not installed" in capsys.readouterr().err
    assert inst.main(["--skip-special-tokens"]) == 0


def test_create_video_fps_notes_follow_the_prompts_links():
    """The sampler's note about a native Create Video at another fps: through the decoder only (links are
    [node id, output slot]), not for a rate within 1 % (23.976 against 24), not for a linked fps."""
    prompt = {"3": {"class_type": "MagiSampler", "inputs": {"fps": 24}},
              "8": {"class_type": "MagiVAEDecode", "inputs": {"samples": ["3", 0], "vae": ["2", 0]}},
              "9": {"class_type": "CreateVideo", "inputs": {"images": ["8", 0], "fps": 30.0}},
              "10": {"class_type": "CreateVideo", "inputs": {"images": ["8", 0], "fps": 23.976}},
              "11": {"class_type": "CreateVideo", "inputs": {"images": ["8", 0], "fps": ["12", 0]}},
              "13": {"class_type": "CreateVideo", "inputs": {"images": ["8", 1], "fps": 12}},
              "14": {"class_type": "CreateVideo", "inputs": {"images": ["3", 0], "fps": 12}}}
    notes = generation.create_video_fps_notes(prompt, "3", 24)
    assert notes == ["Create Video (node 9) plays at 30 fps but this video is made for 24 fps: it will run 1.25x as "
                     "fast; give both the same fps"], notes
    at30 = generation.create_video_fps_notes(prompt, "3", 30)
    assert len(at30) == 1 and at30[0].startswith("Create Video (node 10) plays at 23.976 fps") and "0.799x" in at30[0]
    assert generation.create_video_fps_notes(None, "3", 24) == [] and generation.create_video_fps_notes(prompt, None, 24) == []
