"""Headless Chromium (Debian's ``chromium``) driven over the DevTools protocol, for the
browser tests: a fresh profile per browser, a proxy of our choosing, screenshots.

The DevTools client is a few lines over ``wsproto`` (already installed with mitmproxy):
one WebSocket to the page target, commands answered in order, events skipped.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Ping,
    Request,
    TextMessage,
)

from .support import stop_process

ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-quic",
    # fewer calls home: nothing but the pages a test opens should reach the proxy
    "--disable-default-apps", "--disable-extensions", "--no-default-browser-check",
    "--disable-client-side-phishing-detection", "--disable-domain-reliability",
    "--disable-breakpad", "--no-pings", "--metrics-recording-only",
    "--disable-features=OptimizationHints,MediaRouter,Translate,AutofillServerCommunication,"
    "CertificateTransparencyComponentUpdater,InterestFeedContentSuggestions,PrivacySandboxSettings4",
    "--window-size=1280,1000",
)
START_TIMEOUT = 30.0


def chromium_path() -> str | None:
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    return None


class DevToolsError(RuntimeError):
    pass


class Page:
    """One page target over a WebSocket."""

    def __init__(self, ws_url: str) -> None:
        rest = ws_url.split("://", 1)[1]
        hostport, _, path = rest.partition("/")
        host, port = hostport.rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)), timeout=10)
        self.ws = WSConnection(ConnectionType.CLIENT)
        self.sock.sendall(self.ws.send(Request(host=hostport, target="/" + path)))
        self._pending: list[Any] = []
        self._next_id = 0
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if any(isinstance(e, AcceptConnection) for e in self._read()):
                return
        raise DevToolsError("the DevTools WebSocket was not accepted")

    def _read(self) -> list[Any]:
        data = self.sock.recv(1 << 20)
        if not data:
            raise DevToolsError("the browser closed the DevTools connection")
        self.ws.receive_data(data)
        out = []
        for event in self.ws.events():
            if isinstance(event, Ping):
                self.sock.sendall(self.ws.send(event.response()))
            elif isinstance(event, CloseConnection):
                raise DevToolsError("the browser closed the DevTools connection")
            out.append(event)
        return out

    def call(self, method: str, timeout: float = 30.0, **params: Any) -> dict:
        self._next_id += 1
        ident = self._next_id
        self.sock.sendall(self.ws.send(TextMessage(json.dumps(
            {"id": ident, "method": method, "params": params}))))
        buffer = ""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for event in self._read():
                if isinstance(event, TextMessage | BytesMessage):
                    buffer += event.data if isinstance(event, TextMessage) else event.data.decode()
                    if not event.message_finished:
                        continue
                    message, buffer = json.loads(buffer), ""
                    if message.get("id") == ident:
                        if "error" in message:
                            raise DevToolsError(f"{method}: {message['error']}")
                        return message.get("result", {})
        raise DevToolsError(f"{method}: no answer in {timeout} s")

    def evaluate(self, expression: str, timeout: float = 30.0) -> Any:
        result = self.call("Runtime.evaluate", timeout=timeout, expression=expression,
                           returnByValue=True, awaitPromise=True)
        if result.get("exceptionDetails"):
            raise DevToolsError(f"{expression[:80]}: {result['exceptionDetails']}")
        return result.get("result", {}).get("value")

    def navigate(self, url: str, timeout: float = 20.0) -> None:
        self.call("Page.navigate", url=url)
        self.wait_for("document.readyState === 'complete' && location.href !== 'about:blank'",
                      timeout)

    def wait_for(self, condition: str, timeout: float = 20.0) -> Any:
        """Poll a JavaScript condition until it is truthy (bounded)."""
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            try:
                last = self.evaluate(f"(() => {{ try {{ return !!({condition}); }}"
                                     " catch (e) { return null; } })()")
            except DevToolsError:
                last = None  # a navigation replaced the context; try again
            if last:
                return last
            time.sleep(0.1)
        raise DevToolsError(f"timed out waiting for {condition!r} (last: {last!r})")

    def screenshot(self, name: str) -> Path:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        data = self.call("Page.captureScreenshot", format="png", captureBeyondViewport=True)
        path = ARTIFACTS / name
        path.write_bytes(base64.b64decode(data["data"]))
        return path

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


class Browser:
    """``with Browser(proxy="http://127.0.0.1:8080") as b: page = b.page()``"""

    def __init__(self, *, proxy: str | None = None, extra: tuple[str, ...] = ()) -> None:
        path = chromium_path()
        if path is None:
            raise DevToolsError("chromium is not installed (make deps-operator)")
        self.profile = Path(tempfile.mkdtemp(prefix="atr-chromium-"))
        argv = [path, *CHROMIUM_FLAGS, f"--user-data-dir={self.profile}",
                "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0", *extra]
        if proxy:
            argv.append(f"--proxy-server={proxy}")
        argv.append("about:blank")
        self.log = open(self.profile / "chromium.log", "wb")  # noqa: SIM115 - closed in close()
        self.proc = subprocess.Popen(argv, stdout=self.log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True,
                                     env={**os.environ, "HOME": str(self.profile)})
        self.port = self._devtools_port()
        self.pages: list[Page] = []

    def _devtools_port(self) -> int:
        marker = self.profile / "DevToolsActivePort"
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise DevToolsError("chromium exited at start: "
                                    + (self.profile / "chromium.log").read_text()[-2000:])
            if marker.exists():
                lines = marker.read_text().split()
                if lines and lines[0].isdigit():
                    return int(lines[0])
            time.sleep(0.1)
        raise DevToolsError("chromium did not open its DevTools port")

    def page(self) -> Page:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/json/list", timeout=5) as r:
            targets = json.load(r)
        target = next(t for t in targets if t.get("type") == "page")
        page = Page(target["webSocketDebuggerUrl"])
        page.call("Page.enable")
        page.call("Runtime.enable")
        self.pages.append(page)
        return page

    def close(self) -> None:
        for page in self.pages:
            page.close()
        stop_process(self.proc)
        self.log.close()
        shutil.rmtree(self.profile, ignore_errors=True)

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
