"""Analyst push (module ``mdr``): indicators added and removed one by one, by the admin
API and by ``atr-proxy mdr``, both through these functions.

Each pushed indicator carries its own action. Pushes with action ``block`` go to the feed
``mdr``, pushes with action ``monitor`` to the feed ``mdr-monitor``; both are feeds of
module ``mdr`` (checked before every other module), created on first use. A value lives in
one of them at a time: pushing it again with the other action moves it. Each write is
committed, with its change-log entry, before the function returns.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from ..config import parse_duration
from ..errors import AtrError, ConfigError
from ..index.writer import FeedSpec, IndexWriter, stored_value
from ..indicators import canonicalize

MDR_FEEDS = {"block": "mdr", "monitor": "mdr-monitor"}
MAX_PUSH = 10_000
MAX_TEXT = 1000
_TYPES = ("auto", "domain", "url", "ip")
_FIELDS = {"type", "value", "action", "ttl", "expires_at", "comment", "reference", "match"}


class PushError(AtrError):
    """A push was refused; ``errors`` lists ``{"index", "field", "error"}`` per bad item."""

    def __init__(self, errors: list[dict[str, Any]]) -> None:
        self.errors = errors
        first = errors[0]
        super().__init__(f"item {first['index']}: {first['field']}: {first['error']}"
                         + (f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""))


@dataclass(frozen=True)
class Push:
    """One validated indicator to push."""

    kind: str
    value: str              # the stored form (a URL without its scheme)
    action: str
    match: str | None = None
    expires_at: float | None = None
    comment: str | None = None
    reference: str | None = None


def mdr_feed_specs(enabled: bool = True) -> list[FeedSpec]:
    return [FeedSpec(name=name, module="mdr", action=action, position=i, enabled=enabled,
                     source={"mdr": True})
            for i, (action, name) in enumerate(MDR_FEEDS.items())]


def ensure_feeds(writer: IndexWriter) -> dict[str, int]:
    """The two MDR feeds' ids by action, created if missing (settings left as they are)."""
    ids = {}
    for spec in mdr_feed_specs():
        feed_id = writer.feed_id(spec.name)
        ids[spec.action] = feed_id if feed_id is not None else writer.upsert_feed(spec)
    return ids


def validate(items: Any, *, now: float | None = None) -> list[Push]:
    """Check a list of ``{type, value, action, ttl|expires_at, comment, reference, match}``;
    raises :class:`PushError` listing every bad item (nothing is written then)."""
    now = time.time() if now is None else now
    if isinstance(items, Mapping) and "indicators" in items:
        items = items["indicators"]
    if isinstance(items, Mapping):
        items = [items]
    if not isinstance(items, list) or not items:
        raise PushError([{"index": 0, "field": "body",
                          "error": "expected a list of indicators (or {'indicators': [...]})"}])
    if len(items) > MAX_PUSH:
        raise PushError([{"index": 0, "field": "body",
                          "error": f"at most {MAX_PUSH} indicators per request"}])
    errors: list[dict[str, Any]] = []
    out: list[Push] = []
    for i, item in enumerate(items):
        def bad(field: str, error: str, i: int = i) -> None:
            errors.append({"index": i, "field": field, "error": error})

        if not isinstance(item, Mapping):
            bad("item", "expected an object")
            continue
        unknown = set(item) - _FIELDS
        if unknown:
            bad(sorted(unknown)[0], f"unknown field (expected: {', '.join(sorted(_FIELDS))})")
            continue
        kind = item.get("type", "auto") or "auto"
        if kind not in _TYPES:
            bad("type", f"{kind!r} is not one of {', '.join(_TYPES)}")
            continue
        value = item.get("value")
        if not isinstance(value, str) or not value.strip():
            bad("value", "required: a domain, URL or IP address/range")
            continue
        try:
            ind = canonicalize(value.strip(), kind)
        except ValueError as exc:
            bad("value", str(exc))
            continue
        action = item.get("action", "block")
        if action not in MDR_FEEDS:
            bad("action", "must be block or monitor")
            continue
        match = item.get("match")
        if match is not None and match not in ("subtree", "exact"):
            bad("match", "must be subtree or exact")
            continue
        try:
            expires_at = _expiry(item, now)
        except ValueError as exc:
            bad("ttl" if "ttl" in item else "expires_at", str(exc))
            continue
        texts = {}
        for key in ("comment", "reference"):
            text = item.get(key)
            if text is not None and (not isinstance(text, str) or len(text) > MAX_TEXT):
                bad(key, f"must be text of at most {MAX_TEXT} characters")
                break
            texts[key] = text
        else:
            out.append(Push(ind.kind, stored_value(ind.kind, ind.value), action,
                            match if ind.kind == "domain" else None, expires_at,
                            texts["comment"], texts["reference"]))
    if errors:
        raise PushError(errors)
    return out


def _expiry(item: Mapping[str, Any], now: float) -> float | None:
    if item.get("ttl") is not None and item.get("expires_at") is not None:
        raise ValueError("give ttl or expires_at, not both")
    if item.get("ttl") is not None:
        try:
            return now + parse_duration(item["ttl"], "ttl")
        except ConfigError as exc:
            raise ValueError(exc.reason) from None
    at = item.get("expires_at")
    if at is None:
        return None
    if isinstance(at, int | float) and not isinstance(at, bool):
        when = float(at)
    elif isinstance(at, str):
        try:
            parsed = datetime.fromisoformat(at.strip().replace("Z", "+00:00"))
        except ValueError:
            raise ValueError(f"{at!r} is not a unix time or an ISO 8601 time") from None
        when = (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).timestamp()
    else:
        raise ValueError("expected a unix time or an ISO 8601 time")
    if when <= now:
        raise ValueError("is in the past")
    return when


def push(conn: sqlite3.Connection, pushes: Iterable[Push]) -> list[dict[str, Any]]:
    """Write validated pushes; returns each stored indicator as :func:`describe` does."""
    writer = IndexWriter(conn)
    feeds = ensure_feeds(writer)
    out = []
    for p in pushes:
        other = feeds["monitor" if p.action == "block" else "block"]
        row = conn.execute("SELECT id FROM indicators WHERE feed_id=? AND kind=? AND value=?",
                           (other, p.kind, p.value)).fetchone()
        if row is not None:  # one action per value: pushing it again moves it
            writer.remove_indicator(int(row[0]))
        ident = writer.add_indicator(feeds[p.action], p.kind, p.value, match=p.match,
                                     expires_at=p.expires_at, comment=p.comment,
                                     reference=p.reference)
        out.append(describe(conn, ident))
    return out


_SELECT = (
    "SELECT i.id, i.kind, i.value, i.match, f.action, f.name, i.first_seen, i.last_seen,"
    " i.expires_at, i.comment, i.reference FROM indicators i JOIN feeds f ON f.id = i.feed_id"
)
_COLUMNS = ("id", "type", "value", "match", "action", "feed", "created_at", "updated_at",
            "expires_at", "comment", "reference")


def describe(conn: sqlite3.Connection, indicator_id: int) -> dict[str, Any] | None:
    row = conn.execute(f"{_SELECT} WHERE i.id=? AND f.module='mdr'", (indicator_id,)).fetchone()
    return dict(zip(_COLUMNS, row, strict=True)) if row else None


def remove_id(conn: sqlite3.Connection, indicator_id: int) -> dict[str, Any] | None:
    """Remove one MDR indicator by id; returns it, or None if there is no such MDR one."""
    found = describe(conn, indicator_id)
    if found is None:
        return None
    IndexWriter(conn).remove_indicator(indicator_id)
    return found


def remove_value(conn: sqlite3.Connection, value: str, kind: str = "auto") -> list[dict]:
    """Remove a value from the MDR feeds (whatever its action); returns what was removed."""
    ind = canonicalize(value.strip(), kind)
    rows = conn.execute(
        f"{_SELECT} WHERE f.module='mdr' AND i.kind=? AND i.value=?",
        (ind.kind, stored_value(ind.kind, ind.value)),
    ).fetchall()
    writer = IndexWriter(conn)
    out = []
    for row in rows:
        writer.remove_indicator(int(row[0]))
        out.append(dict(zip(_COLUMNS, row, strict=True)))
    return out


def search(conn: sqlite3.Connection, *, q: str | None = None, action: str | None = None,
           kind: str | None = None, limit: int = 100, offset: int = 0) -> dict[str, Any]:
    """MDR indicators, newest first: ``q`` is a case-insensitive substring of the value,
    comment or reference. Returns ``{"total", "limit", "offset", "items"}``."""
    where, params = ["f.module='mdr'"], []
    if q:
        where.append("(i.value LIKE ? ESCAPE '\\' OR i.comment LIKE ? ESCAPE '\\'"
                     " OR i.reference LIKE ? ESCAPE '\\')")
        pattern = "%" + q.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") \
            + "%"
        params += [pattern] * 3
    if action:
        where.append("f.action=?")
        params.append(action)
    if kind:
        where.append("i.kind=?")
        params.append(kind)
    clause = " AND ".join(where)
    with _read(conn):
        total = conn.execute(
            f"SELECT COUNT(*) FROM indicators i JOIN feeds f ON f.id = i.feed_id WHERE {clause}",
            params).fetchone()[0]
        rows = conn.execute(f"{_SELECT} WHERE {clause} ORDER BY i.id DESC LIMIT ? OFFSET ?",
                            (*params, limit, offset)).fetchall()
    return {"total": int(total), "limit": limit, "offset": offset,
            "items": [dict(zip(_COLUMNS, r, strict=True)) for r in rows]}


class _read:
    """One read transaction, so a count and its page agree."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def __enter__(self) -> None:
        self.conn.execute("BEGIN")

    def __exit__(self, *exc: object) -> None:
        self.conn.execute("COMMIT")
