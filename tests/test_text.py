"""Tests for magi_core.text: caption cleaning, T5 loading/encoding, special tokens, prompt schedule."""
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from magi_core.text import cleaning, schedule, special_tokens as st, t5

REAL_NPZ = Path("/work/shared/magi1/special_tokens.npz")
CORPUS = [
    "a cat sitting on a red sofa in the sunlight",
    "the quick brown fox jumps over the lazy dog",
    "a video of waves crashing on a beach at sunset",
    "person walking through a neon lit city street at night",
] * 50


# ====================================================================== caption cleaning
@pytest.fixture(scope="module")
def bs4():
    return pytest.importorskip("bs4", reason="caption cleaning needs beautifulsoup4")


@pytest.mark.parametrize(
    "raw, cleaned",
    [
        ("A Cat sitting on a RED sofa.", "a cat sitting on a red sofa."),  # lower-case, final dot kept
        ("Visit https://www.example.com/page now", "visit now"),  # url removed
        ("www.foo.org/bar baz", "baz"),
        ("<b>bold</b> &amp; <i>it</i>", "bold it"),  # html stripped, & -> punctuation -> space
        ("@user hello #123 #12345 1234567 photo.jpg", "hello"),  # handle, tags, long number, file name
        ("中文提示 a dog 狗", "a dog"),  # CJK deleted
        ("the — dash – test", "the - dash - test"),  # dashes unified
        ("this-is-my-cute-cat", "this is my cute cat"),  # > 3 dashes -> spaces
        ("a-b-c", "a-b-c"),  # <= 3 dashes kept
        ("jc6640 jc6640vc 6640vc231 j2d1a2a ok", "ok"),  # alnum junk
        ("free shipping and download free", "and"),
        ("a (b) [c] {d} | e \\ f / g * h", "a b c d e f g h"),  # bad punctuation -> space
        ("wallpaper 1920x1080 page 12", "wallpaper"),  # resolution, page number
        ("hello : world,foo", "hello: world, foo"),  # ' : ' normalised, space after comma
        ("'quoted all'", "quoted all"),  # one level of surrounding quotes
        ("a...b", "a b"),
        ("ip 192.168.0.1 end", "ip end"),
        ("%20encoded+plus", "encoded plus"),  # url-unquoted (+ -> space)
        ("a <person> walks", "a person walks"),
    ],
)
def test_clean_caption_cases(bs4, raw, cleaned):
    assert cleaning.clean_caption(raw) == cleaned


def test_clean_caption_runs_twice(bs4):
    # one pass strips a single leading separator and url-unquotes once; the second pass does it again
    assert cleaning.clean_caption_once("-_a") == "_a"
    assert cleaning.clean_caption("-_a") == "a"
    assert cleaning.clean_caption_once("a %2520 b") == "a %20 b"
    assert cleaning.clean_caption("a %2520 b") == "a b"
    # an entity-escaped tag survives the first pass's HTML step, and is stripped by the second
    assert cleaning.clean_caption("x &lt;i&gt;z&lt;/i&gt;") == "x z< i>"


# ====================================================================== T5
def _train_spm() -> bytes:
    spm = pytest.importorskip("sentencepiece")
    out = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS), model_writer=out, vocab_size=48, model_type="unigram",
        pad_id=0, eos_id=1, unk_id=2, bos_id=-1, character_coverage=1.0, minloglevel=2,
    )
    return out.getvalue()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny random T5 v1.1-style encoder, its spiece.model, and the files of every supported layout."""
    from safetensors.torch import save_file
    from transformers import T5Config, T5EncoderModel

    root = tmp_path_factory.mktemp("t5")
    spm_bytes = _train_spm()
    (root / "spiece.model").write_bytes(spm_bytes)
    torch.manual_seed(0)
    cfg = T5Config(vocab_size=64, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_heads=4,
                   relative_attention_num_buckets=32, feed_forward_proj="gated-gelu",
                   is_encoder_decoder=False, use_cache=False, tie_word_embeddings=False, dropout_rate=0.0)
    model = T5EncoderModel(cfg).eval()
    with torch.no_grad():  # norms away from 1 so a dropped norm weight would show
        for n, p in model.named_parameters():
            if "layer_norm" in n:
                p.uniform_(0.5, 1.5)
    sd = {k: v.contiguous() for k, v in model.state_dict().items()}

    # (a) official layout: ckpt/t5/t5-v1_1-xxl with two .bin shards + index, config.json, spiece.model
    off = root / "ckpt" / "t5" / t5.OFFICIAL_SUBDIR
    off.mkdir(parents=True)
    cfg.to_json_file(str(off / "config.json"))
    (off / "spiece.model").write_bytes(spm_bytes)
    keys = sorted(sd)
    shards = {"pytorch_model-00001-of-00002.bin": keys[: len(keys) // 2],
              "pytorch_model-00002-of-00002.bin": keys[len(keys) // 2:]}
    for name, ks in shards.items():
        torch.save({k: sd[k] for k in ks}, off / name)
    index = {"weight_map": {k: name for name, ks in shards.items() for k in ks}}
    (off / "pytorch_model.bin.index.json").write_text(json.dumps(index))

    # (b) one safetensors file, HF names
    save_file({k: v for k, v in sd.items() if k != "encoder.embed_tokens.weight"}, str(root / "single.safetensors"))

    # (c) ComfyUI-style: fp16 under a checkpoint prefix; fp8 plain; fp8 scaled
    pre = "text_encoders.t5xxl.transformer."
    fp16 = {pre + k: v.half() for k, v in sd.items() if k != "shared.weight"}
    fp16["model.diffusion_model.something.weight"] = torch.zeros(2)  # another model in the same file
    fp16[pre + "decoder.block.0.layer.0.SelfAttention.q.weight"] = torch.zeros(2)  # full T5 files: ignored
    fp16[pre + "lm_head.weight"] = torch.zeros(2)
    save_file(fp16, str(root / "t5xxl_fp16.safetensors"))
    big = lambda k: k.endswith(".weight") and "layer_norm" not in k and "shared" not in k and "embed" not in k and "relative" not in k
    fp8 = {k: (v.to(torch.float8_e4m3fn) if big(k) else v.half()) for k, v in sd.items()}
    save_file(fp8, str(root / "t5xxl_fp8_e4m3fn.safetensors"))
    scaled = {"scaled_fp8": torch.zeros(0, dtype=torch.float8_e4m3fn)}
    scales = {}
    for k, v in sd.items():
        if big(k):
            s = v.abs().max() / 448.0
            scaled[k] = (v / s).to(torch.float8_e4m3fn)
            scaled[k[: -len(".weight")] + ".scale_weight"] = s.reshape(())
            scales[k] = s
        else:
            scaled[k] = v.half()
    save_file(scaled, str(root / "t5xxl_fp8_e4m3fn_scaled.safetensors"))
    return {"root": root, "model": model, "sd": sd, "fp8": fp8, "scaled": scaled, "scales": scales, "spm": spm_bytes}


def _reference_encode(model, ids, mask):
    """What the reference does: the padded 800-slot batch with its attention mask."""
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask).last_hidden_state


def test_tokenize_truncates_and_pads(tiny):
    tok = t5.SentencePieceTokenizer(tiny["spm"])
    text = " ".join(["a cat on a red sofa"] * 300)
    ids, mask = t5.tokenize(tok, text, 800)
    raw = tok.sp.encode(text)
    assert len(raw) > 800
    assert ids.shape == mask.shape == (1, 800) and ids.dtype == mask.dtype == torch.long
    assert ids[0, :799].tolist() == raw[:799] and ids[0, 799] == 1  # 799 tokens + </s>
    assert int(mask.sum()) == 800
    ids, mask = t5.tokenize(tok, "a cat", 800)
    n = len(tok.sp.encode("a cat")) + 1
    assert ids[0, :n].tolist() == tok.sp.encode("a cat") + [1]
    assert mask[0, :n].all() and not mask[0, n:].any() and not ids[0, n:].any()


def test_json_tokenizer_matches_sentencepiece(tiny, tmp_path):
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers

    sp = t5.SentencePieceTokenizer(tiny["spm"]).sp
    vocab = [(sp.id_to_piece(i), sp.get_score(i)) for i in range(sp.get_piece_size())]
    tok = Tokenizer(models.Unigram(vocab, unk_id=2, byte_fallback=False))
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")])
    tok.add_special_tokens(["<pad>", "</s>", "<unk>"])
    tok.save(str(tmp_path / "tokenizer.json"))
    js = t5.load_tokenizer(tmp_path)
    assert isinstance(js, t5.JsonTokenizer)
    for text in ["a cat on a sofa", "waves crashing, beach", "the lazy dog at night 123"]:
        assert js.encode(text) == sp.encode(text)


@pytest.mark.parametrize("layout", ["official_parent", "official_dir", "single", "comfy_fp16"])
def test_load_layouts_match_reference_encoding(tiny, bs4, layout):
    root = tiny["root"]
    weights, tok = {
        "official_parent": (root / "ckpt" / "t5", None),
        "official_dir": (root / "ckpt" / "t5" / t5.OFFICIAL_SUBDIR, None),
        "single": (root / "single.safetensors", root / "spiece.model"),
        "comfy_fp16": (root / "t5xxl_fp16.safetensors", root),
    }[layout]
    enc = t5.T5TextEncoder.load(weights, tokenizer=tok, cache=None)
    expected_sd = tiny["sd"] if layout != "comfy_fp16" else {k: v.half().float() for k, v in tiny["sd"].items()}
    for k, v in enc.model.state_dict().items():
        torch.testing.assert_close(v, expected_sd[k], rtol=0, atol=0, msg=k)

    prompt = "A cat, sitting on a RED sofa!"
    emb, mask = enc.encode(prompt)
    ids, ref_mask = t5.tokenize(t5.SentencePieceTokenizer(tiny["spm"]), cleaning.clean_caption(prompt), 800)
    ref_model = tiny["model"] if layout != "comfy_fp16" else enc.model
    ref = _reference_encode(ref_model, ids, ref_mask)
    n = int(ref_mask.sum())
    assert emb.shape == (1, 800, 32) and emb.dtype == torch.float32 and mask.dtype == torch.long
    assert torch.equal(mask, ref_mask)
    torch.testing.assert_close(emb[:, :n], ref[:, :n], rtol=1e-5, atol=1e-5)
    assert not emb[:, n:].any()  # pad rows are zeros in the default (unpadded) mode
    full, _ = enc.encode(prompt, full_padding=True)
    torch.testing.assert_close(full, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["t5xxl_fp8_e4m3fn.safetensors", "t5xxl_fp8_e4m3fn_scaled.safetensors"])
def test_fp8_files_are_dequantised(tiny, name):
    enc = t5.T5TextEncoder.load(tiny["root"] / name, tokenizer=tiny["root"], dtype=torch.float32, cache=None)
    stored = tiny["scaled"] if "scaled" in name else tiny["fp8"]
    got = enc.model.state_dict()
    for k, v in stored.items():
        if k == "scaled_fp8" or k.endswith(".scale_weight"):
            continue
        expect = v.double()
        if k in tiny["scales"] and "scaled" in name:
            expect = expect * tiny["scales"][k].double()
        torch.testing.assert_close(got[k].double(), expect, rtol=1e-6, atol=0, msg=k)
    # the dequantised model is close to the fp32 one (fp8 has ~2 significant digits)
    assert (got["encoder.block.1.layer.1.DenseReluDense.wo.weight"]
            - tiny["sd"]["encoder.block.1.layer.1.DenseReluDense.wo.weight"]).abs().max() < 0.1


def test_bf16_compute_dtype(tiny):
    enc = t5.T5TextEncoder.load(tiny["root"] / "single.safetensors", tokenizer=tiny["root"], dtype=torch.bfloat16,
                                cache=None)
    assert {p.dtype for p in enc.model.parameters()} == {torch.bfloat16}
    emb, _ = enc.encode("a cat", clean=False)
    assert emb.dtype == torch.float32


def test_strict_loading_names_keys(tiny, tmp_path):
    from safetensors.torch import save_file

    sd = {k: v for k, v in tiny["sd"].items() if k != "encoder.embed_tokens.weight"}
    del sd["encoder.block.1.layer.0.SelfAttention.k.weight"]
    sd["encoder.block.1.layer.0.SelfAttention.extra.weight"] = torch.zeros(3)
    save_file(sd, str(tmp_path / "bad.safetensors"))
    with pytest.raises(ValueError) as e:
        t5.T5TextEncoder.load(tmp_path / "bad.safetensors", tokenizer=tiny["root"])
    assert "encoder.block.1.layer.0.SelfAttention.k.weight" in str(e.value)
    assert "encoder.block.1.layer.0.SelfAttention.extra.weight" in str(e.value)

    sd = dict(tiny["sd"])
    sd["encoder.block.1.layer.0.SelfAttention.q.weight"] = torch.zeros(32, 31)
    with pytest.raises(ValueError, match=r"SelfAttention.q.weight \(32, 31\)"):
        t5.build_t5_encoder(sd, t5.t5_config_from_state_dict(tiny["sd"]))

    save_file({"clip.weight": torch.zeros(2)}, str(tmp_path / "clip.safetensors"))
    with pytest.raises(ValueError, match="not a T5 encoder"):
        t5.T5TextEncoder.load(tmp_path / "clip.safetensors", tokenizer=tiny["root"])
    with pytest.raises(ValueError, match="no tokenizer"):
        t5.T5TextEncoder.load(tiny["root"] / "single.safetensors")
    with pytest.raises(FileNotFoundError):
        t5.T5TextEncoder.load(tmp_path / "missing")


def test_config_inferred_from_shapes(tiny):
    cfg = t5.t5_config_from_state_dict(tiny["sd"])
    ref = tiny["model"].config
    for field in ("vocab_size", "d_model", "d_kv", "d_ff", "num_layers", "num_heads", "relative_attention_num_buckets"):
        assert getattr(cfg, field) == getattr(ref, field), field
    assert cfg.is_gated_act and cfg.dense_act_fn == ref.dense_act_fn


def test_encoding_cache(tiny):
    cache = t5.EncodingCache(max_entries=2)
    enc = t5.T5TextEncoder.load(tiny["root"] / "single.safetensors", tokenizer=tiny["root"], cache=cache)
    calls = []
    enc.model.register_forward_hook(lambda *a: calls.append(1))
    a, _ = enc.encode("a cat", clean=False)
    b, _ = enc.encode("a cat", clean=False)
    assert len(calls) == 1 and torch.equal(a, b)
    a[0, 0, 0] = 123.0  # returned tensors are copies
    assert enc.encode("a cat", clean=False)[0][0, 0, 0] != 123.0
    other = t5.T5TextEncoder(enc.model, enc.tokenizer, identity="another model", cache=cache)
    other.encode("a cat", clean=False)
    assert len(calls) == 2  # same text, different model identity: not a hit
    enc.encode("a dog", clean=False)
    assert len(cache) == 2  # LRU bound


# ====================================================================== special tokens
C = 16


@pytest.fixture
def npz(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {"caption_token": rng.normal(size=(1, C)), "logo_token": rng.normal(size=(1, C)),
              "other_tokens": rng.normal(size=(100, C)) * 0.1}
    np.savez(tmp_path / "special_tokens.npz", **arrays)
    return tmp_path / "special_tokens.npz", arrays


def test_special_tokens_fp16_rounding(npz):
    path, arrays = npz
    tok = st.load_special_tokens(path)
    assert tok.other.dtype == torch.float32
    assert torch.equal(tok.other, torch.from_numpy(arrays["other_tokens"].astype(np.float16)).float())
    assert torch.equal(tok.caption, torch.from_numpy(arrays["caption_token"][0].astype(np.float16)).float())
    assert not torch.equal(tok.other.double(), torch.from_numpy(arrays["other_tokens"]))  # really rounded


def test_apply_special_tokens_order_and_duration(npz):
    tok = st.load_special_tokens(npz[0])
    emb = torch.randn(800, C)
    mask = torch.zeros(800, dtype=torch.long)
    mask[:10] = 1
    out, m = st.apply_special_tokens(emb, mask, 3, tok)
    assert out.shape == (800, C) and m.shape == (800,) and m.dtype == torch.long
    assert torch.equal(out[0], tok.other[7 + 3])  # DURATION_TOKEN_4: 3 chunks follow
    assert torch.equal(out[1], tok.other[1])  # HQ
    assert torch.equal(out[2:], emb[:798])  # caption shifted, tail cut at 800
    assert m[:12].tolist() == [1] * 12 and not m[12:].any()
    # t2v 96 frames = 4 denoised chunks -> DURATION rows 10, 9, 8, 7; capped at row 14
    rows = [st.apply_special_tokens(emb, mask, 4 - i - 1, tok)[0][0] for i in range(4)]
    for r, row in zip(rows, (10, 9, 8, 7)):
        assert torch.equal(r, tok.other[row])
    assert torch.equal(st.apply_special_tokens(emb, mask, 20, tok)[0][0], tok.other[14])


def test_apply_special_tokens_switches(npz):
    tok = st.load_special_tokens(npz[0])
    emb, mask = torch.randn(800, C), torch.ones(800, dtype=torch.long)
    out, m = st.apply_special_tokens(emb, mask, 0, tok, use_hq=False, use_duration=False)
    assert torch.equal(out, emb) and torch.equal(m, mask)
    out, _ = st.apply_special_tokens(emb, mask, 0, tok, use_hq=False)
    assert torch.equal(out[0], tok.other[7]) and torch.equal(out[1:], emb[:799])
    # extra tokens follow the reference's order whatever order they are given in
    out, _ = st.apply_special_tokens(emb, mask, 0, tok, extra=("TWO_D_ANIME", "STATIC_FIRST_FRAMES"))
    for i, row in enumerate((7, 16, 1, 2)):  # DURATION_1, TWO_D_ANIME, HQ, STATIC_FIRST_FRAMES
        assert torch.equal(out[i], tok.other[row])
    with pytest.raises(ValueError, match="unknown extra"):
        st.apply_special_tokens(emb, mask, 0, tok, extra=("LOUD",))
    with pytest.raises(ValueError, match=r"\(L, 16\)"):
        st.apply_special_tokens(torch.zeros(800, 8), mask, 0, tok)
    with pytest.raises(ValueError, match="chunks_remaining"):
        st.apply_special_tokens(emb, mask, -1, tok)


def test_null_caption(npz):
    tok = st.load_special_tokens(npz[0])
    param = torch.randn(800, C, dtype=torch.bfloat16)
    emb, mask = st.null_caption(param)
    assert emb.dtype == torch.float32 and torch.equal(emb, param.float())
    assert mask.tolist() == [1] * 50 + [0] * 750
    emb, mask2 = st.null_caption(param[None], tok, negative_special_tokens=True)
    expect = [tok.other[4], tok.other[0], tok.logo, tok.caption]  # BORDERNESS, TRANS, LOGO, CAPTION
    for i, row in enumerate(expect):
        assert torch.equal(emb[i], row)
    assert torch.equal(emb[4:], param.float()[:796]) and torch.equal(mask2, mask)
    with pytest.raises(ValueError, match="needs the special tokens"):
        st.null_caption(param, negative_special_tokens=True)


def test_special_tokens_bad_files(tmp_path):
    np.savez(tmp_path / "a.npz", caption_token=np.zeros((1, 4)), logo_token=np.zeros((1, 4)))
    with pytest.raises(ValueError, match="other_tokens"):
        st.load_special_tokens(tmp_path / "a.npz")
    np.savez(tmp_path / "b.npz", caption_token=np.zeros((1, 4)), logo_token=np.zeros((1, 4)),
             other_tokens=np.zeros((10, 4)))
    with pytest.raises(ValueError, match="other_tokens has shape"):
        st.load_special_tokens(tmp_path / "b.npz")
    with pytest.raises(FileNotFoundError):
        st.load_special_tokens(tmp_path / "none.npz")
    for name, data in (("c.png", b"\x89PNG\r\n\x1a\n" + bytes(64)), ("d.npy", None)):  # not an .npz at all
        if data is None:
            np.save(tmp_path / name, np.zeros(3))
        else:
            (tmp_path / name).write_bytes(data)
        with pytest.raises(ValueError, match="not a MAGI-1 special tokens file: an .npz") as e:
            st.load_special_tokens(tmp_path / name)
        assert "pickle" not in str(e.value)  # numpy's own message invites loading it as a pickle


def test_real_special_tokens_file():
    if not REAL_NPZ.is_file():
        pytest.skip(f"{REAL_NPZ} not present")
    tok = st.load_special_tokens(REAL_NPZ)
    assert tok.channels == 4096 and tok.other.shape == (100, 4096)
    with np.load(REAL_NPZ) as z:
        raw = z["other_tokens"]
        assert raw.dtype == np.float64
        assert torch.equal(tok.other, torch.from_numpy(raw.astype(np.float16)).float())
        err = (tok.other.double() - torch.from_numpy(raw)).abs().max()
        assert 0 < err < 5e-4  # fp16 rounding of values of norm ~8
    assert 7.7 < float(tok.caption.norm()) < 8.1  # spec: |caption_token| ~ 7.89
    dur = torch.stack([tok.duration(k) for k in range(8)])
    assert torch.equal(dur, tok.other[7:15])


# ====================================================================== prompt schedule
def test_single_prompt_schedule():
    assert schedule.resolve_prompts("a red fox in the snow", 3) == ["a red fox in the snow"] * 3
    assert schedule.resolve_prompts("a fox\nin the snow", 2) == ["a fox in the snow"] * 2
    assert schedule.PromptSchedule.single("x").resolve(1) == ["x"]


def test_chunk_ranges_and_continuations():
    text = """
    0-1: a red fox walks
       through deep snow
    2: the fox stops
    3-: the fox runs away
    """
    got = schedule.resolve_prompts(text, 6)
    assert got == ["a red fox walks through deep snow"] * 2 + ["the fox stops"] + ["the fox runs away"] * 3


def test_second_ranges_round_to_chunk_boundaries():
    text = "0s-2s: one\n2s-: two"
    # 24 fps: one chunk per second -> boundary at chunk 2
    assert schedule.resolve_prompts(text, 4, fps=24) == ["one", "one", "two", "two"]
    # 30 fps: 2 s = 2.5 chunks -> rounds (half up) to boundary 3
    assert schedule.resolve_prompts(text, 5, fps=30) == ["one"] * 3 + ["two"] * 2
    # 16 fps: 2 s = 1.33 chunks -> boundary 1
    assert schedule.resolve_prompts("0s-2s: one\n2s-3s: two", 2, fps=16) == ["one", "two"]
    r = schedule.PromptRange(0.0, 1.25, "x", seconds=True)
    assert r.chunk_bounds(10, fps=24) == (0, 1)  # 1.25 chunks -> 1


def test_a_comment_like_line_in_a_schedule_is_said_to_be_part_of_a_prompt():
    s = schedule.parse_schedule("0: a fox\n# note to self\n1-: a bird")
    assert s.resolve(2) == ["a fox # note to self", "a bird"]  # nothing dropped
    [note] = s.check_captions()
    assert note.startswith("prompt schedule line 2 '# note to self' is part of the prompt of line 1")
    assert schedule.parse_schedule("0: a fox\nat dawn\n1-: a bird").check_captions() == []
    assert schedule.parse_schedule("a beach at dusk\n#sunset #waves").check_captions() == []  # one prompt


def test_below_16_fps_seconds_follow_the_chunks_in_the_output_video():
    """At 12 fps a chunk decodes to 6 frames (the VAE's time tiles of 6 frames hold one latent frame each), so it
    lasts 0.5 s of the output video: '1s' is the boundary after 2 chunks, where the output's frame 12 begins."""
    from magi_core.video import chunk_output_frames, reference_output_frames

    assert chunk_output_frames(12) == reference_output_frames(24 * 4, 0, 12) // 4 == 6
    assert chunk_output_frames(24) == chunk_output_frames(16) == 24
    assert schedule.resolve_prompts("0s-1s: one\n1s-: two", 4, fps=12) == ["one", "one", "two", "two"]
    assert schedule.resolve_prompts("0s-1s: one\n1s-: two", 4, fps=24) == ["one", "two", "two", "two"]


def test_times_inside_a_chunk_are_reported_where_the_prompt_really_changes():
    s = schedule.parse_schedule("0s-2.5s: a fox\n2.5s-: a bird")
    assert s.resolve(4, fps=24) == ["a fox"] * 3 + ["a bird"]  # 2.5 s rounds (half up) to the boundary at 3 s
    [note] = s.moved_times(24)  # 2.5 s ends line 1 and starts line 2: said once
    assert note.startswith("line 1: 2.5s falls inside a chunk") and "changes at 3s" in note and "1 s at 24 fps" in note
    assert schedule.parse_schedule("0s-2s: a\n2s-: b").moved_times(24) == []  # on boundaries: nothing to say
    assert schedule.parse_schedule("0-1: a\n2-: b").moved_times(30) == []  # chunk indices never move
    assert "changes at 2.4s" in schedule.parse_schedule("0s-2s: a\n2s-: b").moved_times(30)[0]  # 0.8 s chunks


@pytest.mark.parametrize(
    "text, n, message",
    [
        ("0-2: a\n2-3: b", 4, "'0-2' and line 2 '2-3' overlap"),
        ("0: a\n2-3: b", 4, r"nothing covers chunk\(s\) 1 "),
        ("0-1: a", 4, r"nothing covers chunk\(s\) 2-3 "),
        ("", 3, "empty"),
        ("0-5: a", 4, "only 4 chunks"),
        ("0-1: a\n7-: b", 4, "only 4 chunks"),
        ("0-1: a\n2-3:", 4, "line 2 '2-3' has no prompt after the ':'"),
        ("0-2s: a", 4, "both ends"),
        ("0.5-2: a", 4, "whole numbers"),
        ("0s-1s: a\n1s: b", 4, "needs a range"),
        ("0: a\n2.5: b", 4, "whole numbers"),
        ("3-1: a", 4, "ends before it starts"),
        ("0-1: a\n2: b", 2, "line 2 '2' starts at chunk 2"),  # a one-chunk line quoted as written (was '2-2')
        # a time rounded past the end says so (the note about rounding used to come only with a run that worked)
        ("0s-1.5s: a\n1.5s-: b", 2, r"line 2 '1.5s-' starts at chunk 2 \(1.5s is rounded to 2s: the nearest chunk "
                                    r"boundary; a chunk lasts 1 s at 24 fps\), but the video has only 2 chunks"),
        ("0s-0.4s: a\n0.4s-: b", 3, r"line 1 '0s-0.4s' covers no chunk \(chunks 0..-1\) \(0.4s is rounded to 0s"),
        ("0s-2.6s: a\n2.6s-3.2s: b", 2, r"'0s-2.6s' covers chunks 0..2 \(2.6s is rounded to 3s: the nearest chunk "
                                       r"boundary; a chunk lasts 1 s at 24 fps\), but"),  # only the end that matters
        ("0: a\n0.4s-: b", 3, r"overlap at chunk 0 \(0.4s is rounded to 0s: the nearest chunk boundary"),
        ("0: a\n1.6s-: b", 3, r"nothing covers chunk\(s\) 1 \(the video has chunks 0..2\) \(1.6s is rounded to 2s"),
    ],
)
def test_schedule_errors(text, n, message):
    with pytest.raises(ValueError, match=message):
        schedule.resolve_prompts(text, n)


@pytest.mark.parametrize("text", ["1920s: a street scene in Paris", "1984: a dystopian city", " 7 : seven samurai"])
def test_one_line_starting_with_a_lone_time_or_index_is_a_prompt_with_a_warning(text):
    """One such line could never be a whole schedule (a time needs a range; chunk 0 would be uncovered)."""
    s = schedule.parse_schedule(text)
    assert schedule.resolve_prompts(s, 3) == [text.strip()] * 3
    (warning,) = s.check_captions()
    assert "one prompt for the whole video" in warning and text.strip()[:10] in warning


def test_lone_chunk_zero_and_two_lines_stay_schedules():
    assert schedule.resolve_prompts("0: a fox", 1) == ["a fox"]
    assert schedule.resolve_prompts("0: a fox\n1: a cat", 2) == ["a fox", "a cat"]
    with pytest.raises(ValueError, match="starts at chunk 1984"):
        schedule.resolve_prompts("0: a fox\n1984: a cat", 2)


def test_schedule_overlap_names_both_lines():
    with pytest.raises(ValueError, match=r"line 1 '0-2'.*line 2 '2-3'.*overlap"):
        schedule.resolve_prompts("0-2: a\n2-3: b", 4)


@pytest.mark.parametrize(
    "text, message",
    [
        # a range without its ':' is named, with the fix, instead of turning the schedule into one prompt
        ("0-1 a fox\n2-: b", r"^prompt schedule line 1 '0-1 a fox': the range has no ':'.*write '0-1: a fox'"),
        ("0-1: a fox\n2- b", r"^prompt schedule line 2 '2- b': the range has no ':'.*write '2-: b'"),
        # the unparsable line is blamed, not the next range
        ("0-1: a\n2-x: b\n3-: c", r"^prompt schedule line 2 '2-x: b': '2-x' is not a range"),
        ("0-x: a fox", r"^prompt schedule line 1 '0-x: a fox': '0-x' is not a range"),
        # line numbers are the ones the user sees: blank lines count
        ("\n0-1: a\n\n2-3 b", r"^prompt schedule line 4 '2-3 b'"),
        ("0-1 a\n2-3 b", r"^prompt schedule line 1 '0-1 a'"),  # two ranges without ':': a schedule
        ("a fox\n1-: b", r"^prompt schedule line 1 'a fox' has no chunk range, but line 2 '1-: b'"),
        ("0-1s: a", r"^prompt schedule line 1 '0-1s: a': use seconds.*'0s-2s:'"),
        ("0.5-2: a", r"^prompt schedule line 1 '0.5-2: a': chunk indices must be whole numbers"),
    ],
)
def test_malformed_schedule_lines_are_named(text, message):
    with pytest.raises(ValueError, match=message):
        schedule.parse_schedule(text)


def test_a_forgotten_colon_after_a_chunk_index_is_said():
    """'0-1: a fox\n2 the fox stops': line 2 continues line 1's prompt (it may mean that: '3 cubs follow it'), with a
    note naming the fix; where chunk 2 is then left uncovered, the gap error names it too (it used to say only
    'nothing covers chunk(s) 2-3')."""
    sch = schedule.parse_schedule("0-1: a fox\n2 the fox stops")
    assert sch.ranges[0].prompt == "a fox 2 the fox stops"
    (note,) = sch.check_captions()
    assert "line 2 '2 the fox stops' has no ':' after '2'" in note and "write '2: the fox stops'" in note
    assert schedule.resolve_prompts(sch, 2) == ["a fox 2 the fox stops"] * 2
    with pytest.raises(ValueError, match=r"nothing covers chunk\(s\) 2-3.*write '2: the fox stops'"):
        schedule.resolve_prompts(sch, 4)
    assert not schedule.parse_schedule("0-1: a fox in the\n1990s style").check_captions()  # not a chunk index


def test_plain_prompts_that_start_with_numbers_stay_one_prompt():
    for text in ["2-3 foxes play in the snow", "a fox\n3 birds fly over it", "3 foxes\n- one jumps"]:
        assert schedule.parse_schedule(text).ranges == (schedule.PromptRange(0, None, " ".join(
            line.strip() for line in text.split("\n"))),)


def test_en_dash_ranges():
    assert schedule.resolve_prompts("0\u20131: a\n2\u2014: b", 3) == ["a", "a", "b"]


def test_check_caption_says_what_the_cleaner_removes(bs4):
    from magi_core.text import check_caption

    assert check_caption("a red fox walks through deep snow, morning light.") == []
    assert check_caption("") == []
    (w,) = check_caption("中文提示 a dog 狗")
    assert "Chinese" in w and "'中文提示', '狗'" in w and "English" in w
    (w,) = check_caption("a fox, see https://example.com/fox.html")
    assert "links" in w and "https://example.com/fox.html" in w
    (w,) = check_caption("(masterpiece:1.2), a fox")
    assert "(masterpiece:1.2)" in w and "no effect" in w
    (w,) = check_caption("привет лиса")
    assert "Cyrillic" in w and "kept" in w and "English" in w
    ws = check_caption("@bob photo.jpg a fox")
    assert len(ws) == 2 and "'@bob'" in ws[0] and "'photo.jpg'" in ws[1]


@pytest.mark.parametrize("text", ["中文提示", "https://example.com", "...", "#1"])
def test_check_caption_refuses_a_prompt_the_cleaner_empties(bs4, text):
    from magi_core.text import check_caption

    assert cleaning.clean_caption(text) == ""
    with pytest.raises(ValueError, match="empty after MAGI-1's caption cleaner.*Write the prompt in English"):
        check_caption(text)


def test_encode_prompts_checks_every_prompt_before_encoding(bs4):
    from magi_core.pipeline import encode_prompts

    class Encoder:
        calls = []

        def encode(self, text):
            self.calls.append(text)
            return torch.zeros(1, 3, 4), torch.ones(1, 3)

    enc = Encoder()
    with pytest.raises(ValueError, match=r"^prompt schedule line 2 '1-': the prompt '狐'.*English"):
        encode_prompts(enc, "0: a fox\n1-: 狐")
    assert enc.calls == []  # refused before anything was encoded
    got = encode_prompts(enc, "0: a fox 狐\n1-: a bird")
    assert enc.calls == ["a fox 狐", "a bird"]
    (w,) = got.warnings
    assert w.startswith("prompt schedule line 1 '0': MAGI-1's caption cleaner deletes Chinese") and "'狐'" in w
    assert encode_prompts(enc, "a bird").warnings == []


def test_a_lone_range_without_colon_is_one_prompt_with_a_warning():
    s = schedule.parse_schedule("0-1 a fox")
    assert [r.prompt for r in s.ranges] == ["0-1 a fox"]
    (w,) = s.check_captions()
    assert "'0-1: a fox'" in w
    assert schedule.parse_schedule("a fox runs").check_captions() == []
