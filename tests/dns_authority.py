"""A small authoritative DNS server for the resolver's tests (and the benchmark's
"forwarded" upstream): UDP and TCP on one loopback port, written with dnslib.

It serves a zone given as zone-file text, follows CNAMEs inside the zone, answers
NXDOMAIN/NODATA with the zone's SOA (so negative answers are cacheable), and can be told
to truncate chosen names over UDP, to stay silent, or to answer slowly. Every question it
receives is recorded, so tests can tell whether the resolver asked at all.
"""

from __future__ import annotations

import selectors
import socket
import threading
import time
from dataclasses import dataclass, field

from dnslib import CLASS, EDNS0, QTYPE, RCODE, RR, DNSLabel, DNSRecord

DEFAULT_ZONE = """
$TTL 300
test.            300 IN SOA ns.test. hostmaster.test. 1 3600 600 86400 30
test.            300 IN NS  ns.test.
ns.test.         300 IN A   127.0.0.53
"""


@dataclass
class Asked:
    name: str
    qtype: str
    transport: str
    edns: bool
    do: bool
    at: float = field(default_factory=time.monotonic)


class Authority:
    """``with Authority(zone_text) as auth: auth.port``"""

    def __init__(self, zone: str = "", *, origin: str = "test.", host: str = "127.0.0.1",
                 synthesize: str | None = None) -> None:
        self.records = RR.fromZone(DEFAULT_ZONE + zone)
        self.origin = DNSLabel(origin)
        self.soa = next(rr for rr in self.records if rr.rtype == QTYPE.SOA)
        # synthesize: any name under this suffix gets an A record (a "forwarded" zone
        # of any size, for the benchmark)
        self.synthesize = synthesize.lower().rstrip(".") if synthesize else None
        self.host = host
        self.truncate_udp: set[str] = set()
        self.silent = False
        self.delay = 0.0
        self.asked: list[Asked] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        for _ in range(50):  # a port free for both UDP and TCP
            self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            self.udp.bind((host, 0))
            self.port = self.udp.getsockname()[1]
            self.tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            self.tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                self.tcp.bind((host, self.port))
                break
            except OSError:
                self.tcp.close()
                self.udp.close()
        else:
            raise OSError("no port free for both UDP and TCP")
        self.tcp.listen(16)

    # -- answers -------------------------------------------------------------------------
    def add(self, zone_text: str) -> None:
        with self._lock:
            self.records += RR.fromZone(zone_text)

    def count(self, name: str, qtype: str | None = None) -> int:
        name = name.lower().rstrip(".")
        with self._lock:
            return sum(1 for a in self.asked if a.name == name and qtype in (None, a.qtype))

    def answer(self, data: bytes, transport: str) -> bytes | None:
        try:
            request = DNSRecord.parse(data)
        except Exception:
            return None
        q = request.q
        name = str(q.qname).lower().rstrip(".")
        opt = next((rr for rr in request.ar if rr.rtype == QTYPE.OPT), None)
        with self._lock:
            self.asked.append(Asked(name, QTYPE.get(q.qtype), transport, opt is not None,
                                    bool(opt and opt.edns_do)))
            records = list(self.records)
        reply = request.reply()  # aa, ra, the question
        if opt is not None:
            reply.add_ar(EDNS0(udp_len=1232))
        if transport == "udp" and name in self.truncate_udp:
            reply.header.tc = 1
            return reply.pack()
        if self.synthesize and (name == self.synthesize or
                                name.endswith("." + self.synthesize)):
            if q.qtype == QTYPE.A:
                reply.add_answer(*RR.fromZone(f"{name}. 300 IN A 198.51.100.7"))
            else:
                reply.add_auth(self.soa)
            return reply.pack()
        current = DNSLabel(name + ".")
        found_name = False
        for _ in range(8):  # follow CNAMEs inside the zone
            here = [rr for rr in records if rr.rname == current]
            if not here:
                break
            found_name = True
            cname = [rr for rr in here if rr.rtype == QTYPE.CNAME]
            if cname and q.qtype != QTYPE.CNAME:
                reply.add_answer(cname[0])
                current = cname[0].rdata.label
                continue
            for rr in here:
                if rr.rtype == q.qtype or q.qtype == QTYPE.ANY:
                    reply.add_answer(rr)
            break
        if not reply.rr:
            if not found_name and current.matchSuffix(self.origin):
                reply.header.rcode = RCODE.NXDOMAIN
            reply.add_auth(self.soa)
        return reply.pack()

    # -- serving -------------------------------------------------------------------------
    def _serve(self) -> None:
        sel = selectors.DefaultSelector()
        self.udp.setblocking(False)
        self.tcp.setblocking(False)
        sel.register(self.udp, selectors.EVENT_READ, "udp")
        sel.register(self.tcp, selectors.EVENT_READ, "tcp")
        while not self._stop.is_set():
            for key, _ in sel.select(0.05):
                if key.data == "udp":
                    for _ in range(256):
                        try:
                            data, addr = self.udp.recvfrom(65535)
                        except (BlockingIOError, OSError):
                            break
                        self._reply_udp(data, addr)
                else:
                    try:
                        conn, _ = self.tcp.accept()
                    except OSError:
                        continue
                    threading.Thread(target=self._serve_tcp, args=(conn,), daemon=True).start()
        sel.close()

    def _reply_udp(self, data: bytes, addr: tuple) -> None:
        if self.silent:
            return
        if self.delay:
            threading.Timer(self.delay, self._send_udp, (data, addr)).start()
            return
        self._send_udp(data, addr)

    def _send_udp(self, data: bytes, addr: tuple) -> None:
        out = self.answer(data, "udp")
        if out is not None:
            try:
                self.udp.sendto(out, addr)
            except OSError:
                pass

    def _serve_tcp(self, conn: socket.socket) -> None:
        conn.settimeout(2.0)
        try:
            for _ in range(100):
                head = _recv_exact(conn, 2)
                if head is None:
                    return
                data = _recv_exact(conn, int.from_bytes(head, "big"))
                if data is None or self.silent:
                    return
                out = self.answer(data, "tcp")
                if out is not None:
                    conn.sendall(len(out).to_bytes(2, "big") + out)
        except OSError:
            return
        finally:
            conn.close()

    def start(self) -> Authority:
        thread = threading.Thread(target=self._serve, name="test-authority", daemon=True)
        thread.start()
        self._threads.append(thread)
        return self

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(2.0)
        self.udp.close()
        self.tcp.close()

    def __enter__(self) -> Authority:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _recv_exact(conn: socket.socket, size: int) -> bytes | None:
    data = b""
    while len(data) < size:
        chunk = conn.recv(size - len(data))
        if not chunk:
            return None
        data += chunk
    return data


__all__ = ["CLASS", "Authority", "Asked"]
