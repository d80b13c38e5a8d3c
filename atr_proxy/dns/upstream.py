"""The upstream link: forward a query to the configured resolvers and bring back the reply.

UDP first, over a few connected sockets per upstream (random source ports and random
16-bit ids, checked against the question on the way back); TCP when the reply comes back
truncated. The whole exchange has one deadline (``dns.timeout``), shared out across the
upstreams: healthy ones first in configured order, then those that failed recently. An
upstream that times out, refuses, sends garbage or is unreachable (ICMP) is marked down
for a while (2, 4, ... 60 s) and the next one is asked. If none answers in time the
client gets SERVFAIL with EDE 22 "No Reachable Authority".

The client's query bytes are forwarded with only the id changed, so its EDNS (buffer
size, DO bit, options) passes through; the reply is relayed the same way.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Iterable
from pathlib import Path

from .chain import Link, Reply, Request, Waiter
from .wire import (
    AA,
    EDE_NO_REACHABLE_AUTHORITY,
    QR,
    RA,
    REFUSED,
    SERVFAIL,
    Query,
    WireError,
    build_reply,
    same_question,
    scan_reply,
)

log = logging.getLogger("atr_proxy.dns.upstream")

CHANNELS_PER_UPSTREAM = 4
RECV_BATCH = 64
MAX_DOWN_SECONDS = 60.0
SWEEP_SECONDS = 0.02  # how often queries past their deadline are timed out


class UpstreamError(Exception):
    """An upstream answered, but not usefully (refused, wrong question)."""


class LocalBusy(UpstreamError):
    """Our side had no room (socket buffer full, ids exhausted): not the upstream's
    fault, so it is not marked down for it."""


def system_upstreams(path: str | Path = "/etc/resolv.conf") -> list[tuple[str, int]]:
    """The ``nameserver`` lines of resolv.conf as (host, 53)."""
    out: list[tuple[str, int]] = []
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return out
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0] == "nameserver":
            out.append((parts[1].split("%")[0], 53))
    return out


class _Ids:
    """Unpredictable 16-bit query ids, drawn from the OS's random bytes in bulk."""

    def __init__(self) -> None:
        self._pool = b""
        self._at = 0

    def next(self) -> int:
        at = self._at
        if at + 2 > len(self._pool):
            self._pool, at = os.urandom(4096), 0
        self._at = at + 2
        return (self._pool[at] << 8) | self._pool[at + 1]


_ids = _Ids()


class _Channel:
    """One connected UDP socket to one upstream, with its queries in flight. A query's
    deadline is kept with it; the Upstream link's sweeper expires late ones (one timer
    for all, rather than one per query)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, family: int, address: tuple) -> None:
        self.loop = loop
        self.sock = socket.socket(family, socket.SOCK_DGRAM)
        self.sock.setblocking(False)
        self.sock.connect(address)
        # id -> (waiter, question name in lower case, type and class, deadline)
        self.pending: dict[int, tuple[Waiter, bytes, bytes, float]] = {}
        loop.add_reader(self.sock.fileno(), self._readable)

    def ask(self, query: Query, deadline: float) -> tuple[int, Waiter]:
        pending = self.pending
        for _ in range(32):
            uid = _ids.next()
            if uid not in pending:
                break
        else:
            raise LocalBusy("too many queries in flight")
        waiter = Waiter()
        data, qend = query.data, query.qend
        pending[uid] = (waiter, data[12:qend - 4].lower(), data[qend - 4:qend], deadline)
        try:
            self.sock.send(uid.to_bytes(2, "big") + data[2:])
        except (BlockingIOError, InterruptedError):
            del pending[uid]
            raise LocalBusy("socket buffer full") from None
        except OSError:
            del pending[uid]
            raise
        return uid, waiter

    def forget(self, uid: int) -> None:
        self.pending.pop(uid, None)

    def _readable(self) -> None:
        recv, pending = self.sock.recv, self.pending
        for _ in range(RECV_BATCH):
            try:
                data = recv(65535)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # ICMP port unreachable and friends: fail fast
                self._fail_all(exc)
                return
            if len(data) < 12 or not data[2] & (QR >> 8):
                continue
            item = pending.get(int.from_bytes(data[:2], "big"))
            if item is None:
                continue  # late, or not ours
            waiter, name, type_class, _ = item
            qend = 12 + len(name) + 4
            if data[12:qend - 4].lower() != name or data[qend - 4:qend] != type_class:
                continue  # an answer to another question: ignore it, keep waiting
            del pending[int.from_bytes(data[:2], "big")]
            waiter.set_result(data)  # the query goes on from here, right now

    def expire(self, now: float) -> bool:
        """Time out the queries past their deadline; True if any are still waiting."""
        pending = self.pending
        for uid, item in list(pending.items()):
            if item[3] <= now:
                del pending[uid]
                item[0].set_exception(TimeoutError("timed out"))
        return bool(pending)

    def _fail_all(self, exc: BaseException) -> None:
        waiting = list(self.pending.values())
        self.pending.clear()
        for waiter, _, _, _ in waiting:
            waiter.set_exception(ConnectionError(str(exc) or type(exc).__name__))

    def close(self) -> None:
        try:
            self.loop.remove_reader(self.sock.fileno())
        except (ValueError, OSError):
            pass
        self._fail_all(ConnectionError("closed"))
        self.sock.close()


class UpstreamServer:
    """One upstream resolver and what we know of its health."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self.label = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self.fails = 0
        self.down_until = 0.0
        self.answered = 0
        self.failed_queries = 0
        self._channels: list[_Channel] = []
        self._next = 0

    def open(self, loop: asyncio.AbstractEventLoop) -> None:
        info = socket.getaddrinfo(self.host, self.port, type=socket.SOCK_DGRAM)[0]
        family, address = info[0], info[4]
        self._channels = [_Channel(loop, family, address) for _ in range(CHANNELS_PER_UPSTREAM)]

    def close(self) -> None:
        for channel in self._channels:
            channel.close()
        self._channels = []

    def mark_failed(self, now: float) -> None:
        self.fails += 1
        self.failed_queries += 1
        self.down_until = now + min(MAX_DOWN_SECONDS, 2.0 ** min(self.fails, 6))

    def mark_ok(self) -> None:
        self.fails = 0
        self.down_until = 0.0
        self.answered += 1

    async def query_udp(self, query: Query, deadline: float) -> bytes:
        if not self._channels:
            raise ConnectionError("closed")
        channel = self._channels[self._next % len(self._channels)]
        self._next += 1
        uid, waiter = channel.ask(query, deadline)
        try:
            return await waiter
        finally:
            if not waiter.done:  # cancelled while waiting
                channel.forget(uid)

    def expire(self, now: float) -> bool:
        busy = False
        for channel in self._channels:
            if channel.pending and channel.expire(now):
                busy = True
        return busy

    async def query_tcp(self, query: Query, timeout: float) -> bytes:
        uid = _ids.next().to_bytes(2, "big")
        # The chain may run outside an asyncio Task, and from Python 3.12 on wait_for (like
        # asyncio.timeout) needs one: the rare TCP retry gets a Task of its own.
        data = await asyncio.ensure_future(
            asyncio.wait_for(self._exchange_tcp(uid + query.data[2:]), timeout))
        if data[:2] != uid:
            raise WireError("a TCP answer with another id")
        return data

    async def _exchange_tcp(self, message: bytes) -> bytes:
        reader, writer = await asyncio.open_connection(self.host, self.port)
        try:
            writer.write(len(message).to_bytes(2, "big") + message)
            size = int.from_bytes(await reader.readexactly(2), "big")
            return await reader.readexactly(size)
        finally:
            writer.close()


def _reason(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, asyncio.IncompleteReadError):
        return "connection closed"
    return str(exc) or type(exc).__name__


class Upstream(Link):
    """The last link: asks the upstream resolvers."""

    def __init__(self, servers: Iterable[tuple[str, int]], timeout: float = 2.0) -> None:
        super().__init__(None)
        self.servers = [UpstreamServer(host, port) for host, port in servers]
        if not self.servers:
            raise ValueError("no upstream resolver: set dns.upstreams or --upstream")
        self.timeout = timeout
        self.opened = False
        self._sweeper: asyncio.TimerHandle | None = None
        self._order = list(self.servers)
        self._review_at = 0.0  # when the health order must be looked at again

    def open(self) -> None:
        """Open the upstream sockets (needs the running loop)."""
        loop = asyncio.get_running_loop()
        for server in self.servers:
            server.open(loop)
        self.opened = True

    def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for server in self.servers:
            server.close()
        self.opened = False

    def _sweep(self) -> None:
        loop = asyncio.get_running_loop()
        busy = False
        now = loop.time()
        for server in self.servers:
            if server.expire(now):
                busy = True
        self._sweeper = loop.call_later(SWEEP_SECONDS, self._sweep) if busy else None

    def _ordered(self, now: float) -> list[UpstreamServer]:
        """Healthy upstreams first, in configured order, then those marked down."""
        if now >= self._review_at:
            self._order = sorted(self.servers, key=lambda s: s.down_until > now)
            downs = [s.down_until for s in self.servers if s.down_until > now]
            self._review_at = min(downs) if downs else float("inf")
        return self._order

    def _health_changed(self) -> None:
        self._review_at = 0.0

    async def resolve(self, request: Request) -> Reply:
        q = request.query
        loop = asyncio.get_running_loop()
        if not self.opened:
            self.open()
        now = loop.time()
        deadline = now + self.timeout
        order = self._ordered(now)
        errors: list[str] = []
        for i, server in enumerate(order):
            now = loop.time()
            remaining = deadline - now
            if remaining <= 0.0:
                break
            if self._sweeper is None:
                self._sweeper = loop.call_later(SWEEP_SECONDS, self._sweep)
            try:
                data = await server.query_udp(q, now + remaining / (len(order) - i))
                scan = scan_reply(data)
                if scan.truncated:
                    data = await server.query_tcp(q, max(deadline - loop.time(), 0.001))
                    scan = scan_reply(data)
                    if not same_question(q, data, scan):
                        raise WireError("a TCP answer to another question")
                if scan.rcode == REFUSED:
                    raise UpstreamError("refused")
            except (TimeoutError, OSError, EOFError, WireError, UpstreamError) as exc:
                if not isinstance(exc, LocalBusy):
                    server.mark_failed(loop.time())
                    self._health_changed()
                errors.append(f"{server.label} {_reason(exc)}")
                continue
            if server.fails:
                self._health_changed()
            server.mark_ok()
            # relayed as it came, with the client's id; we are not authoritative
            flags = ((scan.flags & ~AA) | RA).to_bytes(2, "big")
            return Reply(q.data[:2] + flags + data[4:], scan.rcode, "upstream", scan=scan,
                         detail=server.label)
        text = "; ".join(errors) if errors else "timed out"
        return Reply(build_reply(q, SERVFAIL, ede=(EDE_NO_REACHABLE_AUTHORITY,
                                                   f"no upstream answered: {text}")),
                     SERVFAIL, "servfail", detail=f"no upstream answered: {text}")
