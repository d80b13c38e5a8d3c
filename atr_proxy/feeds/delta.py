"""Line deltas: re-syncing a big one-value-per-line feed by parsing only what changed.

A million-line list that changed by 1% is 99% the lines it was. The worker remembers the
data lines of the last body it applied; when the next body comes, the lines that appeared
and the lines that went are parsed (with the same parser and options as a full parse) and
applied with :meth:`IndexWriter.apply_delta`, instead of parsing and diffing everything.

That is exact only when every data line of the previous body yielded its own value: then
a line that went takes exactly its value with it. :func:`remember` checks it from the full
parse's own counts (data lines minus rejected minus skipped equals distinct values, every
line distinct) and otherwise remembers nothing, so the next sync parses in full. Only the
line formats where one line gives at most one value qualify (``plain``, ``wildcard``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..index.writer import stored_value
from .formats import FormatOptions, ParsedIndicator, ParseResult, parse

DELTA_FORMATS = ("plain", "wildcard")
MAX_CHANGED_SHARE = 0.25  # past this, a full parse costs about the same and is simpler
_BOM = b"\xef\xbb\xbf"


@dataclass
class LineState:
    """What the worker keeps of a feed's last applied body."""

    fingerprint: str                 # format, type, options, match of that parse
    lines: set[bytes]                # its data lines, all distinct
    rejected: int
    skipped: int
    distinct: int                    # values it yielded
    samples: list[tuple[int, str, str]] = field(default_factory=list)


@dataclass
class LineDelta:
    """The change between the remembered body and a new one."""

    adds: list[ParsedIndicator]
    removes: list[tuple[str, str]]   # (kind, stored value)
    added_lines: int
    removed_lines: int
    lines: set[bytes]
    parsed_added: ParseResult
    parsed_removed: ParseResult


def _prefixes(options: FormatOptions) -> tuple[bytes, ...]:
    return tuple(p.encode() for p in options.comment_prefixes if p)


def data_lines(body: bytes, options: FormatOptions) -> list[bytes] | None:
    """The body's data lines (no blanks, no comments); None if this body's line
    structure is not one this module can reason about (old Mac line ends, UTF-16)."""
    if body.startswith(_BOM):
        body = body[len(_BOM):]
    if body[:2] in (b"\xff\xfe", b"\xfe\xff") or (b"\r" in body and b"\n" not in body):
        return None
    if b"\r" in body:
        body = body.replace(b"\r\n", b"\n")
    prefixes = _prefixes(options)
    # Lines are compared as they are, not stripped (a million strip() calls cost more
    # than the rest): a line that only gained spaces counts as changed, parses to the
    # same value on both sides and stays. A whitespace-only line counts as data here
    # but not for the parser, which only ever makes the exactness check fail (safe).
    return [line for line in body.split(b"\n") if line and not line.startswith(prefixes)]


def remember(fmt: str, fingerprint: str, body: bytes, result: ParseResult,
             options: FormatOptions) -> LineState | None:
    """The state to keep after a full parse of ``body``, or None if a delta from it would
    not be exact (duplicates, lines yielding several values, another format)."""
    if fmt not in DELTA_FORMATS or result.exceptions or result.revoked:
        return None
    lines = data_lines(body, options)
    if lines is None:
        return None
    unique = set(lines)
    skipped = sum(result.skipped.values())
    if len(unique) != len(lines) or \
            len(lines) - result.rejected - skipped != len(result.indicators):
        return None
    return LineState(fingerprint, unique, result.rejected, skipped, len(result.indicators),
                     list(result.rejected_samples))


def compute(state: LineState, body: bytes, fmt: str, *, kind: str, options: FormatOptions,
            source: str) -> LineDelta | None:
    """The delta from ``state`` to ``body``, or None when a full parse is needed."""
    lines = data_lines(body, options)
    if lines is None:
        return None
    new = set(lines)
    if len(new) != len(lines):
        return None
    added = new - state.lines
    removed = state.lines - new
    if len(added) + len(removed) > MAX_CHANGED_SHARE * max(len(new), 1):
        return None
    parsed_added = parse(b"\n".join(added), fmt, kind=kind, options=options, source=source)
    parsed_removed = parse(b"\n".join(removed), fmt, kind=kind, options=options, source=source)
    incoming = {(i.kind, stored_value(i.kind, i.value)) for i in parsed_added.indicators}
    removes = [key for key in ((i.kind, stored_value(i.kind, i.value))
                               for i in parsed_removed.indicators) if key not in incoming]
    return LineDelta(parsed_added.indicators, removes, len(added), len(removed), new,
                     parsed_added, parsed_removed)


def advance(state: LineState, delta: LineDelta, *, duplicates: int) -> LineState | None:
    """The state after applying ``delta``; ``duplicates`` is how many added values were
    already yielded by a line that stayed (then the next delta would not be exact)."""
    if duplicates:
        return None
    pa, pr = delta.parsed_added, delta.parsed_removed
    skipped = state.skipped - sum(pr.skipped.values()) + sum(pa.skipped.values())
    rejected = state.rejected - pr.rejected + pa.rejected
    gone_texts = {text for _, text, _ in pr.rejected_samples}
    samples = [s for s in state.samples if s[1] not in gone_texts]
    samples += [(0, text, reason) for _, text, reason in pa.rejected_samples]
    distinct = state.distinct - len(pr.indicators) + len(pa.indicators)
    if len(delta.lines) - rejected - skipped != distinct:
        return None  # two new lines yield one value: the next delta would not be exact
    return LineState(state.fingerprint, delta.lines, rejected, skipped, distinct, samples[:10])
