"""``atr-proxy proxy``: mitmdump with the atr-proxy addon, the CA in ``proxy.certs`` and the
settings of the config's ``proxy:`` section."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

CA_BASENAME = "mitmproxy"
CA_KEY_FILES = (f"{CA_BASENAME}-ca.pem", f"{CA_BASENAME}-ca.p12")
CA_CERT_FILE = f"{CA_BASENAME}-ca-cert.pem"


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "proxy", help="run the filtering HTTP(S) proxy (mitmdump with the atr-proxy addon)",
        description="Run mitmdump with the atr-proxy addon. The CA is created in proxy.certs"
                    " on first start; clients must trust its certificate only for the hosts"
                    " that are decrypted (see proxy.intercept).",
    )
    p.add_argument("--listen", metavar="HOST:PORT",
                   help="where to listen (default: proxy.listen, 127.0.0.1:8080)")
    p.add_argument("--verbose", "-v", action="store_true",
                   help="print a line per flow (mitmdump's flow_detail=1)")
    p.add_argument("mitmdump_args", nargs=argparse.REMAINDER, metavar="-- MITMDUMP_ARGS",
                   help="further mitmdump arguments, after '--'")
    p.set_defaults(func=cmd_proxy)


def cmd_proxy(args: argparse.Namespace) -> int:
    from ..cli import _index_path, _settings
    from ..config import parse_hostport
    from .blockpage import BlockPage

    settings = _settings(args)
    host, port = (parse_hostport(args.listen, "--listen", 8080) if args.listen
                  else settings.proxy.listen)
    BlockPage(settings.proxy.block_page)  # a bad template is reported here, not at mitmdump
    index = _index_path(args, settings).resolve()
    certs = Path(settings.proxy.certs).resolve()
    ca_cert = ensure_ca(certs)
    extra = list(args.mitmdump_args)
    if extra[:1] == ["--"]:
        extra = extra[1:]
    argv = [
        sys.executable, "-m", "atr_proxy.proxy.mitmdump",  # mitmdump, the addon built in
        "--listen-host", host, "--listen-port", str(port),
        "--set", f"confdir={certs}",
        "--set", "connection_strategy=lazy",
        # who may connect is proxy.allow_clients, checked by the addon
        "--set", "block_global=false",
        "--set", f"flow_detail={1 if args.verbose else 0}",
        "--set", f"atr_config={Path(args.config).resolve() if args.config else ''}",
        "--set", f"atr_index={index}",
        *extra,
    ]
    print(f"atr-proxy: proxy on {host}:{port}, index {index}; clients that should see"
          f" block pages for HTTPS trust {ca_cert}", file=sys.stderr, flush=True)
    os.execv(argv[0], argv)
    return 1  # not reached


def ensure_ca(certs: Path) -> Path:
    """Create mitmproxy's CA in ``certs`` unless it is there; its private key files are
    readable by the owner only. Returns the certificate clients should trust."""
    from mitmproxy.certs import CertStore

    certs.mkdir(parents=True, exist_ok=True)
    CertStore.from_store(certs, CA_BASENAME, 2048)
    for name in CA_KEY_FILES:
        key = certs / name
        if key.exists():
            os.chmod(key, 0o600)
    return certs / CA_CERT_FILE
