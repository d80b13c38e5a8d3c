"""The only code that writes indicators, feeds and exceptions to the index.

Every write is one transaction that also appends to the change log, so a reader that has
seen sequence N can apply N+1.. as a delta instead of reloading everything.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..errors import AtrError, RejectedFile, ShrinkHeld
from ..indicators import url_key_host as url_host
from .db import transaction

MODULES = ("mdr", "xops", "third_party")
ACTIONS = ("block", "monitor")
MATCH_MODES = ("exact", "subtree")
KINDS = ("domain", "url", "ip")

# A diff bigger than this is logged as one 'reload' change: readers rebuild rather than
# replaying hundreds of thousands of rows.
RELOAD_THRESHOLD = 20_000


def stored_value(kind: str, value: str) -> str:
    """The form the index stores: canonical values as they are, except that a canonical
    URL ("http://host/path") is stored as its key, without the scheme ("host/path"),
    which is what look-up expressions are made of."""
    if kind == "url":
        scheme, sep, rest = value.partition("://")
        if sep and scheme in ("http", "https"):
            return rest
    return value


class IndicatorLike(Protocol):
    """What the writer needs of an indicator (a parser's ParsedIndicator fits)."""

    kind: str
    value: str
    match: str | None
    expires_at: float | None


@dataclass(frozen=True)
class FeedSpec:
    """A feed's settings as stored in the ``feeds`` table."""

    name: str
    module: str = "third_party"
    type: str = "auto"
    action: str = "block"
    position: int = 0
    enabled: bool = True
    match: str = "subtree"
    source: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.module not in MODULES:
            raise AtrError(f"feed {self.name!r}: module must be one of {', '.join(MODULES)}")
        if self.action not in ACTIONS:
            raise AtrError(f"feed {self.name!r}: action must be block or monitor")
        if self.match not in MATCH_MODES:
            raise AtrError(f"feed {self.name!r}: match must be exact or subtree")
        if self.type not in ("auto", *KINDS):
            raise AtrError(f"feed {self.name!r}: type must be auto, domain, url or ip")


@dataclass
class Diff:
    """What a feed replacement changed."""

    feed: str
    added: int = 0
    removed: int = 0
    changed: int = 0
    unchanged: int = 0
    total: int = 0
    sequence: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "feed": self.feed, "added": self.added, "removed": self.removed,
            "changed": self.changed, "total": self.total,
        }


class IndexWriter:
    """Writes to one index connection (the worker's, or an operator tool's)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    # -- feeds -------------------------------------------------------------------------
    def upsert_feed(self, spec: FeedSpec) -> int:
        """Create the feed or update its settings; returns its id. Logs a 'feed' change
        when anything a reader cares about (module, action, order, enabled) changed."""
        source = json.dumps(dict(spec.source), sort_keys=True)
        with transaction(self.conn):
            row = self.conn.execute(
                "SELECT id, module, type, action, position, enabled, match, source"
                " FROM feeds WHERE name=?", (spec.name,)
            ).fetchone()
            wanted = (spec.module, spec.type, spec.action, spec.position, int(spec.enabled),
                      spec.match, source)
            if row is None:
                cur = self.conn.execute(
                    "INSERT INTO feeds(name, module, type, action, position, enabled, match, source)"
                    " VALUES (?,?,?,?,?,?,?,?)", (spec.name, *wanted),
                )
                feed_id = int(cur.lastrowid)
                self._log("feed", feed_id=feed_id)
                return feed_id
            feed_id = int(row[0])
            if tuple(row[1:]) != wanted:
                self.conn.execute(
                    "UPDATE feeds SET module=?, type=?, action=?, position=?, enabled=?, match=?,"
                    " source=? WHERE id=?", (*wanted, feed_id),
                )
                self._log("feed", feed_id=feed_id)
            return feed_id

    def feed_id(self, name: str) -> int | None:
        row = self.conn.execute("SELECT id FROM feeds WHERE name=?", (name,)).fetchone()
        return int(row[0]) if row else None

    def set_feed_status(self, feed_id: int, **fields: Any) -> None:
        """Record sync status columns (see the schema) without touching indicators."""
        allowed = {
            "status", "last_attempt", "last_success", "http_status", "bytes", "parsed",
            "accepted", "rejected", "rejected_samples", "duration", "last_error", "next_run",
            "etag", "last_modified",
        }
        unknown = set(fields) - allowed
        if unknown:
            raise AtrError(f"unknown feed status fields: {', '.join(sorted(unknown))}")
        if "rejected_samples" in fields and not isinstance(fields["rejected_samples"], str | None):
            fields["rejected_samples"] = json.dumps(fields["rejected_samples"])
        if not fields:
            return
        cols = ", ".join(f"{name}=?" for name in fields)
        with transaction(self.conn):
            self.conn.execute(f"UPDATE feeds SET {cols} WHERE id=?", (*fields.values(), feed_id))

    # -- indicators --------------------------------------------------------------------
    def replace_feed(
        self,
        feed_id: int,
        indicators: Iterable[IndicatorLike],
        *,
        allow_empty: bool = False,
        max_shrink: float | None = None,
        keep_missing_for: float | None = None,
        now: float | None = None,
        default_match: str | None = None,
    ) -> Diff:
        """Make the feed's indicator set equal to ``indicators``, by diff, in one transaction.

        New values are inserted, values no longer listed are deleted (or, with
        ``keep_missing_for``, kept until that many seconds after they were last seen), kept
        values keep their ``first_seen``. A set that would empty a feed that has indicators
        raises :class:`RejectedFile` unless ``allow_empty``; one that would remove more than
        ``max_shrink`` (a share, 0..1) of the feed raises :class:`ShrinkHeld`. Either way
        nothing is written.
        """
        now = time.time() if now is None else now
        name, feed_match = self._feed_name_match(feed_id)
        default_match = default_match or feed_match
        wanted: dict[str, tuple] = {}
        for item in indicators:
            match = "exact" if item.kind != "domain" else (item.match or default_match)
            value = stored_value(item.kind, item.value)
            key = item.kind[0] + value
            previous = wanted.get(key)
            if previous is not None and previous[2] == "subtree":
                match = "subtree"  # a name listed both ways means the whole subtree
            wanted[key] = (
                item.kind, value, match, getattr(item, "expires_at", None),
                getattr(item, "threat", None), getattr(item, "malware", None),
                getattr(item, "confidence", None), getattr(item, "reference", None),
            )
        diff = Diff(feed=name)
        with transaction(self.conn):
            existing: dict[str, tuple[int, str, float | None]] = {}
            for row_id, kind, value, match, expires_at in self.conn.execute(
                "SELECT id, kind, value, match, expires_at FROM indicators WHERE feed_id=?",
                (feed_id,),
            ):
                existing[kind[0] + value] = (row_id, match, expires_at)
            if not wanted and existing and not allow_empty:
                raise RejectedFile(
                    f"feed {name!r}: the new list is empty and would remove all "
                    f"{len(existing)} indicators; refused (use --allow-empty to empty it)"
                )
            # sorted like the unique index (the key is kind initial + value), so that
            # inserting touches its pages in order
            adds = [wanted[k] for k in sorted(k for k in wanted if k not in existing)]
            gone = [(k, v) for k, v in existing.items() if k not in wanted]
            if max_shrink is not None and existing and len(gone) / len(existing) > max_shrink:
                raise ShrinkHeld(
                    f"feed {name!r}: the update would remove {len(gone)} of {len(existing)}"
                    f" indicators ({len(gone) / len(existing):.0%}), more than max_shrink"
                    f" {max_shrink:.0%}; held back, the feed keeps its indicators"
                )
            changed = []
            for key in (wanted.keys() & existing.keys()) if existing else ():
                w, old = wanted[key], existing[key]
                if old[1] != w[2] or old[2] != w[3]:
                    changed.append((old[0], w))
            expiring: list[tuple[int, float]] = []
            deletes: list[tuple[int, str]] = []
            for key, (row_id, _match, expires_at) in gone:
                if keep_missing_for is not None:
                    if expires_at is None:
                        expiring.append((row_id, now + keep_missing_for))
                else:
                    deletes.append((row_id, key))
            bulk = len(adds) + len(deletes) + len(changed) + len(expiring) > RELOAD_THRESHOLD
            # Kept rows are not rewritten (that would cost a write per indicator on every
            # sync): a current member was last seen at the feed's last_success, and
            # last_seen records when an indicator was last added or changed.
            insert = (
                "INSERT INTO indicators(feed_id, kind, value, match, first_seen, last_seen,"
                " expires_at, threat, malware, confidence, reference, host)"
                " VALUES (?,?,?,?,?,?,?,?,?,?,?,?)"
            )
            if bulk:
                self.conn.executemany(
                    insert, ((feed_id, w[0], w[1], w[2], now, now, *w[3:],
                              url_host(w[1]) if w[0] == "url" else None) for w in adds)
                )
                self.conn.executemany(
                    "DELETE FROM indicators WHERE id=?", ((row_id,) for row_id, _ in deletes)
                )
                self.conn.executemany(
                    "UPDATE indicators SET match=?, expires_at=? WHERE id=?",
                    ((w[2], w[3], row_id) for row_id, w in changed),
                )
                self.conn.executemany(
                    "UPDATE indicators SET expires_at=? WHERE id=?",
                    ((at, row_id) for row_id, at in expiring),
                )
                self._log("reload", feed_id=feed_id)
            else:
                for w in adds:
                    cur = self.conn.execute(insert, (
                        feed_id, w[0], w[1], w[2], now, now, *w[3:],
                        url_host(w[1]) if w[0] == "url" else None))
                    self._log("add", cur.lastrowid, feed_id, w[0], w[1], w[2], w[3])
                for row_id, key in deletes:
                    self.conn.execute("DELETE FROM indicators WHERE id=?", (row_id,))
                    kind = {"d": "domain", "u": "url", "i": "ip"}[key[0]]
                    self._log("del", row_id, feed_id, kind, key[1:], existing[key][1])
                for row_id, w in changed:
                    self.conn.execute(
                        "UPDATE indicators SET match=?, expires_at=? WHERE id=?",
                        (w[2], w[3], row_id),
                    )
                    old_match = existing[w[0][0] + w[1]][1]
                    self._log("del", row_id, feed_id, w[0], w[1], old_match)
                    self._log("add", row_id, feed_id, w[0], w[1], w[2], w[3])
                for row_id, at in expiring:
                    self.conn.execute(
                        "UPDATE indicators SET expires_at=? WHERE id=?", (at, row_id)
                    )
                    self._log("expiry", row_id, feed_id, expires_at=at)
            diff.added = len(adds)
            diff.removed = len(deletes)
            diff.changed = len(changed)
            diff.unchanged = len(wanted) - len(adds) - len(changed)
            diff.total = len(wanted) + len(expiring)
            counts = {"domain": 0, "url": 0, "ip": 0}
            hosts = set()
            for w in wanted.values():
                counts[w[0]] += 1
                if w[0] == "url":
                    hosts.add(url_host(w[1]))
            self.conn.execute(
                "UPDATE feeds SET indicator_count=?, domain_count=?, url_count=?, ip_count=?,"
                " url_host_count=? WHERE id=?",
                (diff.total, counts["domain"], counts["url"], counts["ip"], len(hosts), feed_id),
            )
            diff.sequence = self._sequence()
        return diff

    def add_indicator(
        self,
        feed_id: int,
        kind: str,
        value: str,
        *,
        match: str | None = None,
        expires_at: float | None = None,
        comment: str | None = None,
        reference: str | None = None,
        threat: str | None = None,
        now: float | None = None,
    ) -> int:
        """Add one indicator (or refresh it if the feed already lists it); returns its id."""
        now = time.time() if now is None else now
        if kind not in KINDS:
            raise AtrError(f"unknown indicator kind {kind!r}")
        _, feed_match = self._feed_name_match(feed_id)
        match = "exact" if kind != "domain" else (match or feed_match)
        value = stored_value(kind, value)
        with transaction(self.conn):
            row = self.conn.execute(
                "SELECT id FROM indicators WHERE feed_id=? AND kind=? AND value=?",
                (feed_id, kind, value),
            ).fetchone()
            if row is None:
                cur = self.conn.execute(
                    "INSERT INTO indicators(feed_id, kind, value, match, first_seen, last_seen,"
                    " expires_at, comment, reference, threat, host)"
                    " VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                    (feed_id, kind, value, match, now, now, expires_at, comment, reference,
                     threat, url_host(value) if kind == "url" else None),
                )
                row_id = int(cur.lastrowid)
            else:
                row_id = int(row[0])
                self.conn.execute(
                    "UPDATE indicators SET match=?, last_seen=?, expires_at=?, comment=?,"
                    " reference=?, threat=? WHERE id=?",
                    (match, now, expires_at, comment, reference, threat, row_id),
                )
            self._log("add", row_id, feed_id, kind, value, match, expires_at)
            self._recount(feed_id)
            return row_id

    def remove_indicator(self, indicator_id: int) -> bool:
        """Delete one indicator by id; False if there was none."""
        with transaction(self.conn):
            row = self.conn.execute(
                "SELECT feed_id, kind, value, match FROM indicators WHERE id=?", (indicator_id,)
            ).fetchone()
            if row is None:
                return False
            self.conn.execute("DELETE FROM indicators WHERE id=?", (indicator_id,))
            self._log("del", indicator_id, *row)
            self._recount(row[0])
            return True

    def purge_expired(self, now: float | None = None) -> int:
        """Delete indicators whose expiry has passed (readers already stopped matching them)."""
        now = time.time() if now is None else now
        with transaction(self.conn):
            rows = self.conn.execute(
                "SELECT id, feed_id, kind, value, match FROM indicators WHERE expires_at <= ?",
                (now,),
            ).fetchall()
            for row in rows:
                self.conn.execute("DELETE FROM indicators WHERE id=?", (row[0],))
                self._log("del", *row)
            for feed_id in {row[1] for row in rows}:
                self._recount(feed_id)
            return len(rows)

    def apply_delta(
        self,
        feed_id: int,
        adds: Iterable[IndicatorLike],
        removes: Iterable[tuple[str, str]],
        *,
        max_shrink: float | None = None,
        keep_missing_for: float | None = None,
        now: float | None = None,
        default_match: str | None = None,
    ) -> Diff:
        """Apply a known change to a feed without reading the rest of it (one transaction).

        The feed-sync worker uses this when it can tell from a line diff exactly which
        values came and went (a 1% change to a million-line list). ``adds`` are inserted,
        or updated if their match or expiry changed (a value kept by ``keep_missing_for``
        that is listed again loses its expiry); ``removes`` of (kind, value) are deleted, or
        with ``keep_missing_for`` expire that many seconds from now. Raises
        :class:`ShrinkHeld` (nothing written) beyond ``max_shrink`` of the feed.
        """
        now = time.time() if now is None else now
        name, feed_match = self._feed_name_match(feed_id)
        default_match = default_match or feed_match
        wanted: dict[tuple[str, str], tuple] = {}
        for item in adds:
            match = "exact" if item.kind != "domain" else (item.match or default_match)
            value = stored_value(item.kind, item.value)
            wanted[(item.kind, value)] = (
                item.kind, value, match, getattr(item, "expires_at", None),
                getattr(item, "threat", None), getattr(item, "malware", None),
                getattr(item, "confidence", None), getattr(item, "reference", None),
            )
        gone_keys = [key for key in dict.fromkeys((k, stored_value(k, v)) for k, v in removes)
                     if key not in wanted]
        diff = Diff(feed=name)
        select = "SELECT id, match, expires_at FROM indicators WHERE feed_id=? AND kind=? AND value=?"
        with transaction(self.conn):
            total = int(self.conn.execute(
                "SELECT indicator_count FROM feeds WHERE id=?", (feed_id,)).fetchone()[0])
            gone = []
            for kind, value in gone_keys:
                row = self.conn.execute(select, (feed_id, kind, value)).fetchone()
                if row is not None and not (keep_missing_for is not None and row[2] is not None):
                    gone.append((int(row[0]), kind, value, row[1]))
            if max_shrink is not None and total and len(gone) / total > max_shrink:
                raise ShrinkHeld(
                    f"feed {name!r}: the update would remove {len(gone)} of {total}"
                    f" indicators ({len(gone) / total:.0%}), more than max_shrink"
                    f" {max_shrink:.0%}; held back, the feed keeps its indicators"
                )
            inserts, updates = [], []
            for w in wanted.values():
                row = self.conn.execute(select, (feed_id, w[0], w[1])).fetchone()
                if row is None:
                    inserts.append(w)
                elif row[1] != w[2] or row[2] != w[3]:
                    updates.append((int(row[0]), w, row[1]))
            bulk = len(inserts) + len(updates) + len(gone) > RELOAD_THRESHOLD
            for w in inserts:
                cur = self.conn.execute(
                    "INSERT INTO indicators(feed_id, kind, value, match, first_seen, last_seen,"
                    " expires_at, threat, malware, confidence, reference, host)"
                    " VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                    (feed_id, w[0], w[1], w[2], now, now, *w[3:],
                     url_host(w[1]) if w[0] == "url" else None),
                )
                if not bulk:
                    self._log("add", cur.lastrowid, feed_id, w[0], w[1], w[2], w[3])
            for row_id, w, old_match in updates:
                self.conn.execute(
                    "UPDATE indicators SET match=?, expires_at=?, last_seen=? WHERE id=?",
                    (w[2], w[3], now, row_id),
                )
                if not bulk:
                    self._log("del", row_id, feed_id, w[0], w[1], old_match)
                    self._log("add", row_id, feed_id, w[0], w[1], w[2], w[3])
            for row_id, kind, value, match in gone:
                if keep_missing_for is not None:
                    at = now + keep_missing_for
                    self.conn.execute("UPDATE indicators SET expires_at=? WHERE id=?", (at, row_id))
                    if not bulk:
                        self._log("expiry", row_id, feed_id, expires_at=at)
                else:
                    self.conn.execute("DELETE FROM indicators WHERE id=?", (row_id,))
                    if not bulk:
                        self._log("del", row_id, feed_id, kind, value, match)
            if bulk:
                self._log("reload", feed_id=feed_id)
            self._recount(feed_id)
            diff.added = len(inserts)
            diff.changed = len(updates)
            diff.removed = 0 if keep_missing_for is not None else len(gone)
            diff.total = int(self.conn.execute(
                "SELECT indicator_count FROM feeds WHERE id=?", (feed_id,)).fetchone()[0])
            diff.unchanged = diff.total - diff.added - diff.changed
            diff.sequence = self._sequence()
        return diff

    def set_suppressed(self, changes: Mapping[int, str | None]) -> int:
        """Mark indicators (by id) as suppressed by the named list, or clear the mark
        (None). A suppressed indicator is stored but not enforced: readers skip it. Logs
        one 'reload' per feed touched so readers rebuild; returns the rows changed."""
        if not changes:
            return 0
        with transaction(self.conn):
            feeds: set[int] = set()
            changed = 0
            for indicator_id, list_name in changes.items():
                row = self.conn.execute(
                    "SELECT feed_id, suppressed_by FROM indicators WHERE id=?", (indicator_id,)
                ).fetchone()
                if row is None or row[1] == list_name:
                    continue
                self.conn.execute("UPDATE indicators SET suppressed_by=? WHERE id=?",
                                  (list_name, indicator_id))
                feeds.add(int(row[0]))
                changed += 1
            for feed_id in sorted(feeds):
                self._log("reload", feed_id=feed_id)
            return changed

    # -- exceptions --------------------------------------------------------------------
    def add_exception(
        self, scope: str, kind: str, value: str, *, feed_id: int | None = None,
        comment: str | None = None,
    ) -> int:
        """Add an exception (idempotent); returns its id."""
        if scope not in ("source", "destination"):
            raise AtrError("exception scope must be source or destination")
        if scope == "source" and kind != "ip":
            raise AtrError("a source exception is a client address or network")
        value = stored_value(kind, value)
        with transaction(self.conn):
            row = self.conn.execute(
                "SELECT id FROM exceptions WHERE scope=? AND kind=? AND value=?"
                " AND IFNULL(feed_id, 0)=IFNULL(?, 0)", (scope, kind, value, feed_id),
            ).fetchone()
            if row is not None:
                return int(row[0])
            cur = self.conn.execute(
                "INSERT INTO exceptions(scope, kind, value, feed_id, comment, created_at)"
                " VALUES (?,?,?,?,?,?)", (scope, kind, value, feed_id, comment, time.time()),
            )
            self._log("exception", feed_id=feed_id)
            return int(cur.lastrowid)

    def remove_exception(self, exception_id: int) -> bool:
        with transaction(self.conn):
            cur = self.conn.execute("DELETE FROM exceptions WHERE id=?", (exception_id,))
            if cur.rowcount:
                self._log("exception")
            return bool(cur.rowcount)

    def replace_feed_exceptions(
        self, feed_id: int, items: Iterable[tuple[str, str, str]]
    ) -> None:
        """Make a feed's own exceptions (adblock ``@@``, RPZ passthru) equal to ``items``
        of (scope, kind, value)."""
        items = {(scope, kind, stored_value(kind, value)) for scope, kind, value in items}
        with transaction(self.conn):
            have = {
                (scope, kind, value): row_id for row_id, scope, kind, value in self.conn.execute(
                    "SELECT id, scope, kind, value FROM exceptions WHERE feed_id=?", (feed_id,)
                )
            }
            if set(have) == items:
                return
            for key, row_id in have.items():
                if key not in items:
                    self.conn.execute("DELETE FROM exceptions WHERE id=?", (row_id,))
            now = time.time()
            for scope, kind, value in items - set(have):
                self.conn.execute(
                    "INSERT INTO exceptions(scope, kind, value, feed_id, created_at)"
                    " VALUES (?,?,?,?,?)", (scope, kind, value, feed_id, now),
                )
            self._log("exception", feed_id=feed_id)

    # -- change log --------------------------------------------------------------------
    def prune_changes(self, older_than: float) -> int:
        """Drop change-log entries older than ``older_than`` (unix time), always keeping the
        newest so the generation never goes backwards. Readers that fall behind rebuild."""
        with transaction(self.conn):
            cur = self.conn.execute(
                "DELETE FROM changes WHERE at < ? AND seq < (SELECT MAX(seq) FROM changes)",
                (older_than,),
            )
            return cur.rowcount

    def prune_events(self, older_than: float | None, max_rows: int = 0,
                     batch: int = 10_000) -> int:
        """Drop events older than ``older_than`` (unix time; None: none by age), then the
        oldest past ``max_rows`` (0: no limit). In batches, each its own transaction, so
        that the proxy's and the resolver's event writers never wait long. Returns the
        number dropped."""
        dropped = 0
        while older_than is not None:
            with transaction(self.conn):
                n = self.conn.execute(
                    "DELETE FROM events WHERE id IN (SELECT id FROM events WHERE at < ?"
                    " ORDER BY at LIMIT ?)", (older_than, batch)).rowcount
            dropped += n
            if n < batch:
                break
        if max_rows > 0:
            total = self.conn.execute("SELECT COUNT(*) FROM events").fetchone()[0]
            while total > max_rows:
                with transaction(self.conn):
                    n = self.conn.execute(
                        "DELETE FROM events WHERE id IN (SELECT id FROM events ORDER BY id"
                        " LIMIT ?)", (min(batch, total - max_rows),)).rowcount
                if not n:
                    break
                dropped += n
                total -= n
        return dropped

    def _log(
        self, op: str, indicator_id: int | None = None, feed_id: int | None = None,
        kind: str | None = None, value: str | None = None, match: str | None = None,
        expires_at: float | None = None,
    ) -> None:
        self.conn.execute(
            "INSERT INTO changes(at, op, indicator_id, feed_id, kind, value, match, expires_at)"
            " VALUES (?,?,?,?,?,?,?,?)",
            (time.time(), op, indicator_id, feed_id, kind, value, match, expires_at),
        )

    def _sequence(self) -> int:
        return int(self.conn.execute("SELECT IFNULL(MAX(seq), 0) FROM changes").fetchone()[0])

    def _recount(self, feed_id: int) -> None:
        counts = dict(self.conn.execute(
            "SELECT kind, COUNT(*) FROM indicators WHERE feed_id=? GROUP BY kind", (feed_id,)
        ).fetchall())
        hosts = self.conn.execute(
            "SELECT COUNT(DISTINCT substr(value, 1, instr(value || '/', '/') - 1))"
            " FROM indicators WHERE feed_id=? AND kind='url'", (feed_id,)
        ).fetchone()[0]
        self.conn.execute(
            "UPDATE feeds SET indicator_count=?, domain_count=?, url_count=?, ip_count=?,"
            " url_host_count=? WHERE id=?",
            (sum(counts.values()), counts.get("domain", 0), counts.get("url", 0),
             counts.get("ip", 0), hosts, feed_id),
        )

    def _feed_name_match(self, feed_id: int) -> tuple[str, str]:
        row = self.conn.execute("SELECT name, match FROM feeds WHERE id=?", (feed_id,)).fetchone()
        if row is None:
            raise AtrError(f"no feed with id {feed_id}")
        return row[0], row[1]
