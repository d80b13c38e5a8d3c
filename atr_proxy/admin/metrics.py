"""Prometheus ``/metrics`` of the admin app (prometheus-client, text format).

Design: the index is the one place every process writes to, so the metrics are read from
it at scrape time, by the worker process that serves the admin API; the proxy and the DNS
resolver need no endpoint of their own.

- feeds (``feeds`` table): indicators per feed, module and kind; enabled; last sync
  duration, success time and whether the last sync worked; sync attempts and failures,
  counted as the scrapes see ``last_attempt`` move (several syncs of one feed between two
  scrapes count once; at the default 15 s scrape interval and minute-long retry back-off
  that does not happen);
- verdicts (``events`` table): blocks and monitored hits by source (proxy, dns, admin),
  traffic type, module and feed, counted incrementally by event id. These are the hits;
  requests and queries that hit nothing make no event and are counted as checks only.
  The DNS resolver folds repeats of one hit within ``dns.event_window``, and so do these
  counters;
- checks (``counters`` table): requests and CONNECTs the proxy checked and queries the
  resolver checked, hit or not, by source and traffic type; each process's event writer
  adds to them at most every flush interval, so they trail by up to a quarter second;
- the index generation, and this process's snapshot: generation, indicators, last reload
  duration, age and lag behind the index (the proxy and DNS keep their own snapshots of the
  same generations a few hundred milliseconds later);
- the admin process's event writer: written and dropped events.

Every metric is prefixed ``atr_``. No client address is ever a label.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    Metric,
    SummaryMetricFamily,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

OK_STATUSES = ("ok", "not_modified")
VERDICT_LABELS = ("source", "traffic", "verdict", "module", "feed")


class IndexCollector:
    """Reads the metrics from the index at each scrape (a prometheus-client collector)."""

    def __init__(self, ctx: Any) -> None:
        self.ctx = ctx
        self._lock = threading.Lock()          # one scrape at a time: counters are state
        self._last_event = 0
        self._verdicts: dict[tuple[str, ...], int] = {}
        self._system: dict[str, int] = {}
        self._seen_attempt: dict[str, float] = {}
        self._attempts: dict[tuple[str, str], int] = {}
        self._failures: dict[str, int] = {}
        self._sync_seconds: dict[str, float] = {}

    def describe(self) -> list[Metric]:
        return []  # computed at scrape time; nothing to check at registration

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            conn = self.ctx.db()
            yield from self._feeds(conn)
            yield from self._verdict_metrics(conn)
            yield from self._snapshot(conn)

    # -- feeds -----------------------------------------------------------------------------
    def _feeds(self, conn: sqlite3.Connection) -> Iterator[Metric]:
        indicators = GaugeMetricFamily(
            "atr_indicators", "Indicators stored per feed, module and kind (enforced when"
            " the feed is enabled).", labels=["feed", "module", "kind"])
        enabled = GaugeMetricFamily("atr_feed_enabled", "1 if the feed is enforced.",
                                    labels=["feed", "module"])
        up = GaugeMetricFamily("atr_feed_sync_ok", "1 if the feed's last sync worked (or"
                               " found it unchanged), 0 if it failed or was held back.",
                               labels=["feed", "module"])
        duration = GaugeMetricFamily("atr_feed_last_sync_duration_seconds",
                                     "How long the feed's last sync took.",
                                     labels=["feed", "module"])
        success = GaugeMetricFamily("atr_feed_last_success_timestamp_seconds",
                                    "Unix time of the feed's last successful sync.",
                                    labels=["feed", "module"])
        rows = conn.execute(
            "SELECT name, module, enabled, domain_count, url_count, ip_count, status,"
            " last_attempt, last_success, duration FROM feeds ORDER BY name").fetchall()
        for (name, module, on, domains, urls, ips, status, attempt, last_ok,
             seconds) in rows:
            for kind, n in (("domain", domains), ("url", urls), ("ip", ips)):
                indicators.add_metric([name, module, kind], n or 0)
            enabled.add_metric([name, module], 1 if on else 0)
            if attempt is None:
                continue  # never synced (MDR feeds, imports): no sync metrics
            up.add_metric([name, module], 1 if status in OK_STATUSES else 0)
            if seconds is not None:
                duration.add_metric([name, module], float(seconds))
            if last_ok is not None:
                success.add_metric([name, module], float(last_ok))
            if name not in self._seen_attempt:
                self._seen_attempt[name] = attempt  # before our time: not counted
            elif attempt != self._seen_attempt[name]:
                self._seen_attempt[name] = attempt
                key = (name, status)
                self._attempts[key] = self._attempts.get(key, 0) + 1
                if status not in OK_STATUSES:
                    self._failures[name] = self._failures.get(name, 0) + 1
                self._sync_seconds[name] = self._sync_seconds.get(name, 0.0) + float(
                    seconds or 0.0)
        attempts = CounterMetricFamily("atr_feed_sync_attempts", "Feed syncs seen, by"
                                       " outcome (ok, not_modified, error, held).",
                                       labels=["feed", "status"])
        for (name, status), n in sorted(self._attempts.items()):
            attempts.add_metric([name, status], n)
        failures = CounterMetricFamily("atr_feed_sync_failures",
                                       "Feed syncs seen that failed or were held back.",
                                       labels=["feed"])
        for name in sorted(self._seen_attempt):
            failures.add_metric([name], self._failures.get(name, 0))
        spent = SummaryMetricFamily("atr_feed_sync_duration_seconds",
                                    "Time spent in the feed syncs seen.", labels=["feed"])
        for name in sorted(self._seen_attempt):
            spent.add_metric([name], count_value=sum(
                n for (f, _), n in self._attempts.items() if f == name),
                sum_value=self._sync_seconds.get(name, 0.0))
        yield from (indicators, enabled, up, duration, success, attempts, failures, spent)

    # -- verdicts --------------------------------------------------------------------------
    def _verdict_metrics(self, conn: sqlite3.Connection) -> Iterator[Metric]:
        top = conn.execute("SELECT IFNULL(MAX(id), 0) FROM events").fetchone()[0]
        if top < self._last_event:  # the index was replaced: start over
            self._last_event, self._verdicts, self._system = 0, {}, {}
        if top > self._last_event:
            for source, traffic, verdict, module, feed, n in conn.execute(
                    "SELECT source, traffic, verdict, module, feed, COUNT(*) FROM events"
                    " WHERE id > ? AND id <= ? GROUP BY 1, 2, 3, 4, 5",
                    (self._last_event, top)):
                if module is None:  # a record of our own service, not a hit
                    self._system[source] = self._system.get(source, 0) + n
                    continue
                key = (source, traffic, verdict, module, feed or "")
                self._verdicts[key] = self._verdicts.get(key, 0) + n
            self._last_event = top
        verdicts = CounterMetricFamily(
            "atr_verdicts", "Blocks and monitored hits by source (proxy, dns, admin),"
            " traffic type, verdict, module and feed (from the events table).",
            labels=list(VERDICT_LABELS))
        for key, n in sorted(self._verdicts.items()):
            verdicts.add_metric(list(key), n)
        system = CounterMetricFamily("atr_system_events", "Records of atr-proxy itself"
                                     " (for example a restarted child process).",
                                     labels=["source"])
        for source, n in sorted(self._system.items()):
            system.add_metric([source], n)
        checks = CounterMetricFamily(
            "atr_checks", "Requests and CONNECTs the proxy checked (traffic forwarded or"
            " system) and queries the DNS resolver checked (dns), hit or not.",
            labels=["source", "traffic"])
        try:
            rows = conn.execute("SELECT source, traffic, SUM(value) FROM counters"
                                " WHERE name = 'checks' GROUP BY 1, 2 ORDER BY 1, 2").fetchall()
        except sqlite3.OperationalError:
            rows = []  # an index of schema 1 opened read-only: no counters table yet
        for source, traffic, n in rows:
            checks.add_metric([source or "", traffic or ""], n or 0)
        yield from (verdicts, system, checks)

    # -- index and snapshot ----------------------------------------------------------------
    def _snapshot(self, conn: sqlite3.Connection) -> Iterator[Metric]:
        from ..index import reader

        generation = reader.generation(conn)
        yield GaugeMetricFamily("atr_index_generation", "The index generation (newest"
                                " change-log sequence).", value=generation)
        watcher = self.ctx.watcher
        snap = watcher.snapshot
        labels = ["process"]
        for name, text, value in (
            ("atr_snapshot_generation", "The generation of this process's snapshot.",
             snap.generation),
            ("atr_snapshot_indicators", "Indicators in this process's snapshot.",
             snap.count()),
            ("atr_snapshot_lag_generations", "How many generations the snapshot is behind"
             " the index.", max(0, generation - snap.generation)),
            ("atr_snapshot_reload_seconds", "How long the last snapshot build or patch"
             " took.", float(getattr(watcher, "last_reload_seconds", 0.0))),
            ("atr_snapshot_age_seconds", "Seconds since the snapshot was last swapped in.",
             time.time() - watcher.last_swap_at if getattr(watcher, "last_swap_at", 0)
             else 0.0),
            ("atr_index_unreadable", "1 if the index could not be read at the last poll.",
             1 if watcher.last_error else 0),
        ):
            family = GaugeMetricFamily(name, text, labels=labels)
            family.add_metric(["admin"], value)
            yield family
        events = self.ctx.events
        if events is not None:
            for name, text, value in (
                ("atr_events_written", "Events written by this process.", events.written),
                ("atr_events_dropped", "Events this process could not write.",
                 events.dropped),
            ):
                family = CounterMetricFamily(name, text, labels=labels)
                family.add_metric(["admin"], value)
                yield family


def registry_for(app: Any) -> CollectorRegistry:
    """The app's own registry (not the process-global one: tests run several apps)."""
    registry = getattr(app.state, "atr_metrics", None)
    if registry is None:
        registry = CollectorRegistry(auto_describe=False)
        registry.register(IndexCollector(app.state.atr))
        app.state.atr_metrics = registry
    return registry


async def metrics(request: Request) -> Response:
    registry = registry_for(request.app)
    try:
        body = await run_in_threadpool(generate_latest, registry)
    except sqlite3.Error as exc:
        return Response(f"# the index is unavailable: {exc}\n", status_code=503,
                        media_type="text/plain")
    return Response(body, media_type=CONTENT_TYPE_LATEST)


def metrics_routes() -> list[BaseRoute]:
    return [Route("/metrics", metrics, methods=["GET"])]
