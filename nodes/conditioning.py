"""Text side of the nodes: prompt-schedule checks, chunk/timeline info, and the bridge from ComfyUI's T5 CLIP.

No ComfyUI import: the CLIP bridge takes any object with ComfyUI's `tokenize` / `encode_from_tokens`.
"""
from __future__ import annotations

import torch

from magi_core.pipeline import CHUNK_WIDTH, chunk_count, frames_note, prefix_latent_count
from magi_core.settings import SamplingSettings
from magi_core.text import PromptSchedule, clean_caption, parse_schedule

MAX_LENGTH = 800  # caption_max_length


# ----------------------------------------------------------------------------- schedule checks
def check_schedule(text: str) -> PromptSchedule:
    """Parse prompt text (one prompt, or "start-end: prompt" lines) and reject what no video length can fix
    (`PromptSchedule.check`; a range past the video's end is checked by the sampler, which knows the length)."""
    return parse_schedule(text).check()


def check_prompt(text: str) -> tuple[PromptSchedule, list[str]]:
    """check_schedule, then what MAGI-1's caption cleaner does to each prompt (magi_core.text.check_caption):
    -> (schedule, warnings). ValueError for a prompt the cleaner empties (the video would run with no prompt)."""
    schedule = check_schedule(text)
    return schedule, schedule.check_captions()


# ----------------------------------------------------------------------------- chunk / timeline info
def chunk_info(num_frames: int, fps: int, prefix_frames: int = 0) -> dict:
    """What the sampler will make of (frames, fps, prefix): chunk counts and the output length."""
    from magi_core.video import chunk_output_frames

    s = SamplingSettings(num_frames=num_frames, fps=fps)
    n, generated = chunk_count(s, prefix_frames)
    P = prefix_latent_count(prefix_frames, fps)
    frames, note = frames_note(num_frames, fps, prefix_frames)
    per_chunk = chunk_output_frames(fps)
    return dict(chunks=n, generated_chunks=generated, schedule_chunks=n - P // CHUNK_WIDTH,
                frames_per_chunk=per_chunk, chunk_seconds=per_chunk / fps,
                output_frames=frames, seconds=frames / fps, note=note)


def schedule_info(text: str, num_frames: int, fps: int, prefix_frames: int = 0) -> dict:
    """Timeline of a schedule for a video: each range's chunks and seconds, or the error a run would raise; and
    the caption cleaner's warnings."""
    out = dict(ok=True, error=None, ranges=[], warnings=[], **chunk_info(num_frames, fps, prefix_frames))
    n = out["schedule_chunks"]
    try:
        schedule, out["warnings"] = check_prompt(text)
        per_chunk = schedule.resolve(n, fps)
    except ValueError as e:
        out.update(ok=False, error=str(e))
        return out
    out["warnings"] = out["warnings"] + schedule.moved_times(fps)
    cs = out["chunk_seconds"]
    for r in schedule.ranges:
        first, stop = r.chunk_bounds(n, fps)
        out["ranges"].append(dict(line=r.line, prompt=r.prompt, first_chunk=first, last_chunk=stop - 1,
                                  start_s=first * cs, end_s=stop * cs, seconds=r.seconds))
    out["per_chunk"] = per_chunk
    return out


# ----------------------------------------------------------------------------- native CLIP bridge
def clip_encode(clip, text: str, max_length: int = MAX_LENGTH) -> tuple[torch.Tensor, torch.Tensor]:
    """Encode one prompt with ComfyUI's T5-XXL CLIP the way MAGI-1's own T5 path does
    (official `inference/model/t5/t5_model.py`).

    Caption cleaning, no prompt weights, no padding tokens; more than `max_length` tokens are cut to
    max_length - 1 plus the end token before encoding (HF truncation). -> (emb (L, C) fp32, mask (L,))."""
    tokens = clip.tokenize(clean_caption(text), disable_weights=True, tokenizer_options={"t5xxl_min_length": 1})
    if "t5xxl" not in tokens:
        raise ValueError(f"this CLIP has no T5-XXL encoder (it has {sorted(tokens)}): load a t5xxl_*.safetensors "
                         "file with CLIPLoader (type sd3, pixart, mochi or ltxv), or use the MAGI T5 loader")
    batches = tokens["t5xxl"]
    batch = [t for b in batches for t in b] if len(batches) > 1 else list(batches[0])
    if len(batch) > max_length:
        batch = batch[: max_length - 1] + [batch[-1]]
    only_t5 = {k: ([batch] if k == "t5xxl" else []) for k in tokens}
    cond = clip.encode_from_tokens(only_t5, return_dict=True)["cond"]
    if cond.dim() != 3 or cond.shape[0] != 1 or cond.shape[1] != len(batch):
        raise ValueError(f"the CLIP returned a {tuple(cond.shape)} embedding for {len(batch)} tokens; expected "
                         f"(1, {len(batch)}, C): use a T5-only CLIP (CLIPLoader with one t5xxl file)")
    n = len(batch)
    emb = torch.zeros(max_length, cond.shape[-1], dtype=torch.float32)
    emb[:n] = cond[0].float().cpu()
    mask = torch.zeros(max_length, dtype=torch.int64)
    mask[:n] = 1
    return emb, mask


class ClipT5:
    """ComfyUI T5-XXL CLIP seen as a MAGI text encoder (`encode(text) -> (1, L, C), (1, L)`) for encode_prompts."""

    def __init__(self, clip, max_length: int = MAX_LENGTH):
        self.clip, self.max_length = clip, max_length

    def encode(self, text: str):
        emb, mask = clip_encode(self.clip, text, self.max_length)
        return emb[None], mask[None]
