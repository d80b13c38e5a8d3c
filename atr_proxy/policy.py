"""Hits to a verdict: exceptions first, then modules in order, first block wins.

The matcher says which indicators hit; this module says what happens. Order: MDR, X-Ops,
third-party modules, and within a module the feeds in their configured order. A source
exception (the client's network) means that client is never blocked; a destination
exception (a domain with its subdomains, a URL prefix, an address or range) passes that
destination. Feed-scoped exceptions (an adblock ``@@`` rule) only cancel that feed's hits.
Every monitored hit that survives the exceptions is reported.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from .indicators import domain_suffixes, ip_network, ip_to_int, url_lookup_expressions
from .matcher import Hit

ALLOW, MONITOR, BLOCK = "allow", "monitor", "block"
SOURCE_TARGETS = frozenset({"client"})


@dataclass(frozen=True, slots=True)
class Exception_:
    """One exception as the policy uses it."""

    id: int
    scope: str          # source | destination
    kind: str           # domain | url | ip
    value: str
    feed_id: int | None = None
    comment: str | None = None


@dataclass(frozen=True, slots=True)
class Verdict:
    """What to do with one request or query, and why."""

    action: str                                  # allow | monitor | block
    decisive: Hit | None = None                  # the hit that blocked
    hits: tuple[Hit, ...] = ()                   # hits that count, in policy order
    excepted: tuple[tuple[Hit, Exception_], ...] = ()   # hits cancelled, with the exception

    @property
    def blocked(self) -> bool:
        return self.action == BLOCK

    @property
    def monitored(self) -> tuple[Hit, ...]:
        return tuple(h for h in self.hits if h.feed.action == MONITOR)

    def as_dict(self) -> dict[str, object]:
        return {
            "verdict": self.action,
            "decisive": self.decisive.as_dict() if self.decisive else None,
            "hits": [h.as_dict() for h in self.hits],
            "excepted": [
                {**h.as_dict(), "exception": {"id": e.id, "scope": e.scope, "value": e.value}}
                for h, e in self.excepted
            ],
        }


ALLOWED = Verdict(ALLOW)


@dataclass
class Exceptions:
    """All exceptions, indexed for the (rare) moment a request has hits."""

    items: tuple[Exception_, ...] = ()
    _source: list[tuple[int, int, int, Exception_]] = field(default_factory=list)
    _dest_ip: list[tuple[int, int, int, Exception_]] = field(default_factory=list)
    _dest_domain: dict[str, list[Exception_]] = field(default_factory=dict)
    _dest_url: dict[str, list[Exception_]] = field(default_factory=dict)

    @classmethod
    def build(cls, items: Iterable[Exception_]) -> Exceptions:
        self = cls(tuple(items))
        for item in self.items:
            if item.kind == "ip":
                net = ip_network(item.value)
                row = (net.version, int(net.network_address), int(net.broadcast_address), item)
                (self._source if item.scope == "source" else self._dest_ip).append(row)
            elif item.scope == "destination" and item.kind == "domain":
                self._dest_domain.setdefault(item.value, []).append(item)
            elif item.scope == "destination" and item.kind == "url":
                self._dest_url.setdefault(item.value, []).append(item)
        return self

    def __bool__(self) -> bool:
        return bool(self.items)

    def for_source(self, client: str | None) -> list[Exception_]:
        return _in_ranges(self._source, client)

    def for_destination(
        self, host: str | None, url: str | None, dest_ip: str | None
    ) -> list[Exception_]:
        found: list[Exception_] = []
        if host:
            if ip_to_int(host) is not None:
                found += _in_ranges(self._dest_ip, host)
            else:
                for name in domain_suffixes(host):
                    found += self._dest_domain.get(name, ())
        if url and self._dest_url:
            try:
                expressions = url_lookup_expressions(url)
            except ValueError:
                expressions = []
            for expr in expressions:
                found += self._dest_url.get(expr, ())
        if dest_ip:
            found += _in_ranges(self._dest_ip, dest_ip)
        return found


def _in_ranges(rows: list[tuple[int, int, int, Exception_]], addr: str | None) -> list[Exception_]:
    if not rows or not addr:
        return []
    parsed = ip_to_int(addr)
    if parsed is None:
        return []
    version, value = parsed
    return [e for v, lo, hi, e in rows if v == version and lo <= value <= hi]


def decide(
    hits: list[Hit],
    exceptions: Exceptions | None = None,
    *,
    client: str | None = None,
    host: str | None = None,
    url: str | None = None,
    dest_ip: str | None = None,
    extra_hosts: Iterable[str] = (),
) -> Verdict:
    """The verdict for one request's hits. ``extra_hosts`` are further destination names
    that a destination exception may cover (SNI, CNAME targets)."""
    if not hits:
        return ALLOWED
    excepted: list[tuple[Hit, Exception_]] = []
    if exceptions:
        source = exceptions.for_source(client)
        dest = exceptions.for_destination(host, url, dest_ip)
        for name in extra_hosts:
            dest += exceptions.for_destination(name, None, None)
        if source or dest:
            kept = []
            for hit in hits:
                cover = _covering(hit, source, dest)
                if cover is None:
                    kept.append(hit)
                else:
                    excepted.append((hit, cover))
            hits = kept
    ordered = tuple(sorted(hits, key=lambda h: h.feed.rank))
    decisive = next((h for h in ordered if h.feed.action == BLOCK), None)
    if decisive is not None:
        return Verdict(BLOCK, decisive, ordered, tuple(excepted))
    if ordered:
        return Verdict(MONITOR, None, ordered, tuple(excepted))
    return Verdict(ALLOW, None, (), tuple(excepted))


def _covering(hit: Hit, source: list[Exception_], dest: list[Exception_]) -> Exception_ | None:
    for exc in source:  # a source exception: this client is never blocked, on any target
        if exc.feed_id is None or exc.feed_id == hit.feed.id:
            return exc
    if hit.target in SOURCE_TARGETS:
        return None
    for exc in dest:
        if exc.feed_id is None or exc.feed_id == hit.feed.id:
            return exc
    return None
