"""The answer cache: upstream answers only, TTL-respecting, bounded, negative per RFC 2308.

An entry keeps the upstream reply after its question, without the OPT record, plus where
each TTL sits, so a hit is rebuilt in a few microseconds: the client's id, flags and own
question bytes, the stored records with their TTLs counted down, and our own OPT record
when the client spoke EDNS. Compression pointers stay valid because the question has the
same length whatever its case.

Keyed by (name, type, class, CD, DO). Not cached: SERVFAIL and other errors, truncated
replies, answers without a TTL, referrals, and negative answers without an SOA (RFC 2308
section 5). TTLs are capped (a day; three hours for negative answers).
"""

from __future__ import annotations

import asyncio
import struct
import time
from collections import OrderedDict
from collections.abc import Callable

from .chain import Link, Reply, Request
from .wire import AD, CD, NOERROR, NXDOMAIN, QR, RA, RD, Query, Scan, opt_record

MAX_TTL = 86_400
MAX_NEGATIVE_TTL = 10_800
_pack_header = struct.Struct("!HHHHHH").pack
_pack_ttl = struct.Struct("!I").pack_into
_read_ttl = struct.Struct("!I").unpack_from


class Entry:
    """One cached upstream answer, kept small: there are ``dns.cache_size`` of them."""

    __slots__ = ("stored", "expires", "flags", "an", "ns", "ar", "body", "ttls", "names",
                 "addrs", "clean")

    def __init__(self, stored: float, expires: float, flags: int, an: int, ns: int, ar: int,
                 body: bytes, ttls: tuple[int, ...], names: tuple[str, ...],
                 addrs: tuple[tuple[int, int], ...]) -> None:
        self.stored = stored
        self.expires = expires
        self.flags = flags          # the upstream's AD bit and rcode
        self.an, self.ns, self.ar = an, ns, ar  # record counts (additional without OPT)
        self.body = body            # the records after the question, OPT removed
        self.ttls = ttls            # offset in body, original TTL, offset, TTL, ...
        self.names = names          # what answer inspection looks at (as in a Scan)
        self.addrs = addrs
        self.clean: tuple[int, float] | None = None  # snapshot it was found clean under

    @property
    def rcode(self) -> int:
        return self.flags & 0xF

    def reply_for(self, query: Query, now: float) -> bytes:
        body = self.body
        age = int(now - self.stored)
        ttls = self.ttls
        if age > 0 and ttls:
            counted = bytearray(body)
            for i in range(0, len(ttls), 2):
                ttl = ttls[i + 1]
                _pack_ttl(counted, ttls[i], ttl - age if ttl > age else 0)
            body = bytes(counted)
        flags = QR | RA | (query.flags & (RD | CD)) | self.flags
        if query.edns:
            return (_pack_header(query.id, flags, 1, self.an, self.ns, self.ar + 1)
                    + query.data[12:query.qend] + body + opt_record(query))
        return (_pack_header(query.id, flags, 1, self.an, self.ns, self.ar)
                + query.data[12:query.qend] + body)


def cache_ttl(scan: Scan) -> int:
    """How long an upstream answer may be cached (0: not at all)."""
    if scan.truncated or (scan.opt is not None and not scan.opt_last):
        return 0
    _, ancount, _, _ = scan.counts
    if scan.rcode == NOERROR and ancount:
        return min(scan.min_ttl or 0, MAX_TTL)
    if scan.rcode in (NOERROR, NXDOMAIN) and not ancount and scan.negative_ttl is not None:
        return min(scan.negative_ttl, MAX_NEGATIVE_TTL)
    return 0


_NONE: tuple = ()


def make_entry(data: bytes, scan: Scan, now: float, ttl: int) -> Entry:
    qend = scan.qend
    end = scan.opt[0] if scan.opt is not None else len(data)
    ttls: list[int] = []
    for off in scan.ttl_offsets:
        if off < end:
            ttls += (off - qend, _read_ttl(data, off)[0] & 0x7FFFFFFF)
    _, an, ns, ar = scan.counts
    return Entry(now, now + ttl, scan.flags & (AD | 0xF), an, ns, ar - (scan.opt is not None),
                 data[qend:end], tuple(ttls), tuple(scan.names) or _NONE,
                 tuple(scan.addrs) or _NONE)


class Cache(Link):
    """Answers repeated queries from memory and folds identical queries in flight."""

    def __init__(self, size: int, next: Link | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(next)
        self.size = size
        self.clock = clock
        self.entries: OrderedDict[tuple, Entry] = OrderedDict()
        self._inflight: dict[tuple, list[asyncio.Future[Reply]]] = {}  # followers
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self.entries)

    def clear(self) -> None:
        self.entries.clear()

    async def resolve(self, request: Request) -> Reply:
        q = request.query
        key = (q.qname, q.qtype, q.qclass, q.flags & CD, q.do)
        entries = self.entries
        entry = entries.get(key)
        if entry is not None:
            now = self.clock()
            if now < entry.expires:
                entries.move_to_end(key)
                self.hits += 1
                return Reply(entry.reply_for(q, now), entry.flags & 0xF, "cache", scan=entry,
                             entry=entry)
            del entries[key]
        self.misses += 1
        flight = key + (q.edns,)
        waiting = self._inflight.get(flight)
        if waiting is not None:  # the same question is already upstream: wait for it
            future: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
            waiting.append(future)
            return self._follow(q, key, await future)
        waiting = self._inflight[flight] = []
        try:
            reply = await self.next.resolve(request)
            if reply.source == "upstream" and reply.scan is not None and self.size > 0:
                ttl = cache_ttl(reply.scan)
                if ttl > 0:
                    reply.entry = self._store(key, reply.wire, reply.scan, ttl)
        except asyncio.CancelledError:
            for future in waiting:
                future.cancel()
            raise
        except Exception as exc:
            for future in waiting:
                if not future.done():
                    future.set_exception(exc)
            raise
        finally:
            del self._inflight[flight]
        for future in waiting:
            if not future.done():
                future.set_result(reply)
        return reply

    def _follow(self, q: Query, key: tuple, reply: Reply) -> Reply:
        """A query that waited for an identical one: same answer, its own id/question."""
        entry = self.entries.get(key)
        if entry is not None and reply.entry is entry:
            return Reply(entry.reply_for(q, self.clock()), entry.rcode, "cache",
                         scan=entry, entry=entry)
        wire = reply.wire
        qend = q.qend
        return Reply(q.data[:2] + wire[2:12] + q.data[12:qend] + wire[qend:], reply.rcode,
                     reply.source, scan=reply.scan, entry=reply.entry, detail=reply.detail)

    def _store(self, key: tuple, data: bytes, scan: Scan, ttl: int) -> Entry:
        entry = make_entry(data, scan, self.clock(), ttl)
        entries = self.entries
        entries[key] = entry
        entries.move_to_end(key)
        while len(entries) > self.size:
            entries.popitem(last=False)
        return entry
