"""Loader nodes: MAGI-1 DiT, VAE and T5 from ComfyUI's model folders."""
from __future__ import annotations

import re

from comfy_api.latest import io

from magi_core.checkpoint.layout import parse_variant
from magi_core.settings import DiTRuntime

from . import choices, memory
from .loading import load_t5, load_vae, open_dit
from .model_files import default_special_tokens, identity, resolve, scan, size_on_disk, special_token_files
from .types import CATEGORY, PACK_ASSET_TOKENS, MagiModel, MagiT5, MagiVAE, comfy_t5_tokenizer, roots

BLOCK_SWAP_MAX = 64  # the 24B model has 48 layers; the model's own count is checked too
# size and variant in a model's name: install.py's folders (24B_distill_quant) and convert's files (magi1_24B_distill)
_SIZE_VARIANT = re.compile(r"(4\.5B|24B)[_-](base|distill(?:[_-](?:quant|fp8))?)", re.IGNORECASE)


def missing_hint(kind: str, value) -> str:
    """What to do about a model name that is not in the model folders: install.py's download of that very
    model where the name is one of its folders (python install.py --list), else where such files go."""
    name = str(value).replace("\\", "/").rstrip("/").rsplit("/", 1)[-1]
    if kind == "dit":
        m = _SIZE_VARIANT.search(name)
        if not m:
            return ("python install.py --download NAME puts official weights in models/magi (names: python "
                    "install.py --list); a single-file DiT goes in models/diffusion_models")
        fp8, distill = parse_variant(m[2])
        item = f"{m[1].upper()}-{'distill' if distill else 'base'}{'-fp8' if fp8 else ''}"
        return (f"python install.py --download {item} puts the official weights in models/magi; a converted "
                f"single file goes in models/diffusion_models")
    if kind == "vae":
        return "python install.py --download vae puts the official VAE in models/magi/vae (a single file: models/vae)"
    return ("python install.py --download t5 puts the official t5-v1_1-xxl folder in models/text_encoders; a "
            "t5xxl_fp16.safetensors file there works too")


def _device_input(tooltip: str):
    return io.Combo.Input("device", options=choices.devices(memory.cuda_count()), default="auto", tooltip=tooltip)


def _fingerprint(name: str, kind: str):
    try:
        return identity(resolve(name, roots(kind)))
    except (OSError, ValueError):
        return name


def special_tokens_path(choice: str):
    """The special tokens file for the DiT loader's choice: auto (the pack's copy from install.py, else
    models/magi/special_tokens.npz, else none), none, or a listed file."""
    if choice == "auto":
        return default_special_tokens(PACK_ASSET_TOKENS, roots("tokens"))
    if choice == "none":
        return None
    return resolve(choice, roots("tokens"), "special tokens file")


class MagiDiTLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="MagiDiTLoader", display_name="MAGI-1 DiT Loader", category=CATEGORY,
            description="Pick a MAGI-1 DiT (official folder or single file). Size and variant are read from the "
                        "checkpoint at once; the weights load when the sampler first needs them, and stay loaded "
                        "between runs while the inputs do not change.",
            inputs=[
                io.Combo.Input("model", options=scan(roots("dit"), "dit"),
                               tooltip="from models/magi (folders or files) and models/diffusion_models"),
                io.Combo.Input("variant", options=choices.VARIANT, default="auto",
                               tooltip="auto: detected (fp8 from the weights; distill vs base from the name or "
                                       "metadata, since their weights look alike). Set it when the name does not say."),
                io.Combo.Input("weight_dtype", options=choices.DIT_WEIGHT_DTYPE, default="auto",
                               tooltip="auto: as stored. bf16: cast fp16/fp32 conversions back to the reference "
                                       "dtypes (bf16, fp32 for the usual high-precision layers). fp8_e4m3fn: store the "
                                       "block weights in fp8 (half the VRAM; ~6% relative change of the "
                                       "tiny test model's output; activations stay bf16)"),
                io.Combo.Input("attention", options=choices.ATTENTION, default="auto",
                               tooltip="attention kernel; auto picks the fastest exact one installed (sdpa always works). "
                                       "fp8-approx: FP8 attention on Hopper GPUs (H100/H200; needs "
                                       "nvidia-cudnn-frontend), APPROXIMATE: a 720x720 4.5B distill generation ran "
                                       "1.20x faster on an H100 and its latents differed from bf16 by ~6% (one DiT "
                                       "step: 8.5-13%; random weights; README); "
                                       "elsewhere it warns and runs bf16"),
                io.Combo.Input("precision", options=choices.PRECISION, default="fast",
                               tooltip="exact: the reference's numerics; fast: linear_proj in bf16, faster; one forward "
                                       "differs from exact by ~1% (bf16 models) to ~3-7% (fp8 models), "
                                       "measured on small random models (README, Precision)"),
                _device_input("where the DiT runs; auto = ComfyUI's main device"),
                io.Combo.Input("special_tokens",
                               options=choices.SPECIAL_TOKENS_FIXED + special_token_files(roots("tokens")),
                               default="auto",
                               tooltip="MAGI-1's special_tokens.npz (HQ / duration tokens). auto: the pack's copy "
                                       "(install.py) or models/magi/special_tokens.npz"),
                io.Boolean.Input("compile", default=False, optional=True,  # optional: older API prompts lack it
                                 tooltip="fuse the element-wise ops (norms, RoPE, gates, fp8 quantization) with "
                                         "torch.compile on CUDA (4.5B window forward on an H100: 2.66 s eager, "
                                         "2.41 s compiled; BENCHMARKS.md); the first run compiles (a warm-up "
                                         "generation took 12-19 s there), later runs and other video lengths reuse "
                                         "it; no effect on CPU"),
                io.Int.Input("block_swap", default=0, min=0, max=BLOCK_SWAP_MAX, optional=True,
                             tooltip="number of transformer layers kept in host memory and streamed to the GPU "
                                     "while the model runs (0 = all layers on the GPU). Lowers VRAM by ~0.25 GB "
                                     "(4.5B) / ~1 GB (24B bf16) per layer at some speed cost; the way to run 24B "
                                     "or long 4.5B videos on 24 GB cards"),
            ],
            outputs=[MagiModel.Output(display_name="model"), io.String.Output(display_name="info")],
        )

    @classmethod
    def validate_inputs(cls, model=None):  # one input: see choices.py on validate_inputs
        return choices.check_all([("model", model, scan(roots("dit"), "dit"), missing_hint("dit", model))])

    @classmethod
    def fingerprint_inputs(cls, model, special_tokens="auto", **kwargs):
        """The checkpoint's files and the special tokens file the node would use: placing special_tokens.npz (or
        changing either) makes the next run take it, not the result ComfyUI cached without it."""
        try:
            tokens = special_tokens_path(special_tokens)
        except (OSError, ValueError):
            tokens = None
        return _fingerprint(model, "dit"), tokens and identity(tokens)

    @classmethod
    def execute(cls, model, variant, weight_dtype, attention, precision, device, special_tokens, compile=False,
                block_swap=0):
        handle = cls.handle(model, variant, weight_dtype, attention, precision, device, special_tokens, compile,
                            block_swap)
        info = handle.describe()
        return io.NodeOutput(handle, info, ui={"text": [info]})

    @classmethod
    def handle(cls, model, variant, weight_dtype, attention, precision, device, special_tokens, compile=False,
               block_swap=0):
        """The MAGI_MODEL for these widget values, from the checkpoint's headers (no weights are read); also
        what the node's info panel shows before a run (routes.py /magi/dit_info)."""
        choices.require_all([
            ("variant", variant, choices.VARIANT), ("weight_dtype", weight_dtype, choices.DIT_WEIGHT_DTYPE),
            ("attention", attention, choices.ATTENTION), ("precision", precision, choices.PRECISION),
            choices.device_check(device, memory.cuda_count()),
            ("special_tokens", special_tokens, choices.SPECIAL_TOKENS_FIXED + special_token_files(roots("tokens")),
             "put special_tokens.npz in models/magi or run install.py"),
        ])
        path = resolve(model, roots("dit"), "DiT")
        tokens = special_tokens_path(special_tokens)
        runtime = DiTRuntime(device=str(memory.resolve_device(device, "dit")), precision=precision,
                             attention=attention, compile=compile, block_swap=int(block_swap), weight_dtype=weight_dtype)
        return open_dit(model, path, variant, runtime, tokens)


class MagiVAELoader(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="MagiVAELoader", display_name="MAGI-1 VAE Loader", category=CATEGORY,
            description="Load the MAGI-1 VAE (official ckpt/vae folder or one .safetensors file).",
            inputs=[
                io.Combo.Input("vae", options=scan(roots("vae"), "vae"), tooltip="from models/magi and models/vae"),
                io.Combo.Input("dtype", options=choices.VAE_DTYPE, default="bf16", tooltip="the reference uses bf16"),
                _device_input("where the VAE runs; auto = ComfyUI's VAE device"),
            ],
            outputs=[MagiVAE.Output(display_name="vae")],
        )

    @classmethod
    def validate_inputs(cls, vae=None):  # one input: see choices.py on validate_inputs
        return choices.check_all([("vae", vae, scan(roots("vae"), "vae"), missing_hint("vae", vae))])

    @classmethod
    def fingerprint_inputs(cls, vae, **kwargs):
        return _fingerprint(vae, "vae")

    @classmethod
    def execute(cls, vae, dtype, device):
        choices.require_all([("dtype", dtype, choices.VAE_DTYPE), choices.device_check(device, memory.cuda_count())])
        path = resolve(vae, roots("vae"), "VAE")
        dev = memory.resolve_device(device, "vae")
        handle = load_vae(vae, path, dtype, dev, before_load=lambda: memory.free_for(size_on_disk(path), dev))
        memory.register(handle.loaded, handle.model, "vae", dev)
        return io.NodeOutput(handle)


class MagiT5Loader(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="MagiT5Loader", display_name="MAGI-1 T5 Loader", category=CATEGORY,
            description="Load T5-XXL for MAGI-1: the official ckpt/t5 folder, or a single t5xxl file from "
                        "models/text_encoders (the one Flux/SD3 use; fp16 and fp8 files work).",
            inputs=[
                io.Combo.Input("t5", options=scan(roots("t5"), "t5"),
                               tooltip="from models/text_encoders and models/magi"),
                io.Combo.Input("dtype", options=choices.T5_DTYPE, default="bf16",
                               tooltip="compute dtype; the reference runs T5 in fp32"),
                _device_input("where T5 runs; auto = ComfyUI's text-encoder device"),
            ],
            outputs=[MagiT5.Output(display_name="t5")],
        )

    @classmethod
    def validate_inputs(cls, t5=None):  # one input: see choices.py on validate_inputs
        return choices.check_all([("t5", t5, scan(roots("t5"), "t5"), missing_hint("t5", t5))])

    @classmethod
    def fingerprint_inputs(cls, t5, **kwargs):
        return _fingerprint(t5, "t5")

    @classmethod
    def execute(cls, t5, dtype, device):
        choices.require_all([("dtype", dtype, choices.T5_DTYPE), choices.device_check(device, memory.cuda_count())])
        path = resolve(t5, roots("t5"), "T5")
        dev = memory.resolve_device(device, "t5")
        handle = load_t5(t5, path, dtype, dev, tokenizer=comfy_t5_tokenizer(),
                         before_load=lambda: memory.free_for(size_on_disk(path), dev))
        memory.register(handle.loaded, handle.encoder.model, "t5", dev)
        return io.NodeOutput(handle)


NODES = [MagiDiTLoader, MagiVAELoader, MagiT5Loader]
