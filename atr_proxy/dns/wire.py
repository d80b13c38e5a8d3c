"""The DNS wire format on the hot path: read a query, scan a reply, build an answer.

What is parsed, and when (the rest of ``atr_proxy.dns`` relies on this):

* **Every client query** is read by :func:`parse_query`: the header, the one question and
  an optional OPT record, nothing else. A query with anything else (zero or several
  questions, answer or authority records, a second additional record, compression in the
  question, trailing bytes) is a FORMERR; another opcode or a zone transfer is NOTIMP; a
  response (QR set) or a packet shorter than a header is dropped. The question bytes are
  kept verbatim, so every answer echoes the client's own spelling (0x20 case
  randomisation survives).
* **Every upstream reply** is walked once by :func:`scan_reply`: each record's type,
  class, TTL position and RDATA span, and it decodes only what answer inspection and the
  cache need: CNAME/DNAME targets, A/AAAA addresses, HTTPS/SVCB target names and
  ipv4hint/ipv6hint, the SOA minimum for negative caching, and where the OPT record is.
  The reply bytes themselves are relayed with only the id rewritten.
* **Answers we make** (sinkhole, errors, replies rebuilt from the cache) are packed here
  from the question bytes plus a few fixed records.

dnslib parses a whole message into objects (about 30 µs for a two-record reply, 12 µs for
a query, 15 µs to pack one: measured here), which is the whole per-query budget of a
resolver that should answer tens of thousands of queries a second. dnslib remains the
reference: the tests build messages with dnslib and check that this module reads them the
same way, and the test authoritative server is written with it.
"""

from __future__ import annotations

import struct

# header flags
QR, AA, TC, RD, RA, AD, CD = 0x8000, 0x0400, 0x0200, 0x0100, 0x0080, 0x0020, 0x0010
OPCODE_MASK = 0x7800
# response codes (BADVERS is an extended rcode: 16 = OPT ext-rcode 1, header rcode 0)
NOERROR, FORMERR, SERVFAIL, NXDOMAIN, NOTIMP, REFUSED, BADVERS = 0, 1, 2, 3, 4, 5, 16
RCODE_NAMES = {0: "NOERROR", 1: "FORMERR", 2: "SERVFAIL", 3: "NXDOMAIN", 4: "NOTIMP",
               5: "REFUSED", 16: "BADVERS"}
# record types
A, NS, CNAME, SOA, AAAA, DNAME, OPT, SVCB, HTTPS = 1, 2, 5, 6, 28, 39, 41, 64, 65
IXFR, AXFR = 251, 252
CLASS_IN = 1
# EDNS options and Extended DNS Error codes (RFC 8914)
EDE_OPTION = 15
EDE_BLOCKED, EDE_PROHIBITED, EDE_NOT_READY = 15, 18, 14
EDE_NO_REACHABLE_AUTHORITY, EDE_NETWORK_ERROR = 22, 23
EDE_OTHER = 0

HEADER = struct.Struct("!HHHHHH")
RR_FIXED = struct.Struct("!HHIH")  # type, class, ttl, rdlength
MAX_NAME = 255
MAX_POINTER_HOPS = 64
OUR_UDP_SIZE = 1232  # what we advertise and the most we send by UDP (DNS flag day 2020)
MIN_UDP_SIZE = 512

_pack_header = HEADER.pack
_unpack_header = HEADER.unpack_from
_unpack_rr = RR_FIXED.unpack_from
_u16 = struct.Struct("!H")
_unpack_u16 = _u16.unpack_from
_pack_u16 = _u16.pack


class Drop(Exception):
    """Not worth an answer: too short to have a header, or not a query."""


class BadQuery(Exception):
    """A query we answer with an error ``rcode``; ``query`` is set when the question
    itself was readable (so the error can echo it)."""

    def __init__(self, rcode: int, reason: str, query: Query | None = None,
                 header: tuple[int, int] | None = None) -> None:
        super().__init__(reason)
        self.rcode = rcode
        self.reason = reason
        self.query = query
        self.header = header  # (id, flags) for an error without a question


class WireError(ValueError):
    """A reply that does not parse."""


class Query:
    """One client query as :func:`parse_query` read it."""

    __slots__ = ("data", "id", "flags", "qname", "qtype", "qclass", "qend", "edns",
                 "udp_size", "do", "edns_version")

    def __init__(self, data: bytes, ident: int, flags: int, qname: str, qtype: int,
                 qclass: int, qend: int) -> None:
        self.data = data
        self.id = ident
        self.flags = flags
        self.qname = qname        # lower case, no trailing dot ("" for the root)
        self.qtype = qtype
        self.qclass = qclass
        self.qend = qend          # offset just past the question
        self.edns = False
        self.udp_size = MIN_UDP_SIZE
        self.do = False
        self.edns_version = 0

    @property
    def question(self) -> bytes:
        """The question section as the client wrote it."""
        return self.data[12:self.qend]

    @property
    def max_udp(self) -> int:
        """The largest reply the client takes over UDP."""
        if not self.edns:
            return MIN_UDP_SIZE
        return max(MIN_UDP_SIZE, min(self.udp_size, OUR_UDP_SIZE))


def _name_text(labels: list[bytes]) -> str:
    raw = b".".join(labels).lower()
    try:
        return raw.decode("ascii")
    except UnicodeDecodeError:
        # Raw 8-bit labels are not host names any resolver will find, but a name is
        # still checked as best we can: as the same bytes, read one-to-one.
        return raw.decode("latin-1")


def parse_query(data: bytes) -> Query:
    """Read a client query; raises :class:`Drop` or :class:`BadQuery`."""
    size = len(data)
    if size < 12:
        raise Drop("shorter than a DNS header")
    ident, flags, qdcount, ancount, nscount, arcount = _unpack_header(data)
    if flags & QR:
        raise Drop("a response, not a query")
    if flags & OPCODE_MASK:
        raise BadQuery(NOTIMP, "opcode not supported", header=(ident, flags))
    if qdcount != 1:
        raise BadQuery(FORMERR, f"{qdcount} questions (exactly one is supported)",
                       header=(ident, flags))
    # the question name: plain labels only (nothing earlier to point back to)
    labels: list[bytes] = []
    off = 12
    total = 1
    while True:
        if off >= size:
            raise BadQuery(FORMERR, "question name runs past the end", header=(ident, flags))
        n = data[off]
        if n == 0:
            off += 1
            break
        if n > 63:
            raise BadQuery(FORMERR, "compression or bad label in the question",
                           header=(ident, flags))
        total += n + 1
        if total > MAX_NAME:
            raise BadQuery(FORMERR, "question name longer than 255 bytes",
                           header=(ident, flags))
        labels.append(data[off + 1:off + 1 + n])
        off += n + 1
    if off + 4 > size:
        raise BadQuery(FORMERR, "question truncated", header=(ident, flags))
    qtype, qclass = _unpack_u16(data, off)[0], _unpack_u16(data, off + 2)[0]
    off += 4
    query = Query(data, ident, flags, _name_text(labels) if labels else "", qtype, qclass,
                  off)
    if ancount or nscount:
        raise BadQuery(FORMERR, "a query with answer or authority records", query)
    if qtype == AXFR or qtype == IXFR:  # a forwarder has no zones to transfer
        raise BadQuery(NOTIMP, "zone transfers are not served", query)
    if arcount > 1:
        raise BadQuery(FORMERR, "more than one additional record", query)
    if arcount == 1:
        # the OPT pseudo-record: root owner, type 41, class = UDP size, ttl = ext flags
        if off + 11 > size or data[off] != 0:
            raise BadQuery(FORMERR, "unsupported additional record", query)
        rtype, rclass, ttl, rdlen = _unpack_rr(data, off + 1)
        if rtype != OPT:
            raise BadQuery(FORMERR, "unsupported additional record", query)
        end = off + 11 + rdlen
        if end > size:
            raise BadQuery(FORMERR, "OPT record truncated", query)
        pos = off + 11
        while pos < end:  # every option must fit exactly
            if pos + 4 > end:
                raise BadQuery(FORMERR, "malformed EDNS option", query)
            pos += 4 + _unpack_u16(data, pos + 2)[0]
        if pos != end:
            raise BadQuery(FORMERR, "malformed EDNS option", query)
        query.edns = True
        query.udp_size = rclass
        query.do = bool(ttl & 0x8000)
        query.edns_version = (ttl >> 16) & 0xFF
        off = end
        if query.edns_version != 0:
            raise BadQuery(BADVERS, f"EDNS version {query.edns_version}", query)
    if off != size:
        raise BadQuery(FORMERR, "trailing bytes after the query", query)
    return query


# -- building answers ------------------------------------------------------------------
def opt_record(query: Query, ede: tuple[int, str] | None = None, ext_rcode: int = 0) -> bytes:
    """Our OPT pseudo-record for a reply to an EDNS query, with an optional EDE option."""
    rdata = b""
    if ede is not None:
        code, text = ede
        payload = _pack_u16(code) + text[:300].encode("utf-8")
        rdata = _pack_u16(EDE_OPTION) + _pack_u16(len(payload)) + payload
    ttl = (ext_rcode << 24) | (0x8000 if query.do else 0)
    return b"\x00" + RR_FIXED.pack(OPT, OUR_UDP_SIZE, ttl, len(rdata)) + rdata


def reply_flags(query: Query, rcode: int, extra: int = 0) -> int:
    """Flags of an answer we make: QR, the client's RD and CD, RA, and the rcode."""
    return QR | RA | (query.flags & (RD | CD)) | extra | (rcode & 0xF)


def build_reply(query: Query, rcode: int, answers: bytes = b"", ancount: int = 0,
                authority: bytes = b"", nscount: int = 0,
                ede: tuple[int, str] | None = None, flags: int = 0) -> bytes:
    """A reply to ``query`` echoing its question; an OPT (with ``ede``) if it had EDNS."""
    if query.edns:
        tail = opt_record(query, ede, rcode >> 4)
        arcount = 1
    else:
        tail, arcount = b"", 0
    return (_pack_header(query.id, reply_flags(query, rcode, flags), 1, ancount, nscount,
                         arcount)
            + query.data[12:query.qend] + answers + authority + tail)


def error_reply(error: BadQuery) -> bytes:
    """FORMERR / NOTIMP / BADVERS for a query that could not be served."""
    if error.query is not None:
        if error.rcode == BADVERS:
            return build_reply(error.query, BADVERS)
        # an unreadable OPT means we cannot know the client speaks EDNS: answer without
        q = error.query
        flags = QR | RA | (q.flags & (RD | CD)) | (error.rcode & 0xF)
        return _pack_header(q.id, flags, 1, 0, 0, 0) + q.data[12:q.qend]
    ident, flags = error.header or (0, 0)
    return _pack_header(ident, QR | RA | (flags & (OPCODE_MASK | RD)) | (error.rcode & 0xF),
                        0, 0, 0, 0)


def truncated(query: Query, reply: bytes) -> bytes:
    """The TC answer for a reply too big for UDP: header and question only."""
    flags = _unpack_u16(reply, 2)[0] | TC
    if query.edns:
        return (_pack_header(query.id, flags, 1, 0, 0, 1) + query.data[12:query.qend]
                + opt_record(query))
    return _pack_header(query.id, flags, 1, 0, 0, 0) + query.data[12:query.qend]


def encode_name(name: str) -> bytes:
    """Wire form of a dotted name (no compression)."""
    out = bytearray()
    for label in name.strip(".").split("."):
        if label:
            raw = label.encode("ascii")
            out.append(len(raw))
            out += raw
    out.append(0)
    return bytes(out)


def rr_at_question(rtype: int, ttl: int, rdata: bytes) -> bytes:
    """A record owned by the question name (a compression pointer to offset 12)."""
    return b"\xc0\x0c" + RR_FIXED.pack(rtype, CLASS_IN, ttl, len(rdata)) + rdata


# -- reading replies -------------------------------------------------------------------
def skip_name(data: bytes, off: int) -> int:
    """Offset just past the (possibly compressed) name at ``off``."""
    size = len(data)
    while True:
        if off >= size:
            raise WireError("name runs past the end")
        n = data[off]
        if n == 0:
            return off + 1
        if n >= 0xC0:
            if off + 2 > size:
                raise WireError("pointer runs past the end")
            return off + 2
        if n > 63:
            raise WireError("bad label type")
        off += n + 1


def read_name(data: bytes, off: int) -> str:
    """The name at ``off`` as canonical text, following compression pointers."""
    labels: list[bytes] = []
    size = len(data)
    hops = 0
    total = 1
    while True:
        if off >= size:
            raise WireError("name runs past the end")
        n = data[off]
        if n == 0:
            break
        if n >= 0xC0:
            if off + 2 > size:
                raise WireError("pointer runs past the end")
            hops += 1
            if hops > MAX_POINTER_HOPS:
                raise WireError("compression loop")
            off = ((n & 0x3F) << 8) | data[off + 1]
            continue
        if n > 63:
            raise WireError("bad label type")
        total += n + 1
        if total > MAX_NAME:
            raise WireError("name longer than 255 bytes")
        labels.append(data[off + 1:off + 1 + n])
        off += n + 1
    return _name_text(labels) if labels else ""


class Scan:
    """What :func:`scan_reply` found in a reply."""

    __slots__ = ("id", "flags", "rcode", "qend", "counts", "names", "addrs", "ttl_offsets",
                 "min_ttl", "negative_ttl", "opt", "opt_last")

    def __init__(self) -> None:
        self.names: list[str] = []            # CNAME/DNAME/SVCB targets in the answer
        self.addrs: list[tuple[int, int]] = []  # A/AAAA and SVCB hints: (version, int)
        self.ttl_offsets: list[int] = []      # every record's TTL field, OPT excluded
        self.min_ttl: int | None = None       # smallest answer TTL
        self.negative_ttl: int | None = None  # min(SOA TTL, SOA minimum) in authority
        self.opt: tuple[int, int] | None = None  # (start, end) of the OPT record
        self.opt_last = True                  # the OPT record is the message's last

    @property
    def truncated(self) -> bool:
        return bool(self.flags & TC)


def _svcb_hints(data: bytes, rd: int, end: int, scan: Scan) -> None:
    off = rd + 2  # SvcPriority
    target = read_name(data, off)  # RFC 9460: never compressed, but tolerate it
    if target:
        scan.names.append(target)
    off = skip_name(data, off)
    while off + 4 <= end:
        key, length = _unpack_u16(data, off)[0], _unpack_u16(data, off + 2)[0]
        off += 4
        if off + length > end:
            raise WireError("SvcParam runs past its record")
        if key == 4:  # ipv4hint
            for p in range(off, off + length - 3, 4):
                scan.addrs.append((4, int.from_bytes(data[p:p + 4], "big")))
        elif key == 6:  # ipv6hint
            for p in range(off, off + length - 15, 16):
                value = int.from_bytes(data[p:p + 16], "big")
                if value >> 32 == 0xFFFF:  # IPv4-mapped: the IPv4 address
                    scan.addrs.append((4, value & 0xFFFFFFFF))
                else:
                    scan.addrs.append((6, value))
        off += length
    if off != end:
        raise WireError("SvcParams do not fill their record")


def scan_reply(data: bytes) -> Scan:
    """Walk a reply once; raises :class:`WireError` if it does not parse."""
    size = len(data)
    if size < 12:
        raise WireError("shorter than a DNS header")
    scan = Scan()
    scan.id, scan.flags, qdcount, ancount, nscount, arcount = _unpack_header(data)
    scan.rcode = scan.flags & 0xF
    scan.counts = (qdcount, ancount, nscount, arcount)
    off = 12
    for _ in range(qdcount):
        off = skip_name(data, off) + 4
    if off > size:
        raise WireError("question runs past the end")
    scan.qend = off
    total = ancount + nscount + arcount
    names, addrs, ttl_offsets = scan.names, scan.addrs, scan.ttl_offsets
    min_ttl = None
    for i in range(total):
        start = off
        off = skip_name(data, off)
        if off + 10 > size:
            raise WireError("record header runs past the end")
        rtype, rclass, ttl, rdlen = _unpack_rr(data, off)
        rd = off + 10
        end = rd + rdlen
        if end > size:
            raise WireError("record data runs past the end")
        if ttl > 0x7FFFFFFF:  # RFC 2181: a TTL with the top bit set means zero
            ttl = 0
        if rtype == OPT:
            if i < ancount + nscount or scan.opt is not None:
                raise WireError("OPT record out of place")
            scan.opt = (start, end)
            scan.opt_last = i == total - 1
            off = end
            continue
        ttl_offsets.append(off + 4)
        if i < ancount:
            if min_ttl is None or ttl < min_ttl:
                min_ttl = ttl
            if rtype == A:
                if rdlen != 4:
                    raise WireError("A record of the wrong size")
                addrs.append((4, int.from_bytes(data[rd:end], "big")))
            elif rtype == AAAA:
                if rdlen != 16:
                    raise WireError("AAAA record of the wrong size")
                value = int.from_bytes(data[rd:end], "big")
                addrs.append((4, value & 0xFFFFFFFF) if value >> 32 == 0xFFFF else (6, value))
            elif rtype == CNAME or rtype == DNAME:
                names.append(read_name(data, rd))
            elif rtype == HTTPS or rtype == SVCB:
                _svcb_hints(data, rd, end, scan)
        elif i < ancount + nscount and rtype == SOA:
            p = skip_name(data, skip_name(data, rd))
            if p + 20 > end:
                raise WireError("SOA record too short")
            minimum = struct.unpack_from("!I", data, p + 16)[0]
            negative = min(ttl, minimum)
            if scan.negative_ttl is None or negative < scan.negative_ttl:
                scan.negative_ttl = negative
        off = end
    scan.min_ttl = min_ttl
    return scan


def same_question(query: Query, reply: bytes, scan: Scan) -> bool:
    """Whether ``reply`` answers ``query``'s question (names compared without case)."""
    qend = query.qend
    return (scan.counts[0] == 1 and scan.qend == qend
            and reply[qend - 4:qend] == query.data[qend - 4:qend]
            and reply[12:qend - 4].lower() == query.data[12:qend - 4].lower())


__all__ = [
    "BadQuery", "Drop", "Query", "Scan", "WireError", "build_reply", "encode_name",
    "error_reply", "opt_record", "parse_query", "read_name", "rr_at_question", "scan_reply",
    "same_question", "skip_name", "truncated",
]
