"""Proxy benchmark: bare mitmdump against mitmdump with the atr-proxy addon and a full
index, the same during index updates, and CONNECT passthrough against Squid.

Usage: python bench/bench_proxy.py [--domains N] [--urls N] [--ips N] [--requests N]
                                   [--update-seconds S] [--workdir DIR] [--no-squid]

Every figure comes from the same bounded load generator (asyncio, keep-alive
connections, a fixed request count and a time cap) against the same local origin on
loopback, in one run. Requests miss the index (the common case): the host is
``localhost``, which is checked as a name, and its address 127.0.0.1 as a destination.
The index is built with ``bench_matcher``'s generator (1M domains, 1M URLs, 100k IPs by
default) and reused from ``--workdir`` when it is already there. Prints one line per
figure, then the ratios with the issue's targets.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))

import bench_matcher  # noqa: E402  (the index generator, shared with the matcher bench)

from tests.support import free_port, stop_process  # noqa: E402

BODY = b"ok\n"
RESPONSE = (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n%s"
            % (len(BODY), BODY))


def loadavg() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def line(name: str, value: str, note: str = "") -> None:
    print(f"{name:<48} {value:>22}  {note}".rstrip(), flush=True)


# -- the origin (a child process) -------------------------------------------------------
async def _serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(RESPONSE)
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
        pass
    finally:
        writer.close()


async def _origin(certs: str) -> None:
    from cryptography.hazmat.primitives import serialization
    from mitmproxy.certs import CertStore

    # a server certificate from mitmproxy's own CA code; the client does not verify it
    store = CertStore.from_store(certs, "bench-origin", 2048)
    entry = store.get_cert("localhost", [])
    cert, key = Path(certs) / "origin.pem", Path(certs) / "origin-key.pem"
    cert.write_bytes(entry.cert.to_pem())
    key.write_bytes(entry.privatekey.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    plain = await asyncio.start_server(_serve, "127.0.0.1", 0, backlog=1024)
    tls = await asyncio.start_server(_serve, "127.0.0.1", 0, ssl=context, backlog=1024)
    print(json.dumps({"plain": plain.sockets[0].getsockname()[1],
                      "tls": tls.sockets[0].getsockname()[1]}), flush=True)
    await asyncio.Event().wait()


def phase_origin(certs: str) -> None:
    asyncio.run(_origin(certs))


# -- index updates during a run (a child process) ---------------------------------------
def phase_updater(index: str, every: float, count: int, rounds: int) -> None:
    """Every ``every`` seconds, one commit adding ``count`` new domain indicators."""
    from atr_proxy.index import FeedSpec, IndexWriter, connect

    class Item:
        __slots__ = ("kind", "value", "match", "expires_at")

        def __init__(self, value: str) -> None:
            self.kind, self.value, self.match, self.expires_at = "domain", value, None, None

    writer = IndexWriter(connect(index))
    feed = writer.upsert_feed(FeedSpec(name=f"churn-{os.getpid()}", type="domain"))
    items: list[Item] = []
    for r in range(rounds):
        time.sleep(every)
        items += [Item(f"c{r}x{i}.churn{os.getpid()}.example") for i in range(count)]
        started = time.time()
        diff = writer.replace_feed(feed, items)
        print(json.dumps({"at": started, "seconds": time.time() - started,
                          "added": diff.added}), flush=True)


# -- the load generator -----------------------------------------------------------------
@dataclass
class Load:
    latencies: list[float] = field(default_factory=list)   # seconds per request
    finished: list[float] = field(default_factory=list)    # wall time of each completion
    seconds: float = 0.0
    errors: int = 0
    proxy_cpu: float = 0.0   # CPU seconds the proxy process spent on this load

    @property
    def cpu_us(self) -> float:
        """Proxy CPU per request: steadier than throughput on a shared machine."""
        return self.proxy_cpu / len(self.latencies) * 1e6 if self.latencies else 0.0

    @property
    def rps(self) -> float:
        return len(self.latencies) / self.seconds if self.seconds else 0.0

    def pct(self, q: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(len(ordered) * q))] * 1000 if ordered else 0.0


async def _read_response(reader: asyncio.StreamReader) -> int:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = 0
    for header in head.split(b"\r\n"):
        if header[:15].lower() == b"content-length:":
            length = int(header[15:])
    if length:
        await reader.readexactly(length)
    return status


async def _open(proxy: int, mode: str, target: tuple[str, int]
                ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy)
    if mode == "connect":
        host, port = target
        writer.write(f"CONNECT {host}:{port} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode())
        if await _read_response(reader) != 200:
            raise ConnectionError("CONNECT refused")
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        await writer.start_tls(context, server_hostname=host)
    return reader, writer


async def _load(proxy: int, mode: str, target: tuple[str, int], requests: int,
                concurrency: int, cap: float, per_tunnel: int) -> Load:
    """``requests`` GETs over ``concurrency`` keep-alive connections, at most ``cap``
    seconds. ``mode``: "plain" (absolute-form requests to the proxy) or "connect"
    (requests inside a TLS tunnel, a new tunnel every ``per_tunnel`` requests)."""
    host, port = target
    if mode == "plain":
        request = (f"GET http://{host}:{port}/p HTTP/1.1\r\nHost: {host}:{port}\r\n"
                   "User-Agent: bench\r\nAccept: */*\r\n\r\n").encode()
    else:
        request = f"GET /p HTTP/1.1\r\nHost: {host}\r\nAccept: */*\r\n\r\n".encode()
    load = Load()
    issued = 0
    deadline = time.monotonic() + cap
    perf, now = time.perf_counter, time.time

    async def worker() -> None:
        nonlocal issued
        reader = writer = None
        used = 0
        while issued < requests and time.monotonic() < deadline:
            issued += 1
            try:
                if writer is None or (mode == "connect" and used >= per_tunnel):
                    if writer is not None:
                        writer.close()
                    reader, writer = await _open(proxy, mode, target)
                    used = 0
                started = perf()
                writer.write(request)
                status = await _read_response(reader)
                load.latencies.append(perf() - started)
                load.finished.append(now())
                used += 1
                if status != 200:
                    load.errors += 1
            except (OSError, asyncio.IncompleteReadError, ssl.SSLError, ValueError):
                load.errors += 1
                writer = None
                await asyncio.sleep(0.01)
        if writer is not None:
            writer.close()

    started = perf()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    load.seconds = perf() - started
    return load


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (and its finished children), from /proc."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return sum(int(x) for x in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def run_load(proxy: Proxy, mode: str, target: tuple[str, int], requests: int, *,
             concurrency: int, cap: float, per_tunnel: int = 100, warmup: int = 300) -> Load:
    if warmup:
        asyncio.run(_load(proxy.port, mode, target, warmup, concurrency, cap, per_tunnel))
    before = cpu_seconds(proxy.process.pid)
    load = asyncio.run(_load(proxy.port, mode, target, requests, concurrency, cap, per_tunnel))
    load.proxy_cpu = cpu_seconds(proxy.process.pid) - before
    return load


def run_with_updates(proxy: Proxy, target: tuple[str, int], index: str,
                     a: argparse.Namespace) -> tuple[Load, list[dict]]:
    """Load for ``a.update_seconds`` while a child process commits ``a.update_count`` new
    indicators to ``index`` every ``a.update_every`` seconds."""
    rounds = max(1, int(a.update_seconds // a.update_every))
    updater = subprocess.Popen(
        [sys.executable, __file__, "--phase", "updater", index, str(a.update_every),
         str(a.update_count), str(rounds)], stdout=subprocess.PIPE, text=True)
    load = run_load(proxy, "plain", target, 10**9, concurrency=a.concurrency,
                    cap=a.update_seconds + 1, warmup=0)
    updater.wait(120)
    commits = [json.loads(x) for x in updater.stdout.read().splitlines() if x]
    return load, commits


# -- the proxies ------------------------------------------------------------------------
def wait_port(port: int, process: subprocess.Popen, timeout: float, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"exited with {process.returncode}: {log.read_text()[-2000:]}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"port {port} not listening after {timeout} s: {log.read_text()[-2000:]}")


class Proxy:
    """A proxy child process; ``with`` stops it."""

    def __init__(self, name: str, command: list[str], port: int, work: Path,
                 timeout: float = 300) -> None:
        self.name, self.port = name, port
        self.log = work / f"{name}.log"
        with open(self.log, "wb") as out:
            self.process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT,
                                            cwd=work)
        wait_port(port, self.process, timeout, self.log)

    def __enter__(self) -> Proxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        stop_process(self.process, 15)


def bare_mitmdump(work: Path, *extra: str) -> Proxy:
    port = free_port()
    return Proxy("mitmdump-bare", [str(Path(sys.executable).with_name("mitmdump")),
        "--listen-host", "127.0.0.1", "--listen-port", str(port),
        "--set", f"confdir={work / 'certs'}", "--set", "connection_strategy=lazy",
        "--set", "flow_detail=0", *extra], port, work)


def atr_proxy(work: Path, index: str) -> Proxy:
    port = free_port()
    config = work / "atr.yaml"
    config.write_text(json.dumps({"index": index, "proxy": {"certs": str(work / "certs")},
                                  "events": {"jsonl": str(work / "events.jsonl")}}))
    return Proxy("atr-proxy", [sys.executable, "-m", "atr_proxy.cli", "--config", str(config),
                               "proxy", "--listen", f"127.0.0.1:{port}"],
                 port, work)


def squid(work: Path) -> Proxy | None:
    binary = shutil.which("squid") or "/usr/sbin/squid"
    if not Path(binary).exists():
        return None
    folder = work / "squid"
    folder.mkdir(exist_ok=True)
    os.chmod(folder, 0o777)  # squid drops root for its cache_effective_user
    port = free_port()
    conf = folder / "squid.conf"
    conf.write_text(f"""\
http_port 127.0.0.1:{port}
acl loopback src 127.0.0.0/8
acl CONNECT method CONNECT
http_access allow loopback
http_access deny all
cache deny all
cache_mem 8 MB
access_log none
cache_store_log none
cache_log {folder}/cache.log
pid_filename {folder}/squid.pid
coredump_dir {folder}
shutdown_lifetime 1 seconds
dns_v4_first on
""")
    return Proxy("squid", [binary, "-N", "-f", str(conf)], port, work, timeout=30)


# -- report -----------------------------------------------------------------------------
def report(name: str, loads: list[Load]) -> None:
    """Median over rounds of throughput and latency percentiles."""
    rps = statistics.median(x.rps for x in loads)
    p50 = statistics.median(x.pct(0.5) for x in loads)
    p99 = statistics.median(x.pct(0.99) for x in loads)
    count = sum(len(x.latencies) for x in loads)
    errors = sum(x.errors for x in loads)
    spread = f", {min(x.rps for x in loads):,.0f}-{max(x.rps for x in loads):,.0f}" \
        if len(loads) > 1 else ""
    line(f"{name}: throughput", f"{rps:,.0f} req/s",
         f"median of {len(loads)} rounds{spread}; {count} requests, {errors} errors")
    line(f"{name}: latency p50 / p99", f"{p50:.2f} / {p99:.2f} ms")
    line(f"{name}: proxy CPU per request",
         f"{statistics.median(x.cpu_us for x in loads):.0f} us")


def window_p99s(load: Load, width: float = 1.0) -> dict[int, float]:
    """p99 latency (ms) per ``width``-second window of completion time."""
    buckets: dict[int, list[float]] = {}
    start = min(load.finished) if load.finished else 0.0
    for at, latency in zip(load.finished, load.latencies, strict=True):
        buckets.setdefault(int((at - start) / width), []).append(latency)
    return {k: sorted(v)[min(len(v) - 1, int(len(v) * 0.99))] * 1000
            for k, v in buckets.items() if len(v) >= 20}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--domains", type=int, default=1_000_000)
    ap.add_argument("--urls", type=int, default=1_000_000)
    ap.add_argument("--ips", type=int, default=100_000)
    ap.add_argument("--requests", type=int, default=10_000, help="per measurement")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds per comparison")
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--cap", type=float, default=60.0, help="seconds per measurement, at most")
    ap.add_argument("--update-seconds", type=float, default=35.0,
                    help="length of the run with index updates")
    ap.add_argument("--update-every", type=float, default=10.0)
    ap.add_argument("--update-count", type=int, default=1000)
    ap.add_argument("--per-tunnel", type=int, default=100, help="requests per CONNECT tunnel")
    ap.add_argument("--no-squid", action="store_true")
    ap.add_argument("--workdir")
    ap.add_argument("--phase", help=argparse.SUPPRESS)
    ap.add_argument("args", nargs="*", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.phase == "origin":
        phase_origin(*a.args)
        return 0
    if a.phase == "updater":
        phase_updater(a.args[0], float(a.args[1]), int(a.args[2]), int(a.args[3]))
        return 0

    work = Path(a.workdir or tempfile.mkdtemp(prefix="atr-bench-proxy-"))
    work.mkdir(parents=True, exist_ok=True)
    index = str(work / "bench.db")
    line("machine", f"{os.cpu_count()} cores",
         "shared with other work: load average " + loadavg())
    line("indicators", f"{a.domains}+{a.urls}+{a.ips}", "domains+urls+ips")
    if not Path(index).exists():
        built = bench_matcher.child("build", index, str(a.domains), str(a.urls), str(a.ips))
        line("index build", f"{built['seconds']:.1f} s")
    certs = work / "origin-certs"
    certs.mkdir(exist_ok=True)
    origin = subprocess.Popen([sys.executable, __file__, "--phase", "origin", str(certs)],
                              stdout=subprocess.PIPE, text=True)
    ports = json.loads(origin.stdout.readline())
    plain_target, tls_target = ("localhost", ports["plain"]), ("localhost", ports["tls"])
    common = dict(concurrency=a.concurrency, cap=a.cap)
    results: dict[str, list[Load]] = {}
    updates = Load()
    try:
        started = time.perf_counter()
        with atr_proxy(work, index) as addon, bare_mitmdump(work) as bare:
            line("proxies started (atr-proxy loads the index)",
                 f"{time.perf_counter() - started:.1f} s")
            # interleaved rounds, so that drift in the machine's load hits both alike
            for _ in range(a.rounds):
                for name, proxy in (("bare", bare), ("addon", addon)):
                    results.setdefault(name, []).append(
                        run_load(proxy, "plain", plain_target, a.requests, **common))
            report("plain HTTP, bare mitmdump", results["bare"])
            report("plain HTTP, mitmdump + addon", results["addon"])

            # The same writer twice: on an index the proxy does not read (control: what
            # the writer's own CPU does to the machine), then on the proxy's index.
            control = str(work / "control.db")
            for label, target_index in (("control, writes to another index", control),
                                        ("changes to the proxy's index", index)):
                seen = len(re.findall(r"\(delta\)", addon.log.read_text()))
                loads, commits = run_with_updates(addon, plain_target, target_index, a)
                if target_index == index:
                    updates = loads
                report(f"plain HTTP, addon, {a.update_count} every {a.update_every:.0f} s"
                       f" ({label})", [loads])
                for c in commits:
                    line("  update committed", f"{c['added']} added",
                         f"commit took {c['seconds'] * 1000:.0f} ms")
                applied = [float(m) * 1000 for m in re.findall(
                    r"\(delta\): \d+ indicators in ([0-9.]+) s", addon.log.read_text())][seen:]
                if applied:
                    line("  applied by the proxy's watcher thread", f"max {max(applied):.0f} ms",
                         f"{len(applied)} deltas, median {statistics.median(applied):.0f} ms")
                windows = window_p99s(loads)
                start = min(loads.finished)
                near = {int(c["at"] - start) + k for c in commits for k in (0, 1, 2)}
                during = [v for k, v in windows.items() if k in near]
                other = [v for k, v in windows.items() if k not in near]
                if during and other:
                    line("  p99 per 1 s window, within 2 s of a commit",
                         f"median {statistics.median(during):.1f} ms",
                         f"worst {max(during):.1f}")
                    line("  p99 per 1 s window, elsewhere",
                         f"median {statistics.median(other):.1f} ms", f"worst {max(other):.1f}")

            squid_proxy = None
            if not a.no_squid:
                try:
                    squid_proxy = squid(work)
                except SystemExit as exc:
                    line("Squid", "did not start", str(exc)[:200])
            try:
                with bare_mitmdump(work, "--ignore-hosts", ".*") as bare_pass:
                    contenders = [("connect", addon), ("bare_connect", bare_pass)]
                    if squid_proxy is not None:
                        contenders.append(("squid", squid_proxy))
                    for _ in range(a.rounds):
                        for name, proxy in contenders:
                            results.setdefault(name, []).append(
                                run_load(proxy, "connect", tls_target, a.requests,
                                         per_tunnel=a.per_tunnel, **common))
            finally:
                if squid_proxy is not None:
                    squid_proxy.stop()
            # for scale: what decrypting costs (mitmdump's default for HTTPS)
            with bare_mitmdump(work, "--set", "ssl_insecure=true") as decrypting:
                results["intercepted"] = [run_load(
                    decrypting, "connect", tls_target, max(500, a.requests // 5),
                    per_tunnel=a.per_tunnel, **common)]
        report("CONNECT passthrough, mitmdump + addon", results["connect"])
        report("CONNECT passthrough, bare mitmdump (ignore_hosts)", results["bare_connect"])
        if "squid" in results:
            report("CONNECT passthrough, Squid", results["squid"])
        elif not a.no_squid:
            line("Squid", "not installed", "run `make bench-proxy` (installs the squid package)")
        report("CONNECT intercepted (decrypted), bare mitmdump", results["intercepted"])
    finally:
        origin.terminate()
        origin.wait(10)

    rps = {k: statistics.median(x.rps for x in v) for k, v in results.items()}
    p99 = {k: statistics.median(x.pct(0.99) for x in v) for k, v in results.items()}
    line("ratio: addon / bare throughput", f"{rps['addon'] / rps['bare']:.3f}",
         "target >= 0.97")
    line("ratio: addon / bare p99", f"{p99['addon'] / p99['bare']:.3f}", "target <= 1.05")
    cpu = {k: statistics.median(x.cpu_us for x in v) for k, v in results.items()}
    line("ratio: addon / bare proxy CPU per request", f"{cpu['addon'] / cpu['bare']:.3f}",
         f"+{cpu['addon'] - cpu['bare']:.0f} us a request for the checks")
    line("ratio: p99 during updates / addon p99", f"{updates.pct(0.99) / p99['addon']:.3f}",
         "no spike: close to 1 (compare the control run above)")
    if "squid" in rps:
        line("ratio: addon passthrough / Squid throughput",
             f"{rps['connect'] / rps['squid']:.3f}", "target >= 0.6")
    line("ratio: passthrough / intercepted throughput, bare mitmdump",
         f"{rps['bare_connect'] / rps['intercepted']:.1f}")
    line("load average at the end", loadavg())
    print(f"# workdir {work}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
