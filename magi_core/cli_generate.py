"""`python -m magi_core generate`: text-to-video, image-to-video and video continuation from the command line.

A run has three phases. `prepare` checks every setting and path and reads what is cheap to read (the DiT's
headers, the VAE and T5 configs, the special tokens, the prompt, the prefix pixels): every user mistake ends
there, before any model weight is read. Then the models load, and each finished chunk is decoded and appended
to the output file at once (`magi_core.video.VideoWriter`: a temporary file renamed at the end), so memory does
not grow with the video's length and Ctrl-C keeps a playable file of the finished chunks. The torchrun entry
(`parallel/run.py`) uses the same phases.
"""
from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from . import startup
from .startup import say
from .settings import FPS_MAX, FPS_MIN, DiTRuntime, SamplingSettings
from .kernels import attention_fp8
from .kernels.attention import FP8

DEFAULT_TOKENS = Path(__file__).resolve().parent / "assets" / "special_tokens.npz"
DEMO_PROMPT = "0: a red fox runs through the snowy forest\n1-: a cat sleeps on a sunny windowsill"
_D = SamplingSettings()


def add_arguments(p: argparse.ArgumentParser):
    m = p.add_argument_group("models")
    m.add_argument("--dit", help="DiT checkpoint: official folder (…/4.5B_distill) or one .safetensors file")
    m.add_argument("--variant", help="base | distill | distill-fp8 (when the path does not say it)")
    m.add_argument("--vae", help="VAE folder (ckpt/vae) or .safetensors")
    m.add_argument("--t5", help="T5 folder (ckpt/t5) or a t5xxl .safetensors file")
    m.add_argument("--t5-tokenizer", help="spiece.model / tokenizer.json when --t5 is a single file")
    m.add_argument("--special-tokens", default=None, help=f"special_tokens.npz (default: {DEFAULT_TOKENS})")
    m.add_argument("--config", help="an official MAGI-1 config JSON: its sampler settings become the defaults")
    g = p.add_argument_group("what to generate")
    g.add_argument("--prompt", default=None, help="a prompt, or a per-chunk schedule, one 'RANGE: prompt' line per range: in bash "
                        "--prompt $'0-1: a fox\\n2-: a bird', or use --prompt-file")
    g.add_argument("--prompt-file", help="read the prompt / schedule from this file")
    g.add_argument("--image", help="image-to-video: the first frame")
    g.add_argument("--video", help="video continuation: the prefix video (at least 4 frames)")
    g.add_argument("--prefix-frames", type=int, default=None, help="v2v: prefix frames to use (default: all)")
    g.add_argument("--prefix-from", default=None, choices=["end", "start"],
                   help="v2v: take the prefix from the end or the start of the video (default: end)")
    g.add_argument("--resize", default=None, choices=["stretch", "crop", "pad"],
                   help="how the prefix is fitted to width x height (default: stretch, as the reference)")
    g.add_argument("--width", type=int, default=None, help=f"pixels, a multiple of 16 (default: {_D.width})")
    g.add_argument("--height", type=int, default=None, help=f"pixels, a multiple of 16 (default: {_D.height})")
    g.add_argument("--frames", type=int, default=None,
                   help=f"new frames (default: {_D.num_frames}). The video is made of chunks of 24 frames: "
                        "frames // 4 latent frames, rounded up to whole chunks of 6, so 4-27 give 24 frames, "
                        "28-51 give 48, and so on")
    g.add_argument("--fps", type=int, default=None, help=f"frames per second, {FPS_MIN} to {FPS_MAX} (default: {_D.fps}; the model is trained at 24)")
    g.add_argument("--steps", type=int, default=None,
                   help="denoising steps per chunk, a multiple of 4 and of --window (default: 16 for distill "
                        "models, 64 for 4.5B base, 32 for 24B base)")
    g.add_argument("--seed", type=int, default=None, help=f"noise seed (default: {_D.seed})")
    g.add_argument("--window", type=int, default=None,
                   help=f"chunks denoised at once (default: {_D.window_size}, the reference; 1 = least memory)")
    g.add_argument("--per-chunk-noise", action="store_true", help="noise that does not change with video length")
    g.add_argument("--no-hq", action="store_true", help="do not prepend the HQ special token")
    g.add_argument("--no-duration", action="store_true", help="do not prepend the DURATION countdown token")
    g.add_argument("--early-first-chunk", action="store_true",
                   help="finish the first chunk before the others start (same result; more memory)")
    r = p.add_argument_group("how to run")
    r.add_argument("--device", default=None, help="cuda, cuda:1 or cpu (default: cuda if there is a GPU, else cpu)")
    r.add_argument("--precision", default="fast", choices=["fast", "exact"],
                   help="exact: the reference's op order and dtypes (default: fast)")
    r.add_argument("--weight-dtype", default=None, choices=["bf16", "fp8_e4m3fn"],
                   help="bf16: cast fp16/fp32 conversions back to the reference dtypes; fp8_e4m3fn: keep the DiT "
                        "block weights in fp8, half the memory (default: as stored)")
    r.add_argument("--block-swap", type=int, default=0, metavar="N",
                   help="N transformer layers stay in host memory and stream to the GPU at each forward; CUDA "
                        "only (default: 0)")
    r.add_argument("--attention", default=None,
                   help="attention backend: sdpa | cudnn | flex | flash | magi (default: the fastest exact one "
                        "installed); fp8-approx = FP8 attention on Hopper (nvidia-cudnn-frontend), APPROXIMATE: "
                        "see the README for its measured error")
    r.add_argument("--compile", action="store_true", help="torch.compile the element-wise ops (CUDA; 4.5B window forward on an H100: 2.66 s eager, "
                        "2.41 s compiled; BENCHMARKS.md)")
    r.add_argument("--kv-offload", action="store_true", help="keep the KV cache in host memory")
    r.add_argument("--temporal-overlap", type=int, default=0,
                   help="VAE decode: latent frames shared by neighbouring tiles (default: 0)")
    o = p.add_argument_group("output")
    o.add_argument("--output", "-o", default="magi_output.mp4",
                   help="video file: .mp4, .mov or .mkv, H.264 (default: magi_output.mp4); written to a temporary "
                        "file next to it and renamed when done")
    o.add_argument("--demo", action="store_true",
                   help="tiny random models, CPU, offline (writes a real, noise-like video); unless given: "
                        "128x128, 48 frames, 8 steps, a two-prompt schedule")


# ----------------------------------------------------------------------------- phase 1: checks

_FLAGS = {"temporal_overlap": "--temporal-overlap", "width": "--width", "height": "--height", "num_frames": "--frames", "fps": "--fps", "steps": "--steps",
          "seed": "--seed", "window_size": "--window", "block_swap": "--block-swap", "block swap": "--block-swap",
          "precision": "--precision", "weight_dtype": "--weight-dtype", "attention backend": "--attention"}


def _flags(msg: str) -> str:
    """A settings error in command-line words (--frames for num_frames, ...)."""
    import re

    return re.sub(r"\b(" + "|".join(sorted(map(re.escape, _FLAGS), key=len, reverse=True)) + r")\b",
                  lambda m: _FLAGS[m.group(1)], msg)


@dataclass
class Job:
    """Everything a run needs, checked; no model weight read yet."""

    settings: SamplingSettings  # resolved for the model
    runtime: DiTRuntime
    dit_cfg: object
    dit: str
    variant: str | None
    vae: str
    t5: str
    t5_tokenizer: str | None
    prompt: str
    tokens: object = None  # SpecialTokens or None
    frames: torch.Tensor | None = None  # the prefix pixels (T, H, W, 3)
    prefix_frames: int = 0  # prefix frames (1 for an image), all of them encoded
    resize: str = "stretch"
    temporal_overlap: int = 0
    warnings: list = field(default_factory=list)


def official_config(a):
    """--config's official MAGI-1 config, or a user error naming the option."""
    from .config import load_official_config

    _exists("--config", a.config)
    try:
        return load_official_config(Path(a.config).expanduser())
    except ValueError as e:  # json's errors say only where in the file
        text = str(e) if str(a.config) in str(e) else f"not an official MAGI-1 config JSON ({e})"
        raise ValueError(f"--config {a.config}: {text.replace(str(Path(a.config).expanduser()) + ': ', '')}") from None


def settings_from_args(a) -> SamplingSettings:
    """--config's sampler settings (or the defaults) with the command line's on top; checked."""
    base = official_config(a).sampler if a.config else SamplingSettings()
    given = {k: v for k, v in (("width", a.width), ("height", a.height), ("num_frames", a.frames), ("fps", a.fps),
                               ("steps", a.steps), ("seed", a.seed), ("window_size", a.window)) if v is not None}
    try:
        return base.replace(**given, use_hq=not a.no_hq, use_duration=not a.no_duration,
                            per_chunk_noise=a.per_chunk_noise, kv_offload=a.kv_offload,
                            early_first_chunk=a.early_first_chunk)
    except ValueError as e:
        raise ValueError(_flags(str(e))) from None


def runtime_from_args(a) -> DiTRuntime:
    device = a.device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return DiTRuntime(device=device, precision=a.precision, attention=a.attention, compile=a.compile,
                          block_swap=a.block_swap, weight_dtype=a.weight_dtype)
    except ValueError as e:
        raise ValueError(_flags(str(e)) + ("" if a.device else " (--device was not given)")) from None


_WHERE = {"--dit": "models/magi/4.5B_distill (or another size/variant)", "--vae": "models/magi/vae",
          "--t5": "models/text_encoders/t5-v1_1-xxl"}  # install.py's download targets (install.py --list)


def _exists(flag: str, path) -> Path:
    p = Path(path).expanduser()
    if not p.exists():
        hint = f" (install.py --download puts it in {_WHERE[flag]})" if flag in _WHERE else ""
        raise ValueError(f"{flag} {path}: no such file or folder; check the path{hint}")
    return p


def _read(flag: str, path, what: str, reader):
    """reader(path), with any failure reported as a user error naming the file."""
    _exists(flag, path)
    try:
        return reader(path)
    except Exception as e:
        raise ValueError(f"{flag} {path}: cannot read it as {what} ({e})") from None


def _encodable_below(frames: int, fps: int) -> int | None:
    """The largest prefix length below `frames` that the VAE can encode at this fps, or None."""
    from .pipeline import prefix_latent_count

    for n in range(frames - 1, 0, -1):
        try:
            prefix_latent_count(n, fps)
            return n
        except ValueError:
            continue
    return None


def check_args(a):
    """Options that contradict each other, a --prompt typed wrong, --output's name and folder: what is checked
    before anything is read or made (`run` calls it before --demo makes its models)."""
    from .text.schedule import is_range_line

    if a.prompt is not None and a.prompt_file:
        raise ValueError("pass --prompt or --prompt-file, not both")
    if a.image and a.video:
        raise ValueError("pass --image (image-to-video) or --video (continuation), not both")
    if a.prompt and "\n" not in a.prompt and any(is_range_line(p) for p in a.prompt.split("\\n")[1:]):
        raise ValueError("--prompt has '\\n' as two characters before a chunk range (a shell keeps them so inside "
                         "\"...\"): for a schedule write --prompt $'0-1: a fox\\n2-: a bird' (bash, zsh) or put "
                         "one range per line in a file for --prompt-file")
    check_output(a)


def left_as_it_was(output) -> str:
    """What a run that wrote nothing says about its --output: ' (PATH left as it was)' when the file exists."""
    return f" ({output} left as it was)" if Path(output).expanduser().exists() else ""


def check_output(a):
    """--output's name and folder, before anything is made (VideoWriter checks the rest when it creates the file)."""
    from .video import output_container

    if not str(a.output).strip():
        raise ValueError("--output is empty: give a file name such as out.mp4")
    out = Path(a.output).expanduser()
    if out.is_dir():
        raise ValueError(f"--output {a.output} is a folder: give a file name such as {Path(a.output) / 'out.mp4'}")
    if not out.parent.is_dir():
        raise ValueError(f"--output {a.output}: the folder {out.parent} does not exist; create it or write elsewhere")
    output_container(out)


def leftover_notes(output) -> list[str]:
    """Warnings for temporary files of earlier runs into the same --output that were killed (SIGKILL, a power cut)
    before they could clean up (VideoWriter's `.NAME.*.part`): incomplete, unplayable, never removed by us."""
    from .video import temporary_files

    name = Path(output).name
    return [f"{p} is left from an earlier run into {name} that was killed before it finished (an incomplete file "
            "that does not play): delete it, unless another run is writing that file now" for p in temporary_files(output)]


def _ignored(a, device: str) -> list[str]:
    """Warnings for the prefix options given without the prefix they apply to."""
    out = []
    if not a.video:
        out += [f"{flag} is used with --video only: ignored" for flag, v in
                (("--prefix-frames", a.prefix_frames), ("--prefix-from", a.prefix_from)) if v is not None]
    if a.resize is not None and not (a.image or a.video):
        out.append("--resize is used with --image or --video only: ignored")
    if a.compile and torch.device(device).type != "cuda":
        out.append(f"--compile fuses the element-wise ops on CUDA GPUs only: no effect on {device}")
    return out


def prepare(a) -> Job:
    """Every check of a run; reads headers, configs, the prompt and the prefix pixels, never model weights.
    Raises ValueError (OSError for unreadable files) with what to change."""
    from .checkpoint import check, detect, open_checkpoint
    from .pipeline import chunk_count, prefix_latent_count, validate
    from .text import load_special_tokens, parse_schedule
    from .text.t5 import has_tokenizer, load_tokenizer, t5_width
    from .vae.loader import check_vae
    from .vae.tiling import check_temporal_overlap
    from .video import frame_count, read_image, read_video

    check_args(a)
    s = settings_from_args(a)
    runtime = runtime_from_args(a)
    missing = [n for n in ("dit", "vae", "t5") if not getattr(a, n)]
    if missing:
        raise ValueError(f"pass --{' --'.join(missing)} (the model paths), or --demo for tiny random models")
    if a.prefix_frames is not None and a.prefix_frames < 1:
        raise ValueError(f"--prefix-frames must be at least 1, got {a.prefix_frames}")
    prompt_flag = "--prompt-file" if a.prompt_file else "--prompt"
    prompt = _read("--prompt-file", a.prompt_file, "text", lambda p: Path(p).expanduser().read_text(
        encoding="utf-8-sig")) if a.prompt_file else (a.prompt or "")  # utf-8-sig: a BOM (Windows editors) goes
    if not prompt.strip():
        raise ValueError(f"--prompt-file {a.prompt_file} is empty: write the prompt into it" if a.prompt_file else
                         "pass --prompt \"what the video shows\" (or --prompt-file)")
    for flag in ("dit", "vae", "t5", "t5_tokenizer", "image", "video"):
        if getattr(a, flag):
            _exists("--" + flag.replace("_", "-"), getattr(a, flag))
    prefix = a.video or a.image
    if prefix and Path(prefix).expanduser().resolve() == Path(a.output).expanduser().resolve():
        raise ValueError(f"--output {a.output} is the {'--video' if a.video else '--image'} it starts from: the new "
                         "video would replace it; write to another file")

    # the DiT: headers only
    ckpt = open_checkpoint(a.dit, a.variant)
    det = detect(ckpt, a.variant)
    check(ckpt, det.cfg, det)
    cfg = det.cfg
    if a.config:  # its sampler settings are made for its model: guidance passes must match the DiT's
        from .settings import default_cfg_number

        oc = official_config(a)
        if default_cfg_number(oc.dit) != default_cfg_number(cfg):
            raise ValueError(f"--config {a.config} is for a {oc.dit.name} {oc.dit.variant()} model "
                             f"({default_cfg_number(oc.dit)} guidance pass(es) per step) but --dit is a {cfg.name} "
                             f"{cfg.variant()} model ({default_cfg_number(cfg)}): use that model's config")
    try:
        runtime.check_model(cfg, det.fp8)
    except ValueError as e:
        raise ValueError(f"{_flags(str(e))} ({a.dit})") from None
    vae_cfg = _read("--vae", a.vae, "a MAGI-1 VAE (config.json + diffusion_pytorch_model.safetensors)",
                    lambda p: check_vae(Path(p).expanduser())[1])
    try:
        check_temporal_overlap(vae_cfg, s.fps, None, a.temporal_overlap, tile_frames_hint=False)
    except ValueError as e:
        raise ValueError(_flags(str(e))) from None
    width = _read("--t5", a.t5, "a T5 encoder", t5_width)
    if width is not None and width != cfg.caption_channels:
        raise ValueError(f"--t5 {a.t5} gives {width}-d embeddings, the DiT expects {cfg.caption_channels}: use the "
                         "T5-XXL encoder that ships with MAGI-1")
    if a.t5_tokenizer:
        _read("--t5-tokenizer", a.t5_tokenizer, "a T5 tokenizer", load_tokenizer)
    elif Path(a.t5).expanduser().is_dir():
        _read("--t5", a.t5, "a T5 folder with its tokenizer (spiece.model)", load_tokenizer)
    elif not _read("--t5", a.t5, "a T5 encoder", has_tokenizer):
        raise ValueError(f"--t5 {a.t5} is a single file without a tokenizer: pass --t5-tokenizer PATH (spiece.model "
                         "or tokenizer.json; the official ckpt/t5/t5-v1_1-xxl folder has spiece.model)")
    # special tokens: as given; else the pack's (install.py puts them there), else beside the DiT, else in the
    # models folder's magi/ (where ComfyUI looks: models/magi/ next to models/diffusion_models/)
    dit_dir = Path(a.dit).expanduser().resolve().parent
    places = [Path(a.special_tokens)] if a.special_tokens else [
        DEFAULT_TOKENS, dit_dir / DEFAULT_TOKENS.name, dit_dir.parent / "magi" / DEFAULT_TOKENS.name]
    tokens_path = next((p for p in places if p.exists()), places[0])
    tokens = None
    if a.special_tokens or tokens_path.exists():
        tokens = _read("--special-tokens", tokens_path, "a MAGI-1 special_tokens.npz", load_special_tokens)
    elif s.use_hq or s.use_duration:
        raise ValueError(f"special tokens not found at {' or '.join(map(str, places))}: run `python install.py`, "
                         "or pass --special-tokens PATH, or --no-hq --no-duration")

    # the prefix pixels, scaled from the decoded pixels to the output size (as the reference's ffmpeg read)
    frames, n_prefix, size, resize = None, 0, (s.height, s.width), a.resize or "stretch"
    early_notes = []
    if a.image:
        frames = _read("--image", a.image, "an image", lambda p: read_image(p, size=size, policy=resize))
    elif a.video:
        frames = _read("--video", a.video, "a video", lambda p: read_video(
            p, fps=s.fps, max_frames=a.prefix_frames, take=a.prefix_from or "end", size=size, policy=resize))
    if frames is not None:
        n_prefix = frames.shape[0]  # every prefix frame goes to the VAE
        if a.video and a.prefix_frames and n_prefix < a.prefix_frames:
            early_notes = [f"--prefix-frames {a.prefix_frames}: --video {a.video} has {n_prefix} frames at {s.fps} "
                           "fps; all of them are the prefix"]
        try:
            prefix_latent_count(n_prefix, s.fps)
        except ValueError as e:
            fewer = _encodable_below(n_prefix, s.fps) if a.video else None
            fix = (f"; --prefix-frames {fewer} takes {fewer} of its "
                   f"{'first' if a.prefix_from == 'start' else 'last'} frames" if fewer else "")
            raise ValueError(f"--{'image' if a.image else 'video'} {a.image or a.video} gives {n_prefix} frame(s) "
                             f"at {s.fps} fps: {e}{fix}") from None
        if a.image:
            n = frame_count(a.image)
            if n > 1:
                early_notes.append(f"--image {a.image} has {n} frames: its first frame is the image "
                                   "(image-to-video); --video continues a video from its last frames")

    # the settings against the models, the prompt and the prefix
    try:
        schedule = parse_schedule(prompt)
        warnings = early_notes + _ignored(a, runtime.device) + schedule.check_captions()
    except ValueError as e:
        raise ValueError(f"{prompt_flag}: {e}") from None
    if runtime.attention == FP8:  # said here, before loading (DiTRuntime.configure's warning would repeat it)
        warnings.append(attention_fp8.choice_note(runtime.device).replace("attention ", "--attention ", 1))
        import warnings as py_warnings

        py_warnings.filterwarnings("ignore", message="attention fp8-approx can't run here")
    s = s.for_model(cfg)
    try:
        validate(s, cfg, None, vae_cfg, n_prefix, tokens)
        schedule.resolve(chunk_count(s, n_prefix)[1], s.fps)
        warnings += schedule.moved_times(s.fps)
    except ValueError as e:
        raise ValueError(_flags(str(e))) from None
    job = Job(settings=s, runtime=runtime, dit_cfg=cfg, dit=str(a.dit), variant=a.variant, vae=str(a.vae),
              t5=str(a.t5), t5_tokenizer=a.t5_tokenizer, prompt=prompt, tokens=tokens, frames=frames,
              prefix_frames=n_prefix, resize=resize, temporal_overlap=a.temporal_overlap, warnings=warnings)
    check_memory(job)
    return job


def estimate_bytes(job: Job) -> tuple[int, str, int]:
    """(bytes, where, per_chunk) a run needs at its peak on its device ('GPU' or 'host'): DiT weights there, the
    largest forward's activations and KV cache (parallel/memory.py, measured), the latent video (noise and state,
    fp32; per_chunk bytes of it per chunk) and one decoded chunk."""
    from .parallel.memory import GIB, OVERHEAD_GIB, run_bytes, weights_gib
    from .pipeline import chunk_count
    from .video import CHUNK_WIDTH

    s, cfg, rt = job.settings, job.dit_cfg, job.runtime
    n = chunk_count(s, job.prefix_frames)[0]
    need = weights_gib(cfg, rt.weight_dtype == "fp8_e4m3fn", rt.block_swap) * GIB
    need += run_bytes(cfg, s.height, s.width, 1, min(n, s.window_size + 1))
    per_chunk = 2 * CHUNK_WIDTH * cfg.vae_channels * (s.height // 8) * (s.width // 8) * 4
    need += n * per_chunk + 4 * 24 * s.height * s.width * 3 * 4
    gpu = torch.device(rt.device).type == "cuda"
    return int(need + (OVERHEAD_GIB * GIB if gpu else 0)), "GPU" if gpu else "host", per_chunk


def _available(device: str) -> int:
    dev = torch.device(device)
    if dev.type == "cuda":
        return torch.cuda.mem_get_info(dev)[1]
    with open("/proc/meminfo") as f:
        info = dict(line.split(":", 1) for line in f)
    return int(info["MemAvailable"].split()[0]) * 1024


def check_memory(job: Job):
    from .pipeline import chunk_count, prefix_latent_count
    from .video import CHUNK_WIDTH, FRAMES_PER_LATENT

    need, where, per_chunk = estimate_bytes(job)
    have = _available(job.runtime.device)
    if need > 0.95 * have:
        s = job.settings
        n = chunk_count(s, job.prefix_frames)[0]
        what = f"{s.width}x{s.height}"
        fix = "use a smaller --width/--height, --window 1, or (on a GPU) --weight-dtype fp8_e4m3fn / --block-swap N"
        if n * per_chunk > need / 2:  # mostly the length of the video (its latents stay in memory)
            fit = int((0.95 * have - (need - n * per_chunk)) // per_chunk) - 1  # chunks, the prefix's included
            new = (fit * CHUNK_WIDTH - prefix_latent_count(job.prefix_frames, s.fps)) * FRAMES_PER_LATENT
            what = f"{s.width}x{s.height} with {s.num_frames} frames ({n} chunks of latents)"
            fix = (f"use fewer --frames (about {new} fit at this size) or a smaller --width/--height" if new > 0
                   else "use fewer --frames and a smaller --width/--height")
        raise ValueError(f"{what} needs about {need / 2**30:.1f} GiB of {where} memory, and "
                         f"{have / 2**30:.1f} GiB are available on {job.runtime.device}: {fix}")


# ----------------------------------------------------------------------------- phase 2: models, chunks


def load_models(job: Job, device):
    """VAE and T5 (T5 freed after encoding) -> (vae, PromptEmbeds, prefix latents or None)."""
    from .pipeline import encode_prefix, encode_prompts
    from .text import T5TextEncoder
    from .vae import load_vae

    device = torch.device(device)
    vae = load_vae(job.vae, device=device, dtype=torch.bfloat16 if device.type == "cuda" else torch.float32)
    t5 = T5TextEncoder.load(job.t5, tokenizer=job.t5_tokenizer, device="cpu")
    prompts = encode_prompts(t5, job.prompt)
    del t5
    prefix = None
    if job.frames is not None:
        prefix = encode_prefix(vae, job.frames, job.settings, policy=job.resize).cpu()
    return vae, prompts, prefix


class Stopped(KeyboardInterrupt):
    """Ctrl-C (SIGINT), SIGTERM (a job system, `kill`) or SIGHUP (the terminal closed): the run stops, keeping the
    finished chunks."""

    def __init__(self, signum: int = signal.SIGINT):
        super().__init__(signum)
        self.signum = signum


_stopped: list = []  # the signal that stopped this run, once one came


def _raise_stopped(signum, _frame):
    """The first Ctrl-C or SIGTERM stops the run; later ones are ignored (the finished chunks are being saved)."""
    if not _stopped:
        _stopped.append(signum)
        raise Stopped(signum)


@contextlib.contextmanager
def _signals(handler, signums=startup.STOP_SIGNALS, restore=lambda signum, old: old):
    """The block runs with `handler` for these signals, then each gets restore(its old handler) (main thread
    only: elsewhere Python cannot set handlers, and the block runs as it is)."""
    try:
        old = {s: signal.signal(s, handler) for s in signums}
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, restore(s, h))


@contextlib.contextmanager
def _whole():
    """Ctrl-C or SIGTERM during the block takes effect after it (a chunk is appended whole)."""
    got = []
    try:
        with _signals(lambda signum, _: got.append(signum)):
            yield
    finally:
        if got:
            _raise_stopped(got[0], None)


@contextlib.contextmanager
def _stoppable():
    """Ctrl-C or SIGTERM stops the run (Stopped; the finished chunks are kept, the temporary file removed). Once
    one did, both stay ignored after the block too: a second Ctrl-C cannot break the saving or the exit. One
    that came while the command line was starting (magi_core/startup.py) stops it on entry."""
    _stopped.clear()
    with _signals(_raise_stopped, restore=lambda s, old: signal.SIG_IGN if _stopped else startup.original(s, old)):
        held = startup.take()  # after _raise_stopped is in: a signal recorded until then is not lost
        if held:
            _raise_stopped(held, None)
        yield


def write_chunks(job: Job, chunks, vae, writer, log=print):
    """Decode each finished chunk and append it to the writer as it comes."""
    from .pipeline import decode_chunk

    t0 = time.perf_counter()
    for ch in chunks:
        frames = decode_chunk(vae, ch.latents, job.settings.fps, temporal_overlap=job.temporal_overlap)
        with _whole():
            writer.write(frames)
        log(f"chunk {ch.index}: {frames.shape[0]} frames at {time.perf_counter() - t0:.1f}s "
            f"({writer.frames_written} written)")
        del frames


def _log_line(message: str):
    """A chunk line on stdout, after clearing the progress line that _progress keeps on a terminal's stderr."""
    if sys.stderr.isatty():
        say("\r\033[K", file=sys.stderr, end="")
    say(message)


PROGRESS_LINE_S = 30.0  # not a terminal (a log file, a pipe): a progress line at most this often
_last_line = [float("-inf")]  # when the last progress line was said (reset at each run's start)


def _progress(i, total, chunk):
    """The DiT call count: rewritten in place on a terminal's stderr; elsewhere a line every PROGRESS_LINE_S (the
    first chunk of a long run can take minutes, which a log should not pass in silence)."""
    if sys.stderr.isatty():
        say(f"\rDiT call {i}/{total} (chunk {chunk})", file=sys.stderr, end="")
    elif time.monotonic() - _last_line[0] >= PROGRESS_LINE_S or i == total:
        _last_line[0] = time.monotonic()
        say(f"DiT call {i}/{total} (chunk {chunk})", file=sys.stderr)


def describe(job: Job) -> str:
    from .pipeline import chunk_count, frames_note

    s = job.settings
    out, note = frames_note(s.num_frames, s.fps, job.prefix_frames)
    return (f"{s.width}x{s.height}, {chunk_count(s, job.prefix_frames)[1]} chunk(s) -> {out} frames at {s.fps} fps"
            f", {s.steps} steps, seed {s.seed}, {job.runtime.device}" + (f" ({note})" if note else ""))


def prompt_lines(job: Job) -> list[str]:
    """Which chunks get which prompt (as the run will resolve it); one prompt for all: that prompt, so a schedule
    line that joined the one above it (a mistyped range) shows."""
    from .pipeline import chunk_count
    from .text import parse_schedule

    schedule = parse_schedule(job.prompt)
    if len(schedule.ranges) < 2:
        text = " ".join(schedule.ranges[0].prompt.split())
        return [f"  prompt: {text if len(text) <= 300 else text[:300] + ' ...'}"]
    n = chunk_count(job.settings, job.prefix_frames)[1]
    out = []
    for r in schedule.ranges:
        first, stop = r.chunk_bounds(n, job.settings.fps)
        out.append(f"  chunk {first}: {r.prompt}" if stop - first == 1 else f"  chunks {first}-{stop - 1}: {r.prompt}")
    return out


def use_demo(a, tmp: str):
    """--demo: tiny random models written to `tmp`, CPU, a short two-prompt video (unless given)."""
    from .checkpoint import parse_variant
    from .demo import make_tiny_assets

    given = [f"--{n.replace('_', '-')}" for n in ("dit", "vae", "t5", "t5_tokenizer", "special_tokens") if getattr(a, n)]
    if given:
        raise ValueError(f"--demo makes tiny random models of its own: drop {', '.join(given)}, or drop --demo to "
                         "run those models")
    if a.config:  # its settings are a real model's (e.g. 720x720, 64 steps); the demo would not use them
        raise ValueError(f"--demo runs tiny models with small settings of its own, not those of --config {a.config}: "
                         "drop --config, or drop --demo and pass the model the config is for (--dit ...)")
    if a.variant and parse_variant(a.variant)[0]:  # fp8 (found out from the DiT's headers, after the models are made)
        raise ValueError(f"--demo makes a tiny bf16 distill model, not an fp8-quantized one: drop --variant "
                         f"{a.variant} (base and distill work)")
    a.device = a.device or "cpu"
    a.width, a.height = (128 if a.width is None else a.width), (128 if a.height is None else a.height)
    a.frames, a.steps = (48 if a.frames is None else a.frames), (8 if a.steps is None else a.steps)
    settings_from_args(a)  # a mistake in the numbers is said before the models are made (seconds)
    if a.prompt is None and not a.prompt_file:  # the two-prompt schedule needs two chunks (28 frames or more)
        a.prompt = DEMO_PROMPT if a.frames >= 28 else DEMO_PROMPT.split("\n")[0].split(": ", 1)[1]
    paths = make_tiny_assets(tmp)
    a.dit, a.vae, a.t5, a.special_tokens = (str(paths[k]) for k in ("dit", "vae", "t5", "special_tokens"))


def _quiet():
    """Ctrl-C and SIGTERM are ignored during the block: the finished chunks are being saved."""
    return _signals(lambda signum, _: None)


def _save(writer) -> tuple[Path | None, str]:
    """After an interrupt or an error: the finished chunks kept as a playable file (signals ignored meanwhile)
    -> (where, what to say)."""
    with _quiet():
        try:
            path = writer.keep()
        except Exception as e:  # noqa: BLE001 -- e.g. the disk is full
            return None, f"the {writer.frames_written} finished frames could not be saved ({e}); nothing was written"
    if path is None:
        return None, "nothing was written"
    return path, f"kept the finished chunks ({writer.frames_written} frames) in {path}"


def open_output(a, tmp: str):
    """What both command lines (this one and torchrun's parallel.run) do first: the checks that need nothing read,
    a note on a killed run's temporary file, --demo's models made in `tmp`, then the output opened (its location is
    checked before any model is) -> (VideoWriter, what a run that writes nothing says about the file there)."""
    from .video import VideoWriter

    check_args(a)
    for note in leftover_notes(a.output):
        say(f"warning: {note}", file=sys.stderr)
    if a.demo:
        use_demo(a, tmp)
    untouched = left_as_it_was(a.output)
    return VideoWriter(Path(a.output).expanduser(), settings_from_args(a).fps), untouched


def run(a) -> int:
    from .checkpoint import load_dit
    from .pipeline import sample

    startup.import_libraries()  # while a Ctrl-C is still held (magi_core/__main__.py)
    with tempfile.TemporaryDirectory() as tmp:
        writer, untouched = open_output(a, tmp)
        try:
            with _stoppable():
                job = prepare(a)
                with _whole():  # a Ctrl-C inside an import could be swallowed (magi_core/startup.py)
                    startup.import_text_encoder()
                for w in job.warnings:
                    say(f"warning: {w}", file=sys.stderr)
                say("\n".join([f"generating {describe(job)}", *prompt_lines(job)]))
                t0 = time.perf_counter()
                dit, info = load_dit(job.dit, job.runtime, variant=job.variant)
                vae, prompts, prefix = load_models(job, job.runtime.device)
                say(f"loaded {info['size']} {info['variant']} DiT ({info['num_params']:,} params), VAE and T5 in "
                    f"{time.perf_counter() - t0:.1f}s")
                _last_line[0] = float("-inf")  # this run's first DiT call gets a line
                chunks = sample(dit, prompts, job.settings, prefix, job.prefix_frames, job.tokens, progress=_progress)
                write_chunks(job, chunks, vae, writer, _log_line)
        except KeyboardInterrupt as e:
            signum = e.signum if isinstance(e, Stopped) else signal.SIGINT
            how = startup.stopped_by(signum)
            path, said = _save(writer)
            if path is None and not writer.frames_written:
                said = f"before the first chunk finished: nothing written{untouched}"
            say(f"\n{how}: {said}", file=sys.stderr)
            return 128 + signum
        except Exception as e:
            frames, path, said = writer.frames_written, None, None
            if frames:
                path, said = _save(writer)
            else:
                writer.discard()
            if isinstance(e, OSError) and e.errno in startup.DISK_FULL and path is None:  # one line says it all
                raise OSError(e.errno, startup.disk_full_text(e, writer.path, frames)) from None
            if said:
                say(said, file=sys.stderr)
            raise
        with _quiet():
            try:
                writer.close()
            except OSError as e:  # a full disk: close removed the temporary file
                raise OSError(e.errno, startup.disk_full_text(e, writer.path, writer.frames_written)) from None
    say(f"wrote {writer.path} ({writer.codec}): {writer.frames_written} frames {writer.size[1]}x{writer.size[0]} at "
        f"{job.settings.fps} fps")
    return 0
