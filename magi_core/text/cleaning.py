"""Caption cleaning applied to every prompt before T5 (official `inference/model/t5/t5_model.py`), and `check_caption`,
which tells users what it removes.

MAGI-1 was trained with the DeepFloyd-IF / PixArt caption cleaner, run twice. `clean_caption` reproduces
it step by step: lower-casing, URL/HTML/handle removal, deletion of CJK characters, dash and quote
normalisation, spam and id removal, most punctuation (`|()[]{}*#/\\` ...) turned into spaces, ftfy.
The HTML step uses BeautifulSoup (package `beautifulsoup4`), as the reference does.
"""
from __future__ import annotations

import html
import re
import unicodedata
import urllib.parse
import warnings

_EXTENSIONS = "png|jpg|jpeg|bmp|webp|eps|pdf|apk|mp4"
_DOMAIN = r"[a-zA-Z0-9.\-]+[.](?:com|co|ru|net|org|edu|gov|it)[\w/-]*\b/?(?!@)"
_DASHES = (
    "\u002d\u058a\u05be\u1400\u1806\u2010-\u2015\u2e17\u2e1a\u2e3a\u2e3b\u2e40"
    "\u301c\u3030\u30a0\ufe31\ufe32\ufe58\ufe63\uff0d"
)
_PUNCT = "#®•©™&@·º½¾¿¡§~)(\\]\\[}{|\\\\/*"  # escaped for use inside [...]


def _sub(pattern: str, repl: str, removes: str = "") -> tuple[re.Pattern, str, str]:
    """One substitution step; `removes` names, for users, what it deletes (check_caption reports it)."""
    return re.compile(pattern), repl, removes


_LINKS = "links"
_NUMBERS = "numbers like '#12' or '1234567'"
_CODES = "codes mixing letters and digits (e.g. 'jc6640')"
_WEB = "web-shop words ('free shipping', 'download', 'click for ...', 'page 2', 'png')"
_CJK = "Chinese characters and Japanese kanji"


# (pattern, replacement) pairs, in the reference's order. Split in three around the two steps that
# are not plain substitutions (HTML stripping, and the conditional dash/underscore replacement).
_BEFORE_HTML = [
    _sub("<person>", "person"),
    _sub(rf"\b(?:https?:(?:/{{1,3}}|[a-zA-Z0-9%])|{_DOMAIN})", "", _LINKS),  # urls
    _sub(rf"\b(?:www:(?:/{{1,3}}|[a-zA-Z0-9%])|{_DOMAIN})", "", _LINKS),
]
_AFTER_HTML = [
    _sub(r"@[\w\d]+\b", "", "@names"),  # @handles
    _sub("[\u31c0-\u9fff]+", "", _CJK),  # CJK strokes .. CJK unified ideographs (one contiguous range)
    _sub(f"[{_DASHES}]+", "-"),
    _sub("[`´«»“”¨]", '"'),
    _sub("[‘’]", "'"),
    _sub(r"&quot;?", ""),
    _sub(r"&amp", ""),
    _sub(r"\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}", " ", "IP addresses"),  # ip addresses
    _sub(r"\d:\d\d\s+$", "", "a time at the end"),  # article ids
    _sub(r"\\n", " "),  # a literal backslash-n
    _sub(r"#\d{1,3}\b", "", _NUMBERS),
    _sub(r"#\d{5,}\b", "", _NUMBERS),
    _sub(r"\b\d{6,}\b", "", _NUMBERS),
    _sub(rf"\S+\.(?:{_EXTENSIONS})", "", "file names"),  # file names
    _sub("[\"']{2,}", '"'),
    _sub(r"\.{2,}", " "),
    _sub(f"[{_PUNCT}]+", " "),
    _sub(r"\s+\.\s+", " "),
]
_SEPARATORS = re.compile(r"[-_]")
_AFTER_FTFY = [
    _sub(r"\b[a-zA-Z]{1,3}\d{3,15}\b", "", _CODES),  # jc6640
    _sub(r"\b[a-zA-Z]+\d+[a-zA-Z]+\b", "", _CODES),  # jc6640vc
    _sub(r"\b\d+[a-zA-Z]+\d+\b", "", _CODES),  # 6640vc231
    _sub(r"(worldwide\s+)?(free\s+)?shipping", "", _WEB),
    _sub(r"(free\s)?download(\sfree)?", "", _WEB),
    _sub(r"\bclick\b\s(?:for|on)\s\w+", "", _WEB),
    _sub(rf"\b(?:{_EXTENSIONS})(\simage[s]?)?", "", _WEB),
    _sub(r"\bpage\s+\d+\b", "", _WEB),
    _sub(r"\b\d*[a-zA-Z]+\d+[a-zA-Z]+\d+[a-zA-Z\d]*\b", " ", _CODES),  # j2d1a2a...
    _sub(r"\b\d+\.?\d*[xх×]\d+\.?\d*\b", "", "sizes like 1920x1080"),  # 1920x1080 (latin x, cyrillic х, ×)
    _sub(r"\b\s+:\s+", ": "),
    _sub(r"(\D[,./])\b", r"\1 "),
    _sub(r"\s+", " "),
    _sub(r"^[\"']([\w\W]+)[\"']$", r"\1"),  # one level of surrounding quotes
    _sub(r"^['_,\-:;]", ""),
    _sub(r"['_,\-:+]$", ""),
    _sub(r"^\.\S+$", ""),
]


Removed = dict  # what a step removes (its `removes` text) -> the pieces it removed, in order


def _apply(steps: list[tuple[re.Pattern, str, str]], text: str, removed: Removed | None) -> str:
    for pattern, repl, removes in steps:
        if removed is not None and removes:
            removed.setdefault(removes, []).extend(m[0].strip() for m in pattern.finditer(text) if m[0].strip())
        text = pattern.sub(repl, text)
    return text


def _html_text(text: str) -> str:
    try:
        from bs4 import BeautifulSoup, MarkupResemblesLocatorWarning
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("MAGI-1 caption cleaning needs BeautifulSoup: pip install beautifulsoup4") from e
    with warnings.catch_warnings():  # a prompt that looks like a URL or file name is fine here
        warnings.simplefilter("ignore", MarkupResemblesLocatorWarning)
        return BeautifulSoup(text, features="html.parser").text


def clean_caption_once(caption: str, removed: Removed | None = None) -> str:
    """One pass of the reference caption cleaner; `removed` (a dict) collects what the notable steps delete."""
    text = urllib.parse.unquote_plus(str(caption)).strip().lower()
    text = _apply(_BEFORE_HTML, text, removed)
    stripped = _html_text(text)
    if removed is not None and stripped != text:
        removed.setdefault("HTML tags", []).extend(_TAG.findall(text))
    text = _apply(_AFTER_HTML, stripped, removed)
    if len(_SEPARATORS.findall(text)) > 3:  # this-is-my-cute-cat -> spaces
        text = _SEPARATORS.sub(" ", text)
    import ftfy  # imported here: only caption cleaning needs it

    text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
    return _apply(_AFTER_FTFY, text, removed).strip()


def clean_caption(caption: str, removed: Removed | None = None) -> str:
    """The reference text preprocessing (`inference/model/t5/t5_model.py` `text_preprocessing`): the cleaner
    applied twice."""
    return clean_caption_once(clean_caption_once(caption, removed), removed)


# ----------------------------------------------------------------------------- telling users what is removed
_TAG = re.compile(r"<[^<>]*>")
_WEIGHTS = re.compile(r"\([^()]*:\s*-?\d+(?:\.\d+)?\s*\)")  # ComfyUI / A1111 emphasis: (word:1.2)


def _quoted(pieces: list[str], most: int = 3) -> str:
    unique = list(dict.fromkeys(p if len(p) <= 40 else p[:39] + "…" for p in pieces))
    more = f" and {len(unique) - most} more" if len(unique) > most else ""
    return ", ".join(repr(p) for p in unique[:most]) + more


def _other_scripts(text: str) -> dict[str, list[str]]:
    """Words of `text` written in letters that are not Latin, by script (first word of the Unicode name)."""
    found: dict[str, list[str]] = {}
    for word in text.split():
        for ch in word:
            if unicodedata.category(ch).startswith("L") and not unicodedata.name(ch, "").startswith("LATIN"):
                found.setdefault(unicodedata.name(ch, "OTHER").split()[0].title(), []).append(word)
                break
    return found


def check_caption(text: str) -> list[str]:
    """What MAGI-1's caption cleaner (`clean_caption`) does to `text` that the user should know about.

    Returns one warning per kind of notable removal (Chinese characters, links, @names, file names, ids, web-shop
    words, HTML tags), about prompt-weight syntax (the brackets are removed, the weight stays as text) and about
    letters of other scripts (kept by the cleaner, but the T5 that reads them learned English); [] when nothing
    notable happens. Raises ValueError when a non-empty prompt cleans to '': the model would run with no prompt.
    """
    text = str(text)
    removed: Removed = {}
    cleaned = clean_caption(text, removed)
    removed = {what: pieces for what, pieces in removed.items() if pieces}
    if text.strip() and not cleaned:
        what = "; ".join(f"{w}: {_quoted(p)}" for w, p in removed.items()) or "punctuation and symbols"
        raise ValueError(
            f"the prompt {_quoted([text.strip()], 1)} is empty after MAGI-1's caption cleaner (it removes {what}), so "
            "the video would have no prompt at all. Write the prompt in English: the cleaner keeps Latin text "
            "(it deletes Chinese characters, links, file names and ids)."
        )
    out = []
    for what, pieces in removed.items():
        if what == _LINKS:  # the cleaner removes a link in pieces: show the whole words they came from
            pieces = [w for w in text.split() if any(p in w.lower() for p in pieces)] or pieces
        if what == _CJK:
            out.append(f"MAGI-1's caption cleaner deletes {what}: {_quoted(pieces)} will not reach the model; "
                       "write those words in English")
        else:
            out.append(f"MAGI-1's caption cleaner removes {what}: {_quoted(pieces)}")
    weights = _WEIGHTS.findall(text)
    if weights:
        out.append(f"prompt weights such as {_quoted(weights)} have no effect in MAGI-1: the cleaner turns the "
                   "brackets into spaces and the ':1.2' stays in the prompt as text; write the words plainly")
    for script, words in _other_scripts(cleaned).items():
        out.append(f"{script} text {_quoted(words)} is kept by the caption cleaner, but MAGI-1's text encoder "
                   "(T5 v1.1, trained on English text) may not understand it: write the prompt in English")
    return out
