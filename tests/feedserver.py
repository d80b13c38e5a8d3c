"""A small real HTTP(S) feed server on loopback for tests and benchmarks.

It serves registered routes with what real feed servers do, right and wrong: ETag and
Last-Modified with 304s, gzip, basic/bearer/API-key auth, 5xx, slow answers, a 200 HTML
error page, a truncated body, a chunked body of any size; and it records every request
so tests can assert on what the client sent. ``self_signed_cert`` makes a certificate
for 127.0.0.1 with ``cryptography`` for the TLS tests.

Only 127.0.0.1 is ever bound; every handler answers or gives up within ``MAX_DELAY``.
"""

from __future__ import annotations

import base64
import datetime as dt
import gzip as gzip_mod
import hashlib
import ipaddress
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

MAX_DELAY = 10.0


@dataclass
class Route:
    body: bytes | Callable[[Recorded], tuple[int, dict[str, str], bytes]] = b""
    status: int = 200
    content_type: str = "text/plain; charset=utf-8"
    etag: bool = True                 # send an ETag (a hash of the body) and honour it
    last_modified: float | None = None  # send Last-Modified and honour If-Modified-Since
    gzip: bool = False                # Content-Encoding: gzip when the client accepts it
    auth: tuple[str, ...] | None = None  # ("basic", user, pw) | ("bearer", token) |
    #                                      ("header", name, value) | ("query", name, value)
    delay: float = 0.0                # seconds before answering
    truncate: bool = False            # announce the full length, send half, close
    chunked: bool = False             # no Content-Length: chunked transfer
    fail_first: int = 0               # answer the first N requests with 500
    headers: dict[str, str] = field(default_factory=dict)
    # write the whole answer yourself (resets, stalls, endless streams): gets the handler
    raw: Callable[[BaseHTTPRequestHandler], None] | None = None


@dataclass
class Recorded:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]           # lower-case names
    client: str


class FeedServer:
    """``with FeedServer() as s: s.add("/feed.txt", Route(b"evil.com\\n")); s.url("/feed.txt")``"""

    def __init__(self, *, certfile: str | Path | None = None,
                 keyfile: str | Path | None = None) -> None:
        self.routes: dict[str, Route] = {}
        self.requests: list[Recorded] = []
        self.active = 0
        self.max_active = 0
        self._lock = threading.Lock()
        self._served: dict[str, int] = {}
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                server._handle(self)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.httpd.block_on_close = False
        self.httpd.handle_error = lambda request, address: None  # a refused TLS handshake
        self.tls = certfile is not None
        if self.tls:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(str(certfile), str(keyfile))
            self.httpd.socket = context.wrap_socket(self.httpd.socket, server_side=True)
        self.port = self.httpd.server_address[1]
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True,
                                        kwargs={"poll_interval": 0.05})

    def __enter__(self) -> FeedServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self._thread.join(5)

    def add(self, path: str, route: Route | bytes) -> str:
        self.routes[path] = route if isinstance(route, Route) else Route(route)
        return self.url(path)

    def url(self, path: str) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}{path}"

    def hits(self, path: str) -> list[Recorded]:
        return [r for r in self.requests if r.path == path]

    # -- serving -------------------------------------------------------------------------
    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        parts = urlsplit(h.path)
        rec = Recorded("GET", parts.path, parse_qs(parts.query),
                       {k.lower(): v for k, v in h.headers.items()}, h.client_address[0])
        with self._lock:
            self.requests.append(rec)
            self.active += 1
            self.max_active = max(self.max_active, self.active)
            count = self._served[parts.path] = self._served.get(parts.path, 0) + 1
        try:
            self._answer(h, rec, count)
        except (BrokenPipeError, ConnectionResetError, ssl.SSLError, OSError):
            pass  # the client gave up (a timeout test): nothing to tell it
        finally:
            with self._lock:
                self.active -= 1

    def _answer(self, h: BaseHTTPRequestHandler, rec: Recorded, count: int) -> None:
        route = self.routes.get(rec.path)
        if route is None:
            return self._send(h, 404, {}, b"not found\n")
        if route.delay:
            time.sleep(min(route.delay, MAX_DELAY))
        if route.raw is not None:
            h.close_connection = True
            return route.raw(h)
        if not self._authorised(route, rec):
            return self._send(h, 401, {"WWW-Authenticate": 'Basic realm="feeds"'},
                              b"unauthorised\n")
        if count <= route.fail_first:
            return self._send(h, 500, {}, b"internal error\n")
        if callable(route.body):
            status, headers, body = route.body(rec)
        else:
            status, headers, body = route.status, {}, route.body
        headers = {"Content-Type": route.content_type, **route.headers, **headers}
        if status == 200:
            if route.etag:
                tag = '"' + hashlib.sha256(body).hexdigest()[:16] + '"'
                headers["ETag"] = tag
                if rec.headers.get("if-none-match") == tag:
                    return self._send(h, 304, {"ETag": tag}, b"")
            if route.last_modified is not None:
                headers["Last-Modified"] = formatdate(route.last_modified, usegmt=True)
                since = rec.headers.get("if-modified-since")
                if since == headers["Last-Modified"] and not route.etag:
                    return self._send(h, 304, {}, b"")
        if route.gzip and "gzip" in rec.headers.get("accept-encoding", ""):
            body = gzip_mod.compress(body, 5)
            headers["Content-Encoding"] = "gzip"
        if route.truncate:
            headers["Content-Length"] = str(len(body))
            h.send_response(status)
            for k, v in headers.items():
                h.send_header(k, v)
            h.send_header("Connection", "close")
            h.end_headers()
            h.wfile.write(body[: len(body) // 2])
            h.wfile.flush()
            h.close_connection = True
            return None
        self._send(h, status, headers, body, chunked=route.chunked)
        return None

    @staticmethod
    def _authorised(route: Route, rec: Recorded) -> bool:
        if route.auth is None:
            return True
        kind = route.auth[0]
        if kind == "basic":
            token = base64.b64encode(f"{route.auth[1]}:{route.auth[2]}".encode()).decode()
            return rec.headers.get("authorization") == f"Basic {token}"
        if kind == "bearer":
            return rec.headers.get("authorization") == f"Bearer {route.auth[1]}"
        if kind == "header":
            return rec.headers.get(route.auth[1].lower()) == route.auth[2]
        if kind == "query":
            return rec.query.get(route.auth[1]) == [route.auth[2]]
        return False

    @staticmethod
    def _send(h: BaseHTTPRequestHandler, status: int, headers: dict[str, str], body: bytes,
              chunked: bool = False) -> None:
        h.send_response(status)
        for k, v in headers.items():
            h.send_header(k, v)
        if chunked and status == 200:
            h.send_header("Transfer-Encoding", "chunked")
            h.end_headers()
            for i in range(0, len(body), 65536):
                piece = body[i:i + 65536]
                h.wfile.write(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
            h.wfile.write(b"0\r\n\r\n")
            return
        if status != 304:
            h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        if status != 304:
            h.wfile.write(body)


def self_signed_cert(folder: Path) -> tuple[Path, Path]:
    """A fresh self-signed certificate for 127.0.0.1 and localhost: (cert, key) files."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "atr-proxy test feed server")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([
            x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "feeds-cert.pem", folder / "feeds-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    return cert_path, key_path
