"""Suppression lists: what a MISP warninglist or a plain list keeps from being enforced."""

from __future__ import annotations

import json

import pytest

from atr_proxy.feeds.suppress import SuppressionError, parse_list

from .conftest import SHARED_FEEDS


def warninglist(kind: str, values: list[str]) -> bytes:
    return json.dumps({"name": "t", "type": kind, "list": values}).encode()


def test_cidr_list_covers_addresses_and_overlapping_ranges():
    lst = parse_list("dns", warninglist("cidr", ["8.8.8.8", "9.9.9.0/24", "2001:4860::/32"]),
                     "misp-warninglist")
    assert lst.covers("ip", "8.8.8.8")
    assert lst.covers("ip", "8.8.0.0/16")        # a range that would block 8.8.8.8
    assert lst.covers("ip", "9.9.9.9")
    assert lst.covers("ip", "2001:4860:4860::8888")
    assert not lst.covers("ip", "8.8.8.9")
    assert not lst.covers("ip", "10.0.0.0/8")


def test_hostname_list_covers_the_name_and_its_parents_not_its_children():
    lst = parse_list("top", warninglist("hostname", ["google.com", ".github.io"]),
                     "misp-warninglist")
    assert lst.covers("domain", "google.com", "exact")
    assert lst.covers("domain", "com", "subtree")         # would block google.com
    assert not lst.covers("domain", "com", "exact")
    assert not lst.covers("domain", "evil.google.com", "subtree")
    assert not lst.covers("domain", "evil.github.io", "subtree")
    assert lst.covers("url", "google.com/")
    assert not lst.covers("url", "google.com/phish/login")


def test_plain_list_reads_comments_and_ranked_csv():
    lst = parse_list("p", b"# top\n1,example.com\n2,example.net\n203.0.113.0/24\n"
                          b"http://example.org/\nlocalhost\nnot_a_value!\n", "plain")
    assert lst.entries == 4 and lst.skipped == 2
    assert lst.covers("domain", "example.net", "exact")
    assert lst.covers("ip", "203.0.113.5")
    assert lst.covers("url", "example.org/")


def test_regex_warninglists_are_refused_with_a_reason():
    with pytest.raises(SuppressionError, match="type 'regex' cannot be applied"):
        parse_list("r", warninglist("regex", ["^a"]), "misp-warninglist")
    with pytest.raises(SuppressionError, match="not JSON"):
        parse_list("r", b"{oops", "misp-warninglist")


def test_the_shared_public_dns_warninglist_covers_google_dns():
    path = SHARED_FEEDS / "misp" / "warninglist_public-dns-v4.json"
    if not path.exists():
        pytest.skip(f"needs the shared feed samples ({path} is absent)")
    lst = parse_list("public-dns-v4", path.read_bytes(), "misp-warninglist")
    assert lst.entries > 1000 and lst.covers("ip", "8.8.8.8")
    assert not lst.covers("ip", "100.38.242.113")
