"""The asyncio UDP and TCP front end of the resolver, and the process around it.

UDP is served straight from the event loop's readiness callback (``loop.add_reader``):
each wake-up drains up to a batch of datagrams and answers those that need no waiting
before it returns. That costs a fraction of asyncio's one-datagram-per-wake-up
``DatagramProtocol`` (about 70k vs 21k trivial answers a second, measured here), and is
what lets blocked and cached names be answered at C-resolver rates.

TCP (RFC 7766) uses asyncio streams: length-prefixed messages, several in flight per
connection and answered as they complete, an idle timeout, a cap on connections and on the
frame size. Whatever a client sends, the worst it gets is an error answer or a closed
connection; nothing it sends can stop the server.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..config import DnsSettings, EventSettings
from ..errors import ConfigError
from ..events import EventWriter
from ..indicators import ip_to_int
from .access import ClientAccess, RateLimit
from .blocking import AnswerInspection, ClientIndicator, IndexGate, NamePolicy, Sinkhole
from .cache import Cache
from .chain import Link, Reply, Request, chain, start
from .querylog import EventFold, QueryLog
from .upstream import Upstream, system_upstreams
from .wire import (
    SERVFAIL,
    BadQuery,
    Drop,
    Query,
    build_reply,
    error_reply,
    parse_query,
    truncated,
)

log = logging.getLogger("atr_proxy.dns")

UDP_BATCH = 128
MAX_TCP_CLIENTS = 256
MAX_TCP_QUERY = 4096          # bytes; a larger frame closes the connection
MAX_TCP_INFLIGHT = 16         # queries of one connection being answered at once
MAX_TCP_QUERIES = 10_000      # per connection, then it is closed
TCP_IDLE_SECONDS = 10.0
TCP_MAX_BUFFER = 256 * 1024   # unread answers queued for a client that does not read


@dataclass
class Stats:
    """Counters for health and metrics."""

    queries: int = 0
    answered: int = 0
    dropped: int = 0
    bad: int = 0
    errors: int = 0
    tcp_connections: int = 0
    by_source: dict[str, int] = field(default_factory=dict)


def build_chain(settings: DnsSettings, watcher, events: EventWriter | None,  # type: ignore[no-untyped-def]
                upstreams: list[tuple[str, int]]) -> tuple[Link, dict[str, Link]]:
    """The resolver chain for ``settings``; also returns its links by name."""
    sinkhole = Sinkhole(settings.sinkhole, settings.sinkhole_ttl, settings.sinkhole_address)
    window = settings.event_window
    fold = EventFold(settings.sinkhole_ttl if window is None else window)
    links: dict[str, Link] = {"query_log": QueryLog(events, log_queries=settings.query_log),
                              "access": ClientAccess(settings.allow_clients)}
    if settings.rate_limit > 0:
        links["rate_limit"] = RateLimit(settings.rate_limit)
    links.update(
        gate=IndexGate(watcher, events=events),
        client=ClientIndicator(sinkhole, fold),
        name=NamePolicy(sinkhole, fold),
        inspection=AnswerInspection(sinkhole, fold),
        cache=Cache(settings.cache_size),
        upstream=Upstream(upstreams, settings.timeout),
    )
    return chain(*links.values()), links


def _client_text(host: str) -> str:
    if ":" not in host:
        return host
    if host.startswith("::ffff:") and "." in host:
        return host[7:]  # an IPv4 client on a dual-stack socket
    return host.partition("%")[0]


def _bind(host: str, port: int, kind: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, kind)
    try:
        if kind == socket.SOCK_STREAM:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        if kind == socket.SOCK_DGRAM:
            for opt in (socket.SO_RCVBUF, socket.SO_SNDBUF):
                try:
                    sock.setsockopt(socket.SOL_SOCKET, opt, 4 * 1024 * 1024)
                except OSError:
                    pass
        sock.bind((host, port))
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def _bind_both(host: str, port: int) -> tuple[socket.socket, socket.socket]:
    """UDP and TCP sockets on one port (port 0: a free one, the same for both)."""
    for _attempt in range(20):
        udp = _bind(host, port, socket.SOCK_DGRAM)
        try:
            tcp = _bind(host, udp.getsockname()[1], socket.SOCK_STREAM)
        except OSError:
            udp.close()
            if port:
                raise
            continue
        return udp, tcp
    raise OSError(f"no port free for both UDP and TCP on {host}")


class DnsServer:
    """The resolver's sockets and chain. ``await start()``, then ``await close()``."""

    def __init__(self, settings: DnsSettings, watcher, events: EventWriter | None = None,  # type: ignore[no-untyped-def]
                 upstreams: list[tuple[str, int]] | None = None) -> None:
        self.settings = settings
        self.watcher = watcher
        self.events = events
        upstreams = list(upstreams or settings.upstreams or system_upstreams())
        listen = settings.listen
        # never forward to ourselves (resolv.conf pointing at this very resolver)
        self.upstreams = [u for u in upstreams if u != listen]
        if upstreams and not self.upstreams:
            raise ValueError(f"the only upstream, {listen[0]}:{listen[1]}, is this resolver"
                             " itself: set dns.upstreams or --upstream")
        self.head, self.links = build_chain(settings, watcher, events, self.upstreams)
        self.stats = Stats()
        self.address: tuple[str, int] = listen
        self._udp: socket.socket | None = None
        self._tcp: asyncio.base_events.Server | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tcp_tasks: set[asyncio.Task] = set()
        self._client_keys: dict[str, tuple[int, int] | None] = {}

    @property
    def port(self) -> int:
        return self.address[1]

    async def start(self) -> None:
        """Bind UDP and TCP on ``dns.listen`` (port 0: a free port, the same for both)."""
        self._loop = asyncio.get_running_loop()
        host, port = self.settings.listen
        try:
            udp, tcp = _bind_both(host, port)
        except OSError as exc:
            raise ConfigError("dns.listen", f"cannot serve on {host}:{port}: "
                              f"{exc.strerror or exc} (port in use, or a port below 1024"
                              " without root or CAP_NET_BIND_SERVICE)") from None
        try:
            self.links["upstream"].open()
        except OSError as exc:
            udp.close()
            tcp.close()
            raise ConfigError("dns.upstreams", f"cannot use the upstreams: {exc}") from None
        self._udp = udp
        self.address = (host, udp.getsockname()[1])
        self._loop.add_reader(udp.fileno(), self._udp_readable)
        self._tcp = await asyncio.start_server(self._tcp_client, sock=tcp)

    async def close(self) -> None:
        if self._udp is not None:
            self._loop.remove_reader(self._udp.fileno())
            self._udp.close()
            self._udp = None
        if self._tcp is not None:
            self._tcp.close()
            for task in list(self._tcp_tasks):
                task.cancel()
            await asyncio.gather(*self._tcp_tasks, return_exceptions=True)
            await self._tcp.wait_closed()
            self._tcp = None
        self.links["upstream"].close()

    # -- answering -----------------------------------------------------------------------
    def _count(self, reply: Reply) -> None:
        by = self.stats.by_source
        by[reply.source] = by.get(reply.source, 0) + 1

    def _servfail(self, query: Query) -> Reply:
        return Reply(build_reply(query, SERVFAIL), SERVFAIL, "error")

    def answer(self, data: bytes, client: str, transport: str, send) -> bool:  # type: ignore[no-untyped-def]
        """Answer one message: ``send(query_or_None, wire)`` now or when it is ready.
        False if the message gets no answer at all (not a query, or too short)."""
        stats = self.stats
        stats.queries += 1
        try:
            query = parse_query(data)
        except Drop:
            stats.dropped += 1
            return False
        except BadQuery as bad:
            stats.bad += 1
            send(bad.query, error_reply(bad))
            return True
        key = self._client_keys.get(client, False)
        if key is False:
            if len(self._client_keys) >= 65_536:
                self._client_keys.clear()
            key = self._client_keys[client] = ip_to_int(client)
        request = Request(query, client, transport, time.perf_counter(), key)

        def done(reply: Reply | None, error: BaseException | None) -> None:
            if error is not None:
                if isinstance(error, asyncio.CancelledError):
                    return
                stats.errors += 1
                log.error("answering %s from %s failed", query.qname, client,
                          exc_info=error)
                reply = self._servfail(query)
            self._count(reply)
            send(query, reply.wire)

        try:
            reply = start(self.head, request, done)
        except Exception:
            stats.errors += 1
            log.exception("answering %s from %s failed", query.qname, client)
            reply = self._servfail(query)
        if reply is not None:
            self._count(reply)
            send(query, reply.wire)
        return True

    # -- UDP -----------------------------------------------------------------------------
    def _udp_readable(self) -> None:
        sock = self._udp
        if sock is None:
            return
        recvfrom = sock.recvfrom
        answer = self.answer
        for _ in range(UDP_BATCH):
            try:
                data, addr = recvfrom(65535)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            answer(data, _client_text(addr[0]), "udp", _UdpReply(self, addr))

    def _udp_send(self, query: Query | None, wire: bytes, addr: tuple) -> None:
        sock = self._udp
        if sock is None:
            return
        if query is not None and len(wire) > query.max_udp:
            wire = truncated(query, wire)
        try:
            sock.sendto(wire, addr)
            self.stats.answered += 1
        except (BlockingIOError, InterruptedError):
            self.stats.dropped += 1  # the send buffer is full: the client will retry
        except OSError as exc:
            log.debug("cannot answer %s: %s", addr, exc)

    # -- TCP -----------------------------------------------------------------------------
    async def _tcp_client(self, reader: asyncio.StreamReader,
                          writer: asyncio.StreamWriter) -> None:
        stats = self.stats
        if stats.tcp_connections >= MAX_TCP_CLIENTS:
            writer.close()
            return
        stats.tcp_connections += 1
        task = asyncio.current_task()
        self._tcp_tasks.add(task)
        peer = writer.get_extra_info("peername") or ("", 0)
        client = _client_text(str(peer[0]))
        inflight: set[asyncio.Future] = set()
        state = {"open": True}

        def send(query: Query | None, wire: bytes) -> None:
            if not state["open"] or writer.is_closing():
                return
            if writer.transport.get_write_buffer_size() > TCP_MAX_BUFFER:
                state["open"] = False  # a client that does not read its answers
                writer.close()
                return
            writer.write(len(wire).to_bytes(2, "big") + wire)
            stats.answered += 1

        try:
            for _ in range(MAX_TCP_QUERIES):
                try:
                    head = await asyncio.wait_for(reader.readexactly(2), TCP_IDLE_SECONDS)
                    size = int.from_bytes(head, "big")
                    if size == 0 or size > MAX_TCP_QUERY:
                        stats.bad += 1
                        break
                    data = await asyncio.wait_for(reader.readexactly(size), TCP_IDLE_SECONDS)
                except (asyncio.IncompleteReadError, TimeoutError, ConnectionError):
                    break
                waiter = self._loop.create_future()

                def finish(query: Query | None, wire: bytes, waiter=waiter) -> None:
                    send(query, wire)
                    if not waiter.done():
                        waiter.set_result(None)

                if not self.answer(data, client, "tcp", finish):
                    continue  # not a query: nothing to wait for
                if not waiter.done():
                    inflight.add(waiter)
                    waiter.add_done_callback(inflight.discard)
                    if len(inflight) >= MAX_TCP_INFLIGHT:
                        await asyncio.wait(inflight, return_when=asyncio.FIRST_COMPLETED)
                elif not state["open"]:
                    break
                if writer.transport.get_write_buffer_size():
                    await writer.drain()
            if inflight:
                await asyncio.wait(inflight, timeout=self.settings.timeout + 1.0)
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            state["open"] = False
            stats.tcp_connections -= 1
            self._tcp_tasks.discard(task)
            writer.close()


class _UdpReply:
    """``send`` for one UDP client: a small callable instead of a closure per query."""

    __slots__ = ("server", "addr")

    def __init__(self, server: DnsServer, addr: tuple) -> None:
        self.server = server
        self.addr = addr

    def __call__(self, query: Query | None, wire: bytes) -> None:
        self.server._udp_send(query, wire, self.addr)


# -- the process -----------------------------------------------------------------------
def _one_malloc_arena() -> None:
    """glibc gives every thread that allocates its own heap arena. The snapshot is built
    and events are written from worker threads, and each arena kept ~8 MB resident after
    a 1M-name load (measured). Under the GIL one thread allocates at a time: one arena is
    enough (as MALLOC_ARENA_MAX=1 would say; a no-op off glibc)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").mallopt(-8, 1)  # M_ARENA_MAX
    except (OSError, AttributeError):
        pass


async def run_resolver(settings: DnsSettings, index_path: str | Path,
                       events: EventSettings | None = None,
                       stop: asyncio.Event | None = None,
                       announce=print) -> int:  # type: ignore[no-untyped-def]
    """Run the resolver until ``stop`` is set (or SIGINT/SIGTERM): bind, load the index
    in a worker thread (answering SERVFAIL "Not Ready" meanwhile), keep it current."""
    from ..errors import IndexUnavailable
    from ..index.watch import SnapshotWatcher

    _one_malloc_arena()
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError, ValueError):
            pass
    started = time.perf_counter()
    watcher = SnapshotWatcher(index_path)
    writer = EventWriter(index_path, events.jsonl if events else None,
                         syslog=events.syslog if events else None)
    try:
        server = DnsServer(settings, watcher, writer)
        await server.start()
    except BaseException:
        writer.close()
        watcher.close()
        raise
    host, port = server.address
    shown = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    announce(f"atr-proxy dns: listening on udp+tcp {shown}; upstreams "
             f"{', '.join(s.label for s in server.links['upstream'].servers)};"
             f" sinkhole {settings.sinkhole}; index {index_path}", flush=True)
    try:
        snap = await asyncio.to_thread(watcher.load)
        gc.freeze()  # what exists now lives as long as the process: keep GC passes short
        announce(f"atr-proxy dns: enforcing {snap.count()} indicators (generation"
                 f" {snap.generation}), ready {time.perf_counter() - started:.2f} s after"
                 " start", flush=True)
    except IndexUnavailable as exc:
        announce(f"atr-proxy dns: {exc}; answering SERVFAIL until the index can be read",
                 flush=True)
    poller = asyncio.create_task(watcher.run(stop))
    try:
        await stop.wait()
    finally:
        await server.close()
        poller.cancel()
        await asyncio.gather(poller, return_exceptions=True)
        writer.close()
        watcher.close()
    return 0
