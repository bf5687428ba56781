"""Checkpoint layouts, detection, strict errors, inspect/convert CLI (docs/model.md)."""
import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import magi_core  # noqa: F401
from magi_core import checkpoint as C
from magi_core.__main__ import main as cli
from magi_core.config import preset
from magi_core.dit import build_dit, init_random_
from magi_core.settings import DiTRuntime

ROOT = Path(__file__).resolve().parents[1]
F32, BF16, F8 = "float32", "bfloat16", "float8_e4m3fn"


# ----------------------------------------------------------------------------- spec tables (independent of the model)


def spec_table(size: str, fp8: bool) -> dict:
    """name -> (shape, in-memory dtype), written from the module shapes of `inference/model/dit/dit_module.py`."""
    h, L, F, nh, glu, cin = {"4.5B": (3072, 34, 12288, 24, False, 16), "24B": (6144, 48, 16384, 48, True, 32)}[size]
    g, d, p, cc, lc = 8, 128, 2, 4096, 800
    c, Q, K = h // 4, nh * d, g * d
    t = {
        "x_embedder.weight": ((h, cin, 1, p, p), F32),
        "t_embedder.mlp.0.weight": ((c, 256), F32), "t_embedder.mlp.0.bias": ((c,), F32),
        "t_embedder.mlp.2.weight": ((c, c), F32), "t_embedder.mlp.2.bias": ((c,), F32),
        "y_embedder.null_caption_embedding": ((lc, cc), F32),
        "y_embedder.y_proj_xattn.0.weight": ((h, cc), F32), "y_embedder.y_proj_xattn.0.bias": ((h,), F32),
        "y_embedder.y_proj_adaln.0.weight": ((c, cc), F32), "y_embedder.y_proj_adaln.0.bias": ((c,), F32),
        "rope.bands": ((d // 8,), F32),
        "videodit_blocks.final_layernorm.weight": ((h,), F32), "videodit_blocks.final_layernorm.bias": ((h,), F32),
        "final_linear.linear.weight": ((p * p * cin, h), F32),
    }
    for i in range(L):
        pre = f"videodit_blocks.layers.{i}."
        quant = fp8 and 0 < i < L - 1

        def lin(name, out, inp, per_channel):
            if not quant:
                t[pre + name + ".weight"] = ((out, inp), BF16)
                return
            t[pre + name + ".weight"] = ((1, out, inp), F8)
            t[pre + name + ".weight_scale"] = ((1,), F32)
            t[pre + name + ".input_scale"] = ((1,) if per_channel else (inp,), F32)
            if per_channel:
                t[pre + name + ".smooth_scale"] = ((1, inp), F32)

        def norm(name, size, dtype):
            t[pre + name + ".weight"] = ((size,), dtype)
            t[pre + name + ".bias"] = ((size,), dtype)

        t[pre + "ada_modulate_layer.proj.0.weight"] = ((2 * h, c), BF16)
        t[pre + "ada_modulate_layer.proj.0.bias"] = ((2 * h,), BF16)
        norm("self_attention.linear_qkv.layer_norm", h, BF16)
        for name, rows in (("q", Q), ("qx", Q), ("k", K), ("v", K)):
            lin("self_attention.linear_qkv." + name, rows, h, False)
        t[pre + "self_attention.linear_kv_xattn.weight"] = ((2 * K, h), BF16)
        lin("self_attention.linear_proj", h, 2 * Q, True)
        norm("self_attention.q_layernorm", d, F32)
        norm("self_attention.q_layernorm_xattn", d, BF16)
        norm("self_attention.k_layernorm", d, F32)
        norm("self_attention.k_layernorm_xattn", d, BF16)
        norm("self_attn_post_norm", h, F32)
        norm("mlp.layer_norm", h, BF16)
        lin("mlp.linear_fc1", F * (2 if glu else 1), h, False)
        lin("mlp.linear_fc2", h, F, True)
        norm("mlp_post_norm", h, F32)
    return t


def numel(shape):
    n = 1
    for s in shape:
        n *= s
    return n


TOTALS = {  # docs/model.md, tensors and parameters
    "4.5B": (898, 4_459_898_128), "24B": (1262, 23_899_281_936),
    "4.5B-distill-fp8": (1410, 4_460_979_760), "24B-distill-fp8": (1998, 23_902_014_382),
}


def run_cli(capsys, *args):
    code = cli(list(args))
    return code, capsys.readouterr().out


@pytest.mark.parametrize("name", list(TOTALS))
def test_preset_tables_match_spec(name, capsys):
    code, out = run_cli(capsys, "inspect", name, "--json")
    assert code == 0
    r = json.loads(out)
    size, fp8 = name.split("-")[0], name.endswith("fp8")
    spec = spec_table(size, fp8)
    assert (r["num_tensors"], r["num_params"]) == TOTALS[name]
    assert len(spec) == TOTALS[name][0] and sum(numel(s) for s, _ in spec.values()) == TOTALS[name][1]
    assert r["size"] == size and r["variant"] == ("distill-fp8" if fp8 else "base")
    got = {n: (tuple(p["shape"]), p["dtype"]) for n, p in r["params"].items()}
    assert set(got) == set(spec), (set(got) ^ set(spec))
    bad = [(n, got[n], spec[n]) for n in spec if got[n] != spec[n]]
    assert not bad, bad[:5]


def test_cli_subprocess_samples_from_spec_tables():
    """Hand-picked rows of the spec tables, through a real `python -m magi_core inspect --json`."""
    out = subprocess.run([sys.executable, "-m", "magi_core", "inspect", "4.5B-distill-fp8", "--json"], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout
    p = json.loads(out)["params"]

    def row(name):
        return tuple(p[name]["shape"]), p[name]["dtype"]

    L = "videodit_blocks.layers."
    assert row(L + "0.self_attention.linear_kv_xattn.weight") == ((2048, 3072), BF16)
    assert row(L + "1.self_attention.linear_qkv.q.weight") == ((1, 3072, 3072), F8)
    assert row(L + "1.self_attention.linear_qkv.q.input_scale") == ((3072,), F32)
    assert row(L + "1.self_attention.linear_proj.smooth_scale") == ((1, 6144), F32)
    assert row(L + "1.mlp.linear_fc1.weight") == ((1, 12288, 3072), F8)
    assert row(L + "1.mlp.linear_fc2.smooth_scale") == ((1, 12288), F32)
    for i in (0, 33):  # first and last layer never quantized
        assert row(L + f"{i}.self_attention.linear_qkv.q.weight") == ((3072, 3072), BF16)
        assert L + f"{i}.self_attention.linear_qkv.q.weight_scale" not in p
    assert row(L + "5.self_attention.linear_kv_xattn.weight") == ((2048, 3072), BF16)
    assert row(L + "5.self_attention.q_layernorm.weight") == ((128,), F32)
    assert row(L + "5.self_attention.q_layernorm_xattn.weight") == ((128,), BF16)
    assert row("rope.bands") == ((16,), F32)
    assert row("final_linear.linear.weight") == ((64, 3072), F32)


# ----------------------------------------------------------------------------- full-size headers (sparse files)


def write_sparse_official(folder: Path, table: dict, shards: int, promoted_stored_as_bf16: bool):
    """Official layout with real headers and sparse (unwritten) data: full-size checkpoints without disk use."""
    st = {F32: ("F32", 4), BF16: ("BF16", 2), F8: ("F8_E4M3", 1)}
    folder.mkdir(parents=True)
    names = list(table)
    per = -(-len(names) // shards)
    weight_map = {}
    for k in range(shards):
        fname = f"model-{k + 1:05d}-of-{shards:05d}.safetensors"
        header, pos = {"__metadata__": {"format": "pt"}}, 0
        for n in names[k * per:(k + 1) * per]:
            shape, dtype = table[n]
            if promoted_stored_as_bf16 and dtype == F32 and not n.endswith("_scale"):
                dtype = BF16
            code, size = st[dtype]
            header[n] = {"dtype": code, "shape": list(shape), "data_offsets": [pos, pos + numel(shape) * size]}
            pos += numel(shape) * size
            weight_map[n] = fname
        raw = json.dumps(header).encode()
        with open(folder / fname, "wb") as f:
            f.write(struct.pack("<Q", len(raw)) + raw)
            f.truncate(8 + len(raw) + pos)
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))


def test_full_size_official_folders_inspect_from_headers_only(tmp_path, monkeypatch):
    def no_data(*a, **k):
        raise AssertionError("inspect must not read tensor data")

    monkeypatch.setattr(C.load, "_read_shard", no_data)
    monkeypatch.setattr(C.safetensors_io, "_iter_bytes", no_data)
    monkeypatch.setattr(C.write, "_iter_bytes", no_data)
    spec = spec_table("4.5B", False)
    write_sparse_official(tmp_path / "4.5B_distill" / "inference_weight.distill", spec, 2, True)
    r = C.inspect(str(tmp_path / "4.5B_distill"))
    assert r["ok"] and r["size"] == "4.5B" and r["variant"] == "distill" and r["distill_source"] == "name"
    assert (r["num_tensors"], r["num_params"]) == TOTALS["4.5B"]
    assert {n: (tuple(p["shape"]), p["dtype"]) for n, p in r["params"].items()} == spec  # after promotion
    assert r["stored_dtypes"]["x_embedder.weight"] == BF16 and "videodit_blocks.layers.0.mlp.layer_norm.bias" not in r[
        "stored_dtypes"]

    spec = spec_table("24B", True)
    write_sparse_official(tmp_path / "24B_distill_quant" / "inference_weight.fp8.distill", spec, 3, False)
    r = C.inspect(str(tmp_path / "24B_distill_quant" / "inference_weight.fp8.distill"))
    assert r["ok"] and r["size"] == "24B" and r["variant"] == "distill-fp8"
    assert {n: (tuple(p["shape"]), p["dtype"]) for n, p in r["params"].items()} == spec

    # a partial download: one shard file absent
    os.remove(tmp_path / "24B_distill_quant" / "inference_weight.fp8.distill" / "model-00003-of-00003.safetensors")
    r = C.inspect(str(tmp_path / "24B_distill_quant"))
    assert not r["ok"] and r["size"] == "24B" and len(r["comparison"]["missing"]) == 1998 - 2 * 666
    assert "model-00003-of-00003.safetensors is missing" in r["comparison"]["report"]


# ----------------------------------------------------------------------------- tiny model in every layout


@pytest.fixture(scope="module")
def tiny_models():
    out = {}
    for name in ("tiny", "tiny-distill-fp8"):
        model = init_random_(build_dit(preset(name)), seed=3)
        out[name] = (model, forward(model))
    return out


def forward(model):
    cfg = model.cfg
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, cfg.vae_channels, 4, 8, 6, generator=g)
    t = torch.tensor([[0.3, 0.7]])
    y = torch.randn(2, 8, cfg.caption_channels, generator=g)
    mask = torch.ones(2, 8)
    mask[1, 5:] = 0
    ctn = 2 * 4 * 3
    return model(x, t, y, mask, [(0, ctn), (0, 2 * ctn)], dt_factor=8.0 if cfg.distill else None)


def assert_identical(a: dict, b: dict):
    assert list(a) == list(b)
    for n in a:
        assert a[n].dtype == b[n].dtype and a[n].shape == b[n].shape, n
        assert torch.equal(a[n].view(torch.uint8), b[n].view(torch.uint8)), n


def write_layout(layout, model, variant, root: Path) -> Path:
    if layout == "index":
        return C.save_official(model, root / f"ckpt_{variant}", variant, shards=3).parent
    if layout == "index-zst":
        return C.save_official(model, root, variant, shards=2, zst=True)
    if layout == "single":
        return C.save_official(model, root, variant, single_file=True)
    if layout == "single-zst":
        return C.save_official(model, root, variant, single_file=True, zst=True)
    if layout == "comfy":  # ComfyUI diffusion_models: one file, any name, key prefix
        f = root / "models" / "diffusion_models" / f"magi1_{variant.replace('-', '_')}.safetensors"
        f.parent.mkdir(parents=True)
        save_file({"model.diffusion_model." + n: t for n, t in model.state_dict().items()}, str(f))
        return f
    if layout == "converted":
        src = C.save_official(model, root / "src", variant, shards=2, zst=True)
        out = root / "merged.safetensors"
        assert cli(["convert", str(src), str(out)]) == 0
        return out
    raise AssertionError(layout)


LAYOUTS = ["index", "index-zst", "single", "single-zst", "comfy", "converted"]


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("name", ["tiny", "tiny-distill-fp8"])
def test_every_layout_round_trips_bit_identically(tiny_models, tmp_path, name, layout):
    model, ref_out = tiny_models[name]
    variant = model.cfg.variant()
    path = write_layout(layout, model, variant, tmp_path)
    loaded, info = C.load_dit(path)
    assert (info["size"], info["variant"]) == ("tiny", variant)
    assert loaded.cfg == model.cfg
    assert_identical(model.state_dict(), loaded.state_dict())
    assert torch.equal(forward(loaded), ref_out)
    # weights in their own storage, not at the file's byte offsets (unaligned pointers take other CPU GEMM paths)
    assert {p.data_ptr() % 64 for p in loaded.parameters()} == {0}
    if layout == "comfy":
        assert info["prefix"] == "model.diffusion_model."
    r = C.inspect(str(path))  # headers of every layout agree with the loaded model
    assert r["ok"] and {n: p["dtype"] for n, p in r["params"].items()} == {
        n: C.dtype_name(t.dtype) for n, t in loaded.state_dict().items()}


def test_stored_dtype_wins_then_promotion(tiny_models, tmp_path):
    """bf16-stored embedders/norms are promoted to fp32; xattn q/k norms and odd dtypes keep the stored dtype."""
    model, _ = tiny_models["tiny"]
    sd = {n: (t.to(torch.bfloat16) if t.dtype == torch.float32 else t) for n, t in model.state_dict().items()}
    odd = "videodit_blocks.layers.1.self_attention.linear_kv_xattn.weight"
    sd[odd] = sd[odd].to(torch.float16)
    folder = C.save_official(sd, tmp_path, "base", shards=2)
    loaded, info = C.load_dit(folder)
    got = loaded.state_dict()
    L = "videodit_blocks.layers.1.self_attention."
    for n in ("x_embedder.weight", "rope.bands", "y_embedder.null_caption_embedding", L + "q_layernorm.weight",
              L + "k_layernorm.bias", "videodit_blocks.layers.2.mlp_post_norm.weight", "final_linear.linear.weight"):
        assert got[n].dtype == torch.float32, n
        assert torch.equal(got[n], sd[n].float()), n
    assert got[L + "q_layernorm_xattn.weight"].dtype == torch.bfloat16
    assert got[odd].dtype == torch.float16 and any("float16" in s for s in info["notes"])
    r = C.inspect(str(folder))
    assert r["params"]["x_embedder.weight"] == {"shape": [512, 16, 1, 2, 2], "dtype": F32}
    assert r["stored_dtypes"]["x_embedder.weight"] == BF16
    assert r["params"][odd]["dtype"] == "float16" and r["comparison"]["dtype_changes"][0]["name"] == odd


# ----------------------------------------------------------------------------- errors


@pytest.fixture
def tiny_sd(tiny_models):
    return dict(tiny_models["tiny"][0].state_dict())


def raises(path, match_all, **kw):
    with pytest.raises(C.CheckpointError) as e:
        C.load_dit(path, **kw)
    msg = str(e.value)
    for m in match_all:
        assert m in msg, msg
    return msg


def test_missing_shard_is_a_truncated_download(tiny_sd, tmp_path):
    folder = C.save_official(tiny_sd, tmp_path, "distill", shards=2)
    os.remove(folder / "model-00002-of-00002.safetensors")
    raises(tmp_path, ["model-00002-of-00002.safetensors is missing", "download", "missing keys ("])


def test_truncated_files(tiny_sd, tmp_path):
    folder = C.save_official(tiny_sd, tmp_path / "a", "base", single_file=True)
    f = folder / "model.safetensors"
    os.truncate(f, f.stat().st_size - 1000)
    raises(folder, ["truncated", "re-download"])
    folder = C.save_official(tiny_sd, tmp_path / "b", "base", shards=2, zst=True)
    f = folder / "model-00002-of-00002.safetensors.zst"
    os.truncate(f, f.stat().st_size // 2)
    raises(folder, ["model-00002-of-00002.safetensors.zst", "truncated"])


def test_wrong_variant(tiny_models, tiny_sd, tmp_path):
    fp8_dir = C.save_official(tiny_models["tiny-distill-fp8"][0], tmp_path / "q", "distill-fp8")
    msg = raises(fp8_dir, ["unexpected keys (", "weight_scale", "misshaped keys (", "wrong variant", "'distill-fp8'"],
                 cfg=preset("tiny-distill"))
    assert "linear_qkv.q.weight (1, 512, 512) in the checkpoint vs (512, 512)" in msg
    raises(fp8_dir, ["wrong variant", "is fp8-quantized"], variant="distill")
    bf16_dir = C.save_official(tiny_sd, tmp_path / "b", "distill")
    raises(bf16_dir, ["not fp8-quantized"], variant="distill-fp8")
    raises(bf16_dir, ["missing keys (", "input_scale", "wrong variant", "not quantized"], cfg=preset("tiny-distill-fp8"))


def test_wrong_size(tiny_sd, tmp_path):
    folder = C.save_official(tiny_sd, tmp_path, "base")
    raises(folder, ["wrong model size", "the checkpoint is tiny, the model is tiny-24B", "gated_linear_unit=False vs True",
                    "linear_fc1.weight (1024, 512) in the checkpoint vs (2048, 512)"], cfg=preset("tiny-24B"))
    raises(folder, ["missing keys (26)", "videodit_blocks.layers.3.", "num_layers=3 vs 4"],
           cfg=preset("tiny").replace(num_layers=4))


def test_partial_unexpected_misshaped_keys(tiny_sd, tmp_path):
    sd = {n: t for n, t in tiny_sd.items() if not n.startswith("videodit_blocks.layers.1.mlp.")}
    save_file(sd, str(tmp_path / "partial.safetensors"))
    raises(tmp_path / "partial.safetensors", ["missing keys (4)", "layers.1.mlp.", "incomplete checkpoint", "(layer 1)"])
    sd = dict(tiny_sd, **{"videodit_blocks.layers.0.extra.weight": torch.zeros(3)})
    save_file(sd, str(tmp_path / "extra.safetensors"))
    raises(tmp_path / "extra.safetensors", ["unexpected keys (1): videodit_blocks.layers.0.extra.weight"])
    sd = dict(tiny_sd, **{"y_embedder.y_proj_adaln.0.bias": torch.zeros(7)})
    save_file(sd, str(tmp_path / "shape.safetensors"))
    raises(tmp_path / "shape.safetensors", ["misshaped keys (1)", "y_proj_adaln.0.bias (7,) in the checkpoint vs (128,)"])


def test_not_a_magi_checkpoint(tmp_path):
    save_file({"encoder.block.0.layer.0.weight": torch.zeros(4, 4)}, str(tmp_path / "t5.safetensors"))
    raises(tmp_path / "t5.safetensors", ["not a MAGI-1 DiT checkpoint", "encoder.block.0.layer.0.weight"])
    (tmp_path / "lfs.safetensors").write_text("version https://git-lfs.github.com/spec/v1\noid sha256:00\n")
    raises(tmp_path / "lfs.safetensors", ["git-lfs pointer"])
    (tmp_path / "junk.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00<html>not json!!")
    raises(tmp_path / "junk.safetensors", ["not a safetensors file"])
    raises(tmp_path / "nothing_here", ["does not exist"])
    (tmp_path / "empty").mkdir()
    raises(tmp_path / "empty", ["no MAGI-1 DiT weights"])


def test_inspect_cli_reports_a_broken_download(tiny_sd, tmp_path, capsys):
    folder = C.save_official(tiny_sd, tmp_path / "4.5B_distill", "distill", shards=2)
    os.remove(folder / "model-00001-of-00002.safetensors")
    code, out = run_cli(capsys, "inspect", str(tmp_path / "4.5B_distill"))
    assert code == 1 and "incomplete MAGI-1 DiT checkpoint" in out and "model-00001-of-00002" in out
    code, out = run_cli(capsys, "inspect", "no-such-preset-or-path")
    assert code == 2


def test_inspect_cli_pointed_at_another_model_says_so_first(tmp_path, capsys):
    """A VAE given to inspect: the error first (exit 1: the diagnosis found a problem), a header that does not call
    it a MAGI-1 DiT checkpoint, and its tensors still listed (what is in the file)."""
    save_file({"decoder.blocks.0.attn.proj.bias": torch.zeros(4)}, str(tmp_path / "vae.safetensors"))
    code = cli(["inspect", str(tmp_path / "vae.safetensors")])
    out, err = capsys.readouterr()
    assert code == 1 and err.startswith("error: ") and "is not a MAGI-1 DiT checkpoint" in err, err
    assert "decoder.blocks.0.attn.proj.bias" in out and out.startswith("checkpoint "), out


# ----------------------------------------------------------------------------- detection


def test_detection_of_size_and_variant(tiny_sd, tmp_path):
    def det(path, **kw):
        return C.detect(C.open_checkpoint(path), **kw)

    f = tmp_path / "some_name.safetensors"
    save_file(tiny_sd, str(f))
    d = det(f)
    assert (d.size, d.variant, d.distill_source) == ("tiny", "base", "default") and "base assumed" in d.notes[0]
    d = det(f, variant="distill")
    assert (d.variant, d.distill_source, d.cfg) == ("distill", "caller", preset("tiny-distill"))
    save_file(tiny_sd, str(tmp_path / "MAGI1_Distill.safetensors"))
    assert det(tmp_path / "MAGI1_Distill.safetensors").variant == "distill"
    base = C.save_official(tiny_sd, tmp_path / "4.5B_base", "base")
    assert det(base).distill_source == "name" and det(tmp_path / "4.5B_base").variant == "base"
    # fp8 weights in a file whose name says nothing: every released fp8 checkpoint is distilled
    fp8 = init_random_(build_dit(preset("tiny-24B-distill-fp8")), seed=1)
    save_file(fp8.state_dict(), str(tmp_path / "x.safetensors"))
    d = det(tmp_path / "x.safetensors")
    assert (d.size, d.variant, d.distill_source, d.cfg) == ("tiny-24B", "distill-fp8", "fp8 default",
                                                            preset("tiny-24B-distill-fp8"))
    # an unknown size: architecture derived from shapes
    cfg = preset("tiny").replace(num_layers=2, hidden_size=256, num_attention_heads=8, ffn_hidden_size=384,
                                 caption_channels=48, caption_max_length=20, name="custom")
    save_file(init_random_(build_dit(cfg)).state_dict(), str(tmp_path / "c.safetensors"))
    d = det(tmp_path / "c.safetensors")
    assert d.size == "custom" and d.cfg == cfg
    # two weight folders side by side: the variant picks one
    C.save_official(tiny_sd, tmp_path / "both", "base")
    C.save_official(fp8.state_dict(), tmp_path / "both", "distill-fp8")
    with pytest.raises(C.CheckpointError, match="several weight folders"):
        C.open_checkpoint(tmp_path / "both")
    assert C.open_checkpoint(tmp_path / "both", "distill-fp8").location.name == "inference_weight.fp8.distill"


def test_parse_variant():
    assert C.parse_variant("base") == (False, False)
    assert C.parse_variant("distill") == (False, True)
    assert C.parse_variant("distill-fp8") == (True, True)
    assert C.parse_variant("24B_distill_quant"[4:]) == (True, True)
    with pytest.raises(C.CheckpointError, match="unknown variant"):
        C.parse_variant("int4")


def test_convert_records_variant_and_streams(tiny_models, tmp_path):
    model, _ = tiny_models["tiny-distill-fp8"]
    src = C.save_official(model, tmp_path / "4.5B_distill_quant", "distill-fp8", shards=3, zst=True)
    out = tmp_path / "out" / "renamed.safetensors"
    r = C.convert(tmp_path / "4.5B_distill_quant", out)
    assert r["variant"] == "distill-fp8" and r["num_tensors"] == len(model.state_dict())
    header = C.read_header(out)
    assert header.metadata["magi1.variant"] == "distill-fp8" and header.metadata["magi1.size"] == "tiny"
    assert C.detect(C.open_checkpoint(out)).distill_source == "metadata"
    from safetensors.torch import load_file

    assert_identical(dict(sorted(model.state_dict().items())), dict(sorted(load_file(str(out)).items())))
    assert src.is_dir() and not (out.parent / "renamed.safetensors.part").exists()


def test_an_interrupted_convert_leaves_no_part_file(tiny_models, tmp_path, monkeypatch):
    """Ctrl-C while the merged file is written: the .part file is removed, an earlier output left as it was."""
    from magi_core.checkpoint import write

    model, _ = tiny_models["tiny-distill-fp8"]
    C.save_official(model, tmp_path / "4.5B_distill_quant", "distill-fp8", shards=2)
    out = tmp_path / "out.safetensors"
    out.write_bytes(b"an earlier file")
    real = write._iter_bytes

    def interrupted(*a, **kw):
        for i, piece in enumerate(real(*a, **kw)):
            if i == 1:
                raise KeyboardInterrupt
            yield piece
    monkeypatch.setattr(write, "_iter_bytes", interrupted)
    with pytest.raises(KeyboardInterrupt):
        C.convert(tmp_path / "4.5B_distill_quant", out)
    assert not (tmp_path / "out.safetensors.part").exists() and out.read_bytes() == b"an earlier file"


@pytest.mark.gpu
@pytest.mark.parametrize("zst", [False, True])
def test_load_straight_to_cuda(tiny_models, tmp_path, zst):
    model, _ = tiny_models["tiny-distill-fp8"]
    folder = C.save_official(model, tmp_path, "distill-fp8", shards=2, zst=zst)
    loaded, _ = C.load_dit(folder, DiTRuntime(device="cuda"))
    assert all(t.is_cuda for t in loaded.state_dict().values())
    assert_identical(model.state_dict(), {n: t.cpu() for n, t in loaded.state_dict().items()})
