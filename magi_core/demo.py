"""Tiny random MAGI-1 models written in the real file layouts (offline demo, tests, ComfyUI tests).

Weights cannot be downloaded here, so the demo builds a tiny DiT (same layout as the real ones), a tiny VAE,
a tiny T5 encoder with a sentencepiece tokenizer trained on a few sentences, and special tokens of the tiny
caption width. The video it makes is noise-like (random weights) but goes through every real code path.
"""
from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import torch

CORPUS = [
    "a red fox runs through the snowy forest at dawn",
    "a cat sleeps on a sunny windowsill while rain falls outside",
    "waves crash on a rocky shore under a purple sky",
    "a city street at night with neon lights and people walking",
    "an astronaut floats slowly past a blue planet",
    "a dog jumps into a lake and swims back with a stick",
    "timelapse of clouds moving over green mountains",
    "a chef slices vegetables quickly in a busy kitchen",
]


def _spm_model(vocab: int = 64) -> bytes:
    import sentencepiece as spm

    out = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS * 4), model_writer=out, vocab_size=vocab, model_type="unigram",
        pad_id=0, eos_id=1, unk_id=2, bos_id=-1, character_coverage=1.0, minloglevel=2,
    )
    return out.getvalue()


def make_tiny_assets(root: str | Path, seed: int = 0, variant: str = "distill") -> dict:
    """Write tiny models under `root` as a user would keep them; returns their paths.

    root/diffusion_models/magi1_tiny_<variant>.safetensors   single-file DiT (ComfyUI style)
    root/magi/vae/                                           official VAE layout (config.json + weights)
    root/text_encoders/t5-tiny/                              official T5 layout (config.json, spiece.model)
    root/magi/special_tokens.npz                             special tokens of the tiny caption width
    """
    from safetensors.torch import save_file
    from transformers import T5Config, T5EncoderModel

    from .config import preset
    from .dit import build_dit, init_random_
    from .vae import VAE_PRESETS, ViTVAE, save_vae

    root = Path(root)
    torch.manual_seed(seed)
    name = "tiny" if variant == "base" else f"tiny-{variant}"
    cfg = preset(name)
    dit = init_random_(build_dit(cfg), seed=seed)
    dit_path = root / "diffusion_models" / f"magi1_tiny_{variant.replace('-', '_')}.safetensors"
    dit_path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in dit.state_dict().items()}, str(dit_path),
              metadata={"magi1_size": "tiny", "magi1_variant": variant})

    vae = ViTVAE(VAE_PRESETS["tiny"]).eval()
    vae_dir = root / "magi" / "vae"
    save_vae(vae, vae_dir)

    t5_dir = root / "text_encoders" / "t5-tiny"
    t5_dir.mkdir(parents=True, exist_ok=True)
    (t5_dir / "spiece.model").write_bytes(_spm_model())
    t5cfg = T5Config(vocab_size=64, d_model=cfg.caption_channels, d_kv=16, d_ff=96, num_layers=2, num_heads=4,
                     relative_attention_num_buckets=32, feed_forward_proj="gated-gelu", is_encoder_decoder=False,
                     use_cache=False, tie_word_embeddings=False, dropout_rate=0.0)
    t5 = T5EncoderModel(t5cfg).eval()
    t5cfg.to_json_file(str(t5_dir / "config.json"))
    save_file({k: v.contiguous() for k, v in t5.state_dict().items() if k != "encoder.embed_tokens.weight"},
              str(t5_dir / "model.safetensors"))

    rng = np.random.default_rng(seed)
    tok_path = root / "magi" / "special_tokens.npz"
    C = cfg.caption_channels
    np.savez(tok_path, caption_token=rng.normal(size=(1, C)) * 0.3, logo_token=rng.normal(size=(1, C)) * 0.3,
             other_tokens=rng.normal(size=(100, C)) * 0.3)
    (root / "magi" / "README.json").write_text(json.dumps({"tiny": True, "seed": seed, "variant": variant}))
    return {"dit": dit_path, "vae": vae_dir, "t5": t5_dir, "special_tokens": tok_path}
