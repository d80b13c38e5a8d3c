"""A real ``atr-proxy run`` on free loopback ports with the bundled demo config, shared by
the operator tests (one per test session: starting it costs seconds), and small clients
for it: curl through the proxy, dig against the resolver, the admin API and a dashboard
login with its CSRF token."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from .support import free_port, stop_process

CURL = "/usr/bin/curl"
DIG = "/usr/bin/dig"
READY_TIMEOUT = 90.0
STOP_TIMEOUT = 25.0


@dataclass
class AtrRun:
    """One ``atr-proxy run`` process and what a test needs to talk to it."""

    state: Path
    proxy_port: int
    dns_port: int
    admin_port: int
    proc: subprocess.Popen | None = None
    log_path: Path | None = None
    upstream: socket.socket | None = None  # swallows forwarded queries: nothing leaves
    token: str = ""
    children: dict[str, int] = field(default_factory=dict)

    @property
    def proxy(self) -> str:
        return f"http://127.0.0.1:{self.proxy_port}"

    @property
    def admin(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path else ""

    def start(self) -> AtrRun:
        self.state.mkdir(parents=True, exist_ok=True)
        self.upstream = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.upstream.bind(("127.0.0.1", 0))
        self.log_path = self.state / "run.log"
        argv = [sys.executable, "-m", "atr_proxy.cli", "run", "--state", str(self.state),
                "--proxy-listen", f"127.0.0.1:{self.proxy_port}",
                "--dns-listen", f"127.0.0.1:{self.dns_port}",
                "--admin-listen", f"127.0.0.1:{self.admin_port}",
                "--upstream", f"127.0.0.1:{self.upstream.getsockname()[1]}",
                "--ready-timeout", "60"]
        env = {k: v for k, v in os.environ.items()
               if k not in ("ATR_CONFIG", "ATR_INDEX", "ATR_ADMIN_TOKEN")}
        with open(self.log_path, "wb") as out:
            self.proc = subprocess.Popen(argv, cwd=self.state, stdout=out,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         env=env)
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            if "atr-proxy is running" in self.log():
                break
            if self.proc.poll() is not None:
                raise RuntimeError(f"atr-proxy run exited {self.proc.returncode}:\n{self.log()}")
            time.sleep(0.2)
        else:
            self.stop()
            raise RuntimeError(f"atr-proxy run not ready in {READY_TIMEOUT} s:\n{self.log()}")
        match = re.search(r"admin token: (\S+)", self.log())
        self.token = match.group(1) if match else ""
        return self

    def child_pids(self) -> dict[str, int]:
        """The supervisor's children by role, from /proc (their parent is the run)."""
        out = {}
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
                cmd = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            if ppid != self.proc.pid:
                continue
            args = [a.decode(errors="replace") for a in cmd if a]
            role = "proxy" if any("mitmdump" in a for a in args) else (args[-1] if args else "")
            out[role] = int(entry.name)
        return out

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        stop_process(self.proc, STOP_TIMEOUT)
        for pid in self.children.values():  # belt and braces: nothing outlives the test
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if self.upstream is not None:
            self.upstream.close()
        return self.proc.returncode

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    # -- clients ---------------------------------------------------------------------------
    def curl(self, url: str, *extra: str, timeout: float = 15) -> subprocess.CompletedProcess:
        return subprocess.run([CURL, "-s", "-S", "--max-time", "10", "-x", self.proxy,
                               "-w", "\n%{http_code}", *extra, url],
                              capture_output=True, text=True, timeout=timeout)

    def dig(self, name: str, *extra: str) -> str:
        result = subprocess.run([DIG, "@127.0.0.1", "-p", str(self.dns_port), "+time=3",
                                 "+tries=1", *extra, name],
                                capture_output=True, text=True, timeout=15)
        return result.stdout

    def api(self, method: str, path: str, body: object = None,
            headers: dict[str, str] | None = None) -> tuple[int, object]:
        """The admin API with the token (or ``headers`` instead)."""
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(
            self.admin + path, data=data, method=method,
            headers=headers if headers is not None else {
                "Authorization": f"Bearer {self.token}", "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=15) as response:
                return response.status, json.loads(response.read() or b"null")
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            try:
                return exc.code, json.loads(raw)
            except ValueError:
                return exc.code, raw.decode(errors="replace")


class DashboardSession:
    """A logged-in dashboard: its cookie and the page's CSRF token."""

    def __init__(self, admin: str, token: str) -> None:
        self.admin = admin
        self.cookies = urllib.request.HTTPCookieProcessor()
        self.opener = urllib.request.build_opener(self.cookies, _NoRedirect())
        status, _ = self._send("POST", "/ui/login",
                               urllib.parse.urlencode({"token": token}).encode(),
                               {"Content-Type": "application/x-www-form-urlencoded"})
        assert status == 303, status
        status, page = self._send("GET", "/ui/", None, {})
        match = re.search(r'name="csrf-token" content="([^"]+)"', page)
        assert match, page[:500]
        self.csrf = match.group(1)
        self.page = page

    def _send(self, method: str, path: str, data: bytes | None,
              headers: dict[str, str]) -> tuple[int, str]:
        request = urllib.request.Request(self.admin + path, data=data, method=method,
                                         headers=headers)
        try:
            with self.opener.open(request, timeout=15) as response:
                return response.status, response.read().decode(errors="replace")
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode(errors="replace")

    def call(self, method: str, path: str, body: object = None, *, csrf: bool = True,
             origin: str | None = None) -> tuple[int, object]:
        headers = {"Content-Type": "application/json"}
        if csrf and method != "GET":
            headers["X-CSRF-Token"] = self.csrf
        if origin:
            headers["Origin"] = origin
        data = json.dumps(body).encode() if body is not None else None
        status, text = self._send(method, "/ui/api/" + path.lstrip("/"), data, headers)
        try:
            return status, json.loads(text)
        except ValueError:
            return status, text


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None

    def http_error_303(self, req, fp, code, msg, headers):  # noqa: ANN001, ANN201
        return fp


_SHARED: AtrRun | None = None


def shared_run(pytestconfig, tmp_path_factory) -> AtrRun:  # noqa: ANN001 - pytest objects
    """The session's ``atr-proxy run`` (started on first use, stopped at the end)."""
    global _SHARED
    if _SHARED is None or not _SHARED.running:
        run = AtrRun(tmp_path_factory.mktemp("atr-run"), free_port(), free_port(both=True),
                     free_port())
        run.start()
        run.children = run.child_pids()
        pytestconfig.add_cleanup(run.stop)
        _SHARED = run
    return _SHARED


class AdminHttp:
    """The admin app (``create_app``) served by uvicorn on a free loopback port, in a
    thread: a real server and real HTTP without the whole worker."""

    def __init__(self, app) -> None:  # noqa: ANN001 - a Starlette app
        import asyncio

        from atr_proxy.admin.api import AdminServer

        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))  # bound here: no race for the port
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = AdminServer(app, "127.0.0.1", self.port)
        self.thread = threading.Thread(
            target=lambda: asyncio.run(self.server.serve(sockets=[self.sock])), daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 15
        while not self.server.started and time.monotonic() < deadline:
            time.sleep(0.02)
        if not self.server.started:
            raise RuntimeError("the admin app did not start")

    def close(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self.sock.close()
