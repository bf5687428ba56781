"""MAGI-1 special tokens: learned 4096-d vectors prepended to a chunk's caption
(official `inference/pipeline/prompt_process.py`).

`special_tokens.npz` holds `caption_token` (1, C), `logo_token` (1, C) and `other_tokens` (100, C) in
float64. The reference rounds them through float16; they are then used in the caption dtype (fp32).

Each applied token is put in front of the 800-slot caption, the mask gets a leading 1, and both are cut
back to 800, so the last token goes first. Official runs (PAD_HQ=1, PAD_DURATION=1) give per chunk:
`[DURATION_k, HQ, T5 tokens..., padding]`. Here everything is chosen by arguments, never by env vars.
"""
from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

# rows of `other_tokens` (rows 5, 6 and 17..99 are unused by the reference)
OTHER_TOKEN_ROWS = {
    "TRANS": 0,
    "HQ": 1,
    "STATIC_FIRST_FRAMES": 2,
    "DYNAMIC_FIRST_FRAMES": 3,
    "BORDERNESS": 4,
    "THREE_D_MODEL": 15,
    "TWO_D_ANIME": 16,
}
DURATION_FIRST_ROW = 7  # DURATION_TOKEN_1 (the last chunk) .. DURATION_TOKEN_8 = rows 7..14
DURATION_MAX = 8
# order in which the reference checks (and prepends) the optional positive tokens; DURATION comes last
POSITIVE_ORDER = ("STATIC_FIRST_FRAMES", "DYNAMIC_FIRST_FRAMES", "BORDERNESS", "HQ", "THREE_D_MODEL", "TWO_D_ANIME")
# the reference's NEG_PROMPT tokens, in prepend order: result is [BORDERNESS, TRANS, LOGO, CAPTION, null...]
NEGATIVE_ORDER = ("CAPTION", "LOGO", "TRANS", "BORDERNESS")
NULL_CAPTION_ACTIVE = 50  # the null caption's mask: first 50 slots on


@dataclass(frozen=True)
class SpecialTokens:
    """The special-token table, fp16-rounded, as fp32 tensors."""

    caption: torch.Tensor  # (C,)
    logo: torch.Tensor  # (C,)
    other: torch.Tensor  # (100, C)

    @property
    def channels(self) -> int:
        return self.caption.shape[-1]

    def token(self, name: str) -> torch.Tensor:
        """One token by its reference name (without `_TOKEN`): CAPTION, LOGO, HQ, TRANS, BORDERNESS, ..."""
        if name == "CAPTION":
            return self.caption
        if name == "LOGO":
            return self.logo
        if name not in OTHER_TOKEN_ROWS:
            known = ["CAPTION", "LOGO", *OTHER_TOKEN_ROWS]
            raise ValueError(f"unknown special token {name!r}; use one of {known} (DURATION via duration())")
        return self.other[OTHER_TOKEN_ROWS[name]]

    def duration(self, chunks_remaining: int) -> torch.Tensor:
        """DURATION_TOKEN_k with k = min(chunks_remaining, 7) + 1: chunks_remaining = chunks after this one."""
        if chunks_remaining < 0:
            raise ValueError(f"chunks_remaining must be >= 0 (0 for the last chunk), got {chunks_remaining}")
        return self.other[DURATION_FIRST_ROW + min(chunks_remaining, DURATION_MAX - 1)]


def special_tokens_from_arrays(caption_token, logo_token, other_tokens) -> SpecialTokens:
    """Validate the three npz arrays and round them through float16 like the reference."""
    arrays = {"caption_token": caption_token, "logo_token": logo_token, "other_tokens": other_tokens}
    arrays = {k: np.asarray(v) for k, v in arrays.items()}
    c = arrays["caption_token"].shape[-1]
    min_rows = {"caption_token": 1, "logo_token": 1, "other_tokens": max(OTHER_TOKEN_ROWS.values()) + 1}
    for key, rows in min_rows.items():
        got = arrays[key].shape
        if len(got) != 2 or got[1] != c or got[0] < rows:
            raise ValueError(f"special tokens: {key} has shape {got}, expected ({rows}{'+' if rows > 1 else ''}, {c})")

    def fp16_rounded(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(a.astype(np.float16)).float()

    return SpecialTokens(
        caption=fp16_rounded(arrays["caption_token"])[0],
        logo=fp16_rounded(arrays["logo_token"])[0],
        other=fp16_rounded(arrays["other_tokens"]),
    )


def load_special_tokens(path: str | Path) -> SpecialTokens:
    """Load `special_tokens.npz` (keys caption_token, logo_token, other_tokens)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"special tokens file not found: {path} (MAGI-1's example/assets/special_tokens.npz)")
    if not zipfile.is_zipfile(path):  # np.load would try it as a pickle and suggest allow_pickle: never for this file
        raise ValueError(f"{path} is not a MAGI-1 special tokens file: an .npz (a zip of arrays) was expected, "
                         "MAGI-1's example/assets/special_tokens.npz")
    with np.load(path) as z:
        missing = {"caption_token", "logo_token", "other_tokens"} - set(z.files)
        if missing:
            raise ValueError(f"{path} is not a MAGI-1 special tokens file: missing keys {sorted(missing)}")
        return special_tokens_from_arrays(z["caption_token"], z["logo_token"], z["other_tokens"])


def prepend_tokens(emb: torch.Tensor, mask: torch.Tensor | None, tokens: Sequence[torch.Tensor]):
    """Prepend each token in turn (so the last ends up first), keeping the length of `emb`.

    The mask gets a leading 1 per token when given; pass None to leave a mask untouched."""
    length = emb.shape[0]
    if tokens:
        # tokens prepended one by one in order t0, t1, ... end up as [..., t1, t0, emb]
        front = torch.stack([t.to(emb.device, emb.dtype) for t in reversed(tokens)])
        emb = torch.cat([front, emb])[:length]
        if mask is not None:
            mask = torch.cat([mask.new_ones(len(tokens)), mask])[:length]
    return emb, mask


def _check_caption(emb: torch.Tensor, mask: torch.Tensor, channels: int):
    if emb.dim() != 2 or emb.shape[1] != channels:
        raise ValueError(f"caption embedding must be (L, {channels}), got {tuple(emb.shape)}")
    if mask.shape != emb.shape[:1]:
        raise ValueError(f"caption mask must be ({emb.shape[0]},), got {tuple(mask.shape)}")


def apply_special_tokens(
    emb: torch.Tensor,
    mask: torch.Tensor,
    chunks_remaining: int,
    tokens: SpecialTokens,
    use_hq: bool = True,
    use_duration: bool = True,
    extra: Sequence[str] = (),
):
    """One denoised chunk's text-branch caption: `[DURATION_k, (extra...), HQ, caption...]` cut to L.

    emb (L, C), mask (L,); chunks_remaining = denoised chunks after this one (0 for the last chunk).
    `extra` may add STATIC_FIRST_FRAMES, DYNAMIC_FIRST_FRAMES, BORDERNESS, THREE_D_MODEL, TWO_D_ANIME
    (the reference's other PAD_* flags); they are applied in the reference's order whatever order is given.
    """
    _check_caption(emb, mask, tokens.channels)
    unknown = set(extra) - set(POSITIVE_ORDER) - {"HQ"}
    if unknown:
        raise ValueError(f"unknown extra special tokens {sorted(unknown)}; choose from {list(POSITIVE_ORDER)}")
    names = [n for n in POSITIVE_ORDER if n in extra or (n == "HQ" and use_hq)]
    chosen = [tokens.token(n) for n in names]
    if use_duration:
        chosen.append(tokens.duration(chunks_remaining))
    return prepend_tokens(emb, mask, chosen)


def null_caption(
    null_caption_embedding: torch.Tensor,
    tokens: SpecialTokens | None = None,
    negative_special_tokens: bool = False,
):
    """The null (negative) caption: the DiT's learned (800, C) `null_caption_embedding` in fp32 and a mask
    with the first 50 slots on. With `negative_special_tokens` (the reference's NEG_PROMPT) CAPTION, LOGO,
    TRANS and BORDERNESS are prepended; the mask stays the same (4 of the 50 slots become those tokens)."""
    emb = null_caption_embedding.float()
    if emb.dim() == 3 and emb.shape[0] == 1:
        emb = emb[0]
    if emb.dim() != 2:
        raise ValueError(f"null_caption_embedding must be (L, C), got {tuple(null_caption_embedding.shape)}")
    mask = torch.zeros(emb.shape[0], dtype=torch.long, device=emb.device)
    mask[:NULL_CAPTION_ACTIVE] = 1
    if negative_special_tokens:
        if tokens is None:
            raise ValueError("negative_special_tokens=True needs the special tokens table (tokens=...)")
        _check_caption(emb, mask, tokens.channels)
        emb, _ = prepend_tokens(emb, None, [tokens.token(n) for n in NEGATIVE_ORDER])
    return emb, mask
