"""The links that enforce the index, and the sinkhole answer they give.

Each checking link only adapts: it asks the snapshot for hits, turns them into a verdict
with :func:`atr_proxy.policy.decide` (exceptions, module order, monitor vs block) and
notes the verdict on the request for the query log's events. A block stops the chain
with the sinkhole answer; a monitor lets the real answer through.
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Iterable
from typing import TYPE_CHECKING

from ..policy import Verdict, decide
from .chain import Link, Reply, Request
from .querylog import EventFold
from .wire import (
    AAAA,
    EDE_BLOCKED,
    EDE_NOT_READY,
    NOERROR,
    NXDOMAIN,
    REFUSED,
    SERVFAIL,
    SOA,
    A,
    build_reply,
    encode_name,
    rr_at_question,
)

if TYPE_CHECKING:
    from ..events import EventWriter
    from ..index.watch import SnapshotWatcher
    from ..matcher import Hit

SINKHOLE_MODES = ("nxdomain", "nodata", "null", "address", "refused")
SOA_MNAME = encode_name("sinkhole.atr-proxy.invalid")
SOA_RNAME = encode_name("hostmaster.atr-proxy.invalid")
MAX_MEMO = 20_000  # names whose look-up is remembered per snapshot
_TARGET_WORDS = {"host": "name", "cname": "name in the answer", "answer": "answer address",
                 "client": "client address"}


def address_text(addr: tuple[int, int]) -> str:
    version, value = addr
    if version == 4:
        return str(ipaddress.IPv4Address(value))
    return str(ipaddress.IPv6Address(value))


class Sinkhole:
    """Builds the answer for a blocked query (``dns.sinkhole``, ``dns.sinkhole_ttl``,
    ``dns.sinkhole_address``)."""

    def __init__(self, mode: str = "nxdomain", ttl: int = 60,
                 addresses: Iterable[str] = ()) -> None:
        if mode not in SINKHOLE_MODES:
            raise ValueError(f"sinkhole mode {mode!r} is not one of {', '.join(SINKHOLE_MODES)}")
        self.mode = mode
        self.ttl = ttl
        self.v4: list[bytes] = []
        self.v6: list[bytes] = []
        for text in addresses:
            addr = ipaddress.ip_address(text)  # ValueError names the bad address
            (self.v4 if addr.version == 4 else self.v6).append(addr.packed)
        if mode == "null":
            self.v4, self.v6 = [bytes(4)], [bytes(16)]
        self._soa: tuple[int, bytes] = (-1, b"")
        if mode == "address" and not (self.v4 or self.v6):
            raise ValueError("sinkhole mode 'address' needs at least one address")

    def soa(self, serial: int) -> bytes:
        """The SOA for a negative sinkhole answer: its minimum (and TTL) is the sinkhole
        TTL, so resolvers behind us cache the block no longer than that (RFC 2308)."""
        if serial == self._soa[0]:
            return self._soa[1]
        ttl = self.ttl
        rdata = SOA_MNAME + SOA_RNAME + struct.pack("!IIIII", serial & 0xFFFFFFFF, 3600, 600,
                                                    86400, ttl)
        record = rr_at_question(SOA, ttl, rdata)
        self._soa = (serial, record)
        return record

    def reply(self, request: Request, hit: Hit, event_id: str) -> Reply:
        q = request.query
        what = _TARGET_WORDS.get(hit.target, hit.target)
        text = (f"blocked: {hit.kind} {hit.indicator} (feed {hit.feed.name}, on the {what});"
                f" event {event_id}")
        ede = (EDE_BLOCKED, text)
        mode = self.mode
        detail = f"sinkhole {mode}"
        if mode == "refused":
            return Reply(build_reply(q, REFUSED, ede=ede), REFUSED, "sinkhole", detail=detail)
        if mode in ("null", "address") and (q.qtype == A or q.qtype == AAAA):
            addrs = self.v4 if q.qtype == A else self.v6
            if addrs:
                records = b"".join(rr_at_question(q.qtype, self.ttl, a) for a in addrs)
                return Reply(build_reply(q, NOERROR, records, len(addrs), ede=ede), NOERROR,
                             "sinkhole", detail=detail)
        rcode = NXDOMAIN if mode == "nxdomain" else NOERROR
        serial = request.snap.generation if request.snap is not None else 1
        return Reply(build_reply(q, rcode, authority=self.soa(serial), nscount=1, ede=ede),
                     rcode, "sinkhole", detail=detail)


def enforce(sinkhole: Sinkhole, fold: EventFold, request: Request, verdict: Verdict,
            dest_ip: str | None = None) -> Reply | None:
    """Record a verdict's hits on the request and, if it blocks, the sinkhole reply; None
    means the query goes on."""
    if not verdict.hits:
        return None
    event_id = fold.note(request, verdict, dest_ip)
    return sinkhole.reply(request, verdict.decisive, event_id) if verdict.blocked else None


class IndexGate(Link):
    """Fixes the snapshot a query is checked against, and counts the query as checked
    (``EventWriter.count_check``). Until the first snapshot is loaded nothing is
    forwarded unchecked: SERVFAIL with EDE "Not Ready"."""

    def __init__(self, watcher: SnapshotWatcher, next: Link | None = None,
                 events: EventWriter | None = None) -> None:
        super().__init__(next)
        self.watcher = watcher
        # every query past this gate is checked: counted for atr_checks_total
        self._count = events.count_check if events is not None else None

    async def resolve(self, request: Request) -> Reply:
        watcher = self.watcher
        if not watcher.loaded:
            return Reply(build_reply(request.query, SERVFAIL,
                                     ede=(EDE_NOT_READY, "loading the indicator index")),
                         SERVFAIL, "servfail", detail="index not loaded yet")
        request.snap = watcher.snapshot
        if self._count is not None:
            self._count("dns", "dns")
        return await self.next.resolve(request)


class EnforcingLink(Link):
    """A link that sinkholes what its verdict blocks (and records every hit)."""

    def __init__(self, sinkhole: Sinkhole, fold: EventFold,
                 next: Link | None = None) -> None:
        super().__init__(next)
        self.sinkhole = sinkhole
        self.fold = fold


class ClientIndicator(EnforcingLink):
    """The client's own address against IP indicators (a known-bad host on the LAN)."""

    async def resolve(self, request: Request) -> Reply:
        snap = request.snap
        if request.client_key is not None and (snap.ip4.ids or snap.ip6.ids):
            hits = snap.match_ip(request.client_key, "client")
            if hits:
                verdict = decide(hits, snap.exceptions, client=request.client,
                                 host=request.query.qname)
                blocked = enforce(self.sinkhole, self.fold, request, verdict)
                if blocked is not None:
                    return blocked
        return await self.next.resolve(request)


class NamePolicy(EnforcingLink):
    """The query name against domain indicators (the name itself and its parents).

    What the snapshot says of a name (its hits, or none) is remembered for as long as
    that snapshot is current: names are asked again and again, and a hit is confirmed
    against the index once rather than at every query. A new snapshot starts afresh, so
    a committed change is enforced from its first query on."""

    def __init__(self, sinkhole: Sinkhole, fold: EventFold,
                 next: Link | None = None) -> None:
        super().__init__(sinkhole, fold, next)
        self._memo: dict[str, list[Hit] | tuple[()]] = {}
        self._memo_snap = None

    async def resolve(self, request: Request) -> Reply:
        name = request.query.qname
        if name:
            snap = request.snap
            if snap is not self._memo_snap:  # a new snapshot: forget what the old one said
                self._memo, self._memo_snap = {}, snap
            hits = self._memo.get(name)
            if hits is None:
                hits = snap.match_name(name, "host")
                if len(self._memo) >= MAX_MEMO:
                    self._memo.clear()  # cheap, and the names still asked come back
                self._memo[name] = hits or ()  # one shared empty tuple for all misses
            if hits:
                verdict = decide(hits, snap.exceptions, client=request.client, host=name)
                blocked = enforce(self.sinkhole, self.fold, request, verdict)
                if blocked is not None:
                    return blocked
        return await self.next.resolve(request)


class AnswerInspection(EnforcingLink):
    """Every name in the answer's CNAME/DNAME chain and every HTTPS/SVCB target against
    domain indicators; every A/AAAA address and HTTPS/SVCB ipv4hint/ipv6hint against IP
    indicators. Runs on fresh and cached answers alike; a cached answer found clean under
    the current snapshot is not looked at again until the snapshot changes."""

    async def resolve(self, request: Request) -> Reply:
        reply = await self.next.resolve(request)
        scan = reply.scan
        if scan is None or not (scan.names or scan.addrs):
            return reply
        snap = request.snap
        stamp = (snap.generation, snap.built_at)
        entry = reply.entry
        if entry is not None and entry.clean == stamp:
            return reply
        name_hits: list[Hit] = []
        for name in scan.names:
            name_hits += snap.match_name(name, "cname")
        addr_hits = []
        if snap.ip4.ids or snap.ip6.ids:
            for addr in scan.addrs:
                hits = snap.match_ip(addr, "answer")
                if hits:
                    addr_hits.append((address_text(addr), hits))
        if not name_hits and not addr_hits:
            if entry is not None:
                entry.clean = stamp
            return reply
        client, qname, exceptions = request.client, request.query.qname, snap.exceptions
        if name_hits:
            verdict = decide(name_hits, exceptions, client=client, host=qname,
                             extra_hosts=scan.names)
            blocked = enforce(self.sinkhole, self.fold, request, verdict)
            if blocked is not None:
                return blocked
        for text, hits in addr_hits:
            verdict = decide(hits, exceptions, client=client, host=qname, dest_ip=text,
                             extra_hosts=scan.names)
            blocked = enforce(self.sinkhole, self.fold, request, verdict, text)
            if blocked is not None:
                return blocked
        return reply
