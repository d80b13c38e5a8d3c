"""Who may ask: the client access list and the per-client rate limit."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

from ..indicators import ip_network
from .chain import Link, Reply, Request
from .wire import EDE_OTHER, EDE_PROHIBITED, REFUSED, build_reply

MAX_REMEMBERED_CLIENTS = 65_536


class ClientAccess(Link):
    """Clients outside ``networks`` get REFUSED: the resolver is never open."""

    def __init__(self, networks: Iterable[str], next: Link | None = None) -> None:
        super().__init__(next)
        self.ranges = []
        for text in networks:
            net = ip_network(text)
            self.ranges.append((net.version, int(net.network_address),
                                int(net.broadcast_address)))
        self._known: dict[str, bool] = {}  # client address -> allowed
        self.refused = 0

    def allows(self, request: Request) -> bool:
        key = request.client_key
        if key is None:
            return False
        version, value = key
        return any(v == version and lo <= value <= hi for v, lo, hi in self.ranges)

    async def resolve(self, request: Request) -> Reply:
        allowed = self._known.get(request.client)
        if allowed is None:
            allowed = self.allows(request)
            if len(self._known) >= MAX_REMEMBERED_CLIENTS:
                self._known.clear()
            self._known[request.client] = allowed
        if not allowed:
            self.refused += 1
            return Reply(build_reply(request.query, REFUSED,
                                     ede=(EDE_PROHIBITED, "client not allowed")),
                         REFUSED, "refused", detail="client not in dns.allow_clients")
        return await self.next.resolve(request)


class RateLimit(Link):
    """A token bucket per client address: ``rate`` queries a second, bursts of
    ``burst``; a client over its rate gets REFUSED until its bucket refills."""

    def __init__(self, rate: float, burst: float | None = None, next: Link | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(next)
        self.rate = rate
        self.burst = burst if burst is not None else max(1.0, rate)
        self.clock = clock
        self._buckets: dict[str, list[float]] = {}  # client -> [tokens, last refill]
        self.limited = 0

    def _take(self, client: str) -> bool:
        now = self.clock()
        bucket = self._buckets.get(client)
        if bucket is None:
            if len(self._buckets) >= MAX_REMEMBERED_CLIENTS:
                self._prune(now)
            self._buckets[client] = [self.burst - 1.0, now]
            return True
        tokens = min(self.burst, bucket[0] + (now - bucket[1]) * self.rate)
        bucket[1] = now
        if tokens < 1.0:
            bucket[0] = tokens
            return False
        bucket[0] = tokens - 1.0
        return True

    def _prune(self, now: float) -> None:
        # a bucket that would be full again carries no information: forget it
        full_after = self.burst / self.rate
        for client in [c for c, (_, last) in self._buckets.items() if now - last > full_after]:
            del self._buckets[client]
        if len(self._buckets) >= MAX_REMEMBERED_CLIENTS:
            self._buckets.clear()

    async def resolve(self, request: Request) -> Reply:
        if not self._take(request.client):
            self.limited += 1
            return Reply(build_reply(request.query, REFUSED, ede=(EDE_OTHER, "rate limited")),
                         REFUSED, "refused", detail="rate limited")
        return await self.next.resolve(request)
