"""The in-memory matcher snapshot: which indicators does a name, URL or address hit?

Why this shape: a request must be checked in a few microseconds against millions of
indicators, in three processes at once, without the garbage collector ever walking them.
So nothing here holds one Python object per indicator:

* ``NameTable``: one open-addressing hash table in two flat arrays for every string key
  (domains, URL expressions, and "this host has URL indicators" markers). A slot is the
  string's 64-bit hash with its low 14 bits replaced by a tag (feed slot and match mode),
  plus the indicator id: 12 bytes a slot, 20 bytes an entry at the 0.6 load factor. A
  probe that finds the same hash is a hit; hits are rare and can be confirmed exactly
  against the index (``Snapshot.confirm``), as Safe Browsing does with its hash prefixes.
* ``IpRanges``: every IP indicator as an interval in sorted arrays with a running maximum
  of the interval ends, so a miss costs one binary search and one comparison, and a hit
  walks back only over intervals that can contain the address.

A snapshot is never changed once published: ``patch`` copies what a delta touches and
returns a new snapshot, and the reader swaps it in with one assignment. Lookup functions
take canonical values (see ``atr_proxy.indicators``) and return ``Hit`` lists; turning hits
into a verdict is ``atr_proxy.policy``'s job.
"""

from __future__ import annotations

import time
from array import array
from bisect import bisect_right
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from .indicators import (
    canonical_domain,
    ip_network,
    ip_to_int,
    url_key_host,
    url_lookup_expressions,
)

EXACT, SUBTREE, URL, URL_HOST = 0, 1, 2, 3
MODE_OF = {"exact": EXACT, "subtree": SUBTREE}
TAG_BITS = 14
TAG_MASK = (1 << TAG_BITS) - 1
HASH_MASK = ~TAG_MASK
MAX_FEED_SLOTS = (1 << (TAG_BITS - 2)) - 1
LOAD_FACTOR = 0.7
MAX_FILL = 0.85
BLOOM_BITS_PER_ENTRY = 16  # ~6% false positives with one bit per key
BLOOM_SHIFT = 24
MODULE_RANK = {"mdr": 0, "xops": 1, "third_party": 2}


@dataclass(frozen=True, slots=True)
class Feed:
    """What the matcher and the policy need to know of a feed."""

    id: int
    name: str
    module: str
    action: str
    position: int = 0
    enabled: bool = True

    @property
    def rank(self) -> tuple[int, int, int]:
        """Policy order: module (MDR, X-Ops, third-party), then the feed's order."""
        return (MODULE_RANK.get(self.module, 9), self.position, self.id)


class Hit:
    """One indicator that matched: which indicator, which feed, and what it matched on."""

    __slots__ = ("indicator_id", "feed", "kind", "indicator", "match", "target")

    def __init__(
        self, indicator_id: int, feed: Feed, kind: str, indicator: str, match: str, target: str
    ) -> None:
        self.indicator_id = indicator_id
        self.feed = feed
        self.kind = kind
        self.indicator = indicator
        self.match = match
        self.target = target

    def __repr__(self) -> str:
        return (
            f"Hit({self.kind} {self.indicator!r} [{self.match}] feed={self.feed.name}"
            f" action={self.feed.action} on {self.target})"
        )

    def as_dict(self) -> dict[str, object]:
        return {
            "indicator": self.indicator, "kind": self.kind, "match": self.match,
            "feed": self.feed.name, "module": self.feed.module, "action": self.feed.action,
            "indicator_id": self.indicator_id, "target": self.target,
        }


class NameTable:
    """String keys → (tag, indicator id): open addressing with linear probing, behind a
    Bloom filter.

    The Bloom filter (about 2 bytes an entry) answers nearly every miss with one bit
    test, so the probe loop, which costs Python bytecode per step, runs only for the few
    per cent of look-ups that hit or are false positives. That lets the table itself run
    at a high load factor. URL-host markers are stored once per (host, feed) with a
    reference count in place of the id.
    """

    __slots__ = ("keys", "ids", "base", "size", "filled", "live", "bloom", "bloom_mask")

    def __init__(self, capacity: int, tail: int = 0) -> None:
        # ``base`` is the modulus of a key's home slot; the arrays may run ``tail`` slots
        # past it (a table built in bulk), and probes wrap at their end.
        self.base = max(16, int(capacity / LOAD_FACTOR) + 1)
        self.size = self.base + tail
        self.keys = array("q", bytes(8 * self.size))
        self.ids = array("I", bytes(4 * self.size))
        self.filled = 0  # slots ever used, tombstones included
        self.live = 0
        bits = 1 << max(10, (max(capacity, 1) * BLOOM_BITS_PER_ENTRY - 1).bit_length())
        self.bloom = bytearray(bits // 8)
        self.bloom_mask = bits - 1

    def copy(self) -> NameTable:
        other = NameTable.__new__(NameTable)
        other.base, other.size = self.base, self.size
        other.filled, other.live = self.filled, self.live
        other.keys = array("q", self.keys)
        other.ids = array("I", self.ids)
        other.bloom = bytearray(self.bloom)
        other.bloom_mask = self.bloom_mask
        return other

    def add(self, text: str, tag: int, ident: int) -> None:
        h = hash(text)
        self._put((h & HASH_MASK) | tag, ident)

    def add_ref(self, text: str, tag: int) -> bool:
        """Count one more reference to a marker key; True if the key is new."""
        key = (hash(text) & HASH_MASK) | tag
        i = self._live_slot(key)
        if i >= 0:
            self.ids[i] += 1
            return False
        self._put(key, 1)
        return True

    def remove_ref(self, text: str, tag: int) -> bool:
        """Drop one reference to a marker key; True if that was the last one."""
        i = self._live_slot((hash(text) & HASH_MASK) | tag)
        if i < 0:
            return False
        self.ids[i] -= 1
        if self.ids[i]:
            return False
        self.live -= 1
        return True

    def _live_slot(self, key: int, ident: int = 0) -> int:
        """The slot holding ``key`` with a live id (that id, if given), or -1."""
        keys, ids, size = self.keys, self.ids, self.size
        i = (key >> TAG_BITS) % self.base
        k = keys[i]
        while k:
            if k == key and ids[i] and (not ident or ids[i] == ident):
                return i
            i += 1
            if i == size:
                i = 0
            k = keys[i]
        return -1

    def _put(self, key: int, ident: int) -> None:
        keys, ids, size = self.keys, self.ids, self.size
        i = (key >> TAG_BITS) % self.base
        free = -1
        k = keys[i]
        while k:
            if k == key:
                if ids[i] == ident:
                    return
                if ids[i] == 0 and free < 0:
                    free = i
            i += 1
            if i == size:
                i = 0
            k = keys[i]
        if free >= 0:
            ids[free] = ident
        else:
            ids[i] = ident  # id first: a concurrent reader never sees a key without its id
            keys[i] = key
            self.filled += 1
        self.live += 1
        b = (key >> BLOOM_SHIFT) & self.bloom_mask
        self.bloom[b >> 3] |= 1 << (b & 7)

    def remove(self, text: str, tag: int, ident: int) -> bool:
        i = self._live_slot((hash(text) & HASH_MASK) | tag, ident)
        if i < 0:
            return False
        self.ids[i] = 0  # a tombstone: probes continue past it; the Bloom bit stays
        self.live -= 1
        return True

    def find(self, text: str) -> list[tuple[int, int]]:
        """(tag, id) of every live entry whose key hashes like ``text``."""
        h = hash(text) & HASH_MASK
        b = (h >> BLOOM_SHIFT) & self.bloom_mask
        if not self.bloom[b >> 3] >> (b & 7) & 1:
            return []
        keys, ids, size = self.keys, self.ids, self.size
        i = (h >> TAG_BITS) % self.base
        k = keys[i]
        found: list[tuple[int, int]] = []
        while k:
            if k & HASH_MASK == h and ids[i]:
                found.append((k & TAG_MASK, ids[i]))
            i += 1
            if i == size:
                i = 0
            k = keys[i]
        return found

    def grown(self, extra: int) -> NameTable:
        """A fresh table sized for the live entries plus ``extra``, without tombstones."""
        other = NameTable(self.live + extra)
        keys, ids = self.keys, self.ids
        for i in range(self.size):
            if keys[i] and ids[i]:
                other._put(keys[i], ids[i])
        return other

    def needs_room(self, extra: int) -> bool:
        return self.filled + extra > self.base * MAX_FILL


class IpRanges:
    """Intervals of one address family, sorted by start, for stabbing queries.

    IPv4 also keeps a bitmap of the /24 blocks that any interval touches (2 MiB), so an
    address outside every listed block, the common case, costs one bit test.
    """

    __slots__ = ("starts", "ends", "reach", "tags", "ids", "wide", "blocks")

    def __init__(self, entries: Iterable[tuple[int, int, int, int]], *, wide: bool) -> None:
        """``entries``: (start, end, feed slot, id). ``wide`` for IPv6 (128-bit values)."""
        rows = sorted(entries)
        self.wide = wide
        make = list if wide else (lambda values: array("Q", values))
        self.starts = make([r[0] for r in rows])
        self.ends = make([r[1] for r in rows])
        reach, top = [], -1
        for r in rows:
            top = max(top, r[1])
            reach.append(top)
        self.reach = make(reach)
        self.tags = array("H", [r[2] for r in rows])
        self.ids = array("I", [r[3] for r in rows])
        self.blocks: bytearray | None = None
        if not wide and rows:
            self.blocks = _block_bitmap((r[0] >> 8, r[1] >> 8) for r in rows)

    def __len__(self) -> int:
        return len(self.ids)

    def entries(self) -> Iterable[tuple[int, int, int, int]]:
        return zip(self.starts, self.ends, self.tags, self.ids, strict=True)

    def find(self, addr: int) -> list[tuple[int, int, int, int]]:
        """(start, end, slot, id) of every interval containing ``addr``."""
        blocks = self.blocks
        if blocks is not None and not blocks[addr >> 11] >> ((addr >> 8) & 7) & 1:
            return []
        j = bisect_right(self.starts, addr) - 1
        if j < 0 or self.reach[j] < addr:
            return []
        found = []
        ends, reach = self.ends, self.reach
        while j >= 0 and reach[j] >= addr:
            if ends[j] >= addr:
                found.append((self.starts[j], ends[j], self.tags[j], self.ids[j]))
            j -= 1
        return found


def _block_bitmap(spans: Iterable[tuple[int, int]]) -> bytearray:
    """A bit per /24 block: set where some interval (first block, last block) touches it."""
    bits = bytearray(1 << 21)
    for first, last in spans:
        if last - first < 16:
            for block in range(first, last + 1):
                bits[block >> 3] |= 1 << (block & 7)
            continue
        head, tail = (first + 7) >> 3, (last + 1) >> 3  # whole bytes in between
        bits[head:tail] = b"\xff" * (tail - head)
        for block in range(first, head << 3):
            bits[block >> 3] |= 1 << (block & 7)
        for block in range(tail << 3, last + 1):
            bits[block >> 3] |= 1 << (block & 7)
    return bits


def _interval(value: str) -> tuple[int, int, int]:
    """(version, first, last) of a canonical address or range ("192.0.2.0/24")."""
    addr, _, prefix = value.partition("/")
    parsed = ip_to_int(addr)
    if parsed is None:
        net = ip_network(value)
        return net.version, int(net.network_address), int(net.broadcast_address)
    version, first = parsed
    if not prefix:
        return version, first, first
    host_bits = (32 if version == 4 else 128) - int(prefix)
    first &= ~((1 << host_bits) - 1)
    return version, first, first | ((1 << host_bits) - 1)


def _cidr_text(version: int, start: int, end: int) -> str:
    bits = 32 if version == 4 else 128
    size = end - start + 1
    prefix = bits - (size.bit_length() - 1)
    from ipaddress import ip_address

    addr = ip_address(start) if version == 4 else ip_address(start.to_bytes(16, "big"))
    return str(addr) if prefix == bits else f"{addr}/{prefix}"


class Snapshot:
    """An immutable view of the enforced indicators at one index generation."""

    def __init__(
        self,
        *,
        generation: int,
        slots: list[Feed | None],
        names: NameTable,
        ip4: IpRanges,
        ip6: IpRanges,
        next_expiry: float | None = None,
        built_at: float | None = None,
        confirm: Callable[[int, str], bool] | None = None,
        url_hosts: int = 0,
        exceptions: object = None,
    ) -> None:
        self.generation = generation
        self.exceptions = exceptions  # atr_proxy.policy.Exceptions, set by the reader
        self.url_hosts = url_hosts  # marker entries in ``names``, not indicators
        self.slots = slots
        self.slot_of = {feed.id: i for i, feed in enumerate(slots) if feed is not None}
        self.names = names
        self.ip4 = ip4
        self.ip6 = ip6
        self.next_expiry = next_expiry
        self.built_at = time.time() if built_at is None else built_at
        # confirm(indicator_id, value) -> False rejects a hash collision; None trusts the hash
        self.confirm = confirm

    # -- size --------------------------------------------------------------------------
    def __len__(self) -> int:
        return self.count()

    def count(self) -> int:
        """Enforced indicators (a URL counts once although it has two table entries)."""
        return self.names.live - self.url_hosts + len(self.ip4) + len(self.ip6)

    @property
    def feeds(self) -> list[Feed]:
        return [feed for feed in self.slots if feed is not None]

    # -- look-ups (canonical values in) ------------------------------------------------
    def match_name(self, name: str, target: str = "host") -> list[Hit]:
        """Domain indicators that cover ``name``: exact on the name itself, subtree on it or
        any parent on a label boundary."""
        return self._name_hits(name, target)[0]

    def has_url_indicators(self, host: str) -> bool:
        """Whether a URL indicator exists for ``host`` or a parent: worth intercepting."""
        return self._name_hits(host, "host")[1]

    def _name_hits(self, name: str, target: str) -> tuple[list[Hit], bool]:
        # The hot path: one hash and one Bloom bit per label-boundary suffix of the name.
        bloom, bloom_mask = self.names.bloom, self.names.bloom_mask
        hits: list[Hit] = []
        url_host = False
        exact = True
        s = name
        while True:
            h = hash(s)
            b = (h >> BLOOM_SHIFT) & bloom_mask
            if bloom[b >> 3] >> (b & 7) & 1 and self._probe_name(s, h, exact, target, hits):
                url_host = True
            dot = s.find(".")
            if dot < 0:
                return hits, url_host
            s = s[dot + 1:]
            exact = False

    def _probe_name(self, s: str, h: int, exact: bool, target: str, hits: list[Hit]) -> bool:
        """Collect domain hits of one suffix into ``hits``; True if it is a URL host."""
        h &= HASH_MASK
        names, slots = self.names, self.slots
        keys, ids, size = names.keys, names.ids, names.size
        url_host = False
        i = (h >> TAG_BITS) % names.base
        k = keys[i]
        while k:
            if k & HASH_MASK == h and ids[i]:
                mode = k & 3
                if mode == URL_HOST:
                    url_host = True
                elif mode == SUBTREE or (mode == EXACT and exact):
                    feed = slots[(k & TAG_MASK) >> 2]
                    if feed is not None and feed.enabled and self._confirmed(ids[i], s):
                        hits.append(Hit(ids[i], feed, "domain", s,
                                        "subtree" if mode == SUBTREE else "exact", target))
            i += 1
            if i == size:
                i = 0
            k = keys[i]
        return url_host

    def match_url(self, url: str, target: str = "url") -> list[Hit]:
        """URL indicators hit by any Safe Browsing expression of ``url`` (any form that
        ``atr_proxy.indicators.url_lookup_expressions`` accepts)."""
        hits: list[Hit] = []
        try:
            expressions = url_lookup_expressions(url)
        except ValueError:  # not a URL we can canonicalise: its host is still checked
            return hits
        for expr in expressions:
            for tag, ident in self.names.find(expr):
                if tag & 3 != URL:
                    continue
                feed = self.slots[tag >> 2]
                if feed is not None and feed.enabled and self._confirmed(ident, expr):
                    hits.append(Hit(ident, feed, "url", expr, "prefix", target))
        return hits

    def match_ip(self, addr: str | tuple[int, int], target: str = "ip") -> list[Hit]:
        """IP indicators (addresses and ranges) containing ``addr``."""
        parsed = ip_to_int(addr) if isinstance(addr, str) else addr
        if parsed is None:
            return []
        version, value = parsed
        ranges = self.ip4 if version == 4 else self.ip6
        if not ranges.ids:
            return []
        hits: list[Hit] = []
        for start, end, tag, ident in ranges.find(value):
            feed = self.slots[tag]
            if feed is not None and feed.enabled:
                hits.append(Hit(ident, feed, "ip", _cidr_text(version, start, end), "range"
                                if end > start else "exact", target))
        return hits

    def check(
        self,
        *,
        client: str | None = None,
        host: str | None = None,
        url: str | None = None,
        dest_ip: str | None = None,
        host_target: str = "host",
    ) -> list[Hit]:
        """Every hit of one request: client address, destination name (an IP literal
        host is checked as an address), full URL (only where the host carries URL
        indicators) and destination address. Empty on a miss, which is the common case."""
        hits: list[Hit] = []
        if client is not None:
            hits += self.match_ip(client, "client")
        if host:
            host = lookup_name(host)
            literal = ip_to_int(host)
            if literal is not None:
                hits += self.match_ip(literal, host_target)
                # URL indicators on an address are keyed by it ("[v6]" in brackets)
                bare = host.strip("[]")
                url_host = self._is_url_host(f"[{bare}]" if ":" in bare else bare)
            else:
                name_hits, url_host = self._name_hits(host, host_target)
                hits += name_hits
            if url is not None and url_host:
                hits += self.match_url(url)
        elif url is not None:
            hits += self.match_url(url)
        if dest_ip is not None and dest_ip != host:
            hits += self.match_ip(dest_ip, "ip")
        return hits

    def _is_url_host(self, host: str) -> bool:
        """Whether URL indicators exist for exactly this host (no parents)."""
        return any(tag & 3 == URL_HOST for tag, _ in self.names.find(host))

    def _confirmed(self, ident: int, value: str) -> bool:
        confirm = self.confirm
        return True if confirm is None else confirm(ident, value)

    # -- building and patching ---------------------------------------------------------
    def patch(
        self,
        changes: Iterable[tuple[str, int, int, str, str, str, float | None]],
        *,
        generation: int,
        feeds: list[Feed] | None = None,
        now: float | None = None,
    ) -> Snapshot:
        """A new snapshot with ``changes`` applied: (op, indicator id, feed id, kind, value,
        match, expires_at) with op 'add', 'del' or 'expiry'. ``feeds``, when given, replaces
        the feed list (settings changed or feeds added)."""
        now = time.time() if now is None else now
        slots = list(self.slots)
        if feeds is not None:
            slots = _assign_slots(feeds, slots)
        slot_of = {feed.id: i for i, feed in enumerate(slots) if feed is not None}
        changes = list(changes)
        names = self.names
        name_changes = sum(1 for c in changes if c[3] in ("domain", "url"))
        if name_changes:
            names = names.grown(name_changes * 2) if names.needs_room(name_changes * 2) \
                else names.copy()
        ip_adds: dict[int, list[tuple[int, int, int, int]]] = {4: [], 6: []}
        ip_dels: dict[int, set[int]] = {4: set(), 6: set()}
        next_expiry = self.next_expiry
        url_hosts = self.url_hosts
        for op, ident, feed_id, kind, value, match, expires_at in changes:
            if op == "expiry":
                if expires_at is not None:
                    next_expiry = expires_at if next_expiry is None else min(next_expiry,
                                                                             expires_at)
                continue
            slot = slot_of.get(feed_id)
            if slot is None:
                continue
            if op == "add" and expires_at is not None:
                if expires_at <= now:
                    continue
                next_expiry = expires_at if next_expiry is None else min(next_expiry, expires_at)
            if kind == "ip":
                version, start, end = _interval(value)
                if op == "add":
                    ip_adds[version].append((start, end, slot, ident))
                    ip_dels[version].add(ident)  # replaces any older entry of this id
                else:
                    ip_dels[version].add(ident)
            elif kind == "domain":
                tag = slot << 2 | MODE_OF.get(match, EXACT)
                if op == "add":
                    names.add(value, tag, ident)
                else:
                    names.remove(value, tag, ident)
            elif kind == "url":
                host = url_key_host(value)
                if op == "add":
                    names.add(value, slot << 2 | URL, ident)
                    url_hosts += names.add_ref(host, slot << 2 | URL_HOST)
                elif names.remove(value, slot << 2 | URL, ident):
                    url_hosts -= names.remove_ref(host, slot << 2 | URL_HOST)
        ip4, ip6 = self.ip4, self.ip6
        if ip_adds[4] or ip_dels[4]:
            ip4 = IpRanges(
                [e for e in ip4.entries() if e[3] not in ip_dels[4]] + ip_adds[4], wide=False
            )
        if ip_adds[6] or ip_dels[6]:
            ip6 = IpRanges(
                [e for e in ip6.entries() if e[3] not in ip_dels[6]] + ip_adds[6], wide=True
            )
        return Snapshot(generation=generation, slots=slots, names=names, ip4=ip4, ip6=ip6,
                        next_expiry=next_expiry, confirm=self.confirm, url_hosts=url_hosts,
                        exceptions=self.exceptions)


def lookup_name(host: str) -> str:
    """A request's host name in the form indicators are stored in: lower case, no
    trailing dot, IDN as punycode. Cheap for the usual ASCII name; never raises."""
    if host.isascii():
        name = host.lower()
        return name.rstrip(".") if name.endswith(".") else name
    try:
        return canonical_domain(host)
    except ValueError:
        return host.lower()


def _assign_slots(feeds: list[Feed], slots: list[Feed | None]) -> list[Feed | None]:
    """Keep each known feed in its slot, update its settings, give new feeds free slots."""
    slots = list(slots) or [None]
    where = {feed.id: i for i, feed in enumerate(slots) if feed is not None}
    present = {feed.id for feed in feeds}
    for i, feed in enumerate(slots):
        if feed is not None and feed.id not in present:
            slots[i] = None
    for feed in feeds:
        if feed.id in where:
            slots[where[feed.id]] = feed
        else:
            free = next((i for i in range(1, len(slots)) if slots[i] is None), len(slots))
            if free > MAX_FEED_SLOTS:
                raise OverflowError(f"more than {MAX_FEED_SLOTS} feeds in one snapshot")
            if free == len(slots):
                slots.append(feed)
            else:
                slots[free] = feed
    return slots


def build_snapshot(
    *,
    generation: int,
    feeds: list[Feed],
    rows: Iterable[tuple[int, int, int, str, str | None]] = (),
    chunks: Iterable[tuple[Sequence[int], Sequence[int], str | Sequence[int], Sequence[str],
                           Sequence[str | None]]] | None = None,
    capacity: int = 0,
    next_expiry: float | None = None,
    confirm: Callable[[int, str], bool] | None = None,
) -> Snapshot:
    """Build a snapshot from rows of (indicator id, feed id, code, canonical value, URL host)
    where code is 0 for an exact domain, 1 for a subtree domain, 2 for a URL (whose host,
    without port, is the fifth field) and 3 for an IP; ``reader.live_indicators`` selects
    them so. ``chunks`` gives the same as columns, a chunk at a time (ids, feed ids, codes
    as ints or a string of digits, values, hosts): ``reader.live_indicator_chunks``.
    ``capacity`` is only a hint.

    This runs once per indicator at every start, so the table is built with numpy rather
    than a Python loop: entries sorted by home slot get their linear-probing slot from a
    running maximum (slot_i = i + max_{j<=i}(home_j - j)), which is exactly where one-by-one
    insertion would have put them. The result is plain ``array`` objects; numpy is not used
    on the look-up path.
    """
    import numpy as np

    slots = _assign_slots(feeds, [None])
    top = max((feed.id for feed in feeds), default=0)
    tag_of = np.full(top + 1, -1, dtype=np.int64)  # feed id -> slot << 2, or -1: skip
    for i, feed in enumerate(slots):
        if feed is not None:
            tag_of[feed.id] = i << 2
    key_parts: list[np.ndarray] = []
    id_parts: list[np.ndarray] = []
    marker_parts: list[np.ndarray] = []
    v4: list[tuple[int, int, int, int]] = []
    v6: list[tuple[int, int, int, int]] = []
    if chunks is None:
        chunks = (tuple(zip(*chunk, strict=True)) for chunk in _chunked(rows, 65_536))
    for idents, feed_ids, codes, values, hosts in chunks:
        feed_arr = np.array(feed_ids, dtype=np.int64)
        tags = np.where(feed_arr <= top, tag_of[np.minimum(feed_arr, top)], -1)
        if isinstance(codes, str):
            code = np.frombuffer(codes.encode("ascii"), dtype=np.uint8).astype(np.int64) - 48
        else:
            code = np.array(codes, dtype=np.int64)
        for j in np.flatnonzero((code == 3) & (tags >= 0)).tolist():
            version, start, end = _interval(values[j])
            (v4 if version == 4 else v6).append((start, end, int(tags[j]) >> 2, idents[j]))
        keep = (code != 3) & (tags >= 0)
        hashed = np.fromiter(map(hash, values), dtype=np.int64, count=len(values))
        key_parts.append(((hashed & HASH_MASK) | tags | np.where(code == 2, URL, code))[keep])
        id_parts.append(np.array(idents, dtype=np.int64)[keep])
        urls = np.flatnonzero((code == 2) & keep)
        if len(urls):
            hashed = np.fromiter(map(hash, map(hosts.__getitem__, urls.tolist())),
                                 dtype=np.int64, count=len(urls))
            marker_parts.append((hashed & HASH_MASK) | tags[urls] | URL_HOST)
    keys = np.concatenate(key_parts) if key_parts else np.zeros(0, np.int64)
    ids = np.concatenate(id_parts) if id_parts else np.zeros(0, np.int64)
    url_hosts = 0
    if marker_parts:  # one marker per (host, feed), its id slot holding the URL count
        markers, counts = np.unique(np.concatenate(marker_parts), return_counts=True)
        keys = np.concatenate([keys, markers])
        ids = np.concatenate([ids, counts])
        url_hosts = len(markers)
    names = _bulk_table(np, keys, ids)
    return Snapshot(
        generation=generation, slots=slots, names=names, ip4=IpRanges(v4, wide=False),
        ip6=IpRanges(v6, wide=True), next_expiry=next_expiry, confirm=confirm,
        url_hosts=url_hosts,
    )


def _chunked(rows: Iterable, size: int) -> Iterable[list]:
    chunk: list = []
    for row in rows:
        chunk.append(row)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _bulk_table(np, keys, ids) -> NameTable:  # noqa: ANN001 (numpy is imported lazily)
    """A NameTable holding ``keys``/``ids`` (numpy int64), placed as linear probing would."""
    n = len(keys)
    names = NameTable(n)
    base = names.base
    home = (keys >> TAG_BITS) % base
    order = np.argsort(home, kind="stable")
    home, keys, ids = home[order], keys[order], ids[order]
    index = np.arange(n, dtype=np.int64)
    slot = index + np.maximum.accumulate(home - index) if n else index
    size = max(base, int(slot[-1]) + 2 if n else base)  # past the last one, an empty slot
    table_keys = np.zeros(size, dtype=np.int64)
    table_ids = np.zeros(size, dtype=np.uint32)
    table_keys[slot] = keys
    table_ids[slot] = ids
    names.size = size
    names.keys = array("q", table_keys.tobytes())
    names.ids = array("I", table_ids.tobytes())
    names.filled = names.live = n
    bits = (keys >> BLOOM_SHIFT) & names.bloom_mask
    bloom = np.zeros(len(names.bloom), dtype=np.uint8)
    np.bitwise_or.at(bloom, bits >> 3, (1 << (bits & 7)).astype(np.uint8))
    names.bloom = bytearray(bloom.tobytes())
    return names


def empty_snapshot() -> Snapshot:
    """A snapshot that matches nothing (before the first load, or fail-open)."""
    return build_snapshot(generation=0, feeds=[], rows=(), capacity=0)


__all__ = [
    "Feed", "Hit", "IpRanges", "NameTable", "Snapshot", "build_snapshot", "empty_snapshot",
]
