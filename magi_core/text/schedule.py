"""Per-chunk prompt schedule (not in the reference, which has one prompt): which prompt each chunk uses.

Text format, one range per line:

    0-1: a red fox walks through snow        chunk indices, both ends included
    2: the fox stops and looks up            a single chunk
    3-: the fox runs away                    open end: up to the last chunk
    0s-2.5s: a red fox ...                   seconds (suffix `s` on both ends), end excluded

A line that does not start with a range continues the previous prompt (joined with a space). Blank lines are
skipped. Text where no line looks like a range is one prompt for every chunk. A line that looks like a range but
is not one ('0-x: a fox', or '0-1 a fox' without its ':') is an error naming that line, so a typo never turns a
schedule into one long prompt; the exception is a single line like '2-3 foxes play' without any real range,
which stays a plain prompt, and a single line starting with one time or one chunk index other than 0
('1920s: a street', '1984: a city'), which could never be a whole schedule and is a plain prompt too (both with a
warning from `check_captions`). En and em dashes count as '-'.

Seconds are turned into chunk boundaries: one chunk lasts `frames_per_chunk / fps` seconds, where
frames_per_chunk is what a chunk decodes to at that fps (`video.chunk_output_frames`: 24 frames at most rates,
i.e. 1 s at 24 fps; 6 below 16 fps, i.e. 0.5 s at 12 fps; 21 at 40-47 fps), and a time `s` becomes boundary
`floor(s * fps / frames_per_chunk + 0.5)` (nearest chunk boundary, halves rounded up, computed exactly on the
numbers as written: `time_boundary`). With a video prefix the seconds count whole chunks from the first generated
one, whose output is shorter (it holds the end of the prefix, which is not output). So `0s-2s` at 24 fps is
chunks 0 and 1; at 30 fps it is chunks 0..2 (2 s = 2.5 chunks, rounded up to 3). A time that is not on a chunk
boundary is reported by `PromptSchedule.moved_times`.

The resolved schedule must cover chunks 0..n_chunks-1 exactly once: gaps, overlaps, empty prompts and
ranges past the end are errors.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from fractions import Fraction

from ..video import CHUNK_WIDTH, FRAMES_PER_LATENT, chunk_output_frames
from .cleaning import check_caption

FRAMES_PER_CHUNK = CHUNK_WIDTH * FRAMES_PER_LATENT  # 24 pixel frames per chunk

_NUMBER = r"\d+(?:\.\d+)?s?"
_DASH = "[-\u2013\u2014]"  # '-', and the en and em dashes that text editors turn it into
_RANGE_LINE = re.compile(rf"^\s*(?P<start>{_NUMBER})\s*(?:(?P<dash>{_DASH})\s*(?P<end>{_NUMBER})?)?\s*:(?P<prompt>.*)$")
# Lines that look like a range but are not one: a number and a short word before ':' ("0-x: a fox", "1x: a"), or
# a range with no ':' ("0-1 a fox", "2- a fox"). The second kind alone can be a plain prompt ("2-3 foxes play").
_BROKEN_RANGE = re.compile(rf"^\s*\d[^\s:]*\s*(?:{_DASH}\s*[^\s:]*\s*)?:")
# A single line that starts with one time or one chunk index other than 0 ("1920s: ...", "1984: ...") could
# never be a whole schedule (a time needs a range; chunk 0 would be uncovered): it is a plain prompt.
_LONE_POINT = re.compile(r"^\s*(?:\d+(?:\.\d+)?s|0*[1-9]\d*)\s*:")
_NO_COLON = re.compile(rf"^\s*{_NUMBER}\s*{_DASH}\s*(?:{_NUMBER})?(?=\s|$)")
# In a schedule, a later line that starts with a chunk index and text but no ':' ("2 the fox stops"): it continues
# the prompt above ("3 cubs follow it" may mean just that), with a note in case the ':' was forgotten
_LONE_NO_COLON = re.compile(r"^\s*\d+(?=\s+\S)")


def time_boundary(t: float, fps: float, frames_per_chunk: int | None = None) -> int:
    """The chunk boundary nearest to `t` seconds (halves rounded up), in exact arithmetic on the numbers as
    written: a chunk lasts frames_per_chunk / fps seconds (None: what a chunk decodes to at fps)."""
    chunks = Fraction(str(t)) * Fraction(str(fps)) / (frames_per_chunk or chunk_output_frames(fps))
    return math.floor(chunks + Fraction(1, 2))


@dataclass(frozen=True)
class PromptRange:
    """One schedule line. Chunk ranges include `end`; second ranges exclude it; end None = to the last chunk."""

    start: float
    end: float | None
    prompt: str
    seconds: bool = False
    line: int = 0  # 1-based line number in the source text (0 = not from text)

    def chunk_bounds(self, n_chunks: int, fps: float, frames_per_chunk: int | None = None) -> tuple[int, int]:
        """Half-open chunk range [first, stop); frames_per_chunk: None = what a chunk decodes to at fps."""
        if self.seconds:
            first = time_boundary(self.start, fps, frames_per_chunk)
            stop = n_chunks if self.end is None else time_boundary(self.end, fps, frames_per_chunk)
        else:
            first = int(self.start)
            stop = n_chunks if self.end is None else int(self.end) + 1
        return first, stop

    def describe(self) -> str:
        unit = "s" if self.seconds else ""
        end = "" if self.end is None else f"{self.end:g}{unit}"
        where = f"line {self.line} " if self.line else ""
        if not self.seconds and self.end == self.start:  # one chunk: as the user writes it ('2: ...')
            return f"{where}'{self.start:g}'"
        return f"{where}'{self.start:g}{unit}-{end}'"

    def rounding(self, fps: float, frames_per_chunk: int | None = None, ends: str = "start end") -> str:
        """' (1.5s is rounded to 2s: the nearest chunk boundary; ...)' for this range's times among `ends` that fall
        inside a chunk, else '': said with the errors that rounding caused."""
        times = [t for name, t in (("start", self.start), ("end", self.end)) if name in ends.split()]
        return _rounding(times if self.seconds else [], fps, frames_per_chunk)


@dataclass(frozen=True)
class PromptSchedule:
    ranges: tuple[PromptRange, ...]
    notes: tuple[str, ...] = ()  # what parsing did that the user may not expect (check_captions reports them)

    def check_captions(self) -> list[str]:
        """`check_caption` for every prompt: the warnings (naming the line in a schedule of several ranges);
        raises ValueError for a prompt the caption cleaner empties."""
        out = list(self.notes)
        if len(self.ranges) == 1 and _NO_COLON.match(self.ranges[0].prompt):
            m = _NO_COLON.match(self.ranges[0].prompt)
            out.append(f"the prompt {_shown(self.ranges[0].prompt)} starts like a schedule range without its ':', so "
                       f"it is one prompt for the whole video, range included; for a schedule write "
                       f"'{m[0].strip()}: {self.ranges[0].prompt[m.end():].strip()}'")
        if len(self.ranges) == 1 and _LONE_POINT.match(self.ranges[0].prompt):
            point = _LONE_POINT.match(self.ranges[0].prompt)[0].rstrip(":").strip()
            out.append(f"the prompt {_shown(self.ranges[0].prompt)} starts like a schedule line ('{point}:'), but one "
                       f"line like that is no schedule, so it is one prompt for the whole video, '{point}:' included; "
                       f"for a schedule write ranges from 0, e.g. '0-1: a fox' or '0s-2s: a fox'")
        for r in self.ranges:
            where = f"prompt schedule {r.describe()}: " if len(self.ranges) > 1 else ""
            try:
                out += [where + w for w in check_caption(r.prompt)]
            except ValueError as e:
                raise ValueError(where + str(e)) from None
        return out

    @staticmethod
    def single(prompt: str) -> "PromptSchedule":
        """One prompt for every chunk."""
        return PromptSchedule((PromptRange(0, None, prompt),))

    def check(self) -> "PromptSchedule":
        """Reject what no video length can fix: no prompt, empty prompts, reversed ranges, and overlaps and gaps
        between ranges of one unit (mixed units need the fps: `resolve` checks them). ValueError naming the lines;
        returns self."""
        if not self.ranges:
            raise ValueError("the prompt is empty: write a prompt, or lines like '0-1: a fox in the snow'")
        problems = []
        for r in self.ranges:
            if not r.prompt.strip():
                problems.append(f"{r.describe()} has no prompt after the ':'")
            if r.end is not None and (r.end < r.start or (r.seconds and r.end == r.start)):
                problems.append(f"{r.describe()} ends before it starts")
        if not problems and len({r.seconds for r in self.ranges}) == 1:
            problems = _unit_problems(self.ranges, self.ranges[0].seconds)
        if problems:
            raise ValueError("prompt schedule: " + "; ".join(problems))
        return self

    def moved_times(self, fps: float, frames_per_chunk: int | None = None) -> list[str]:
        """A note for each time (in seconds) that falls inside a chunk: where the prompt really changes."""
        notes, seen = [], set()
        for r in self.ranges:
            for t in ((r.start, r.end) if r.seconds else ()):
                if t is None or t in seen:  # a time that ends one range and starts the next: said once
                    continue
                seen.add(t)
                moved = _moved(t, fps, frames_per_chunk)
                if moved:
                    notes.append(f"line {r.line}: {t:g}s falls inside a chunk, so the prompt changes at "
                                 f"{moved[0]:.4g}s, the nearest chunk boundary (a chunk lasts {moved[1]:.4g} s at "
                                 f"{fps:g} fps)")
        return notes

    def resolve(self, n_chunks: int, fps: float = 24, frames_per_chunk: int | None = None) -> list[str]:
        """One prompt per chunk, for chunks 0..n_chunks-1: ranges past the video's end first, then `check`, then
        what only the length and fps decide (overlaps and gaps of mixed units, ranges that round to no chunk)."""
        if n_chunks < 1:
            raise ValueError(f"n_chunks must be >= 1, got {n_chunks}")
        frames_per_chunk = frames_per_chunk or chunk_output_frames(fps)
        bounds = [r.chunk_bounds(n_chunks, fps, frames_per_chunk) for r in self.ranges]
        longer = f"or make the video longer (a chunk is {frames_per_chunk} frames)"
        has = f"the video has only {n_chunks} chunk{'s' if n_chunks > 1 else ''} (0..{n_chunks - 1})"
        for r, (first, stop) in zip(self.ranges, bounds):
            if first >= n_chunks:
                raise ValueError(f"prompt schedule {r.describe()} starts at chunk {first}"
                                 f"{r.rounding(fps, frames_per_chunk, 'start')}, but {has}: start it earlier {longer}")
            if stop > n_chunks:
                raise ValueError(f"prompt schedule {r.describe()} covers chunks {first}..{stop - 1}"
                                 f"{r.rounding(fps, frames_per_chunk, 'end')}, but {has}: shorten the range, end it "
                                 f"with '-' to run to the end, {longer}")
        self.check()
        owner: list[PromptRange | None] = [None] * n_chunks
        for r, (first, stop) in zip(self.ranges, bounds):
            if stop <= first:
                raise ValueError(f"prompt schedule {r.describe()} covers no chunk (chunks {first}..{stop - 1})"
                                 f"{r.rounding(fps, frames_per_chunk)}")
            for c in range(first, stop):
                if owner[c] is not None:
                    times = [t for q in (owner[c], r) if q.seconds for t in (q.start, q.end)]
                    raise ValueError(f"prompt schedule ranges {owner[c].describe()} and {r.describe()} overlap at "
                                     f"chunk {c}{_rounding(times, fps, frames_per_chunk)}")
                owner[c] = r
        gaps = [c for c, r in enumerate(owner) if r is None]
        if gaps:
            times = [t for q in self.ranges if q.seconds for t in (q.start, q.end)]
            raise ValueError(
                f"prompt schedule: nothing covers chunk(s) {_spans(gaps)} (the video has chunks 0..{n_chunks - 1})"
                f"{_rounding(times, fps, frames_per_chunk)}; cover every chunk (end the last range with '-' to run "
                "it to the end)" + "".join(f"; {n}" for n in self.notes if "has no ':'" in n)
            )
        return [r.prompt for r in owner]


def _rounding(times, fps: float, frames_per_chunk: int | None) -> str:
    """' (1.5s is rounded to 2s, 2.6s to 3s: the nearest chunk boundaries; a chunk lasts 1 s at 24 fps)' for the
    times that fall inside a chunk, '' if none does."""
    moved = {t: _moved(t, fps, frames_per_chunk) for t in times}
    moved = {t: m for t, m in moved.items() if m}
    if not moved:
        return ""
    parts = [f"{t:g}s {'is rounded ' if i == 0 else ''}to {m[0]:.4g}s" for i, (t, m) in enumerate(moved.items())]
    chunk_s = next(iter(moved.values()))[1]
    nearest = "the nearest chunk boundary" if len(parts) == 1 else "the nearest chunk boundaries"
    return f" ({', '.join(parts)}: {nearest}; a chunk lasts {chunk_s:.4g} s at {fps:g} fps)"


def _moved(t, fps: float, frames_per_chunk: int | None) -> tuple[float, float] | None:
    """(the chunk boundary time t is rounded to, a chunk's length in seconds) when t falls inside a chunk, else None."""
    if t is None:
        return None
    chunk_s = Fraction(frames_per_chunk or chunk_output_frames(fps)) / Fraction(str(fps))
    at = time_boundary(t, fps, frames_per_chunk) * chunk_s
    return None if at == Fraction(str(t)) else (float(at), float(chunk_s))


def _unit_problems(ranges, seconds: bool) -> list[str]:
    """Overlaps and gaps among ranges of one unit (chunk indices or seconds), fps-independent."""
    unit = "s" if seconds else ""
    problems = []
    ordered = sorted(ranges, key=lambda r: r.start)
    if ordered and ordered[0].start != 0:
        problems.append(f"{ordered[0].describe()} starts at {ordered[0].start:g}{unit}: the first range must start "
                        f"at 0{unit} (nothing covers the video's beginning)")
    for a, b in zip(ordered, ordered[1:]):
        if a.end is None:
            problems.append(f"{a.describe()} runs to the end, so it overlaps {b.describe()}: give it an end")
            continue
        stop = a.end if seconds else a.end + 1  # seconds exclude the end, chunk indices include it
        if b.start < stop:
            problems.append(f"{a.describe()} and {b.describe()} overlap")
        elif b.start > stop:
            gap = f"{stop:g}s-{b.start:g}s" if seconds else (f"{stop:g}" if b.start == stop + 1 else f"{stop:g}-{b.start - 1:g}")
            problems.append(f"nothing covers {'seconds' if seconds else 'chunk(s)'} {gap} between {a.describe()} "
                            f"and {b.describe()}")
    return problems


def _spans(indices: list[int]) -> str:
    spans, start = [], indices[0]
    for a, b in zip(indices, indices[1:] + [None]):
        if b != a + 1:
            spans.append(f"{start}" if start == a else f"{start}-{a}")
            start = b
    return ", ".join(spans)


def _bound(text: str) -> tuple[float, bool]:
    return (float(text[:-1]), True) if text.endswith("s") else (float(text), False)


def _shown(line: str) -> str:
    line = line.strip()
    return repr(line if len(line) <= 60 else line[:59] + "…")


_EXAMPLE = "ranges are chunk indices ('0-1: a fox', '2: ...', '3-: ...' to the end) or seconds ('0s-2.5s: ...')"


def is_range_line(line: str) -> bool:
    """Does `line` start a range of a schedule ('0-1: ...', '2s-: ...')?"""
    return bool(_RANGE_LINE.match(line))


def _kind(line: str) -> str:
    if _RANGE_LINE.match(line):
        return "range"
    if _BROKEN_RANGE.match(line):
        return "broken"
    return "no colon" if _NO_COLON.match(line) else "text"


def _broken_line(number: int, line: str, kind: str) -> ValueError:
    where = f"prompt schedule line {number} {_shown(line)}"
    if kind == "no colon":
        m = _NO_COLON.match(line)
        return ValueError(f"{where}: the range has no ':' after it; write '{m[0].strip()}: {line[m.end():].strip()}' "
                          "(if the line continues the previous prompt, join it to that line)")
    return ValueError(f"{where}: '{line.split(':')[0].strip()}' is not a range; {_EXAMPLE}")


def parse_schedule(text: str) -> PromptSchedule:
    """Parse schedule text (see the module doc); text where no line looks like a range is a single prompt.

    Raises ValueError naming the first malformed line (1-based, as the user sees it), its text and what to write."""
    lines = [(i + 1, line.rstrip("\r")) for i, line in enumerate(str(text).split("\n")) if line.strip()]
    if not lines:
        return PromptSchedule(())
    kinds = [_kind(line) for _, line in lines]
    if "range" not in kinds and "broken" not in kinds and kinds.count("no colon") < 2:
        return PromptSchedule.single(" ".join(line.strip() for _, line in lines))  # e.g. "2-3 foxes play"
    if len(lines) == 1 and _LONE_POINT.match(lines[0][1]):  # "1920s: a street", "1984: a city": never a schedule
        return PromptSchedule.single(lines[0][1].strip())
    if kinds[0] == "text":
        number, line = next((n, t) for (n, t), k in zip(lines, kinds) if k != "text")
        raise ValueError(
            f"prompt schedule line {lines[0][0]} {_shown(lines[0][1])} has no chunk range, but line {number} "
            f"{_shown(line)} starts like one, so the text reads as a schedule: start the first line with a range "
            f"({_EXAMPLE}); for one prompt, start no line with a number followed by ':' or '-'"
        )
    out: list[PromptRange] = []
    notes = []
    for (number, line), kind in zip(lines, kinds):
        if kind in ("broken", "no colon"):
            raise _broken_line(number, line, kind)
        m = _RANGE_LINE.match(line)
        if m is None:  # continuation of the previous prompt
            prev = out[-1]
            lone = _LONE_NO_COLON.match(line)
            if lone:  # a forgotten ':' would move this text into the prompt above: say so
                notes.append(f"prompt schedule line {number} {_shown(line)} has no ':' after '{lone[0].strip()}', so it "
                             f"is part of the prompt of line {prev.line}; for chunk {lone[0].strip()} write "
                             f"'{lone[0].strip()}: {line[lone.end():].strip()}'")
            if line.lstrip().startswith(("#", "//")):  # reads like a comment: say where it went
                notes.append(f"prompt schedule line {number} {_shown(line)} is part of the prompt of line "
                             f"{prev.line} (a line without a range continues the prompt above it; there are no "
                             "comments): delete it if it is a note")
            out[-1] = PromptRange(prev.start, prev.end, f"{prev.prompt} {line.strip()}".strip(), prev.seconds, prev.line)
            continue
        start, start_s = _bound(m["start"])
        if m["dash"] is None:
            end, end_s = start, start_s
        elif m["end"] is None:
            end, end_s = None, start_s
        else:
            end, end_s = _bound(m["end"])
        where = f"prompt schedule line {number} {_shown(line)}"
        if start_s != end_s:
            raise ValueError(f"{where}: use seconds ('s') on both ends or on neither, e.g. '0s-2s:' or '0-1:'")
        if not start_s and (start != int(start) or (end is not None and end != int(end))):
            raise ValueError(f"{where}: chunk indices must be whole numbers, e.g. '0-1:' (add 's' for seconds: "
                             f"'0.5s-2s:')")
        if start_s and m["dash"] is None:
            raise ValueError(f"{where}: a time needs a range, e.g. '{m['start']}-{start + 1:g}s:'")
        out.append(PromptRange(start, end, m["prompt"].strip(), start_s, number))
    return PromptSchedule(tuple(out), tuple(notes))


def resolve_prompts(schedule: str | PromptSchedule, n_chunks: int, fps: float = 24,
                    frames_per_chunk: int | None = None) -> list[str]:
    """Schedule text (or a parsed schedule) -> one prompt per chunk."""
    if not isinstance(schedule, PromptSchedule):
        schedule = parse_schedule(schedule)
    return schedule.resolve(n_chunks, fps, frames_per_chunk)
