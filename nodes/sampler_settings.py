"""Sampler widget values -> magi_core SamplingSettings (no ComfyUI import).

The sampler node shows one scale per guidance term; the reference uses a value per flow-time range
(`cfg_t_range`, 5 entries): the scale applies to the three noisier ranges and the two nearly-clean ranges keep
the reference's values (text 0.0, previous chunk 1.0). MAGI Sampler Options sets the full vectors.
"""
from __future__ import annotations

from dataclasses import fields

from magi_core.sampling.schedule import SHORTCUT_MODES
from magi_core.settings import SamplingSettings, size_problem

N_RANGES = 5  # len(cfg_t_range) in every official config
_CLEAN_TEXT, _CLEAN_PREV = (0.0, 0.0), (1.0, 1.0)


# widget limits that a validate_inputs checks (ComfyUI does not, for the inputs such a method takes)
SIZE = dict(min=16, max=4096)  # width and height (sampler, MAGI VAE Encode)
STEPS = dict(min=4, max=1000)
WINDOW_SIZE = dict(min=1, max=16)
TILE_FRAMES = dict(min=0, max=256)  # the decode nodes' temporal tiling (vae_nodes.decode_tiling_problems)
TEMPORAL_OVERLAP = dict(min=0, max=8)


def queue_problems(values) -> bool | str:
    """values: (name, value, limits) of widgets a node's validate_inputs takes, so ComfyUI skips its own min/max
    check for them: that check, then a width's or height's multiple of 16 (magi_core.settings.size_problem). A
    value of None (a linked input, not known at queue time) is skipped. True, or the problems joined, each naming
    its input."""
    problems = []
    for name, v, lim in values:
        if v is None:
            continue
        if isinstance(v, bool) or not isinstance(v, int):  # ComfyUI passes on what it could not convert
            problems.append(f"{name} must be a whole number, got {v!r}")
        elif not lim["min"] <= v <= lim["max"]:
            problems.append(f"{name} must be between {lim['min']} and {lim['max']}, got {v}")
        elif name in ("width", "height"):
            problems.append(size_problem(name, v))
    problems = [p for p in problems if p]
    return "; ".join(problems) if problems else True


def scale_vector(scale: float, clean_tail: tuple) -> tuple:
    return (float(scale),) * (N_RANGES - len(clean_tail)) + clean_tail


def parse_numbers(name: str, text: str, count: int | None = None, kind=float,
                  each: str = "one per flow-time range") -> tuple | None:
    """'1.5, 1.5, 1.5, 1, 1' -> tuple; '' -> None (use the default). Clear error for bad text."""
    text = (text or "").strip()
    if not text:
        return None
    try:
        values = tuple(kind(v) for v in text.replace(";", ",").split(","))
    except ValueError:
        raise ValueError(f"{name}: {text!r} is not a comma-separated list of "
                         f"{'integers' if kind is int else 'numbers'}") from None
    if count is not None and len(values) != count:
        raise ValueError(f"{name}: give {count} values ({each}), got {len(values)}: {text!r}")
    return values


def sampler_options(cfg_number: str = "auto", cfg_t_range: str = "", text_scales: str = "",
                    prev_chunk_scales: str = "", noise2clean_kvrange: str = "", clean_chunk_kvrange: int = 1,
                    clean_t: float = 0.9999, shortcut_mode: str = "8,16,16",
                    distill_nearly_clean_threshold: float = 0.3, per_chunk_noise: bool = False,
                    kv_offload: bool = False, negative_special_tokens: bool = False,
                    early_first_chunk: bool = False) -> dict:
    """MAGI Sampler Options widgets -> SamplingSettings field overrides (empty text = the default), checked here
    by building SamplingSettings with them, so a bad value is reported by this node. Every field that cannot be
    read is reported in one message, not one per queue."""
    opts, problems = {}, []
    if cfg_number != "auto":
        if cfg_number in ("1", "3"):
            opts["cfg_number"] = int(cfg_number)
        else:
            problems.append(f"cfg_number must be auto, 1 or 3, got {cfg_number!r}")
    for name, text, count, kind, each in (
            ("cfg_t_range", cfg_t_range, N_RANGES, float, "one per flow-time range"),
            ("text_scales", text_scales, N_RANGES, float, "one per flow-time range"),
            ("prev_chunk_scales", prev_chunk_scales, N_RANGES, float, "one per flow-time range"),
            ("noise2clean_kvrange", noise2clean_kvrange, None, int, ""),
            ("shortcut_mode", shortcut_mode, 3, int, " or ".join(SHORTCUT_MODES))):
        try:
            v = parse_numbers(name, text, count, kind, each=each)
        except ValueError as e:
            problems.append(str(e))
            continue
        if v is not None:
            opts[name] = ",".join(str(p) for p in v) if name == "shortcut_mode" else v
    opts.update(clean_chunk_kvrange=int(clean_chunk_kvrange), clean_t=float(clean_t),
                distill_nearly_clean_threshold=float(distill_nearly_clean_threshold),
                per_chunk_noise=bool(per_chunk_noise), kv_offload=bool(kv_offload),
                negative_special_tokens=bool(negative_special_tokens), early_first_chunk=bool(early_first_chunk))
    for name, value in opts.items():  # each value on its own (the other fields at their defaults) ...
        try:
            SamplingSettings(**{name: value})
        except ValueError as e:
            problems.append(str(e))
    if problems:
        raise ValueError("; ".join(problems))
    SamplingSettings(**opts)  # ... then together (e.g. text_scales against cfg_t_range's length)
    return opts


def build_settings(width: int, height: int, num_frames: int, fps: int, steps: int, seed: int, window_size: int,
                   text_scale: float, prev_chunk_scale: float, prev_chunks_scale: float, use_hq: bool,
                   use_duration: bool, options: dict | None = None) -> SamplingSettings:
    """Settings for one generation; `options` (from sampler_options) overrides any field."""
    options = dict(options or {})
    known = {f.name for f in fields(SamplingSettings)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise ValueError(f"unknown sampler option(s) {unknown}")
    base = dict(width=int(width), height=int(height), num_frames=int(num_frames), fps=int(fps), steps=int(steps),
                seed=int(seed), window_size=int(window_size), text_scales=scale_vector(text_scale, _CLEAN_TEXT),
                prev_chunk_scales=scale_vector(prev_chunk_scale, _CLEAN_PREV),
                prev_chunks_scale=float(prev_chunks_scale), use_hq=bool(use_hq), use_duration=bool(use_duration))
    return SamplingSettings(**{**base, **options})
