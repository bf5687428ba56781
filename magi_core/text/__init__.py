"""MAGI-1 text path: caption cleaning, T5 encoder, special tokens, per-chunk prompt schedule."""
from .cleaning import check_caption, clean_caption
from .schedule import PromptRange, PromptSchedule, parse_schedule, resolve_prompts
from .special_tokens import SpecialTokens, apply_special_tokens, load_special_tokens, null_caption
from .t5 import EncodingCache, T5TextEncoder, load_tokenizer, tokenize

__all__ = [
    "check_caption",
    "clean_caption",
    "PromptRange",
    "PromptSchedule",
    "parse_schedule",
    "resolve_prompts",
    "SpecialTokens",
    "apply_special_tokens",
    "load_special_tokens",
    "null_caption",
    "EncodingCache",
    "T5TextEncoder",
    "load_tokenizer",
    "tokenize",
]
