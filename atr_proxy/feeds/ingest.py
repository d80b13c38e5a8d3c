"""Parse-and-diff: the one path by which a feed's content reaches the index.

``atr-proxy import`` and the feed-sync worker both call :func:`ingest`, so a file imported
by hand and the same file fetched from a URL end up exactly alike in the index.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field
from typing import Any

from ..errors import RejectedFile, ShrinkHeld
from ..index.writer import Diff, FeedSpec, IndexWriter
from ..memory import full_collections_paused
from .formats import FormatOptions, ParseResult, parse


@dataclass
class IngestResult:
    """What one ingest did: the parse figures and the diff applied (None if held back)."""

    feed: str
    parse: ParseResult
    diff: Diff | None
    held: str | None = None          # why the diff was not applied (shrink guard)
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        diff = self.diff or Diff(feed=self.feed)
        out = {
            "feed": self.feed,
            "format": self.parse.format,
            "added": diff.added,
            "removed": diff.removed,
            "total": diff.total,
            "parsed": len(self.parse.indicators),
            "rejected": self.parse.rejected,
            "rejected_samples": [list(s) for s in self.parse.rejected_samples],
            "skipped": dict(self.parse.skipped),
            "exceptions": len(self.parse.exceptions),
        }
        if self.held:
            out["held"] = self.held
        return out


def ingest(
    conn: sqlite3.Connection,
    spec: FeedSpec,
    data: bytes,
    *,
    fmt: str = "auto",
    options: FormatOptions | None = None,
    source: str = "<input>",
    allow_empty: bool = False,
    max_shrink: float | None = None,
    keep_missing_for: float | None = None,
    now: float | None = None,
    parsed: ParseResult | None = None,
) -> IngestResult:
    """Parse ``data`` and make it the feed's indicator set (one transaction).

    Raises :class:`RejectedFile` (the feed keeps its indicators) if the data is not a list
    at all, or would empty the feed without ``allow_empty``. With ``max_shrink`` (0..1), a
    result that would remove more than that share of the feed's indicators is held back:
    nothing is written and ``held`` says why. ``parsed``: ``data`` already parsed (a
    caller that writes inside its own transaction parses before taking the write lock).
    """
    result = parsed or parse(data, fmt, kind=spec.type, options=options, source=source)
    writer = IndexWriter(conn)
    feed_id = writer.upsert_feed(spec)
    if not result.indicators and not allow_empty:
        current = conn.execute(
            "SELECT COUNT(*) FROM indicators WHERE feed_id=?", (feed_id,)
        ).fetchone()[0]
        if current:
            raise RejectedFile(
                f"{source}: no indicators in the new list; feed {spec.name!r} keeps its "
                f"{current} indicators (use --allow-empty to empty it)"
            )
    try:
        with full_collections_paused():
            diff = writer.replace_feed(
                feed_id, result.indicators, allow_empty=allow_empty, max_shrink=max_shrink,
                keep_missing_for=keep_missing_for, now=now, default_match=spec.match,
            )
    except ShrinkHeld as held:
        return IngestResult(spec.name, result, None, held=str(held))
    writer.replace_feed_exceptions(
        feed_id, {("destination", e.kind, e.value) for e in result.exceptions}
    )
    return IngestResult(spec.name, result, diff)
