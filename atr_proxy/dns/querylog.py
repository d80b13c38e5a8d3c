"""The outermost link: events for every block and monitored hit, and the query log.

Events go through the same writer as the proxy's (``atr_proxy.events.EventWriter``), with
source ``dns`` and traffic type ``dns``; ``emit`` never blocks. The query log
(``dns.query_log``) is one line per query on the ``atr_proxy.dns.queries`` logger:
client, transport, name, type, rcode, where the answer came from, and the time taken.
"""

from __future__ import annotations

import logging
import time
from collections import deque

from dnslib import QTYPE

from ..events import EventWriter, events_for, new_event_id
from .chain import Link, Reply, Request
from .wire import RCODE_NAMES

query_log = logging.getLogger("atr_proxy.dns.queries")
MAX_FOLDED = 16_384


class EventFold:
    """Decides which hits become events. The same hit (client, name, indicators,
    verdict) seen again within ``window`` seconds is folded into the first event: by
    default the window is the sinkhole TTL, so a client that asks again while it should
    still hold the sinkhole answer (a retry, a stub resolver without a cache, a beaconing
    loop) does not write a new event for each query. The sinkhole answer's EDE then names
    the first event's id. ``window`` 0 writes an event for every query."""

    def __init__(self, window: float, clock=time.monotonic) -> None:  # type: ignore[no-untyped-def]
        self.window = window
        self.clock = clock
        self._seen: dict[tuple, tuple[float, str | None]] = {}
        # (time, key) in the order noted: entries leave when their window has passed, so the
        # fold holds only the hits of the last ``window`` seconds (a flood of new names
        # no longer fills it up to MAX_FOLDED and keeps it there)
        self._order: deque[tuple[float, tuple]] = deque()
        self.folded = 0

    def note(self, request: Request, verdict, dest_ip: str | None = None) -> str | None:  # type: ignore[no-untyped-def]
        """Record a verdict with hits on the request; returns the block's event id."""
        if self.window <= 0:
            event_id = new_event_id() if verdict.blocked else None
            request.findings.append((verdict, dest_ip, event_id, True))
            return event_id
        key = (request.client, request.query.qname, verdict.action,
               tuple(h.indicator_id for h in verdict.hits), dest_ip)
        now = self.clock()
        seen = self._seen.get(key)
        if seen is not None and now - seen[0] < self.window:
            self.folded += 1
            request.findings.append((verdict, dest_ip, seen[1], False))
            return seen[1]
        event_id = new_event_id() if verdict.blocked else None
        self._expire(now)
        self._seen[key] = (now, event_id)
        self._order.append((now, key))
        request.findings.append((verdict, dest_ip, event_id, True))
        return event_id

    def _expire(self, now: float) -> None:
        order, seen = self._order, self._seen
        while order and (now - order[0][0] >= self.window or len(order) >= MAX_FOLDED):
            at, key = order.popleft()
            entry = seen.get(key)
            if entry is not None and entry[0] == at:  # not noted again since
                del seen[key]


def qtype_name(qtype: int) -> str:
    try:
        return QTYPE[qtype]
    except Exception:  # dnslib raises its own error for unknown codes
        return f"TYPE{qtype}"


class QueryLog(Link):
    """Reports what the rest of the chain decided."""

    def __init__(self, events: EventWriter | None, *, log_queries: bool = False,
                 next: Link | None = None) -> None:
        super().__init__(next)
        self.events = events
        self.log_queries = log_queries
        self._details: dict[tuple, str] = {}

    async def resolve(self, request: Request) -> Reply:
        reply = await self.next.resolve(request)
        if request.findings and self.events is not None:
            self._emit(request, reply)
        if self.log_queries:
            self._log(request, reply)
        return reply

    def _emit(self, request: Request, reply: Reply) -> None:
        q = request.query
        key = (q.qtype, request.transport, reply.source, reply.detail)
        detail = self._details.get(key)
        if detail is None:  # one string per kind of outcome, shared by all its events
            detail = self._details[key] = (
                f"{qtype_name(q.qtype)} query over {request.transport}: " + (
                    f"answered from {reply.source}" if reply.source != "sinkhole"
                    else reply.detail))
            if len(self._details) > 1024:
                self._details.clear()
        out = []
        for verdict, dest_ip, event_id, report in request.findings:
            if not report:
                continue
            out += events_for(verdict, source="dns", traffic="dns", client_ip=request.client,
                              dest_host=q.qname or ".", dest_ip=dest_ip, detail=detail,
                              event_id=event_id)
        if out:
            self.events.emit(out)

    def _log(self, request: Request, reply: Reply) -> None:
        q = request.query
        took = (time.perf_counter() - request.started) * 1000 if request.started else 0.0
        verdicts = ",".join(f[0].action for f in request.findings) or "allow"
        query_log.info("%s %s %s %s -> %s from %s%s %s %.1f ms", request.client,
                       request.transport, q.qname or ".", qtype_name(q.qtype),
                       RCODE_NAMES.get(reply.rcode, str(reply.rcode)), reply.source,
                       f" ({reply.detail})" if reply.detail else "", verdicts, took)
