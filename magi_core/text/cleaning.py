"""Caption cleaning applied to every prompt before T5 (magi1-pipeline.md §4, step 1).

MAGI-1 was trained with the DeepFloyd-IF / PixArt caption cleaner, run twice. `clean_caption` reproduces
it step by step: lower-casing, URL/HTML/handle removal, deletion of CJK characters, dash and quote
normalisation, spam and id removal, most punctuation (`|()[]{}*#/\\` ...) turned into spaces, ftfy.
The HTML step uses BeautifulSoup (package `beautifulsoup4`), as the reference does.
"""
from __future__ import annotations

import html
import re
import urllib.parse
import warnings

_EXTENSIONS = "png|jpg|jpeg|bmp|webp|eps|pdf|apk|mp4"
_DOMAIN = r"[a-zA-Z0-9.\-]+[.](?:com|co|ru|net|org|edu|gov|it)[\w/-]*\b/?(?!@)"
_DASHES = (
    "\u002d\u058a\u05be\u1400\u1806\u2010-\u2015\u2e17\u2e1a\u2e3a\u2e3b\u2e40"
    "\u301c\u3030\u30a0\ufe31\ufe32\ufe58\ufe63\uff0d"
)
_PUNCT = "#®•©™&@·º½¾¿¡§~)(\\]\\[}{|\\\\/*"  # escaped for use inside [...]


def _sub(pattern: str, repl: str) -> tuple[re.Pattern, str]:
    return re.compile(pattern), repl


# (pattern, replacement) pairs, in the reference's order. Split in three around the two steps that
# are not plain substitutions (HTML stripping, and the conditional dash/underscore replacement).
_BEFORE_HTML = [
    _sub("<person>", "person"),
    _sub(rf"\b(?:https?:(?:/{{1,3}}|[a-zA-Z0-9%])|{_DOMAIN})", ""),  # urls
    _sub(rf"\b(?:www:(?:/{{1,3}}|[a-zA-Z0-9%])|{_DOMAIN})", ""),
]
_AFTER_HTML = [
    _sub(r"@[\w\d]+\b", ""),  # @handles
    _sub("[\u31c0-\u9fff]+", ""),  # CJK strokes .. CJK unified ideographs (one contiguous range)
    _sub(f"[{_DASHES}]+", "-"),
    _sub("[`´«»“”¨]", '"'),
    _sub("[‘’]", "'"),
    _sub(r"&quot;?", ""),
    _sub(r"&amp", ""),
    _sub(r"\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}", " "),  # ip addresses
    _sub(r"\d:\d\d\s+$", ""),  # article ids
    _sub(r"\\n", " "),  # a literal backslash-n
    _sub(r"#\d{1,3}\b", ""),
    _sub(r"#\d{5,}\b", ""),
    _sub(r"\b\d{6,}\b", ""),
    _sub(rf"\S+\.(?:{_EXTENSIONS})", ""),  # file names
    _sub("[\"']{2,}", '"'),
    _sub(r"\.{2,}", " "),
    _sub(f"[{_PUNCT}]+", " "),
    _sub(r"\s+\.\s+", " "),
]
_SEPARATORS = re.compile(r"[-_]")
_AFTER_FTFY = [
    _sub(r"\b[a-zA-Z]{1,3}\d{3,15}\b", ""),  # jc6640
    _sub(r"\b[a-zA-Z]+\d+[a-zA-Z]+\b", ""),  # jc6640vc
    _sub(r"\b\d+[a-zA-Z]+\d+\b", ""),  # 6640vc231
    _sub(r"(worldwide\s+)?(free\s+)?shipping", ""),
    _sub(r"(free\s)?download(\sfree)?", ""),
    _sub(r"\bclick\b\s(?:for|on)\s\w+", ""),
    _sub(rf"\b(?:{_EXTENSIONS})(\simage[s]?)?", ""),
    _sub(r"\bpage\s+\d+\b", ""),
    _sub(r"\b\d*[a-zA-Z]+\d+[a-zA-Z]+\d+[a-zA-Z\d]*\b", " "),  # j2d1a2a...
    _sub(r"\b\d+\.?\d*[xх×]\d+\.?\d*\b", ""),  # 1920x1080 (latin x, cyrillic х, ×)
    _sub(r"\b\s+:\s+", ": "),
    _sub(r"(\D[,./])\b", r"\1 "),
    _sub(r"\s+", " "),
    _sub(r"^[\"']([\w\W]+)[\"']$", r"\1"),  # one level of surrounding quotes
    _sub(r"^['_,\-:;]", ""),
    _sub(r"['_,\-:+]$", ""),
    _sub(r"^\.\S+$", ""),
]


def _apply(steps: list[tuple[re.Pattern, str]], text: str) -> str:
    for pattern, repl in steps:
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


def clean_caption_once(caption: str) -> str:
    """One pass of the reference caption cleaner."""
    text = urllib.parse.unquote_plus(str(caption)).strip().lower()
    text = _apply(_BEFORE_HTML, text)
    text = _html_text(text)
    text = _apply(_AFTER_HTML, text)
    if len(_SEPARATORS.findall(text)) > 3:  # this-is-my-cute-cat -> spaces
        text = _SEPARATORS.sub(" ", text)
    import ftfy  # imported here: only caption cleaning needs it

    text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
    return _apply(_AFTER_FTFY, text).strip()


def clean_caption(caption: str) -> str:
    """The reference text preprocessing: the cleaner applied twice."""
    return clean_caption_once(clean_caption_once(caption))
