"""T5 v1.1 XXL text encoder for MAGI-1 (official `inference/model/t5/t5_model.py`, `prompt_process.py`).

The encoder is transformers' `T5EncoderModel`; the output is `last_hidden_state` (after the final RMS norm).
Weights load strictly from:
  * the official layout: `ckpt/t5` (the parent) or `ckpt/t5/t5-v1_1-xxl` (config.json, spiece.model,
    pytorch_model*.bin shards + index, or *.safetensors);
  * one safetensors file with HF key names plus a tokenizer;
  * ComfyUI text-encoder files (`t5xxl_fp16`, `t5xxl_fp8_e4m3fn`, `..._scaled`): same key names, possibly under
    a prefix (e.g. `text_encoders.t5xxl.transformer.`); fp8 weights are dequantised to the compute dtype
    (times `scale_weight` / `weight_scale` when present). Decoder / lm_head keys of full T5 files are ignored.
Tokenizers: a SentencePiece `spiece.model` (the reference's vocabulary, read with sentencepiece itself; the
reference used the HF tokenizer converted from the same file, which gives the same ids on cleaned captions)
or a HF `tokenizer.json` (ComfyUI's `comfy/text_encoders/t5_tokenizer`). Token ids are cut to 799 + `</s>`
and padded with 0 to 800, as the reference's `max_length=800, truncation, padding="max_length"`.
"""
from __future__ import annotations

import json
from collections import OrderedDict
from pathlib import Path
from typing import Callable

import torch

from .cleaning import clean_caption

MAX_LENGTH = 800  # caption_max_length
OFFICIAL_SUBDIR = "t5-v1_1-xxl"
PAD_ID, EOS_ID = 0, 1

_FP8 = tuple(getattr(torch, n) for n in ("float8_e4m3fn", "float8_e5m2") if hasattr(torch, n))
_SCALE_SUFFIXES = (".scale_weight", ".weight_scale")
_IGNORED_SUFFIXES = (".scale_input", ".input_scale", ".comfy_quant", "spiece_model")
_ANCHOR = "encoder.final_layer_norm.weight"


# ---------------------------------------------------------------- tokenizers
class SentencePieceTokenizer:
    """T5's SentencePiece vocabulary (`spiece.model`)."""

    def __init__(self, model: str | Path | bytes):
        import sentencepiece

        if isinstance(model, bytes):
            self.sp = sentencepiece.SentencePieceProcessor(model_proto=model)
        else:
            self.sp = sentencepiece.SentencePieceProcessor(model_file=str(model))
        self.eos_id = self.sp.eos_id()
        if self.eos_id != EOS_ID or self.sp.pad_id() != PAD_ID:
            raise ValueError(f"not a T5 SentencePiece model: pad/eos ids are {self.sp.pad_id()}/{self.eos_id}, expected 0/1")

    def encode(self, text: str) -> list[int]:
        return list(self.sp.encode(text))


class JsonTokenizer:
    """A HF `tokenizers` file (`tokenizer.json`) for T5; `</s>` is appended by `tokenize`, not by the file."""

    def __init__(self, path: str | Path):
        from tokenizers import Tokenizer

        self.tok = Tokenizer.from_file(str(path))
        self.eos_id = self.tok.token_to_id("</s>")
        if self.eos_id != EOS_ID or self.tok.token_to_id("<pad>") != PAD_ID:
            raise ValueError(f"{path} is not a T5 tokenizer: '</s>'/'<pad>' ids are not 1/0")

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text, add_special_tokens=False).ids


def load_tokenizer(path: str | Path):
    """`spiece.model`, `tokenizer.json`, or a folder holding one of them (spiece.model preferred)."""
    path = Path(path)
    if path.is_dir():
        for sub in (OFFICIAL_SUBDIR, "."):
            for name in ("spiece.model", "tokenizer.json"):
                if (path / sub / name).is_file():
                    return load_tokenizer(path / sub / name)
        raise FileNotFoundError(f"no spiece.model or tokenizer.json in {path}")
    if not path.is_file():
        raise FileNotFoundError(f"T5 tokenizer not found: {path}")
    return JsonTokenizer(path) if path.suffix == ".json" else SentencePieceTokenizer(path)


def tokenize(tokenizer, text: str, max_length: int = MAX_LENGTH) -> tuple[torch.Tensor, torch.Tensor]:
    """ids and attention mask, both (1, max_length) int64: text tokens cut to max_length-1, then `</s>`, then pads."""
    ids = tokenizer.encode(text)[: max_length - 1] + [tokenizer.eos_id]
    out = torch.full((1, max_length), PAD_ID, dtype=torch.long)
    out[0, : len(ids)] = torch.tensor(ids, dtype=torch.long)
    mask = torch.zeros((1, max_length), dtype=torch.long)
    mask[0, : len(ids)] = 1
    return out, mask


# ---------------------------------------------------------------- weights
class _WeightReader:
    """Tensors by name across one or more .safetensors / .bin files, read on demand."""

    def __init__(self, files: list[Path]):
        self._where: dict[str, Callable[[], torch.Tensor]] = {}
        for f in files:
            if f.suffix == ".safetensors":
                from safetensors import safe_open

                handle = safe_open(str(f), framework="pt", device="cpu")
                for k in handle.keys():
                    self._where[k] = (lambda h=handle, k=k: h.get_tensor(k))
            else:
                try:
                    sd = torch.load(str(f), map_location="cpu", weights_only=True, mmap=True)
                except RuntimeError:  # legacy (non-zip) .bin files cannot be memory-mapped
                    sd = torch.load(str(f), map_location="cpu", weights_only=True)
                for k, v in sd.items():
                    self._where[k] = (lambda v=v: v)

    def keys(self) -> list[str]:
        return list(self._where)

    def get(self, key: str) -> torch.Tensor:
        return self._where[key]()


def _weight_files(path: Path) -> tuple[list[Path], Path | None]:
    """(weight files, config.json or None) for a file, a model folder, or the official `ckpt/t5` parent."""
    if path.is_file():
        return [path], None
    if not path.is_dir():
        raise FileNotFoundError(f"T5 weights not found: {path}")
    if (path / OFFICIAL_SUBDIR).is_dir():
        path = path / OFFICIAL_SUBDIR
    config = path / "config.json" if (path / "config.json").is_file() else None
    for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        index = path / index_name
        if index.is_file():
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            return [path / s for s in shards], config
    for single in ("model.safetensors", "pytorch_model.bin"):
        if (path / single).is_file():
            return [path / single], config
    found = sorted(path.glob("*.safetensors"))
    if len(found) == 1:
        return found, config
    raise FileNotFoundError(
        f"no T5 weights in {path}: expected model.safetensors, pytorch_model.bin, a shard index, "
        f"or the official '{OFFICIAL_SUBDIR}' subfolder"
    )


def embedded_tokenizer(reader) -> str | None:
    """The key of the sentencepiece model stored inside a single-file T5 checkpoint (ComfyUI's t5xxl files), or
    None."""
    return next((k for k in reader.keys() if k.endswith("spiece_model")), None)


def has_tokenizer(weights: str | Path) -> bool:
    """Whether a T5 checkpoint brings its tokenizer: an official folder does (load_tokenizer checks it), a single
    file only when it embeds one (headers only)."""
    weights = Path(weights)
    return weights.is_dir() or embedded_tokenizer(_WeightReader(_weight_files(weights)[0])) is not None


def t5_width(weights: str | Path) -> int | None:
    """d_model of a T5 checkpoint without reading tensor data (config.json, or the embedding's shape in the
    safetensors header); None when only .bin files hold it. FileNotFoundError / ValueError for no T5 there."""
    files, config_json = _weight_files(Path(weights))
    if config_json is not None:
        d_model = json.loads(config_json.read_text()).get("d_model")
        if d_model is None:
            raise ValueError(f"{config_json} is not a T5 config (it has no d_model): is this the T5 encoder's folder "
                             "(ckpt/t5/t5-v1_1-xxl)?")
        return int(d_model)
    if files[0].suffix != ".safetensors":
        return None
    from safetensors import safe_open

    try:
        f = safe_open(str(files[0]), framework="pt", device="cpu")
    except Exception as e:  # safetensors' own error type: not a safetensors file
        raise ValueError(f"{files[0]} is not a readable safetensors file ({e})") from None
    return int(f.get_slice(_find_prefix(list(f.keys())) + _ANCHOR).get_shape()[-1])


def _find_prefix(keys: list[str]) -> str:
    prefixes = sorted({k[: -len(_ANCHOR)] for k in keys if k.endswith(_ANCHOR)})
    if not prefixes:
        raise ValueError(f"not a T5 encoder checkpoint: no '{_ANCHOR}' key (first keys: {keys[:5]})")
    if len(prefixes) > 1:
        raise ValueError(f"the checkpoint holds several T5 encoders under prefixes {prefixes}; use a file with one")
    return prefixes[0]


def t5_state_dict(reader, dtype: torch.dtype = torch.float32, device="cpu") -> dict[str, torch.Tensor]:
    """HF `T5EncoderModel` state dict from a checkpoint's tensors: prefix removed, fp8 dequantised, `dtype`.

    `reader` has keys() and get(key) (a plain dict works). Keys of other models around the T5 (outside its
    prefix) are skipped; inside it only decoder/lm_head and quantisation metadata are ignored."""
    keys = list(reader.keys())
    prefix = _find_prefix(keys)
    key_set = set(keys)
    out: dict[str, torch.Tensor] = {}
    for full in keys:
        if not full.startswith(prefix) or full == "scaled_fp8":
            continue
        name = full[len(prefix):]
        if (name == "scaled_fp8" or name.endswith(_SCALE_SUFFIXES) or name.endswith(_IGNORED_SUFFIXES)
                or name.startswith(("decoder.", "lm_head."))):
            continue
        w = reader.get(full)
        if w.dtype in _FP8:
            w = w.to(device=device, dtype=torch.float32)
            stem = full[: -len(".weight")] if full.endswith(".weight") else full
            for suffix in _SCALE_SUFFIXES:
                if stem + suffix in key_set:
                    scale = reader.get(stem + suffix).to(device=device, dtype=torch.float32)
                    w = w * (scale.reshape(-1, *([1] * (w.dim() - 1))) if scale.numel() > 1 else scale.reshape(()))
        out[name] = w.to(device=device, dtype=dtype) if w.is_floating_point() else w.to(device)
    # the token embedding is stored as shared.weight, encoder.embed_tokens.weight, or both (tied)
    emb = out.get("shared.weight", out.get("encoder.embed_tokens.weight"))
    if emb is not None:
        out["shared.weight"] = out["encoder.embed_tokens.weight"] = emb
    return out


def t5_config_from_state_dict(sd: dict[str, torch.Tensor]):
    """T5 v1.1 encoder config read off the tensor shapes (XXL: d_model 4096, 24 layers, 64 heads)."""
    from transformers import T5Config

    try:
        vocab, d_model = sd["shared.weight"].shape
        buckets, heads = sd["encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"].shape
        inner = sd["encoder.block.0.layer.0.SelfAttention.q.weight"].shape[0]
        gated = "encoder.block.0.layer.1.DenseReluDense.wi_0.weight" in sd
        d_ff = sd[f"encoder.block.0.layer.1.DenseReluDense.{'wi_0' if gated else 'wi'}.weight"].shape[0]
    except KeyError as e:
        raise ValueError(f"cannot infer the T5 config: missing key {e.args[0]!r}") from None
    layers = 1 + max(int(k.split(".")[2]) for k in sd if k.startswith("encoder.block."))
    return T5Config(
        vocab_size=vocab, d_model=d_model, d_kv=inner // heads, d_ff=d_ff, num_layers=layers, num_heads=heads,
        relative_attention_num_buckets=buckets, relative_attention_max_distance=128,
        feed_forward_proj="gated-gelu" if gated else "relu", layer_norm_epsilon=1e-6, dropout_rate=0.0,
        is_encoder_decoder=False, use_cache=False, tie_word_embeddings=False,
    )


def build_t5_encoder(sd: dict[str, torch.Tensor], config=None):
    """`T5EncoderModel` holding exactly `sd` (strict: missing, unexpected or misshaped keys are errors)."""
    from transformers import T5EncoderModel

    config = config or t5_config_from_state_dict(sd)
    with torch.device("meta"):
        model = T5EncoderModel(config)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(sd))
    unexpected = sorted(set(sd) - set(expected))
    misshaped = sorted(f"{k} {tuple(sd[k].shape)} != {tuple(v.shape)}"
                       for k, v in expected.items() if k in sd and sd[k].shape != v.shape)
    if missing or unexpected or misshaped:
        def some(xs):
            return f"{len(xs)} ({', '.join(xs[:6])}{', ...' if len(xs) > 6 else ''})"

        raise ValueError(
            "T5 checkpoint does not match a T5 v1.1 encoder "
            f"(d_model {config.d_model}, {config.num_layers} layers): missing {some(missing)}; "
            f"unexpected {some(unexpected)}; wrong shape {some(misshaped)}. "
            "Check the file is a complete T5-XXL encoder (not truncated, not another text encoder)."
        )
    model.load_state_dict(sd, strict=True, assign=True)
    return model.eval().requires_grad_(False)


# ---------------------------------------------------------------- encoder
class EncodingCache:
    """LRU cache of encodings keyed by (model identity, text, options); tensors kept on the CPU."""

    def __init__(self, max_entries: int = 16):
        self.max_entries = max_entries
        self._items: OrderedDict = OrderedDict()

    def get(self, key):
        if key in self._items:
            self._items.move_to_end(key)
            return self._items[key]
        return None

    def put(self, key, value):
        self._items[key] = value
        self._items.move_to_end(key)
        while len(self._items) > self.max_entries:
            self._items.popitem(last=False)

    def clear(self):
        self._items.clear()

    def __len__(self):
        return len(self._items)


DEFAULT_CACHE = EncodingCache()


def _identity(paths: list[Path], dtype: torch.dtype) -> str:
    parts = []
    for p in paths:
        st = p.stat()
        parts.append(f"{p.resolve()}:{st.st_size}:{int(st.st_mtime)}")
    return "|".join(parts) + f"|{dtype}"


class T5TextEncoder:
    """T5 encoder + tokenizer producing MAGI-1 caption embeddings."""

    def __init__(self, model, tokenizer, identity: str, max_length: int = MAX_LENGTH,
                 cache: EncodingCache | None = DEFAULT_CACHE):
        self.model, self.tokenizer, self.identity = model, tokenizer, identity
        self.max_length, self.cache = max_length, cache

    @classmethod
    def load(cls, weights: str | Path, tokenizer: str | Path | None = None, dtype: torch.dtype = torch.float32,
             device="cpu", config=None, **kwargs) -> "T5TextEncoder":
        """Load from the official folder, one safetensors file, or a ComfyUI t5xxl file (see module doc).

        `tokenizer` defaults to the one next to the weights (official folder) or inside the file."""
        weights = Path(weights)
        files, config_json = _weight_files(weights)
        reader = _WeightReader(files)
        if tokenizer is not None:
            tok = load_tokenizer(tokenizer)
        elif weights.is_dir():
            tok = load_tokenizer(weights)
        else:
            embedded = embedded_tokenizer(reader)
            if embedded is None:
                raise ValueError(f"{weights} holds no tokenizer: pass tokenizer= (spiece.model or tokenizer.json)")
            tok = SentencePieceTokenizer(reader.get(embedded).numpy().tobytes())
        if config is None and config_json is not None:
            from transformers import T5Config

            config = T5Config.from_json_file(str(config_json))
        model = build_t5_encoder(t5_state_dict(reader, dtype, device), config)
        return cls(model, tok, _identity(files, dtype), **kwargs)

    def tokenize(self, text: str, clean: bool = True):
        """(ids, mask), each (1, max_length) int64, after the reference caption cleaning."""
        return tokenize(self.tokenizer, clean_caption(text) if clean else text, self.max_length)

    @torch.no_grad()
    def encode(self, text: str, clean: bool = True, full_padding: bool = False):
        """Caption embedding (1, max_length, C) fp32 and mask (1, max_length) int64, on the CPU.

        The reference runs the encoder on all 800 slots (pads masked out of attention). Outputs at real
        tokens do not depend on the pads, so by default only the real tokens are run and the pad rows are
        zeros (every consumer masks them); `full_padding=True` runs all slots like the reference."""
        if not isinstance(text, str):
            raise TypeError(f"prompt must be a string, got {type(text).__name__}")
        key = (self.identity, text, clean, full_padding, self.max_length)
        hit = self.cache.get(key) if self.cache is not None else None
        if hit is None:
            ids, mask = self.tokenize(text, clean)
            n = int(mask.sum()) if not full_padding else self.max_length
            device = next(self.model.parameters()).device
            hidden = self.model(input_ids=ids[:, :n].to(device), attention_mask=mask[:, :n].to(device)).last_hidden_state
            emb = torch.zeros(1, self.max_length, hidden.shape[-1], dtype=torch.float32)
            emb[:, :n] = hidden.float().cpu()
            hit = (emb, mask)
            if self.cache is not None:
                self.cache.put(key, hit)
        return hit[0].clone(), hit[1].clone()
