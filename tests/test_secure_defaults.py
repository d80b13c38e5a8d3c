"""Secure defaults, checked: loopback binds, no open proxy or resolver by default, the admin
token compared in constant time, and a feed secret that never leaks (stdout, stderr, the
index, the events, the admin API). Covered elsewhere and not repeated here: the admin API
refusing IoC sources (test_admin_api), the dashboard's CSRF/session rules
(test_dashboard), the CA key's 0600 (test_proxy), the admin token file's 0600
(test_admin_api), explicit allow lists refusing strangers (test_dns_resolver, test_proxy)."""

from __future__ import annotations

import ipaddress
import os
import re
import subprocess
from pathlib import Path

import yaml

from atr_proxy import config

from .conftest import ROOT, atr_cli
from .feedserver import FeedServer, Route

PACKAGE = ROOT / "atr_proxy"


def test_every_listener_defaults_to_loopback():
    settings = config.from_mapping({}, base=ROOT, env={})
    for section in (settings.proxy, settings.dns, settings.admin):
        assert ipaddress.ip_address(section.listen[0]).is_loopback, section
    demo = yaml.safe_load((PACKAGE / "demo" / "atr.yaml").read_text())  # atr-proxy run
    for key in ("proxy", "dns", "admin"):
        assert demo[key]["listen"].startswith("127.0.0.1:"), demo[key]
    # no command line default of its own that widens the bind address
    for module in PACKAGE.rglob("commands.py"):
        for line in module.read_text().splitlines():
            if "add_argument" in line and "listen" in line:
                assert "0.0.0.0" not in line and "::" not in line, (module, line)


def test_default_client_lists_admit_no_public_address():
    for section in (config.ProxySettings(), config.DnsSettings()):
        for cidr in section.allow_clients:
            net = ipaddress.ip_network(cidr)
            # private, loopback, link-local or carrier-grade NAT: never the Internet
            assert net.is_private or net.subnet_of(ipaddress.ip_network("100.64.0.0/10")), \
                cidr
        for public in ("8.8.8.8", "1.1.1.1", "2001:4860:4860::8888", "203.0.113.9"):
            addr = ipaddress.ip_address(public)
            assert not any(addr in ipaddress.ip_network(c) for c in section.allow_clients
                           if ipaddress.ip_network(c).version == addr.version), public


def test_admin_token_is_compared_in_constant_time():
    source = (PACKAGE / "admin" / "api.py").read_text() + (
        PACKAGE / "admin" / "dashboard.py").read_text()
    assert "compare_digest" in source
    # no plain equality on a token or a session/CSRF value anywhere in the admin package
    for path in (PACKAGE / "admin").glob("*.py"):
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if re.search(r"(token|csrf|session)\w*\s*[!=]=\s*\w*(token|csrf|given)", line,
                         re.I):
                raise AssertionError(f"{path.name}:{n}: {line.strip()}")


def test_a_feed_secret_from_the_environment_never_appears_anywhere(tmp_path: Path):
    secret = "s3cr3t-Bearer-7d1f0a9b2c"
    key = "k3y-in-query-55aa77"
    with FeedServer() as server:
        bearer = server.add("/bearer.txt", Route(b"evil.example\n", auth=("bearer", "other")))
        query = server.add("/query.txt", Route(b"evil.example\n",
                                               auth=("query", "apikey", "other")))
        cfg = tmp_path / "atr.yaml"
        cfg.write_text(yaml.safe_dump({
            "index": str(tmp_path / "index.db"),
            "events": {"jsonl": str(tmp_path / "events.jsonl")},
            "sync": {"retries": 0},
            "feeds": [
                {"name": "partner", "url": bearer, "format": "plain",
                 "auth": {"type": "bearer", "token": "${PARTNER_TOKEN}"}},
                {"name": "keyed", "url": query, "format": "plain",
                 "auth": {"type": "api_key", "name": "apikey", "in": "query",
                          "value": "${PARTNER_KEY}"}},
            ]}))
        env = {**os.environ, "PARTNER_TOKEN": secret, "PARTNER_KEY": key}
        runs = [subprocess.run(atr_cli() + ["--config", str(cfg), *args], env=env,
                               capture_output=True, text=True, timeout=60)
                for args in (["sync", "--once"], ["sync", "--once", "--json"],
                             ["feeds", "--json"], ["feeds", "test", "partner"])]
        assert server.hits("/bearer.txt")[0].headers["authorization"] == f"Bearer {secret}"
        assert server.hits("/query.txt")[0].query["apikey"] == [key]
    assert runs[0].returncode != 0 and "HTTP 401" in runs[0].stdout + runs[0].stderr
    seen = "".join(r.stdout + r.stderr for r in runs)
    files = b"".join(p.read_bytes() for p in tmp_path.iterdir()
                     if p.is_file() and p.name != "atr.yaml")
    for value in (secret, key):
        assert value not in seen, value
        assert value.encode() not in files, value
