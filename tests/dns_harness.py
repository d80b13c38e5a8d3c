"""Runs the real resolver (``DnsServer``, real sockets) in a background thread's event
loop, against a real index and event writer, for the DNS tests."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import re
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

import dns.message
import dns.query

from atr_proxy.config import DnsSettings
from atr_proxy.dns.server import DnsServer
from atr_proxy.events import EventWriter, recent
from atr_proxy.index import connect
from atr_proxy.index.watch import SnapshotWatcher

from .support import stop_process


class ResolverThread:
    """``with ResolverThread(index, upstreams=[...], sinkhole=...) as r: r.port``"""

    def __init__(self, index: Path, *, upstreams: list[tuple[str, int]], jsonl: Path | None = None,
                 load: bool = True, **settings: object) -> None:
        base = DnsSettings(listen=("127.0.0.1", 0), upstreams=tuple(upstreams))
        self.settings = dataclasses.replace(base, **settings)
        self.index = index
        self.jsonl = jsonl
        self.load = load
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="resolver",
                                       daemon=True)
        self.server: DnsServer | None = None
        self.port = 0

    # -- life --------------------------------------------------------------------------
    def start(self) -> ResolverThread:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(30)
        return self

    async def _start(self) -> None:
        self.watcher = SnapshotWatcher(self.index)
        if self.load:
            self.watcher.load()
        self.events = EventWriter(self.index, self.jsonl, flush_interval=0.05)
        self.server = DnsServer(self.settings, self.watcher, self.events)
        await self.server.start()
        self.port = self.server.port
        self._stop = asyncio.Event()
        self._poller = asyncio.create_task(self.watcher.run(self._stop))

    def stop(self) -> None:
        if self.server is None:
            return
        asyncio.run_coroutine_threadsafe(self._close(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()
        self.server = None

    async def _close(self) -> None:
        self._stop.set()
        await self.server.close()
        await asyncio.wait_for(self._poller, 5)
        self.events.close()
        self.watcher.close()

    def __enter__(self) -> ResolverThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def call(self, fn, *args):  # type: ignore[no-untyped-def]
        """Run ``fn(*args)`` on the resolver's loop (to read its state safely)."""
        async def run():  # type: ignore[no-untyped-def]
            return fn(*args)
        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(10)

    # -- asking --------------------------------------------------------------------------
    def ask(self, name: str, qtype: str = "A", **how: object) -> dns.message.Message:
        return ask(self.port, name, qtype, **how)

    def events_written(self, **filters: str) -> list[dict]:
        self.events.flush(5)
        conn = connect(self.index)
        try:
            return recent(conn, newest_first=False, **filters)
        finally:
            conn.close()


def ask(port: int, name: str, qtype: str = "A", *, edns: bool = True, tcp: bool = False,
        source: str | None = None, timeout: float = 3.0) -> dns.message.Message:
    """One query to a resolver on 127.0.0.1:``port``, over UDP or TCP."""
    q = dns.message.make_query(name, qtype, use_edns=0 if edns else False)
    if tcp:
        return dns.query.tcp(q, "127.0.0.1", port=port, timeout=timeout, source=source)
    return dns.query.udp(q, "127.0.0.1", port=port, timeout=timeout, source=source)


class RunningResolver:
    """``atr-proxy [global args] dns --listen 127.0.0.1:0 [dns args]`` as a real process:
    started, its port read from its first line, its index loaded (``ready``: the second
    line). Its log goes to a file, never to a pipe that nobody reads while it runs (a
    resolver logging a full disk would block on it)."""

    def __init__(self, global_args: Sequence[str], log: Path, *, dns_args: Sequence[str] = (),
                 cwd: Path | None = None, env: dict[str, str] | None = None,
                 preexec_fn: Callable[[], None] | None = None) -> None:
        self.log_file = log
        self._log = open(log, "w")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "atr_proxy.cli", *global_args, "dns", "--listen",
             "127.0.0.1:0", *dns_args], stdout=subprocess.PIPE, stderr=self._log, text=True,
            cwd=cwd, env=env if env is not None else os.environ.copy(),
            preexec_fn=preexec_fn)
        first = self.process.stdout.readline()
        match = re.search(r"udp\+tcp 127\.0\.0\.1:(\d+)", first)
        if not match:
            self.stop()
            raise AssertionError(f"atr-proxy dns did not start: {first!r} {self.log()}")
        self.port = int(match.group(1))
        self.ready = self.process.stdout.readline()  # "enforcing N indicators ..."

    def ask(self, name: str, qtype: str = "A", **how: object) -> dns.message.Message:
        return ask(self.port, name, qtype, **how)

    def log(self) -> str:
        return self.log_file.read_text(errors="replace")

    def stop(self) -> str:
        """Stop it (SIGTERM, then SIGKILL after 10 s); returns its log."""
        stop_process(self.process)
        self.process.stdout.close()
        self._log.close()
        return self.log()

    def __enter__(self) -> RunningResolver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
