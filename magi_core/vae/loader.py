"""Load/save the MAGI-1 VAE in the official `ckpt/vae` layout (config.json + diffusion_pytorch_model.safetensors)."""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from .model import VAE_PRESETS, VAEConfig, ViTVAE

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"


def read_vae_config(path: str | Path) -> VAEConfig:
    """VAEConfig from an official config.json (or a directory holding one)."""
    path = Path(path)
    if path.is_dir():
        path = path / CONFIG_NAME
    if not path.is_file():
        raise FileNotFoundError(f"no VAE config at {path} (the official layout is ckpt/vae/{CONFIG_NAME})")
    try:
        return VAEConfig.from_official(json.loads(path.read_text()))
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None


def find_vae(path: Path, config=None) -> tuple[Path, VAEConfig]:
    """-> (weights file, config), reading no weights. config: None, a preset name, a VAEConfig, an official dict or a json path."""
    if path.is_dir():
        weights = path / WEIGHTS_NAME
        if not weights.is_file():
            found = sorted(p.name for p in path.iterdir())
            raise FileNotFoundError(f"{path} has no {WEIGHTS_NAME} (found: {found})")
        return weights, read_vae_config(path) if config is None else _as_config(config)
    if not path.is_file():
        raise FileNotFoundError(f"VAE checkpoint {path} does not exist")
    if config is not None:
        return path, _as_config(config)
    for cand in (path.with_suffix(".json"), path.parent / CONFIG_NAME):
        if cand.is_file():
            return path, read_vae_config(cand)
    return path, VAE_PRESETS["magi1"]


def _as_config(config) -> VAEConfig:
    if isinstance(config, VAEConfig):
        return config
    if isinstance(config, dict):
        return VAEConfig.from_official(config)
    if isinstance(config, str) and config in VAE_PRESETS:
        return VAE_PRESETS[config]
    if isinstance(config, (str, Path)) and Path(config).is_file():
        return read_vae_config(config)
    raise ValueError(f"VAE config {config!r} is not a preset ({', '.join(VAE_PRESETS)}), a VAEConfig or a config.json")


def _short(keys: list, n: int = 8) -> str:
    return ", ".join(keys[:n]) + (f", ... ({len(keys)} in all)" if len(keys) > n else "")


def check_vae_keys(expected: dict, found: dict, source: str) -> None:
    """Strict check of {name: shape} maps; the error names missing, unexpected and misshaped keys."""
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    shapes = sorted(k for k in set(expected) & set(found) if tuple(expected[k]) != tuple(found[k]))
    if not (missing or unexpected or shapes):
        return
    parts = []
    if missing:
        parts.append(f"missing keys: {_short(missing)}")
    if unexpected:
        parts.append(f"unexpected keys: {_short(unexpected)}")
    if shapes:
        parts.append("wrong shapes: " + _short([f"{k} {tuple(found[k])} (expected {tuple(expected[k])})" for k in shapes]))
    raise ValueError(f"{source} does not match the VAE config ({'; '.join(parts)}). Is it the MAGI-1 VAE "
                     f"(ckpt/vae) with its own config.json, and is the download complete?")


def check_vae(path: Path, config=None) -> tuple[Path, VAEConfig, ViTVAE]:
    """find_vae, then the weight file's key names and shapes against the config (headers only) -> (weights file,
    config, the model on the meta device)."""
    weights, cfg = find_vae(Path(path), config)
    with torch.device("meta"):
        model = ViTVAE(cfg)
    expected = {k: v.shape for k, v in model.state_dict().items()}
    with safe_open(str(weights), framework="pt") as f:
        found = {k: f.get_slice(k).get_shape() for k in f.keys()}
    check_vae_keys(expected, found, str(weights))
    return weights, cfg, model


def load_vae(path: str | Path, device="cpu", dtype: torch.dtype = torch.bfloat16, config=None) -> ViTVAE:
    """Load the VAE from the official ckpt/vae directory or from a single .safetensors file (strict).

    For a file, the config is `config` (preset name, VAEConfig, dict or json path), else `<file>.json` or
    config.json next to it, else the released "magi1" preset. All weights are cast to `dtype` (the reference
    casts the VAE to bf16). Key names and shapes are checked before any tensor is read.
    """
    weights, cfg, model = check_vae(Path(path), config)
    sd = load_file(str(weights), device=str(torch.device(device)))
    sd = {k: v.to(dtype) for k, v in sd.items()}
    model.load_state_dict(sd, strict=True, assign=True)
    return model.eval()


def save_vae(vae: ViTVAE, directory: str | Path) -> Path:
    """Write the official layout: <directory>/config.json + diffusion_pytorch_model.safetensors."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / CONFIG_NAME).write_text(json.dumps(vae.cfg.to_official(), indent=2))
    sd = {k: v.detach().contiguous().cpu() for k, v in vae.state_dict().items()}
    save_file(sd, str(directory / WEIGHTS_NAME))
    return directory
