"""The mitmproxy addon: one small gate per point where a connection can be stopped.

=================  ==================================================================
hook               what is checked, and what a block looks like
=================  ==================================================================
client_connected   ``proxy.allow_clients`` and the client address: connection refused
http_connect       the CONNECT host and its addresses: ``403`` before any upstream
                   connection exists
tls_clienthello    the SNI when it differs from the CONNECT host; whether to decrypt
                   (``proxy.intercept``); a blocked SNI ends the tunnel (or, when the
                   tunnel may be decrypted, shows the block page)
requestheaders     host, Host header, SNI, full URL and addresses of plain HTTP and
                   decrypted HTTPS: the block page, without contacting the upstream
server_connect     every address of the destination, right before connecting; the
                   connection is then made to the address that was checked
=================  ==================================================================

The gates only translate mitmproxy's objects into the ``Enforcer``'s terms and act on
its verdict. Connections are opened lazily (``connection_strategy=lazy``) so that no
upstream connection exists before the CONNECT host, the SNI and the addresses have been
checked. An exception in a gate is logged and the flow goes on or is refused as
``proxy.fail`` says; it never reaches mitmproxy.
"""

from __future__ import annotations

import functools
import gc
import logging
import os
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from mitmproxy import connection, ctx, exceptions, http, tls
from mitmproxy.proxy import server_hooks
from mitmproxy.proxy.context import Context

from .. import config
from ..errors import AtrError
from ..events import Event
from ..indicators import ip_to_int
from ..policy import BLOCK, Verdict
from .blockpage import BlockPage
from .enforcer import Enforcer, Name, canonical_host, checkable_url, client_address
from .resolver import AddressCache

log = logging.getLogger("atr_proxy.proxy")

FAILED_CLOSED = "atr-proxy could not check this request and proxy.fail is closed"
SWITCH_INTERVAL = 0.0005  # seconds


class AtrFilter:
    """Options, start and stop; each hook is handed to the gate of its concern.

    The gates are plain objects rather than mitmproxy sub-addons: mitmproxy looks every
    event up on every addon object, and five more objects cost about 8 us a request
    (measured in-process), as much as all of our checks together.
    """

    def __init__(self) -> None:
        self.enforcer: Enforcer | None = None
        self.block_page = BlockPage()
        self.addresses = AddressCache()
        self._refused_logged: set[str] = set()
        self.onboarding_host: str | None = None
        self.clients = ClientGate(self)
        self.connects = ConnectGate(self)
        self.tls = TlsGate(self)
        self.requests = RequestGate(self)
        self.upstream = UpstreamGate(self)

    # -- hooks ---------------------------------------------------------------------------
    def client_connected(self, client: connection.Client) -> None:
        self.clients.client_connected(client)

    def client_disconnected(self, client: connection.Client) -> None:
        self.clients.client_disconnected(client)

    def http_connect(self, flow: http.HTTPFlow) -> Coroutine[Any, Any, None] | None:
        return self.connects.http_connect(flow)

    def tls_clienthello(self, data: tls.ClientHelloData) -> None:
        self.tls.tls_clienthello(data)

    def requestheaders(self, flow: http.HTTPFlow) -> Coroutine[Any, Any, None] | None:
        return self.requests.requestheaders(flow)

    def server_connect(self, data: server_hooks.ServerConnectionHookData
                       ) -> Coroutine[Any, Any, None] | None:
        return self.upstream.server_connect(data)

    def server_connected(self, data: server_hooks.ServerConnectionHookData) -> None:
        self.upstream.server_connected(data)

    def server_connect_error(self, data: server_hooks.ServerConnectionHookData) -> None:
        self.upstream.server_connected(data)

    def load(self, loader: Any) -> None:
        loader.add_option(
            "atr_config", str, "",
            "The atr-proxy config file (atr.yaml). Empty: $ATR_CONFIG, else the defaults.",
        )
        loader.add_option(
            "atr_index", str, "",
            "The atr-proxy index file. Empty: $ATR_INDEX, else the config's 'index'.",
        )

    def configure(self, updated: set[str]) -> None:
        if "connection_strategy" in updated and ctx.options.connection_strategy != "lazy":
            # eager would connect upstream before the SNI and the addresses are checked
            log.info("atr-proxy: setting connection_strategy=lazy")
            ctx.options.update(connection_strategy="lazy")
        if {"onboarding", "onboarding_host"} & updated:
            # mitm.it is answered by mitmproxy itself: its name is checked, never resolved
            self.onboarding_host = (getattr(ctx.options, "onboarding_host", None)
                                    if getattr(ctx.options, "onboarding", False) else None)
        if self.enforcer is not None and not {"atr_config", "atr_index"} & updated:
            return
        try:
            settings = config.load(ctx.options.atr_config or None)
            page = BlockPage(settings.proxy.block_page)
        except AtrError as exc:
            raise exceptions.OptionsError(f"atr-proxy: {exc}") from None
        index = ctx.options.atr_index or os.environ.get("ATR_INDEX") or settings.index
        enforcer = Enforcer(settings, index=Path(index))
        enforcer.start()  # fail open or closed is decided in there, never raised
        old, self.enforcer, self.block_page = self.enforcer, enforcer, page
        if old is not None:
            old.close()

    def running(self) -> None:
        # What exists once the proxy runs (mitmproxy, the snapshot's few objects, every
        # module) lives as long as the process: keep the cyclic collector off it, so that
        # its full passes walk only what requests leave behind (measured: 10-30 us less
        # CPU a plain-HTTP request, within the noise of this machine).
        gc.collect()
        gc.freeze()
        # The index watcher thread gives up the GIL at every SQLite step and, while the
        # event loop is busy, waits a whole switch interval to get it back: a 1,000-row
        # delta took 1 s at the default 5 ms (measured), 55-70 ms at 0.5 ms. Forced
        # switches only happen while another thread wants the GIL, which is rare here.
        sys.setswitchinterval(min(sys.getswitchinterval(), SWITCH_INTERVAL))

    def done(self) -> None:
        if self.enforcer is not None:
            self.enforcer.close()

    # -- what a block looks like -------------------------------------------------------
    def block_response(self, event: Event, flow: http.HTTPFlow) -> http.Response:
        """The block page for a request, HTML or plain text by its Accept header."""
        page = self.block_page.render(event, accept=flow.request.headers.get("accept", ""),
                                      url=flow.request.url, host=flow.request.host)
        return http.Response.make(403, page.body, {
            **_PAGE_HEADERS, "Content-Type": page.content_type, "X-ATR-Event": event.event_id,
        })

    def connect_refusal(self, event: Event, status: int = 403) -> http.Response:
        page = self.block_page.render(event)
        return http.Response.make(status, page.body, {
            **_PAGE_HEADERS, "Content-Type": page.content_type, "X-ATR-Event": event.event_id,
        })

    def refused_client(self, client: str | None) -> None:
        if client not in self._refused_logged and len(self._refused_logged) < 10_000:
            self._refused_logged.add(str(client))
            log.warning("atr-proxy: refused client %s: not in proxy.allow_clients (this proxy"
                        " is not open; add the network to proxy.allow_clients)", client)

    def failed(self, where: str, refuse: Callable[[Any, Any], None],
               let_pass: Callable[[Any, Any], None] | None, gate: Any, arg: Any) -> None:
        """An exception escaped a gate: log it, then refuse the flow (failing closed) or
        let it pass (failing open)."""
        try:
            if self.enforcer is None or self.enforcer.failure(where):
                refuse(gate, arg)
            elif let_pass is not None:
                let_pass(gate, arg)
        except Exception:
            log.exception("atr-proxy: could not handle the flow after an error in %s", where)

    def failure_event(self, client: str | None, **where: Any) -> Event:
        assert self.enforcer is not None
        event = self.enforcer.report(Verdict(BLOCK), client=client, detail=FAILED_CLOSED,
                                     **where)
        assert event is not None
        return event


_PAGE_HEADERS = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff",
                 "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'"}


def guarded(where: str, refuse: Callable[[Any, Any], None],
            let_pass: Callable[[Any, Any], None] | None = None):
    """Run a gate's hook so that no exception reaches mitmproxy: ``refuse`` the flow when
    failing closed, else ``let_pass`` (by default, leave it as it is). A hook may return
    a coroutine (when it must resolve a name first); that is guarded the same way."""

    def wrap(hook: Callable[[Any, Any], Any]) -> Callable[[Any, Any], Any]:
        @functools.wraps(hook)
        def run(gate: Gate, arg: Any) -> Coroutine[Any, Any, None] | None:
            try:
                result = hook(gate, arg)
            except Exception:
                gate.owner.failed(where, refuse, let_pass, gate, arg)
                return None
            if result is None:
                return None
            return _guard_coroutine(result, gate, where, refuse, let_pass, arg)

        return run

    return wrap


async def _guard_coroutine(coro: Coroutine[Any, Any, None], gate: Gate, where: str,
                           refuse: Callable[[Any, Any], None],
                           let_pass: Callable[[Any, Any], None] | None, arg: Any) -> None:
    try:
        await coro
    except Exception:
        gate.owner.failed(where, refuse, let_pass, gate, arg)


class Gate:
    def __init__(self, owner: AtrFilter) -> None:
        self.owner = owner

    def report(self, flow: http.HTTPFlow, verdict: Verdict, client: str | None,
               host: str | None, addresses: list[str] | tuple[()], **where: Any
               ) -> Event | None:
        """The event of a verdict that hits (None when it allows or is not recorded)."""
        if verdict.action == "allow":
            return None
        enforcer = self.owner.enforcer
        return enforcer.report(
            verdict, client=client, dest_host=host or flow.request.host,
            dest_ip=enforcer.listed_address(addresses), dest_port=flow.request.port, **where)


# -- client address ---------------------------------------------------------------------
def _refuse_client(gate: Gate, client: connection.Client) -> None:
    client.error = FAILED_CLOSED


class FlowGate(Gate):
    """A gate that decides a flow on names, then on the host's addresses: the CONNECT and
    the request gates. Each says how it answers (``_answer``) and resolves."""

    def _judge(self, flow: http.HTTPFlow, client: str | None, host: str | None,
               names: list[Name]) -> Coroutine[Any, Any, None] | None:
        """Answer now if the names and the known addresses decide it; else resolve the host
        first (a coroutine for mitmproxy to await). A literal is checked as the host and
        mitm.it is answered by mitmproxy itself: neither is resolved; nor is a blocked name."""
        enforcer = self.owner.enforcer
        if host is None or ip_to_int(host) is not None or host == self.owner.onboarding_host:
            self._answer(flow, enforcer.judge(client, names), client, host, ())
            return None
        addresses = self.owner.addresses.get(host)
        if addresses is not None:
            self._answer(flow, enforcer.judge(client, names, addresses), client, host,
                         addresses)
            return None
        verdict = enforcer.judge(client, names)
        if verdict.blocked:
            self._answer(flow, verdict, client, host, ())
            return None
        return self._resolve_then_answer(flow, client, host, names)

    async def _resolve_then_answer(self, flow: http.HTTPFlow, client: str | None, host: str,
                                   names: list[Name]) -> None:
        raise NotImplementedError

    def _answer(self, flow: http.HTTPFlow, verdict: Verdict, client: str | None,
                host: str | None, addresses: list[str] | tuple[()]) -> None:
        raise NotImplementedError


class ClientGate(Gate):
    """Who may use the proxy, and listed client addresses; before anything is read."""

    @guarded("client_connected", _refuse_client)
    def client_connected(self, client: connection.Client) -> None:
        enforcer = self.owner.enforcer
        address = client_address(client.peername)
        if not enforcer.client_allowed(address):
            client.error = f"client {address} is not in proxy.allow_clients"
            self.owner.refused_client(address)
            return
        if enforcer.refusing_all:
            return  # each request gets the page that says why
        verdict = enforcer.judge(address)
        if verdict.action == "allow":
            return
        event = enforcer.report(verdict, client=address, client_monitor=True,
                                detail="client address listed")
        if event is not None:
            client.error = f"client {address} is blocked by atr-proxy (event {event.event_id})"

    def client_disconnected(self, client: connection.Client) -> None:
        if self.owner.enforcer is not None:
            self.owner.enforcer.forget(client.id)


# -- CONNECT ----------------------------------------------------------------------------
def _refuse_flow(gate: Gate, flow: http.HTTPFlow) -> None:
    event = gate.owner.failure_event(client_address(flow.client_conn.peername),
                                     dest_host=flow.request.host, dest_port=flow.request.port)
    flow.response = gate.owner.block_response(event, flow)


class ConnectGate(FlowGate):
    """The CONNECT target and its addresses: refused with a 403 before any upstream
    connection is opened."""

    @guarded("http_connect", _refuse_flow)
    def http_connect(self, flow: http.HTTPFlow) -> Coroutine[Any, Any, None] | None:
        enforcer = self.owner.enforcer
        client = client_address(flow.client_conn.peername)
        enforcer.count_check(client)
        host = canonical_host(flow.request.host)
        enforcer.tunnel(flow.client_conn.id).connect_host = host
        names: list[Name] = [(host, "host", None)] if host else []
        return self._judge(flow, client, host, names)

    async def _resolve_then_answer(self, flow: http.HTTPFlow, client: str | None, host: str,
                                   names: list[Name]) -> None:
        try:
            addresses = await self.owner.addresses.resolve(host)
        except OSError as exc:
            flow.response = http.Response.make(
                502, f"atr-proxy: cannot resolve {host}: {exc}\n".encode(),
                {**_PAGE_HEADERS, "Content-Type": "text/plain; charset=utf-8"})
            return
        self._answer(flow, self.owner.enforcer.judge(client, names, addresses), client, host,
                     addresses)

    def _answer(self, flow: http.HTTPFlow, verdict: Verdict, client: str | None,
                host: str | None, addresses: list[str] | tuple[()]) -> None:
        event = self.report(flow, verdict, client, host, addresses, url=None, detail="CONNECT")
        if event is not None:
            flow.response = self.owner.connect_refusal(event)


# -- TLS --------------------------------------------------------------------------------
def _refuse_tls(gate: Gate, data: tls.ClientHelloData) -> None:
    client = data.context.client
    event = gate.owner.failure_event(client_address(client.peername))
    gate.owner.enforcer.tunnel(client.id).blocked = event
    data.ignore_connection = True  # and server_connect refuses the tunnel


def _pass_tls(gate: Gate, data: tls.ClientHelloData) -> None:
    data.ignore_connection = True  # passing untouched, not decrypting, is failing open


class TlsGate(Gate):
    """The SNI (it can differ from the CONNECT host: domain fronting) and whether this
    TLS connection is decrypted (``proxy.intercept``)."""

    @guarded("tls_clienthello", _refuse_tls, _pass_tls)
    def tls_clienthello(self, data: tls.ClientHelloData) -> None:
        data.ignore_connection = not self._decide(data.context, data.client_hello.sni)

    def _decide(self, context: Context, raw_sni: str | None) -> bool:
        """Check the SNI where it differs from the CONNECT host; True to decrypt."""
        enforcer = self.owner.enforcer
        tunnel = enforcer.tunnels.get(context.client.id)
        connect_host = tunnel.connect_host if tunnel is not None else (
            canonical_host(context.server.address[0]) if context.server.address else None)
        sni = canonical_host(raw_sni)
        if sni and sni != connect_host and not enforcer.refusing_all:
            client = client_address(context.client.peername)
            verdict = enforcer.judge(client, [(sni, "sni", None)])
            if verdict.action != "allow":
                port = context.server.address[1] if context.server.address else None
                event = enforcer.report(verdict, client=client, dest_host=sni,
                                        dest_port=port,
                                        detail=f"TLS SNI {sni} in a tunnel to {connect_host}")
                if event is not None:
                    enforcer.tunnel(context.client.id).blocked = event
                    # decrypting shows the block page to a client that trusts the CA;
                    # otherwise the tunnel ends at server_connect, before any upstream byte
                    return enforcer.may_intercept(sni, connect_host)
        return enforcer.should_intercept(sni, connect_host)


# -- HTTP requests ----------------------------------------------------------------------
class RequestGate(FlowGate):
    """Plain HTTP and decrypted HTTPS: every name, the full URL and the addresses; a
    block is answered with the block page and nothing is sent upstream."""

    @guarded("requestheaders", _refuse_flow)
    def requestheaders(self, flow: http.HTTPFlow) -> Coroutine[Any, Any, None] | None:
        if flow.response is not None:
            return None
        enforcer = self.owner.enforcer
        tunnel = enforcer.tunnels.get(flow.client_conn.id)
        if tunnel is not None and tunnel.blocked is not None:
            flow.response = self.owner.block_response(tunnel.blocked, flow)
            return None
        request = flow.request
        client = client_address(flow.client_conn.peername)
        enforcer.count_check(client)
        host = canonical_host(request.host)
        url = checkable_url(request.url)
        names: list[Name] = [(host, "host", url)] if host else []
        header = request.host_header
        if header:
            header_host, _, header_port = _split_authority(header)
            header_host = canonical_host(header_host)
            if header_host and header_host != host:
                port = f":{header_port}" if header_port else ""
                names.append((header_host, "host", checkable_url(
                    f"{request.scheme}://{header_host}{port}{request.path}")))
        sni = canonical_host(flow.client_conn.sni)
        if sni and all(sni != n[0] for n in names):
            names.append((sni, "sni", None))
        return self._judge(flow, client, host, names)

    async def _resolve_then_answer(self, flow: http.HTTPFlow, client: str | None, host: str,
                                   names: list[Name]) -> None:
        try:
            addresses = await self.owner.addresses.resolve(host)
        except OSError:
            addresses = []  # names only; mitmproxy reports the failed connection itself
        self._answer(flow, self.owner.enforcer.judge(client, names, addresses), client, host,
                     addresses)

    def _answer(self, flow: http.HTTPFlow, verdict: Verdict, client: str | None,
                host: str | None, addresses: list[str] | tuple[()]) -> None:
        event = self.report(flow, verdict, client, host, addresses, url=flow.request.url)
        if event is not None:
            flow.metadata["atr_event"] = event.event_id
            flow.response = self.owner.block_response(event, flow)


def _split_authority(authority: str) -> tuple[str, str, str]:
    """("host", ":", "port") of a Host header value; IPv6 literals keep no brackets."""
    if authority.startswith("["):
        end = authority.find("]")
        return authority[1:end], ":", authority[end + 2:] if end > 0 else ""
    return authority.rpartition(":") if authority.count(":") == 1 else (authority, "", "")


# -- upstream connections ---------------------------------------------------------------
def _refuse_server(gate: Gate, data: server_hooks.ServerConnectionHookData) -> None:
    data.server.error = FAILED_CLOSED


class UpstreamGate(Gate):
    """Every address of the destination, right before mitmproxy connects to it; the
    connection then goes to the checked address, so there is no second look-up."""

    def __init__(self, owner: AtrFilter) -> None:
        super().__init__(owner)
        self._pinned: dict[str, tuple[str, int]] = {}

    @guarded("server_connect", _refuse_server)
    def server_connect(self, data: server_hooks.ServerConnectionHookData
                       ) -> Coroutine[Any, Any, None] | None:
        enforcer = self.owner.enforcer
        server = data.server
        tunnel = enforcer.tunnels.get(data.client.id)
        if tunnel is not None and tunnel.blocked is not None:
            server.error = f"blocked by atr-proxy (event {tunnel.blocked.event_id})"
            return None
        if server.address is None:
            return None
        host = str(server.address[0])
        client = client_address(data.client.peername)
        if ip_to_int(host) is not None:
            self._gate(data, client, host, [host.strip("[]")])
            return None
        # a name we cannot canonicalise is still resolved and checked: "0x7f.1" is an IP
        name = canonical_host(host) or host
        addresses = self.owner.addresses.get(name)
        if addresses is not None:
            self._gate(data, client, name, addresses)
            return None
        return self._resolve_then_gate(data, client, name)

    async def _resolve_then_gate(self, data: server_hooks.ServerConnectionHookData,
                                 client: str | None, name: str) -> None:
        try:
            addresses = await self.owner.addresses.resolve(name)
        except OSError as exc:
            data.server.error = f"cannot resolve {name}: {exc}"
            return
        self._gate(data, client, name, addresses)

    def _gate(self, data: server_hooks.ServerConnectionHookData, client: str | None,
              name: str, addresses: list[str]) -> None:
        enforcer = self.owner.enforcer
        server = data.server
        verdict = enforcer.judge(client, (), addresses, dest_host=name)
        if verdict.action != "allow":
            event = enforcer.report(verdict, client=client, dest_host=name,
                                    dest_ip=enforcer.listed_address(addresses),
                                    dest_port=server.address[1], detail="upstream address")
            if event is not None:
                server.error = f"blocked by atr-proxy (event {event.event_id})"
                return
        if server.address[0] != addresses[0]:
            self._pinned[server.id] = server.address
            server.address = (addresses[0], server.address[1])

    def server_connected(self, data: server_hooks.ServerConnectionHookData) -> None:
        original = self._pinned.pop(data.server.id, None)
        if original is not None:
            # Give the connection back the name it was opened for: mitmproxy reuses it only
            # for requests to that same (name, port), and derives the upstream SNI from it.
            # The socket's peer name keeps the address actually connected to. Server's own
            # __setattr__ refuses any change on an open connection, so that it can never be
            # redirected; this is not a redirect, hence the plain object assignment.
            object.__setattr__(data.server, "address", original)

