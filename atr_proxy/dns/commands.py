"""``atr-proxy dns``: run the resolver."""

from __future__ import annotations

import argparse
import dataclasses

SINKHOLE_CHOICES = ("nxdomain", "nodata", "null", "address", "refused")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "dns", help="run the DNS resolver that sinkholes indicator domains",
        description="A DNS resolver for LAN clients: forwards to upstream resolvers and "
                    "answers names, CNAME targets and addresses that are indicators with "
                    "the sinkhole answer. Settings come from the config's dns: section; "
                    "these options override it.")
    p.add_argument("--listen", metavar="HOST:PORT",
                   help="address to serve UDP and TCP on (default 127.0.0.1:5353; port 0 "
                        "picks a free one)")
    p.add_argument("--upstream", action="append", metavar="HOST:PORT",
                   help="an upstream resolver (repeat for failover; default: dns.upstreams,"
                        " else the nameservers of /etc/resolv.conf)")
    p.add_argument("--sinkhole", choices=SINKHOLE_CHOICES,
                   help="how blocked names are answered (default dns.sinkhole: nxdomain)")
    p.add_argument("--query-log", action="store_true",
                   help="log one line per query to standard error")
    p.set_defaults(func=cmd_dns)


def cmd_dns(args: argparse.Namespace) -> int:
    import asyncio
    import logging

    from ..cli import _index_path, _settings
    from ..config import parse_hostport
    from ..errors import ConfigError
    from .server import run_resolver

    settings = _settings(args)
    dns = settings.dns
    changes: dict[str, object] = {}
    if args.listen:
        if args.listen.rsplit(":", 1)[-1] == "0":  # a free port, chosen at bind time
            host = args.listen.rsplit(":", 1)[0].strip("[]") or "127.0.0.1"
            changes["listen"] = (host, 0)
        else:
            changes["listen"] = parse_hostport(args.listen, "--listen", 53)
    if args.upstream:
        changes["upstreams"] = tuple(parse_hostport(u, "--upstream", 53) for u in args.upstream)
    if args.sinkhole:
        if args.sinkhole == "address" and not dns.sinkhole_address:
            raise ConfigError("--sinkhole", "address needs dns.sinkhole_address in the config")
        changes["sinkhole"] = args.sinkhole
    if args.query_log:
        changes["query_log"] = True
    dns = dataclasses.replace(dns, **changes)
    logging.basicConfig(level=logging.INFO if dns.query_log else logging.WARNING,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        return asyncio.run(run_resolver(dns, _index_path(args, settings), settings.events))
    except ValueError as exc:  # no upstream, a bad sinkhole address
        raise ConfigError("dns", str(exc)) from None
