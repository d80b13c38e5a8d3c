"""Destination addresses: resolved once, checked, and the checked address used to connect.

The proxy resolves a destination name itself (with the event loop's ``getaddrinfo``) so
that it can check every address against the IP indicators before any byte goes upstream,
and then connects to the address it checked: there is no second look-up that could
answer differently. Results are kept for a short time so that a request on a kept-alive
connection does not pay for a look-up.
"""

from __future__ import annotations

import asyncio
import socket
import time

TTL = 30.0
MAX_ENTRIES = 4096


class AddressCache:
    """Resolved addresses per host name, for ``ttl`` seconds; concurrent look-ups of one
    name share one ``getaddrinfo`` call."""

    def __init__(self, ttl: float = TTL, max_entries: int = MAX_ENTRIES) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self._entries: dict[str, tuple[float, list[str]]] = {}
        self._pending: dict[str, asyncio.Future[list[str]]] = {}

    def get(self, host: str) -> list[str] | None:
        """The fresh addresses of ``host``, or None if it must be resolved."""
        entry = self._entries.get(host)
        if entry is None or entry[0] < time.monotonic():
            return None
        return entry[1]

    async def resolve(self, host: str) -> list[str]:
        """Every address of ``host`` (in the resolver's preferred order); raises OSError
        (socket.gaierror) if it has none."""
        cached = self.get(host)
        if cached is not None:
            return cached
        pending = self._pending.get(host)
        if pending is not None:
            return await asyncio.shield(pending)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[list[str]] = loop.create_future()
        self._pending[host] = future
        try:
            infos = await loop.getaddrinfo(host, None, type=socket.SOCK_STREAM)
            addresses = list(dict.fromkeys(str(info[4][0]).split("%", 1)[0] for info in infos))
            if not addresses:
                raise socket.gaierror(f"{host}: no addresses")
        except asyncio.CancelledError:
            future.cancel()
            raise
        except Exception as exc:
            future.set_exception(exc)
            future.exception()  # retrieved here: waiters re-raise it, nobody else must
            raise
        else:
            future.set_result(addresses)
            if len(self._entries) >= self.max_entries:
                for stale in list(self._entries)[: self.max_entries // 4]:
                    del self._entries[stale]
            self._entries[host] = (time.monotonic() + self.ttl, addresses)
            return addresses
        finally:
            del self._pending[host]
