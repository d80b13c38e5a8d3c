"""Real parts for the proxy tests: origin servers on loopback (plain and TLS, counting
every connection they accept), a test CA, a running ``atr-proxy proxy`` (or plain
mitmdump), and clients (curl, httpx, raw TLS sockets)."""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from .support import free_port, stop_process

ROOT = Path(__file__).resolve().parents[1]
CURL = "/usr/bin/curl"
START_TIMEOUT = 30.0


# -- certificates -----------------------------------------------------------------------
@dataclass
class OriginCA:
    """A CA and one server certificate for localhost and 127.0.0.1-127.0.0.9."""

    ca_file: Path
    cert_file: Path
    key_file: Path


def make_origin_ca(folder: Path) -> OriginCA:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "atr-proxy test origin CA")])
    ca = (
        x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
        .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                     content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False,
                                     encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()),
                       critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    names = [x509.DNSName("localhost")] + [
        x509.IPAddress(ipaddress.ip_address(f"127.0.0.{i}")) for i in range(1, 10)]
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]),
                       critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                       critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    folder.mkdir(parents=True, exist_ok=True)
    out = OriginCA(folder / "origin-ca.pem", folder / "origin.pem", folder / "origin-key.pem")
    out.ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    out.cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    out.key_file.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    return out


# -- origin servers ---------------------------------------------------------------------
@dataclass
class Seen:
    connections: int = 0
    requests: list[tuple[str, str, str]] = field(default_factory=list)  # method, path, Host


class Origin:
    """An HTTP/1.1 keep-alive origin on a loopback address; counts what reaches it."""

    def __init__(self, host: str = "127.0.0.1", tls: OriginCA | None = None) -> None:
        seen = self.seen = Seen()
        context = None
        if tls is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(tls.cert_file, tls.key_file)

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                seen.requests.append(("GET", self.path, self.headers.get("Host", "")))
                body = f"origin ok {self.path}\n".encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def get_request(self):  # every accepted connection counts, even if it sends nothing
                sock, addr = self.socket.accept()
                seen.connections += 1
                if context is not None:
                    sock = context.wrap_socket(sock, server_side=True,
                                               do_handshake_on_connect=False)
                return sock, addr

            def handle_error(self, request, client_address) -> None:
                pass

        self.server = Server((host, 0), Handler)
        self.host = host
        self.port = self.server.server_address[1]
        self.scheme = "https" if tls else "http"
        self._thread = threading.Thread(target=self.server.serve_forever,
                                        kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()

    def url(self, path: str = "/", host: str | None = None) -> str:
        return f"{self.scheme}://{host or self.host}:{self.port}{path}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# -- the proxy --------------------------------------------------------------------------
class RunningProxy:
    """``atr-proxy proxy`` (or ``mitmdump -s addons/atr_filter.py``) as a subprocess."""

    def __init__(self, workdir: Path, config: dict, *, extra: list[str] = (),
                 plain_mitmdump: bool = False, expect_exit: bool = False,
                 preexec_fn=None) -> None:  # type: ignore[no-untyped-def]
        import yaml

        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.config_file = workdir / "atr.yaml"
        self.config_file.write_text(yaml.safe_dump(config))
        self.port = free_port()
        self.events_file = Path(config.get("events", {}).get("jsonl") or workdir / "events.jsonl")
        self.log_file = workdir / "proxy.log"
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        env.pop("ATR_CONFIG", None)
        env.pop("ATR_INDEX", None)
        if plain_mitmdump:
            command = [str(Path(sys.executable).with_name("mitmdump")), "-s",
                       str(ROOT / "addons" / "atr_filter.py"),
                       "--listen-host", "127.0.0.1", "--listen-port", str(self.port),
                       "--set", f"confdir={workdir / 'mitm-confdir'}",
                       "--set", "flow_detail=0",
                       "--set", f"atr_config={self.config_file}", *extra]
        else:
            command = [sys.executable, "-m", "atr_proxy.cli", "--config", str(self.config_file),
                       "proxy", "--listen", f"127.0.0.1:{self.port}", "--", *extra]
        self._log = open(self.log_file, "wb")
        self.process = subprocess.Popen(command, cwd=workdir, env=env, stdout=self._log,
                                        stderr=subprocess.STDOUT, preexec_fn=preexec_fn)
        if not expect_exit:
            self._wait_listening()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_file.read_text(errors="replace")

    def _wait_listening(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if "listening at" in self.log():
                return
            if self.process.poll() is not None:
                raise AssertionError(f"proxy exited with {self.process.returncode}:\n{self.log()}")
            time.sleep(0.05)
        self.stop()
        raise AssertionError(f"proxy did not start in {START_TIMEOUT} s:\n{self.log()}")

    def events(self) -> list[dict]:
        if not self.events_file.exists():
            return []
        return [json.loads(line) for line in self.events_file.read_text().splitlines() if line]

    def wait_event(self, timeout: float = 5.0, **match: object) -> dict:
        """The first event whose fields equal ``match``; fails after ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            for event in self.events():
                if all(event.get(k) == v for k, v in match.items()):
                    return event
            if time.monotonic() > deadline:
                raise AssertionError(f"no event {match} in {self.events()}")
            time.sleep(0.05)

    def stop(self) -> None:
        stop_process(self.process)
        self._log.close()


# -- clients ----------------------------------------------------------------------------
@dataclass
class Reply:
    rc: int           # curl's exit code (0: a response was received)
    status: int       # the response's status, 0 if none
    connect: int      # the proxy's answer to CONNECT, 0 if none
    headers: dict[str, str]
    body: str


def curl(proxy: RunningProxy, url: str, *args: str, timeout: float = 15.0) -> Reply:
    """One request with curl through the proxy."""
    with tempfile.NamedTemporaryFile() as body_file:
        out = subprocess.run(
            [CURL, "-sS", "--max-time", "10", "-x", proxy.url, "-D", "-", "-o",
             body_file.name, "-w", "\n%{http_code} %{http_connect}", *args, url],
            capture_output=True, timeout=timeout, text=True,
        )
        body = Path(body_file.name).read_text(errors="replace")
    head, _, codes = out.stdout.rpartition("\n")
    status, connect = (int(x) for x in codes.split())
    headers: dict[str, str] = {}
    for line in head.splitlines():  # the last response's headers win
        if line.startswith("HTTP/"):
            headers = {}
        elif ":" in line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    return Reply(out.returncode, status, connect, headers, body)


def tls_through_tunnel(proxy: RunningProxy, connect_to: str, sni: str, cafile: Path,
                       path: str = "/", source: str = "127.0.0.1"
                       ) -> tuple[int, dict[str, str], str]:
    """CONNECT to ``connect_to`` ("host:port"), then TLS with ``sni`` (which may differ:
    domain fronting) and a GET. Returns (status, headers, body); raises if the tunnel or
    the TLS handshake fails; status is the CONNECT answer if that was not 200."""
    sock = socket.create_connection(("127.0.0.1", proxy.port), timeout=10,
                                    source_address=(source, 0))
    try:
        sock.sendall(f"CONNECT {connect_to} HTTP/1.1\r\nHost: {connect_to}\r\n\r\n".encode())
        answer = b""
        while b"\r\n\r\n" not in answer:
            chunk = sock.recv(4096)
            if not chunk:
                raise ConnectionError("proxy closed the connection during CONNECT")
            answer += chunk
        status = int(answer.split(b" ", 2)[1])
        if status != 200:
            return status, {}, answer.decode(errors="replace")
        context = ssl.create_default_context(cafile=str(cafile))
        with context.wrap_socket(sock, server_hostname=sni) as tls:
            tls.sendall(f"GET {path} HTTP/1.1\r\nHost: {sni}\r\nConnection: close\r\n\r\n"
                        .encode())
            data = b""
            while True:
                chunk = tls.recv(65536)
                if not chunk:
                    break
                data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        lines = head.decode(errors="replace").split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, _, v in
                   (line.partition(":") for line in lines[1:])}
        return int(lines[0].split(" ", 2)[1]), headers, body.decode(errors="replace")
    finally:
        sock.close()
