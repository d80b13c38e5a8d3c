"""DNS benchmark: atr-proxy's resolver against dnsmasq, same blocklist, dnsperf on loopback.

Usage: python bench/bench_dns.py [--names N] [--seconds S] [--workdir DIR]

In one run, with the same N-name list (default 1M, the names of bench_matcher.py):

* dnsmasq (``address=/name/`` for every name: NXDOMAIN for it and its subdomains) and
  ``atr-proxy dns`` (N domain indicators, sinkhole nxdomain) are each started and timed to
  their first enforced answer (a listed name answered NXDOMAIN), and their RSS is read;
* dnsperf (bounded by ``--seconds``) sends each of them, in turn: listed names from a
  10k-name sample (blocked), a small set of allowed names answered before (cached), names
  never asked before (uncached, forwarded), and last listed names never asked before
  (blocked-new: for atr-proxy each one is a new event to write). Between runs the server
  is left to go idle (bounded), so no run pays for the one before;
* the upstream both forward to is a second dnsmasq on loopback answering every name under
  ``fwd.bench`` itself (``address=/fwd.bench/198.51.100.7``): nothing leaves the machine.

Every figure is one line: q/s, p50/p99 latency (from dnsperf's per-query report), the
ratio to dnsmasq and the target the issue sets. Needs ``dnsperf`` and ``dnsmasq`` (Debian
packages; ``make bench-dns`` installs them).
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))

from bench_matcher import domain, line, phase_build  # noqa: E402  (reuse, not copy)

from tests.support import free_port, stop_process  # noqa: E402

UPSTREAM_ZONE = "fwd.bench"
FORWARDED_PER_SECOND = 60_000  # unique names prepared per second of a forwarded run


def query(port: int, name: str, timeout: float = 0.2) -> int | None:
    """rcode of one A query over UDP, or None without an answer."""
    qid = random.getrandbits(16)
    wire = qid.to_bytes(2, "big") + b"\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00"
    for label in name.split("."):
        wire += bytes([len(label)]) + label.encode()
    wire += b"\x00\x00\x01\x00\x01"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        try:
            s.sendto(wire, ("127.0.0.1", port))
            data = s.recv(4096)
        except OSError:
            return None
    if len(data) < 4 or data[:2] != wire[:2]:
        return None
    return data[3] & 0xF


def wait_first_block(proc: subprocess.Popen, port: int, name: str, started: float,
                     limit: float = 120.0) -> float:
    """Seconds from ``started`` until ``name`` is answered NXDOMAIN."""
    deadline = started + limit
    while time.perf_counter() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        if query(port, name, 0.05) == 3:
            return time.perf_counter() - started
        time.sleep(0.005)
    raise RuntimeError(f"no NXDOMAIN for {name} within {limit} s")


def settle(pid: int, limit: float = 60.0) -> float:
    """Wait (bounded) until the process stops using CPU: queued work, like an event
    backlog, must not be billed to the next run. Returns the seconds waited."""
    def cpu() -> int:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])  # utime + stime, in clock ticks

    started = time.perf_counter()
    last = cpu()
    while time.perf_counter() - started < limit:
        time.sleep(0.5)
        now = cpu()
        if now - last <= 5:  # under 10% of a core over the last half second
            break
        last = now
    return time.perf_counter() - started


def rss_mib(pid: int, field: str = "VmRSS") -> float:
    with open(f"/proc/{pid}/status") as f:
        for row in f:
            if row.startswith(field + ":"):
                return int(row.split()[1]) / 1024
    return 0.0


def dnsperf(port: int, queries: Path, seconds: float, *, once: bool, clients: int,
            outstanding: int) -> dict:
    """Run dnsperf with a per-query report; q/s, loss and latency percentiles."""
    cmd = ["dnsperf", "-s", "127.0.0.1", "-p", str(port), "-d", str(queries), "-l",
           str(seconds), "-c", str(clients), "-q", str(outstanding), "-t", "2", "-v"]
    if once:
        cmd += ["-n", "1"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 30)
    latencies = []
    qps = lost = 0.0
    rcodes: dict[str, int] = {}
    for row in out.stdout.splitlines():
        if row.startswith("> "):
            parts = row.split()
            rcodes[parts[1]] = rcodes.get(parts[1], 0) + 1
            latencies.append(float(parts[-1]))
        elif "Queries per second:" in row:
            qps = float(row.split(":")[1])
        elif "Queries lost:" in row:
            lost = float(row.split(":")[1].split()[0])
    latencies.sort()

    def pct(p: float) -> float:
        return latencies[min(len(latencies) - 1, int(len(latencies) * p))] * 1000 \
            if latencies else float("nan")

    return {"qps": qps, "p50": pct(0.50), "p99": pct(0.99), "lost": lost, "rcodes": rcodes,
            "completed": len(latencies)}


def write_queries(path: Path, names: list[str]) -> Path:
    with open(path, "w") as f:
        for name in names:
            f.write(f"{name} A\n")
    return path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--names", type=int, default=1_000_000, help="blocklist size")
    ap.add_argument("--seconds", type=float, default=8.0, help="length of each dnsperf run")
    ap.add_argument("--clients", type=int, default=4, help="dnsperf -c")
    ap.add_argument("--outstanding", type=int, default=100, help="dnsperf -q")
    ap.add_argument("--sample", type=int, default=10_000,
                    help="distinct listed names in the repeated-blocked query file")
    ap.add_argument("--workdir")
    a = ap.parse_args()
    for tool in ("dnsperf", "dnsmasq"):
        if shutil.which(tool) is None:
            print(f"{tool} is not installed: run `make bench-dns` (Debian package)")
            return 2
    work = Path(a.workdir or tempfile.mkdtemp(prefix="atr-bench-dns-"))
    work.mkdir(parents=True, exist_ok=True)
    n = a.names
    index = work / f"dns-{n}.db"
    blocklist = work / f"dnsmasq-{n}.conf"
    line("blocklist", f"{n} names", "the same names in both")
    if not index.exists():
        t0 = time.perf_counter()
        phase_build(str(index), n, 0, 0)
        line("index build", f"{time.perf_counter() - t0:.1f} s")
    if not blocklist.exists():
        with open(blocklist, "w") as f:
            for i in range(n):
                f.write(f"address=/{domain(i)}/\n")
    rng = random.Random(5)
    picks = [rng.randrange(n) for _ in range(min(a.sample, n))]
    blocked_q = write_queries(work / "blocked.txt", [
        (f"www.{domain(i)}" if k % 2 else domain(i)) for k, i in enumerate(picks)])
    # listed names never asked before: every query is a new block (a new event)
    fresh = rng.sample(range(n), min(n, int(a.seconds * FORWARDED_PER_SECOND)))
    fresh_q = write_queries(work / "blocked-new.txt", [f"n.{domain(i)}" for i in fresh])
    cached_names = [f"c{i}.{UPSTREAM_ZONE}" for i in range(1000)]
    cached_q = write_queries(work / "cached.txt", cached_names)
    fwd_count = int(a.seconds * FORWARDED_PER_SECOND)
    probe = domain(n // 2)

    procs: list[subprocess.Popen] = []
    results: dict[str, dict] = {}
    try:
        up_port = free_port(both=True)
        upstream = subprocess.Popen(
            ["dnsmasq", "-k", "--conf-file=/dev/null", f"--port={up_port}",
             "--listen-address=127.0.0.1", "--bind-interfaces", "--no-resolv", "--no-hosts",
             f"--pid-file={work / 'upstream.pid'}", "--user=root",
             f"--address=/{UPSTREAM_ZONE}/198.51.100.7", "--local-ttl=300"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(upstream)
        for _ in range(200):
            if query(up_port, f"x.{UPSTREAM_ZONE}") == 0:
                break
            time.sleep(0.02)
        else:
            raise RuntimeError("the upstream dnsmasq did not come up")

        targets = {
            "dnsmasq": lambda port: [
                "dnsmasq", "-k", f"--conf-file={blocklist}", f"--port={port}",
                "--listen-address=127.0.0.1", "--bind-interfaces", "--no-resolv",
                "--no-hosts", f"--server=127.0.0.1#{up_port}", "--cache-size=10000",
                f"--pid-file={work / 'dnsmasq.pid'}", "--user=root"],
            "atr-proxy": lambda port: [
                sys.executable, "-m", "atr_proxy.cli", "--index", str(index), "dns",
                "--listen", f"127.0.0.1:{port}", "--upstream", f"127.0.0.1:{up_port}"],
        }
        for name, command in targets.items():
            port = free_port(both=True)
            started = time.perf_counter()
            with open(work / f"{name}.log", "w") as log:
                proc = subprocess.Popen(command(port), cwd=work, stdout=subprocess.DEVNULL,
                                        stderr=log)
            procs.append(proc)
            first = wait_first_block(proc, port, probe, started)
            settle(proc.pid)
            r = {"first": first, "rss_start": rss_mib(proc.pid)}
            r["blocked"] = dnsperf(port, blocked_q, a.seconds, once=False,
                                   clients=a.clients, outstanding=a.outstanding)
            settle(proc.pid)
            dnsperf(port, cached_q, a.seconds, once=True, clients=1, outstanding=20)  # warm
            r["cached"] = dnsperf(port, cached_q, a.seconds, once=False, clients=a.clients,
                                  outstanding=a.outstanding)
            settle(proc.pid)
            fwd_q = write_queries(work / f"forwarded-{name}.txt", [
                f"u{i}.{name.replace('-', '')}.{UPSTREAM_ZONE}" for i in range(fwd_count)])
            r["forwarded"] = dnsperf(port, fwd_q, a.seconds, once=True, clients=a.clients,
                                     outstanding=a.outstanding)
            settle(proc.pid)
            r["rss_end"] = rss_mib(proc.pid)
            # last, as its event backlog would slow whatever ran after it
            r["blocked-new"] = dnsperf(port, fresh_q, a.seconds, once=True,
                                       clients=a.clients, outstanding=a.outstanding)
            settle(proc.pid)
            r["rss_flood"] = rss_mib(proc.pid)
            r["rss_peak"] = rss_mib(proc.pid, "VmHWM")
            stop_process(proc)
            results[name] = r
    finally:
        for proc in procs:
            stop_process(proc)

    base, ours = results["dnsmasq"], results["atr-proxy"]
    goals = {"blocked-new": 0.5, "blocked": 0.5, "cached": 0.5, "forwarded": 3.0}
    for kind in ("blocked", "cached", "forwarded", "blocked-new"):
        for name in ("dnsmasq", "atr-proxy"):
            r = results[name][kind]
            codes = ",".join(f"{k}:{v}" for k, v in sorted(r["rcodes"].items()))
            line(f"{kind:11} {name}", f"{r['qps']:.0f} q/s",
                 f"p50 {r['p50']:.2f} ms, p99 {r['p99']:.2f} ms, lost {r['lost']:.0f}; {codes}")
        ratio = ours[kind]["qps"] / base[kind]["qps"] if base[kind]["qps"] else float("nan")
        line(f"{kind:11} ratio atr-proxy/dnsmasq", f"{ratio:.2f}x",
             f"target >= {goals[kind]}x: {'met' if ratio >= goals[kind] else 'NOT met'}")
    for name in ("dnsmasq", "atr-proxy"):
        r = results[name]
        line(f"RSS {name}", f"{r['rss_start']:.0f} MiB",
             f"after load; {r['rss_end']:.0f} MiB after blocked/cached/forwarded,"
             f" {r['rss_flood']:.0f} MiB after blocked-new, peak {r['rss_peak']:.0f} MiB")
    for when in ("rss_start", "rss_end"):
        ok = ours[when] <= base[when]
        line(f"RSS ratio atr-proxy/dnsmasq ({'after load' if when == 'rss_start' else 'runs'})",
             f"{ours[when] / base[when]:.2f}x", f"target <= 1: {'met' if ok else 'NOT met'}")
    for name in ("dnsmasq", "atr-proxy"):
        first = results[name]["first"]
        target = "" if name == "dnsmasq" else \
            f"target <= 1.5 s: {'met' if first <= 1.5 else 'NOT met'}"
        line(f"first enforced answer {name}", f"{first:.2f} s", target)
    print(f"# {os.cpu_count()} cores, shared with other work; dnsperf -c {a.clients}"
          f" -q {a.outstanding} -l {a.seconds:g} -v; workdir {work}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
