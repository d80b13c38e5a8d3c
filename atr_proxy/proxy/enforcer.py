"""What the proxy decides, without mitmproxy: one ``Enforcer`` per proxy process.

The mitmproxy hooks in ``addon.py`` only translate a connection or request into the facts
below (client address, destination names, URL, addresses) and act on the ``Verdict``
this module returns. Matching is ``Snapshot.check``, the verdict is ``policy.decide``,
the record is ``events.events_for``: nothing here repeats them.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from ..config import Settings
from ..errors import ConfigError, IndexUnavailable
from ..events import Event, EventWriter, events_for, new_event_id
from ..index.watch import SnapshotWatcher
from ..indicators import (
    MAX_URL_LENGTH,
    canonical_domain,
    domain_suffixes,
    ip_network,
    ip_to_int,
    url_lookup_expressions,
)
from ..matcher import Snapshot
from ..policy import ALLOWED, BLOCK, Verdict, decide

log = logging.getLogger("atr_proxy.proxy")

# A host that is already canonical (lower-case ASCII, no trailing dot) skips the
# canonicaliser: that is nearly every request.
_CANONICAL = re.compile(r"[a-z0-9_-]+(?:\.[a-z0-9_-]+)*")

# (name, what it is to the request: "host" | "sni", the URL to check with that name)
Name = tuple[str, str, str | None]


def canonical_host(raw: str | None) -> str | None:
    """The canonical form of a host as a client sent it (name or IP literal), or None if
    it is neither (such a host cannot match an indicator and will not resolve)."""
    if not raw:
        return None
    if _CANONICAL.fullmatch(raw):
        return raw
    if ip_to_int(raw) is not None:
        return raw.strip("[]").lower()
    try:
        return canonical_domain(raw)
    except ValueError:
        return None


def client_address(peername: tuple | None) -> str | None:
    """The client's address from a socket peer name, without an IPv6 zone."""
    if not peername:
        return None
    return str(peername[0]).split("%", 1)[0]


class Networks:
    """Membership in a list of canonical networks (``proxy.allow_clients``)."""

    def __init__(self, networks: Sequence[str]) -> None:
        self.ranges = []
        for text in networks:
            net = ip_network(text)
            self.ranges.append((net.version, int(net.network_address),
                                int(net.broadcast_address)))

    def __contains__(self, addr: str | None) -> bool:
        parsed = ip_to_int(addr) if addr else None
        if parsed is None:
            return False
        version, value = parsed
        return any(v == version and lo <= value <= hi for v, lo, hi in self.ranges)


class HostSet:
    """Names that cover themselves and every name under them (``proxy.no_intercept``)."""

    def __init__(self, names: Sequence[str]) -> None:
        self.names = frozenset(canonical_host(n.removeprefix("*.")) or n.lower() for n in names)

    def covers(self, host: str | None) -> bool:
        if not host or not self.names:
            return False
        if ip_to_int(host) is not None:
            return host in self.names
        return any(s in self.names for s in domain_suffixes(host))


@dataclass
class Tunnel:
    """What the proxy remembers of one client connection."""

    connect_host: str | None = None
    blocked: Event | None = None   # a block decided for the whole connection (its SNI)


class Enforcer:
    """The proxy's decisions and records, for one process."""

    def __init__(self, settings: Settings, *, index: Path | None = None,
                 poll_interval: float = 0.25) -> None:
        self.settings = settings
        self.proxy = settings.proxy
        self.index = Path(index) if index else settings.index
        self.allowed_clients = Networks(self.proxy.allow_clients)
        self.no_intercept = HostSet(self.proxy.no_intercept)
        self.fail_closed = self.proxy.fail == "closed"
        self.watcher = SnapshotWatcher(self.index, interval=poll_interval)
        self.tunnels: dict[str, Tunnel] = {}
        self.errors = 0
        self.jsonl = settings.events.jsonl
        if self.jsonl:  # checked now: an unwritable log is a start-up error, not a surprise
            try:
                Path(self.jsonl).parent.mkdir(parents=True, exist_ok=True)
                with open(self.jsonl, "a", encoding="ascii"):
                    pass
            except OSError as exc:
                raise ConfigError("events.jsonl",
                                  f"cannot write {self.jsonl}: {exc.strerror or exc}") from None
        self.events: EventWriter | None = None
        self._events_have_index = False
        self._stop_polling = None

    # -- life cycle --------------------------------------------------------------------
    def start(self) -> None:
        """Load the index (``proxy.fail`` decides if it cannot be read), then keep it
        current from a worker thread."""
        # The event writer opens the index read-write, which would create a missing one
        # (an empty index would then look like a healthy one): events go to the JSON-lines
        # file alone until the index has been read.
        try:
            snap = self.watcher.load()
            log.info("atr-proxy: enforcing %d indicators from %s (generation %d)",
                     snap.count(), self.index, snap.generation)
        except IndexUnavailable as exc:
            self.events = self._event_writer(None)
            how = ("every request is refused until it can be read (proxy.fail: closed)"
                   if self.fail_closed else
                   "traffic passes UNCHECKED until it can be read (proxy.fail: open)")
            # a warning, not an error: mitmdump exits when an error is logged during start-up
            log.warning("atr-proxy: CANNOT READ THE INDEX: %s; %s", exc, how)
            self.emit([Event(new_event_id(), time.time(), source="proxy", traffic="system",
                             action="block", verdict="block" if self.fail_closed else "allow",
                             detail=f"index unreadable at start: {exc}; {how}")])
        else:
            self.events = self._event_writer(self.index)
            self._events_have_index = True
        self._stop_polling = self.watcher.start_thread()

    def close(self) -> None:
        if self._stop_polling is not None:
            self._stop_polling.set()
        if self.events is not None:
            self.events.close()
        self.watcher.close()

    @property
    def snapshot(self) -> Snapshot:
        return self.watcher.snapshot

    @property
    def refusing_all(self) -> bool:
        """Fail closed and no index read yet: nothing can be checked, so nothing passes."""
        return self.fail_closed and not self.watcher.loaded

    # -- decisions ---------------------------------------------------------------------
    def client_allowed(self, client: str | None) -> bool:
        return client in self.allowed_clients

    def judge(self, client: str | None, names: Sequence[Name] = (),
              dest_ips: Sequence[str] = (), dest_host: str | None = None) -> Verdict:
        """The verdict for one connection or request.

        ``names`` are the destination names with their URL: the CONNECT or request host
        first, then a different Host header or SNI. Each name is decided on its own, so
        that an exception for one name never excuses another (a fronted name behind an
        excepted CDN stays blocked). ``dest_ips`` are checked with ``dest_host`` (by
        default the first name) for destination exceptions.
        """
        if self.refusing_all:
            return Verdict(BLOCK)
        snap = self.snapshot
        if not _any_hit(snap, client, names, dest_ips):
            return ALLOWED  # the common case: one look-up pass, nothing to decide
        if dest_host is None and names:
            dest_host = names[0][0]
        groups: list[tuple[list, str | None, str | None, str | None]] = [
            (snap.check(client=client), None, None, None)]
        for name, target, url in names:
            groups.append((snap.check(host=name, url=url, host_target=target), name, url,
                           None))
        for ip in dest_ips:
            groups.append((snap.check(dest_ip=ip), dest_host, None, ip))
        kept, excepted = [], []
        for hits, host, url, ip in groups:
            if hits:
                verdict = decide(hits, snap.exceptions, client=client, host=host, url=url,
                                 dest_ip=ip)
                kept += verdict.hits
                excepted += verdict.excepted
        final = decide(kept)  # exceptions are applied: this orders hits, finds the blocker
        return replace(final, excepted=tuple(excepted)) if excepted else final

    def listed_address(self, addresses: Sequence[str]) -> str | None:
        """The first of ``addresses`` that an IP indicator lists, else the first one (the
        address connected to): what an event names as the destination address."""
        snap = self.snapshot
        for address in addresses:
            if snap.match_ip(address):
                return address
        return addresses[0] if addresses else None

    def may_intercept(self, *hosts: str | None) -> bool:
        """Whether ``proxy.intercept`` and ``proxy.no_intercept`` allow decrypting a TLS
        connection to these names at all."""
        return self.proxy.intercept != "none" and not any(
            self.no_intercept.covers(h) for h in hosts)

    def should_intercept(self, *hosts: str | None) -> bool:
        """Whether to decrypt a TLS connection to these names (SNI, CONNECT host):
        ``all``, or ``auto`` and one of them (or a parent) carries URL indicators."""
        if not self.may_intercept(*hosts):
            return False
        if self.proxy.intercept == "all":
            return True
        snap = self.snapshot
        return any(h is not None and snap.has_url_indicators(h) for h in hosts)

    # -- records -----------------------------------------------------------------------
    def report(self, verdict: Verdict, *, client: str | None, dest_host: str | None = None,
               dest_ip: str | None = None, dest_port: int | None = None,
               url: str | None = None, detail: str | None = None,
               client_monitor: bool = False) -> Event | None:
        """Record a verdict's events; returns the block event (its id is on the block
        page). Monitored hits on the client address are recorded once per connection
        (``client_monitor``), not once per request."""
        if verdict.action == "allow":
            return None
        traffic = traffic_of(client)
        if verdict.blocked and verdict.decisive is None:  # refusing all: no indicator
            event = Event(new_event_id(), time.time(), source="proxy", traffic=traffic,
                          action="block", verdict="block", client_ip=client,
                          dest_host=dest_host, dest_ip=dest_ip, dest_port=dest_port, url=url,
                          detail=detail or "the index cannot be read and proxy.fail is closed")
            self.emit([event])
            return event
        events = events_for(verdict, source="proxy", traffic=traffic, client_ip=client,
                            dest_host=dest_host, dest_ip=dest_ip, dest_port=dest_port,
                            url=url, detail=detail)
        blocked = events[0] if verdict.decisive is not None else None
        if not client_monitor:
            events = [e for e in events if e is blocked or e.target != "client"]
        self.emit(events)
        if blocked is not None:
            log.warning("blocked %s for %s: %s %s (feed %s, event %s)",
                        url or dest_ip or dest_host or "connection", client, blocked.kind,
                        blocked.indicator, blocked.feed, blocked.event_id)
        return blocked

    def count_check(self, client: str | None) -> None:
        """Count one request or CONNECT checked (``atr_checks_total``); a dict increment."""
        if self.events is not None:
            self.events.count_check("proxy", traffic_of(client))

    def emit(self, events: list[Event]) -> None:
        if not events:
            return
        if not self._events_have_index and self.watcher.loaded:
            # the index can be read now: events go to its table from here on
            if self.events is not None:
                self.events.close(timeout=1.0)
            self.events = self._event_writer(self.index)
            self._events_have_index = True
        if self.events is not None:
            self.events.emit(events)

    def _event_writer(self, index: Path | None) -> EventWriter:
        return EventWriter(index, self.jsonl, syslog=self.settings.events.syslog)

    def failure(self, where: str) -> bool:
        """Log an exception raised while checking; True if the flow must be refused
        (``proxy.fail: closed``). Never raises."""
        self.errors += 1
        log.exception("atr-proxy: error in %s; %s", where,
                      "refusing the flow (proxy.fail: closed)" if self.fail_closed
                      else "letting the flow pass (proxy.fail: open)")
        return self.fail_closed

    # -- connections -------------------------------------------------------------------
    def tunnel(self, client_id: str) -> Tunnel:
        tunnel = self.tunnels.get(client_id)
        if tunnel is None:
            tunnel = self.tunnels[client_id] = Tunnel()
        return tunnel

    def forget(self, client_id: str) -> None:
        self.tunnels.pop(client_id, None)


def _any_hit(snap: Snapshot, client: str | None, names: Sequence[Name],
             dest_ips: Sequence[str]) -> bool:
    """Whether anything about a request hits: the first name and address in one check."""
    name, target, url = names[0] if names else (None, "host", None)
    ip = dest_ips[0] if dest_ips else None
    if snap.check(client=client, host=name, url=url, dest_ip=ip, host_target=target):
        return True
    return any(snap.check(host=n, url=u, host_target=t) for n, t, u in names[1:]) or any(
        snap.check(dest_ip=ip) for ip in dest_ips[1:])


# Percent-escaping can triple a URL's length; below this it always canonicalises.
_SURELY_CHECKABLE = MAX_URL_LENGTH // 3


def checkable_url(url: str) -> str | None:
    """``url`` as it will be checked. One too long to canonicalise (the matcher would skip
    it) is cut to its leading path, so that padding a URL cannot slip it past the
    path-prefix indicators of its host. None if even that does not parse."""
    if len(url) <= _SURELY_CHECKABLE:
        return url
    try:
        url_lookup_expressions(url)
        return url
    except ValueError:
        pass
    short = url.partition("#")[0].partition("?")[0][:2048]
    try:
        url_lookup_expressions(short)
    except ValueError:
        return None
    return short


def traffic_of(client: str | None) -> str:
    """``system`` for traffic from the proxy's own machine (a loopback client),
    ``forwarded`` for traffic the proxy relays for other hosts."""
    parsed = ip_to_int(client) if client else None
    if parsed is None:
        return "forwarded"
    if parsed[0] == 4:
        return "system" if parsed[1] >> 24 == 127 else "forwarded"
    return "system" if parsed[1] == 1 else "forwarded"


__all__ = ["Enforcer", "HostSet", "Networks", "Tunnel", "canonical_host", "client_address",
           "traffic_of"]
