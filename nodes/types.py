"""The pack's socket types (all `MAGI_` prefixed) and where its models live in ComfyUI's folders."""
from __future__ import annotations

import os
from pathlib import Path

import folder_paths
from comfy_api.latest import io

MagiModel = io.Custom("MAGI_MODEL")
MagiVAE = io.Custom("MAGI_VAE")
MagiT5 = io.Custom("MAGI_T5")
MagiConditioning = io.Custom("MAGI_CONDITIONING")
MagiSamplerOptions = io.Custom("MAGI_SAMPLER_OPTIONS")
MagiMultiGPU = io.Custom("MAGI_MULTIGPU")

CATEGORY = "MAGI-1"
PACK_ASSET_TOKENS = Path(__file__).resolve().parents[1] / "magi_core" / "assets" / "special_tokens.npz"
EXAMPLE_INPUTS = Path(__file__).resolve().parents[1] / "workflows" / "input"  # files the shipped workflows load


def register_folders() -> None:
    """models/magi as a ComfyUI model folder (keeps extra_model_paths.yaml `magi:` entries; folder_paths.py)."""
    default = os.path.join(folder_paths.models_dir, "magi")
    folder_paths.add_model_folder_path("magi", default)
    paths, _ = folder_paths.folder_names_and_paths["magi"]
    folder_paths.folder_names_and_paths["magi"] = (paths, set(folder_paths.supported_pt_extensions))
    try:
        os.makedirs(default, exist_ok=True)
    except OSError:
        pass


def roots(kind: str) -> list[str]:
    """Model folders searched for each kind, MAGI's own folder first for DiT and VAE."""
    keys = {"dit": ("magi", "diffusion_models"), "vae": ("magi", "vae"), "t5": ("text_encoders", "magi"),
            "tokens": ("magi",)}[kind]
    out = []
    for k in keys:
        for p in folder_paths.get_folder_paths(k):
            if p not in out:
                out.append(p)
    return out


def comfy_t5_tokenizer() -> Path:
    """ComfyUI's own T5 tokenizer (tokenizer.json), used for single t5xxl files."""
    return Path(folder_paths.base_path) / "comfy" / "text_encoders" / "t5_tokenizer"


def install_example_inputs() -> None:
    """Copy the inputs the shipped workflows name (workflows/input/) into ComfyUI's input folder, so a template
    runs on a fresh install; a file the user already has under that name is left alone."""
    import shutil

    target = Path(folder_paths.get_input_directory())
    for src in sorted(EXAMPLE_INPUTS.glob("*")):
        dst = target / src.name
        if src.is_file() and not dst.exists():
            try:
                target.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(src, dst)
            except OSError as e:
                print(f"[MAGI-1] could not copy the example input {src.name} to {target}: {e}")
