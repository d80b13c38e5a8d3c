"""``/proxy.pac``: a proxy auto-config file for browsers and system proxy settings.

Local and private destinations go DIRECT: plain host names, ``localhost``, the local-only
suffixes (``.local``, ``.localhost``, ``.lan``, ``.home.arpa``, ``.internal``), and IP
literals in loopback, private, link-local and CGNAT ranges. Everything else goes through
the proxy, with no DIRECT fallback: if the proxy is down, traffic stops rather than going
around the filter.

Which proxy address the file names: ``proxy.listen`` when it is a specific address, else
(the proxy listens on every address) the host name the client used to fetch this file,
which is then also this machine as the client sees it. The PAC file is public (browsers
fetch it without credentials) and contains nothing but these rules.
"""

from __future__ import annotations

import ipaddress
import json
import re

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

PAC_TYPE = "application/x-ns-proxy-autoconfig"
LOCAL_SUFFIXES = (".local", ".localhost", ".lan", ".home.arpa", ".internal")
DIRECT_V4 = ("127.0.0.0/8", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16",
             "169.254.0.0/16", "100.64.0.0/10")
DIRECT_V6 = ("::1/128", "fc00::/7", "fe80::/10")
_HOSTNAME = re.compile(r"^[A-Za-z0-9.-]{1,253}$")
UNSPECIFIED = ("0.0.0.0", "::", "")


def proxy_address(listen: tuple[str, int], request_host: str | None) -> str:
    """``host:port`` for the PAC file's PROXY line."""
    host, port = listen
    if host in UNSPECIFIED:
        host = _request_hostname(request_host) or "127.0.0.1"
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _request_hostname(header: str | None) -> str | None:
    """The host part of a Host header, if it is a plain name or address (it is written
    into a script: anything odd is ignored)."""
    if not header:
        return None
    host = header.strip()
    if host.startswith("["):
        host = host[1:host.find("]")] if "]" in host else ""
        try:
            return str(ipaddress.IPv6Address(host))
        except ValueError:
            return None
    host = host.rsplit(":", 1)[0] if host.count(":") == 1 else host
    return host if _HOSTNAME.match(host) else None


def render(proxy: str) -> str:
    """The PAC script for a proxy at ``proxy`` (host:port)."""
    v4 = [ipaddress.ip_network(n) for n in DIRECT_V4]
    nets = ",\n    ".join(f"[{json.dumps(str(n.network_address))}, {json.dumps(str(n.netmask))}]"
                          for n in v4)
    v6_prefixes = ", ".join(json.dumps(p) for p in ("::1", "fc", "fd", "fe8", "fe9", "fea",
                                                      "feb"))
    suffixes = ", ".join(json.dumps(s) for s in LOCAL_SUFFIXES)
    return f"""// atr-proxy: proxy auto-config. Local and private destinations go direct;
// everything else through the filtering proxy (no DIRECT fallback: fail closed).
var ATR_PROXY = {json.dumps("PROXY " + proxy)};
var LOCAL_SUFFIXES = [{suffixes}];
var PRIVATE_V4 = [
    {nets}
];
var PRIVATE_V6_PREFIXES = [{v6_prefixes}];

function FindProxyForURL(url, host) {{
    host = host.toLowerCase();
    if (host.charAt(0) == "[") host = host.substring(1, host.length - 1);
    if (isPlainHostName(host) || host == "localhost") return "DIRECT";
    for (var i = 0; i < LOCAL_SUFFIXES.length; i++) {{
        if (dnsDomainIs(host, LOCAL_SUFFIXES[i])) return "DIRECT";
    }}
    // only literal addresses are compared: resolving names here would cost a DNS look-up
    // per request and bypass the resolver's view
    if (/^\\d{{1,3}}(\\.\\d{{1,3}}){{3}}$/.test(host)) {{
        for (var j = 0; j < PRIVATE_V4.length; j++) {{
            if (isInNet(host, PRIVATE_V4[j][0], PRIVATE_V4[j][1])) return "DIRECT";
        }}
        return ATR_PROXY;
    }}
    if (host.indexOf(":") >= 0) {{
        for (var k = 0; k < PRIVATE_V6_PREFIXES.length; k++) {{
            var p = PRIVATE_V6_PREFIXES[k];
            if (host == p || (p != "::1" && host.indexOf(p) == 0)) return "DIRECT";
        }}
    }}
    return ATR_PROXY;
}}
"""


async def proxy_pac(request: Request) -> Response:
    settings = request.app.state.atr.settings
    body = render(proxy_address(settings.proxy.listen, request.headers.get("host")))
    return Response(body, media_type=PAC_TYPE, headers={"Cache-Control": "max-age=300"})


def pac_routes() -> list[BaseRoute]:
    return [Route("/proxy.pac", proxy_pac, methods=["GET"]),
            Route("/wpad.dat", proxy_pac, methods=["GET"])]
