"""The feed-sync worker: keeps the index current without anyone touching it.

One asyncio task per feed sleeps until the feed is due (its interval, moved by a random
jitter so feeds and workers do not fetch in lock-step), then fetches it, with at most
``sync.concurrency`` fetches at once. A fetched body goes through the one parse-and-diff
path (:func:`atr_proxy.feeds.ingest.ingest`), or, for a big line list that changed a
little, through a line delta (:mod:`atr_proxy.feeds.delta`); a 304 costs neither.

Whatever happens, the feed's status row says so (last attempt and success, HTTP status,
bytes, parsed, accepted, rejected with samples, duration, last error, next run), and a
failure never touches the feed's indicators: it keeps its last good list. An update that
would remove more than ``max_shrink`` of a feed is held back and reported.

At start the worker writes the config into the index: feeds (presets resolved), the two
MDR feeds, the config's exceptions; and applies the suppression lists. A housekeeping
timer purges expired indicators and prunes the change log.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import random
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..config import FeedSettings, Settings
from ..errors import AtrError, ConfigError, RejectedFile, ShrinkHeld
from ..index.db import connect, transaction
from ..index.writer import FeedSpec, IndexWriter, stored_value
from ..indicators import canonical_ip, canonicalize
from . import delta as line_delta
from .fetch import Fetched, Fetcher, FetchError, redact_url
from .formats import FormatOptions, parse, parse_taxii_envelope
from .ingest import ingest
from .mdr import mdr_feed_specs
from .suppress import Suppressor, load_suppressor

log = logging.getLogger("atr_proxy.feeds")

ERROR_RETRY = 60.0        # first retry after a failed sync (doubles, capped by the interval)
START_SPREAD = 5.0        # feeds due at start are spread over up to this many seconds
CONFIG_EXCEPTIONS_KEY = "config_exceptions"
INDEX_RETRY = 30.0  # seconds before a feed tries again when the index itself failed


@dataclass
class SyncOutcome:
    """What one sync of one feed did (also what ``sync --once --json`` prints)."""

    feed: str
    status: str                       # ok | not_modified | held | error
    mode: str = "full"                # full | delta | incremental | none
    format: str | None = None
    http_status: int | None = None
    bytes: int = 0
    parsed: int = 0
    accepted: int = 0
    rejected: int = 0
    rejected_samples: list = field(default_factory=list)
    added: int = 0
    removed: int = 0
    total: int = 0
    suppressed: int = 0
    duration: float = 0.0
    error: str | None = None
    next_run: float | None = None

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["duration"] = round(self.duration, 4)
        out["rejected_samples"] = [list(s) for s in self.rejected_samples]
        return out

    def line(self) -> str:
        """One line for a terminal."""
        if self.status == "error":
            return f"{self.feed}: error: {self.error}"
        if self.status == "not_modified":
            return f"{self.feed}: not modified ({self.total} indicators, {self.duration:.3f} s)"
        text = (f"{self.feed}: +{self.added} -{self.removed} = {self.total} indicators"
                f" ({self.format}, {self.mode}, {self.bytes} bytes, {self.rejected} rejected,"
                f" {self.duration:.3f} s)")
        if self.suppressed:
            text += f", {self.suppressed} suppressed"
        if self.status == "held":
            text = f"{self.feed}: HELD: {self.error}"
        return text


def feed_spec(settings: Settings, feed: FeedSettings) -> FeedSpec:
    """How a configured feed is stored in the ``feeds`` table (never with secrets)."""
    module_on = settings.modules[feed.module].enabled
    return FeedSpec(
        name=feed.name, module=feed.module, type=feed.type,
        action=settings.feed_action(feed), position=feed.order,
        enabled=feed.enabled and module_on, match=feed.match,
        source={
            "config": True, "url": redact_url(feed.url) if feed.url else None,
            "format": feed.format, "interval": feed.interval, "preset": feed.preset,
            "fingerprint": fingerprint(feed),
        },
    )


def fingerprint(feed: FeedSettings) -> str:
    """Changes whenever what a fetch returns or how it is parsed may change: then the
    stored validators are dropped so the next fetch is a full one."""
    basis = json.dumps([feed.url, feed.format, feed.type, feed.match, dict(feed.options),
                        feed.auth.kind], sort_keys=True, default=str)
    return hashlib.sha256(basis.encode()).hexdigest()[:16]


class SyncWorker:
    """Syncs the configured feeds into one index. Not thread-safe: one event loop."""

    def __init__(
        self,
        settings: Settings,
        index_path: str | Path | None = None,
        *,
        fetcher: Fetcher | None = None,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ) -> None:
        self.settings = settings
        self.index_path = Path(index_path or settings.index)
        self.fetcher = fetcher or Fetcher(retries=settings.sync.retries,
                                          backoff=settings.sync.backoff)
        self.clock = clock
        self.rng = rng or random.Random()
        self.feeds = {f.name: f for f in settings.feeds}
        self.suppressor: Suppressor = load_suppressor(settings.suppress)
        self._open()
        self._db = threading.Lock()   # one connection, used from worker threads in turn
        self._gate: asyncio.Semaphore | None = None
        self._lines: dict[str, line_delta.LineState] = {}
        self._digests: dict[str, tuple[bytes, str]] = {}  # last applied body, per feed
        self._failures: dict[str, int] = {}
        self._running: dict[str, asyncio.Lock] = {}
        self.prepared = False
        self.last_housekeeping: dict[str, Any] = {}

    def _open(self) -> None:
        self.conn = connect(self.index_path)
        self.conn.execute("PRAGMA busy_timeout=30000")  # MDR pushes may wait on a big sync
        self.writer = IndexWriter(self.conn)

    @contextmanager
    def _index(self) -> Iterator[None]:
        """The connection, for one step at a time. If the index file was renamed over since
        it was opened, the old file is let go and the new one opened (or, while another
        process still holds the old file's WAL, IndexUnavailable: the step fails, is retried)."""
        with self._db:
            if self.conn.replaced():
                log.warning("index %s was replaced; opening the new file", self.index_path)
                self.conn.close()
                self._open()
                self.prepared = False  # the config's feeds and exceptions go in again
                self._lines.clear()    # line deltas were against the old file's rows
                self._digests.clear()
            yield

    def close(self) -> None:
        with self._db:
            self.conn.close()

    # -- config into the index ------------------------------------------------------------
    def prepare(self) -> dict[str, Any]:
        """Write the config into the index: feeds, MDR feeds, exceptions; apply the
        suppression lists. Idempotent; returns what changed."""
        with self._index():
            report = {"feeds": self._prepare_feeds(), "exceptions": self._prepare_exceptions()}
            report["suppressed"] = self._suppress_all()
        self.prepared = True
        return report

    def _prepare_feeds(self) -> dict[str, list[str]]:
        rows = {r[0]: r for r in self.conn.execute(
            "SELECT name, module, type, action, position, enabled, match, source FROM feeds")}
        report: dict[str, list[str]] = {"added": [], "changed": [], "disabled": []}
        for feed in self.settings.feeds:
            spec = feed_spec(self.settings, feed)
            old = rows.get(feed.name)
            old_source = _json(old[7]) if old else {}
            feed_id = self.writer.upsert_feed(spec)
            if old is None:
                report["added"].append(feed.name)
            elif old_source.get("fingerprint") != spec.source["fingerprint"]:
                self.writer.set_feed_status(feed_id, etag=None, last_modified=None)
                self._lines.pop(feed.name, None)
                report["changed"].append(feed.name)
        for spec in mdr_feed_specs(self.settings.modules["mdr"].enabled):
            if spec.name in self.feeds:
                continue  # the config defines it
            old = rows.get(spec.name)
            if old is None or bool(old[5]) != spec.enabled:
                keep = spec if old is None else FeedSpec(
                    name=spec.name, module=old[1], type=old[2], action=old[3], position=old[4],
                    enabled=spec.enabled, match=old[6], source=_json(old[7]))
                self.writer.upsert_feed(keep)
        for name, row in rows.items():
            source = _json(row[7])
            if name in self.feeds or not source.get("config") or not row[5]:
                continue
            # gone from the config: stop enforcing it, keep its data for a look
            self.writer.upsert_feed(FeedSpec(
                name=name, module=row[1], type=row[2], action=row[3], position=row[4],
                enabled=False, match=row[6], source=source))
            report["disabled"].append(name)
        return report

    def _prepare_exceptions(self) -> dict[str, int]:
        wanted: dict[tuple[str, str, str], str | None] = {}
        for i, item in enumerate(self.settings.exceptions):
            try:
                if item.scope == "source":
                    key = ("source", "ip", canonical_ip(item.value)[0])
                else:
                    ind = canonicalize(item.value)
                    key = ("destination", ind.kind, stored_value(ind.kind, ind.value))
            except ValueError as exc:
                raise ConfigError(f"exceptions[{i}].value", str(exc)) from None
            wanted[key] = item.comment
        row = self.conn.execute("SELECT value FROM meta WHERE key=?",
                                (CONFIG_EXCEPTIONS_KEY,)).fetchone()
        previous = {tuple(k) for k in _json(row[0] if row else "[]", [])}
        removed = 0
        for scope, kind, value in previous - set(wanted):
            found = self.conn.execute(
                "SELECT id FROM exceptions WHERE scope=? AND kind=? AND value=?"
                " AND feed_id IS NULL", (scope, kind, value)).fetchone()
            if found and self.writer.remove_exception(int(found[0])):
                removed += 1
        for (scope, kind, value), comment in wanted.items():
            self.writer.add_exception(scope, kind, value, comment=comment or "from atr.yaml")
        with transaction(self.conn):
            self.conn.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)",
                              (CONFIG_EXCEPTIONS_KEY, json.dumps(sorted(wanted))))
        return {"configured": len(wanted), "removed": removed}

    # -- suppression ----------------------------------------------------------------------
    def _suppress_all(self) -> int:
        """Re-check every non-MDR indicator against the lists (they may have changed)."""
        if not self.suppressor and not self.conn.execute(
                "SELECT 1 FROM indicators WHERE suppressed_by IS NOT NULL LIMIT 1").fetchone():
            return 0
        rows = self.conn.execute(
            "SELECT i.id, i.kind, i.value, i.match, i.suppressed_by FROM indicators i"
            " JOIN feeds f ON f.id = i.feed_id WHERE f.module != 'mdr'")
        return self._apply_suppression(rows)

    def _suppress_feed(self, feed_id: int, values: Iterable[tuple[str, str]]) -> int:
        """Check a feed's new (kind, stored value) pairs against the suppression lists and
        re-check the ones already suppressed. Returns how many are suppressed now."""
        if not self.suppressor:
            return 0  # prepare() cleared every mark when no list is configured
        if self.conn.execute("SELECT module FROM feeds WHERE id=?",
                             (feed_id,)).fetchone()[0] == "mdr":
            return 0  # an analyst's explicit push is never second-guessed
        rows = []
        for kind, value in values:
            if self.suppressor.check(kind, value, "subtree") is None:
                continue  # not covered even read broadly: no need to look the row up
            rows += self.conn.execute(
                "SELECT id, kind, value, match, suppressed_by FROM indicators"
                " WHERE feed_id=? AND kind=? AND value=?", (feed_id, kind, value))
        rows += self.conn.execute(
            "SELECT id, kind, value, match, suppressed_by FROM indicators"
            " WHERE feed_id=? AND suppressed_by IS NOT NULL", (feed_id,)).fetchall()
        self._apply_suppression(rows)
        return int(self.conn.execute(
            "SELECT COUNT(*) FROM indicators WHERE feed_id=? AND suppressed_by IS NOT NULL",
            (feed_id,)).fetchone()[0])

    def _apply_suppression(self, rows: Iterable[tuple]) -> int:
        changes: dict[int, str | None] = {}
        check = self.suppressor.check
        for ident, kind, value, match, current in rows:
            found = check(kind, value, match) if self.suppressor else None
            if found != current:
                changes[int(ident)] = found
        if changes:
            self.writer.set_suppressed(changes)
            for ident, name in list(changes.items())[:20]:
                if name:
                    log.info("indicator %d suppressed by list %s", ident, name)
        return sum(1 for v in changes.values() if v)

    # -- one feed -------------------------------------------------------------------------
    async def sync_feed(self, name: str) -> SyncOutcome:
        """Fetch, parse and apply one configured feed now; never raises for feed trouble
        (the outcome and the status row say what went wrong)."""
        feed = self.feeds.get(name)
        if feed is None:
            raise AtrError(f"no feed named {name!r} in the config")
        if not feed.url:
            raise AtrError(f"feed {name!r} has no url: it is filled by pushes or imports")
        if not self.prepared:
            await asyncio.to_thread(self.prepare)
        if self._gate is None:
            self._gate = asyncio.Semaphore(self.settings.sync.concurrency)
        lock = self._running.setdefault(name, asyncio.Lock())
        async with lock, self._gate:  # one sync of a feed at a time; bounded fetches overall
            return await self._sync(feed)

    async def _sync(self, feed: FeedSettings) -> SyncOutcome:
        started = time.perf_counter()
        attempt = self.clock()
        state = await asyncio.to_thread(self._feed_row, feed.name)
        outcome = SyncOutcome(feed.name, "error")
        try:
            fetched = await self.fetcher.fetch(
                feed,
                etag=state["etag"],
                last_modified=None if feed.format == "taxii2" else state["last_modified"],
                cursor=state["last_modified"] if feed.format == "taxii2" else None,
            )
        except FetchError as exc:
            outcome.error, outcome.http_status = exc.reason, exc.http_status
        except Exception as exc:  # a bug must not stop the other feeds
            log.exception("feed %s: fetch failed", feed.name)
            outcome.error = f"{type(exc).__name__}: {exc}"
        else:
            outcome.http_status, outcome.bytes = fetched.http_status, fetched.bytes
            digest = None
            if not fetched.not_modified and not fetched.incremental:
                # a server without validators that sends the same bytes again
                digest = (hashlib.sha256(fetched.data).digest(), fingerprint(feed))
            if fetched.not_modified or (digest and self._digests.get(feed.name) == digest):
                outcome.status, outcome.mode = "not_modified", "none"
                outcome.total = state["indicator_count"]
                state["fetched"] = fetched
            else:
                self._digests.pop(feed.name, None)
                try:
                    await asyncio.to_thread(self._apply, feed, state, fetched, outcome)
                except (RejectedFile, AtrError, ValueError) as exc:
                    outcome.status, outcome.error = "error", str(exc)
                except sqlite3.Error as exc:
                    outcome.status, outcome.error = "error", f"index: {exc}"
                except Exception as exc:
                    log.exception("feed %s: apply failed", feed.name)
                    outcome.status, outcome.error = "error", f"{type(exc).__name__}: {exc}"
                if outcome.status == "ok" and digest is not None:
                    self._digests[feed.name] = digest
        outcome.duration = time.perf_counter() - started
        outcome.next_run = self._next_run(feed, outcome.status, attempt)
        await asyncio.to_thread(self._record, feed, state, outcome, attempt)
        level = logging.WARNING if outcome.status in ("error", "held") else logging.INFO
        log.log(level, "%s", outcome.line())
        return outcome

    def _feed_row(self, name: str) -> dict[str, Any]:
        with self._index():
            row = self.conn.execute(
                "SELECT id, etag, last_modified, indicator_count FROM feeds WHERE name=?",
                (name,)).fetchone()
        if row is None:
            raise AtrError(f"feed {name!r} is not in the index (prepare() first)")
        return {"id": row[0], "etag": row[1], "last_modified": row[2],
                "indicator_count": row[3], "fetched": None}

    def _apply(self, feed: FeedSettings, state: dict[str, Any], fetched: Fetched,
               outcome: SyncOutcome) -> None:
        fmt = fetched.format or feed.format
        if fmt == "taxii2":
            fmt = "stix2"
        options = FormatOptions.from_mapping(feed.options, f"feeds.{feed.name}.options")
        source = fetched.url or feed.name
        spec = feed_spec(self.settings, feed)
        state["fetched"] = fetched
        with self._index():
            feed_id = state["id"]
            if fetched.incremental:
                self._apply_incremental(feed, feed_id, fetched, source, outcome)
            else:
                lines = self._lines.get(feed.name)
                key = fingerprint(feed)
                change = None
                if lines is not None and lines.fingerprint == key:
                    change = line_delta.compute(lines, fetched.data, fmt, kind=feed.type,
                                                options=options, source=source)
                if change is not None:
                    self._apply_lines(feed, feed_id, lines, change, fmt, outcome)
                else:
                    self._lines.pop(feed.name, None)
                    self._apply_full(feed, spec, feed_id, fetched, fmt, options, source, key,
                                     outcome)

    def _apply_full(self, feed: FeedSettings, spec: FeedSpec, feed_id: int, fetched: Fetched,
                    fmt: str, options: FormatOptions, source: str, key: str,
                    outcome: SyncOutcome) -> None:
        parsed = parse(fetched.data, fmt, kind=spec.type, options=options, source=source)
        with transaction(self.conn):  # the new set and its suppression marks: one commit
            result = ingest(self.conn, spec, fetched.data, fmt=fmt, options=options,
                            source=source, max_shrink=feed.max_shrink,
                            keep_missing_for=feed.expire_after, parsed=parsed)
            if not result.held:
                suppressed = self._suppress_feed(
                    feed_id, ((i.kind, stored_value(i.kind, i.value))
                              for i in result.parse.indicators))
        parsed = result.parse
        outcome.mode, outcome.format = "full", parsed.format
        outcome.accepted = len(parsed.indicators)
        outcome.rejected = parsed.rejected
        outcome.parsed = outcome.accepted + parsed.rejected
        outcome.rejected_samples = list(parsed.rejected_samples)
        if result.held:
            outcome.status, outcome.error = "held", result.held
            outcome.total = self._count(feed_id)
            return
        diff = result.diff
        outcome.status = "ok"
        outcome.added, outcome.removed, outcome.total = diff.added, diff.removed, diff.total
        outcome.suppressed = suppressed
        state = line_delta.remember(parsed.format, key, fetched.data, parsed, options)
        if state is not None:
            self._lines[feed.name] = state

    def _apply_lines(self, feed: FeedSettings, feed_id: int, lines: line_delta.LineState,
                     change: line_delta.LineDelta, fmt: str, outcome: SyncOutcome) -> None:
        outcome.mode, outcome.format = "delta", fmt
        adds = [(i.kind, stored_value(i.kind, i.value)) for i in change.adds]
        removing = set(change.removes)
        duplicates = 0
        for kind, value in adds:  # already listed by a line that stayed?
            row = self.conn.execute(
                "SELECT expires_at FROM indicators WHERE feed_id=? AND kind=? AND value=?",
                (feed_id, kind, value)).fetchone()
            if row is not None and row[0] is None and (kind, value) not in removing:
                duplicates += 1
        try:
            with transaction(self.conn):  # the delta and its suppression marks: one commit
                diff = self.writer.apply_delta(
                    feed_id, change.adds, change.removes, max_shrink=feed.max_shrink,
                    keep_missing_for=feed.expire_after, default_match=feed.match)
                suppressed = self._suppress_feed(feed_id, adds)
        except ShrinkHeld as held:
            outcome.status, outcome.error = "held", str(held)
            outcome.total = self._count(feed_id)
            self._lines.pop(feed.name, None)
            return
        new_state = line_delta.advance(lines, change, duplicates=duplicates)
        if new_state is None:
            self._lines.pop(feed.name, None)
        else:
            self._lines[feed.name] = new_state
        outcome.status = "ok"
        outcome.added, outcome.removed, outcome.total = diff.added, diff.removed, diff.total
        accepted = new_state.distinct if new_state else diff.total
        rejected = new_state.rejected if new_state else change.parsed_added.rejected
        outcome.accepted, outcome.rejected = accepted, rejected
        outcome.parsed = accepted + rejected
        outcome.rejected_samples = list(new_state.samples if new_state
                                        else change.parsed_added.rejected_samples)
        outcome.suppressed = suppressed

    def _apply_incremental(self, feed: FeedSettings, feed_id: int, fetched: Fetched,
                           source: str, outcome: SyncOutcome) -> None:
        """TAXII objects added since the last fetch: add them, remove the revoked ones."""
        result, _more, _next = parse_taxii_envelope(fetched.data, source=source)
        if feed.type != "auto":
            result.indicators = [i for i in result.indicators if i.kind == feed.type]
        revoked = [(i.kind, i.value) for i in result.revoked]
        with transaction(self.conn):  # the objects and their suppression marks: one commit
            diff = self.writer.apply_delta(feed_id, result.indicators, revoked,
                                           keep_missing_for=feed.expire_after,
                                           default_match=feed.match)
            suppressed = self._suppress_feed(
                feed_id, [(i.kind, stored_value(i.kind, i.value)) for i in result.indicators])
        outcome.status, outcome.mode, outcome.format = "ok", "incremental", "stix2"
        outcome.accepted, outcome.rejected = len(result.indicators), result.rejected
        outcome.parsed = outcome.accepted + result.rejected
        outcome.rejected_samples = list(result.rejected_samples)
        outcome.added, outcome.removed, outcome.total = diff.added, diff.removed, diff.total
        outcome.suppressed = suppressed

    def _count(self, feed_id: int) -> int:
        return int(self.conn.execute("SELECT indicator_count FROM feeds WHERE id=?",
                                     (feed_id,)).fetchone()[0])

    def _next_run(self, feed: FeedSettings, status: str, now: float) -> float:
        if status == "error":
            failures = self._failures[feed.name] = self._failures.get(feed.name, 0) + 1
            delay = min(feed.interval, ERROR_RETRY * 2 ** (failures - 1))
        else:
            self._failures.pop(feed.name, None)
            delay = feed.interval
        spread = self.settings.sync.jitter * delay
        return now + delay + self.rng.uniform(-spread, spread)

    def _record(self, feed: FeedSettings, state: dict[str, Any], outcome: SyncOutcome,
                attempt: float) -> None:
        fields: dict[str, Any] = {
            "status": outcome.status, "last_attempt": attempt,
            "http_status": outcome.http_status, "duration": outcome.duration,
            "last_error": outcome.error, "next_run": outcome.next_run,
        }
        if outcome.status in ("ok", "not_modified"):
            fields["last_success"] = attempt
        if outcome.status in ("ok", "held"):
            fields.update(bytes=outcome.bytes, parsed=outcome.parsed, accepted=outcome.accepted,
                          rejected=outcome.rejected, rejected_samples=outcome.rejected_samples)
        fetched: Fetched | None = state.get("fetched")
        if outcome.status in ("ok", "not_modified") and fetched is not None \
                and not fetched.not_modified:
            # validators only after the body was applied: a held or failed body is
            # fetched again in full next time
            fields["etag"] = fetched.etag
            fields["last_modified"] = (fetched.cursor if feed.format == "taxii2"
                                       else fetched.last_modified)
        with self._index():
            self.writer.set_feed_status(state["id"], **fields)

    # -- many feeds -----------------------------------------------------------------------
    def due_feeds(self, names: Iterable[str] | None = None) -> list[str]:
        if names is not None:
            names = list(names)
            for name in names:
                if name not in self.feeds:
                    raise AtrError(f"no feed named {name!r} in the config"
                                   f" (known: {', '.join(sorted(self.feeds)) or 'none'})")
            return names
        return [f.name for f in self.settings.feeds
                if f.url and f.enabled and self.settings.modules[f.module].enabled]

    async def sync_all(self, names: Iterable[str] | None = None) -> list[SyncOutcome]:
        """Sync the given feeds (default: every enabled feed with a url) once."""
        selected = self.due_feeds(names)
        if not self.prepared:
            await asyncio.to_thread(self.prepare)
        return list(await asyncio.gather(*(self.sync_feed(n) for n in selected)))

    def housekeeping(self) -> dict[str, Any]:
        """Purge expired indicators, prune old change-log entries and old events."""
        now = self.clock()
        keep = self.settings.events
        with self._index():
            purged = self.writer.purge_expired(now)
            pruned = self.writer.prune_changes(now - self.settings.sync.keep_changes)
        with self._index():
            events = self.writer.prune_events(now - keep.keep if keep.keep > 0 else None,
                                              keep.max_rows)
        self.last_housekeeping = {"at": now, "purged": purged, "pruned": pruned,
                                  "events": events}
        if purged or pruned or events:
            log.info("housekeeping: %d expired indicators purged, %d changes and %d events"
                     " pruned", purged, pruned, events)
        return self.last_housekeeping

    async def run(self, stop: asyncio.Event) -> None:
        """Run every feed on its schedule, and housekeeping, until ``stop`` is set."""
        if not self.prepared:
            await asyncio.to_thread(self.prepare)
        tasks = [asyncio.create_task(self._feed_loop(name, stop), name=f"feed:{name}")
                 for name in self.due_feeds()]
        tasks.append(asyncio.create_task(self._housekeeping_loop(stop), name="housekeeping"))
        try:
            await stop.wait()
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _feed_loop(self, name: str, stop: asyncio.Event) -> None:
        feed = self.feeds[name]
        try:
            row = await asyncio.to_thread(self._schedule_row, name)
        except Exception as exc:  # the index unavailable at start: sync soon, and retry
            log.warning("feed %s: cannot read its schedule: %s", name, exc)
            row = None
        now = self.clock()
        if row and row[0] and row[1] and row[1] > now:  # synced before and not due yet
            delay = min(row[1] - now, feed.interval)
        else:
            delay = self.rng.uniform(0, min(START_SPREAD, feed.interval * self.settings.sync.jitter))
        while not await _wait(stop, delay):
            try:
                outcome = await self.sync_feed(name)
            except Exception as exc:  # the index itself failed (full, replaced, locked)
                delay = min(feed.interval, INDEX_RETRY)
                log.warning("feed %s: sync failed, trying again in %.0f s: %s", name, delay,
                            exc)
                continue  # this feed's loop must not end: nothing would restart it
            delay = max(0.0, (outcome.next_run or self.clock() + feed.interval) - self.clock())

    def _schedule_row(self, name: str) -> tuple | None:
        with self._index():
            return self.conn.execute("SELECT last_success, next_run FROM feeds WHERE name=?",
                                     (name,)).fetchone()

    async def _housekeeping_loop(self, stop: asyncio.Event) -> None:
        while not await _wait(stop, self.settings.sync.housekeeping):
            try:
                await asyncio.to_thread(self.housekeeping)
            except Exception as exc:  # the loop must go on: the next round may work
                log.warning("housekeeping failed: %s", exc)


async def _wait(stop: asyncio.Event, seconds: float) -> bool:
    """Sleep ``seconds`` unless ``stop`` is set first; True if stopping."""
    try:
        await asyncio.wait_for(stop.wait(), timeout=max(seconds, 0.0))
    except TimeoutError:
        return stop.is_set()
    return True


def _json(text: str | None, default: Any = None) -> Any:
    try:
        return json.loads(text) if text else ({} if default is None else default)
    except ValueError:
        return {} if default is None else default


# -- status for people -------------------------------------------------------------------
STATUS_COLUMNS = (
    "name", "module", "action", "enabled", "position", "status", "last_attempt",
    "last_success", "http_status", "bytes", "parsed", "accepted", "rejected",
    "rejected_samples", "indicator_count", "duration", "last_error", "next_run", "source",
)


def feed_status(conn: sqlite3.Connection, name: str | None = None) -> list[dict[str, Any]]:
    """Every feed's status row (what ``atr-proxy feeds`` and ``GET /api/v1/feeds`` show),
    with how many of its indicators are suppressed and by which lists."""
    where = " WHERE name=?" if name else ""
    cur = conn.execute(f"SELECT id, {', '.join(STATUS_COLUMNS)} FROM feeds{where}"
                       " ORDER BY CASE module WHEN 'mdr' THEN 0 WHEN 'xops' THEN 1 ELSE 2 END,"
                       " position, name", (name,) if name else ())
    names = [c[0] for c in cur.description]
    rows = [dict(zip(names, r, strict=True)) for r in cur.fetchall()]
    suppressed: dict[int, dict[str, int]] = {}
    for feed_id, list_name, n in conn.execute(
            "SELECT feed_id, suppressed_by, COUNT(*) FROM indicators"
            " WHERE suppressed_by IS NOT NULL GROUP BY feed_id, suppressed_by"):
        suppressed.setdefault(feed_id, {})[list_name] = n
    for row in rows:
        row["enabled"] = bool(row["enabled"])
        row["rejected_samples"] = _json(row["rejected_samples"], [])
        row["source"] = _json(row["source"])
        by_list = suppressed.get(row.pop("id"), {})
        row["suppressed"] = sum(by_list.values())
        row["suppressed_by"] = by_list
    return rows
