"""The resolver as a chain of small links with one shape (after Blocky's resolvers).

Every concern is a :class:`Link` with ``async resolve(request) -> Reply`` and a ``next``
link it may call. A link either answers itself (REFUSED, a sinkhole, a cached answer) or
awaits ``next`` and looks at, or replaces, what comes back. The order, outermost first::

    QueryLog         events for every block and monitored hit; the optional query log
    ClientAccess     clients outside dns.allow_clients: REFUSED (never an open resolver)
    RateLimit        per-client token bucket: REFUSED (only when dns.rate_limit is set)
    IndexGate        fixes the snapshot for this query; SERVFAIL until one is loaded
    ClientIndicator  the client's address against IP indicators
    NamePolicy       the query name against domain indicators
    AnswerInspection CNAME/DNAME/SVCB names and A/AAAA/hint addresses of the answer
    Cache            upstream answers, TTL-respecting, LRU-bounded, negative per RFC 2308
    Upstream         UDP with TCP retry on truncation, timeout, failover

A query travels down and its answer back up, so the answer passes answer inspection after
the cache (a cached answer is inspected again under a newer snapshot) and the query log
sees the final answer. Policy is checked before the cache, so a name that became an
indicator is sinkholed on its next query even while an allowed answer is cached.

Most queries never wait (blocked, cached, refused): :func:`start` runs the chain's
coroutine eagerly, like Python 3.12's eager tasks, and only a query that really waits
(for an upstream) becomes an asyncio task.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING

from ..indicators import ip_to_int
from .wire import Query, Scan

if TYPE_CHECKING:
    from ..matcher import Snapshot
    from ..policy import Verdict


class Request:
    """One query on its way through the chain."""

    __slots__ = ("query", "client", "client_key", "transport", "snap", "findings",
                 "started")

    def __init__(self, query: Query, client: str, transport: str, started: float = 0.0,
                 client_key: tuple[int, int] | None | bool = False) -> None:
        self.query = query
        self.client = client                  # the client's address, as text
        # (version, int) for IP look-ups
        self.client_key = client_key if client_key is not False else ip_to_int(client)
        self.transport = transport            # udp | tcp
        self.snap: Snapshot | None = None     # fixed for the whole query by IndexGate
        # (verdict, dest_ip, event_id, report) of every stage that had hits; report is
        # False for a repeat folded into an earlier event
        self.findings: list[tuple[Verdict, str | None, str | None, bool]] = []
        self.started = started


class Reply:
    """The answer a link gives: the bytes for the client and where they came from."""

    __slots__ = ("wire", "rcode", "source", "scan", "entry", "detail")

    def __init__(self, wire: bytes, rcode: int, source: str, *, scan: Scan | None = None,
                 entry: object = None, detail: str = "") -> None:
        self.wire = wire        # the reply, with the client's id and question
        self.rcode = rcode
        self.source = source    # refused | error | sinkhole | cache | upstream | servfail
        self.scan = scan        # names and addrs of an upstream answer, for inspection
        self.entry = entry      # the cache entry this answer is (or was stored as)
        self.detail = detail


class Link:
    """One concern of the resolver; ``next`` is the rest of the chain."""

    next: Link | None = None

    def __init__(self, next: Link | None = None) -> None:
        self.next = next

    async def resolve(self, request: Request) -> Reply:
        assert self.next is not None, f"{type(self).__name__} is the end of the chain"
        return await self.next.resolve(request)


def chain(*links: Link) -> Link:
    """Link ``links`` in order and return the first."""
    for outer, inner in zip(links, links[1:], strict=False):
        outer.next = inner
    return links[0]


class Waiter:
    """A one-shot wait for a value that a callback delivers (an upstream's reply).

    In a chain run by :func:`start`, delivering the value resumes the waiting query then
    and there: one function call, where an asyncio Future would cost a Task, a Future
    and two trips through the event loop per forwarded query. Awaited from anywhere else
    (a plain asyncio task) it behaves like a Future."""

    __slots__ = ("_drive", "_future", "done", "value", "error")

    def __init__(self) -> None:
        self._drive: _Drive | None = None
        self._future: asyncio.Future[None] | None = None
        self.done = False
        self.value: object = None
        self.error: BaseException | None = None

    def __await__(self):  # type: ignore[no-untyped-def]
        if not self.done:
            if _state.driving:
                yield self  # the driver parks here until set_result / set_exception
            else:
                self._future = asyncio.get_running_loop().create_future()
                yield from self._future
        if self.error is not None:
            raise self.error
        return self.value

    def set_result(self, value: object) -> None:
        if not self.done:
            self.done, self.value = True, value
            self._wake()

    def set_exception(self, error: BaseException) -> None:
        if not self.done:
            self.done, self.error = True, error
            self._wake()

    def _wake(self) -> None:
        drive, future = self._drive, self._future
        if drive is not None:
            self._drive = None
            drive.step()
        elif future is not None and not future.done():
            future.set_result(None)


class _State:
    driving = False  # a _Drive is stepping a chain coroutine right now


_state = _State()


class _Drive:
    """Runs one query's chain coroutine, like an asyncio Task but resumed directly by a
    :class:`Waiter` (asyncio futures and bare yields are handled as a Task would)."""

    __slots__ = ("coro", "done")

    def __init__(self, coro, done: Callable[[Reply | None, BaseException | None], None]  # type: ignore[no-untyped-def]
                 ) -> None:
        self.coro = coro
        self.done = done

    def step(self, _future: object = None) -> None:
        state = _state
        outer = state.driving
        state.driving = True
        try:
            yielded = self.coro.send(None)
        except StopIteration as stop:
            state.driving = outer
            self.done(stop.value, None)
            return
        except BaseException as error:  # noqa: BLE001  (handed to done, never lost)
            state.driving = outer
            self.done(None, error)
            return
        state.driving = outer
        self.park(yielded)

    def park(self, yielded: object) -> None:
        if type(yielded) is Waiter:
            yielded._drive = self
        elif yielded is None:  # a bare yield (asyncio.sleep(0))
            asyncio.get_running_loop().call_soon(self.step)
        else:  # an asyncio future: resume when it is done; the coroutine reads it
            yielded._asyncio_future_blocking = False
            yielded.add_done_callback(self.step)


def start(head: Link, request: Request,
          done: Callable[[Reply | None, BaseException | None], None]) -> Reply | None:
    """Run the chain for ``request``. Returns the reply at once if no link had to wait
    (blocked, cached, refused: most queries); otherwise returns None and calls
    ``done(reply, error)`` when the query is answered. Raises what a link raised before
    it first waited."""
    coro = head.resolve(request)
    state = _state
    outer = state.driving
    state.driving = True
    try:
        yielded = coro.send(None)
    except StopIteration as stop:
        return stop.value
    finally:
        state.driving = outer
    _Drive(coro, done).park(yielded)
    return None
