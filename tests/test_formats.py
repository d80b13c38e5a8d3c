"""Feed parsers: each format from a small fixture, whole-file rejection, sniffing, the real
public feeds in ../shared/feeds (skipped when absent) and fuzzing."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from atr_proxy.errors import ConfigError, RejectedFile
from atr_proxy.feeds.formats import (
    FORMATS,
    FormatOptions,
    ParsedIndicator,
    ParseResult,
    parse,
    parse_misp_manifest,
    parse_taxii_envelope,
    sniff,
)
from atr_proxy.indicators import canonicalize

FIXTURES = Path(__file__).parent / "fixtures" / "feeds"
# the project root is one level down from shared/; a user's clone has no ../shared
SHARED_FEEDS = Path(__file__).resolve().parents[1].parent / "shared" / "feeds"


def fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def entries(items: list[ParsedIndicator]) -> list[tuple[str, str, str | None, int]]:
    return [(i.kind, i.value, i.match, i.line) for i in items]


def values(items: list[ParsedIndicator], kind: str | None = None) -> set[str]:
    return {i.value for i in items if kind is None or i.kind == kind}


# --- plain ------------------------------------------------------------------------------

def test_plain_list_keeps_one_value_per_line_and_drops_comments() -> None:
    result = parse(fixture("plain.txt"), "plain", source="feeds/plain.txt")

    assert result.format == "plain"
    assert entries(result.indicators) == [
        ("domain", "evil.example", None, 5),
        ("domain", "mixed-case.example", None, 6),
        ("ip", "1.2.3.0/24", None, 7),  # "1.2.3.0/24 ; SBL123"
        ("ip", "10.0.0.0/8", None, 8),  # written 10.9.8.7/8
        ("ip", "2001:db8::/32", None, 9),
        ("ip", "203.0.113.9", None, 10),
        ("url", "http://phish.example/login?x=1", None, 11),
        ("url", "http://defanged.example/a", None, 12),
        ("domain", "wild.example", "subtree", 13),
        ("ip", "192.0.2.50", None, 16),  # "IP<TAB>count": the rest of the line is ignored
        ("domain", "spaced.example", None, 17),
    ]
    assert result.host_bits_normalised == 1
    assert result.rejected == 2
    assert result.rejected_samples == [
        (15, "bad..example", "empty label (two dots in a row)"),
        (18, "javascript:alert(1)", "unsupported scheme 'javascript' (only http and https)"),
    ]
    assert result.skipped == {}
    assert result.exceptions == [] and result.revoked == []


def test_a_value_listed_twice_is_kept_once_with_its_first_line() -> None:
    result = parse(b"evil.example\nEVIL.example\nevil.example.\n", "plain")
    assert entries(result.indicators) == [("domain", "evil.example", None, 1)]


def test_kind_ip_rejects_domains_and_urls_with_a_reason() -> None:
    result = parse(fixture("plain.txt"), "plain", kind="ip")

    assert {i.kind for i in result.indicators} == {"ip"}
    assert values(result.indicators) == {
        "1.2.3.0/24", "10.0.0.0/8", "2001:db8::/32", "203.0.113.9", "192.0.2.50",
    }
    assert result.rejected == 9  # 6 domains (one listed twice), 2 URLs, the bad name
    assert result.rejected_samples[0] == (5, "evil.example", "not an IPv4 or IPv6 address")
    # the "*." line is a domain by its syntax: refused by the feed's kind before canonicalising
    assert (13, "*.wild.example", "domain value in a feed of ip indicators") in result.rejected_samples


def test_kind_domain_takes_ips_as_ip_indicators_and_rejects_urls() -> None:
    result = parse(fixture("plain.txt"), "plain", kind="domain")

    assert {i.kind for i in result.indicators} == {"domain", "ip"}
    assert values(result.indicators, "url") == set()
    reasons = {line: reason for line, _text, reason in result.rejected_samples}
    assert reasons[11] == "looks like a URL, not a domain name"


def test_kind_restriction_applies_to_typed_formats_too() -> None:
    result = parse(fixture("misp.json"), "misp", kind="domain")
    assert {i.kind for i in result.indicators} == {"domain", "ip"}
    assert (3, "http://c2.example/gate.php", "url value in a feed of domain indicators") in (
        result.rejected_samples
    )


# --- hosts ------------------------------------------------------------------------------

def test_hosts_file_takes_every_name_and_skips_the_localhost_preamble() -> None:
    result = parse(fixture("hosts.txt"), "hosts", source="feeds/hosts.txt")

    assert entries(result.indicators) == [
        ("domain", "ads.example", None, 10),
        ("domain", "tracker.example", None, 11),
        ("domain", "metrics.example", None, 11),
        ("domain", "tabbed.example", None, 12),
        ("domain", "v6sink.example", None, 13),
        ("domain", "bare-domain.example", None, 14),
    ]
    # localhost, localhost.localdomain, broadcasthost, localhost + ip6-localhost +
    # ip6-loopback, localhost (fe80::1%lo0), ip6-allnodes, 0.0.0.0
    assert result.skipped == {"localhost": 9}
    assert result.rejected == 2
    assert result.rejected_samples == [
        (16, "notanaddress another.example",
         "'notanaddress' is not an address (expected 'ADDRESS NAME...')"),
        (17, "0.0.0.0 bad_name!.example",
         "character '!' is not allowed in a domain name (a-z 0-9 - _ only)"),
    ]


# --- adblock ----------------------------------------------------------------------------

def test_adblock_host_rules_become_subtrees_and_the_rest_is_counted() -> None:
    result = parse(fixture("adblock.txt"), "adblock")

    assert entries(result.indicators) == [
        ("domain", "ads.example", "subtree", 4),
        ("domain", "tracker.example", "subtree", 5),  # $important keeps a rule host-wide
        ("domain", "upper.example", "subtree", 6),
        ("domain", "plain-domain.example", "subtree", 17),
        ("domain", "star.example", "subtree", 19),  # ||*.star.example^
    ]
    assert entries(result.exceptions) == [("domain", "allowed.ads.example", "subtree", 7)]
    assert result.skipped == {
        "options": 2,  # $third-party, $script,domain=...
        "cosmetic": 4,  # ##, #@#, #?#, and a global ##
        "path_rule": 2,  # ||cdn.example/ads/banner.js, |https://anchored.example/path
        "regex": 1,
        "pattern": 2,  # -ad-banner-, ||mid*dle.example^
    }
    assert result.rejected_samples == [(21, "||bad..example^", "empty label (two dots in a row)")]


# --- wildcard ---------------------------------------------------------------------------

def test_wildcard_list_maps_star_dot_to_subtree_and_bare_names_to_the_feed_default() -> None:
    result = parse(fixture("wildcard.txt"), "wildcard")

    assert entries(result.indicators) == [
        ("domain", "wild.example", "subtree", 3),  # "*.wild.example" and "wild.example" merge
        ("domain", "exact-or-default.example", None, 4),
        ("domain", "only.example", "exact", 5),  # dnscrypt-proxy "=name"
    ]
    assert result.skipped == {"pattern": 1}  # ads.*
    assert result.rejected_samples == [(9, "*.bad..example", "empty label (two dots in a row)")]


def test_subtree_wins_over_a_bare_name_in_either_order() -> None:
    for data in (b"d.example\n*.d.example\n", b"*.d.example\nd.example\n"):
        result = parse(data, "wildcard")
        assert [(i.value, i.match) for i in result.indicators] == [("d.example", "subtree")]


# --- rpz --------------------------------------------------------------------------------

def test_rpz_zone_yields_qname_and_ip_triggers_and_passthru_exceptions() -> None:
    result = parse(fixture("rpz.txt"), "rpz", source="rpz/example.rpz")

    assert entries(result.indicators) == [
        ("domain", "blocked.example", "subtree", 9),  # the d + *.d pair collapses
        ("domain", "nodata.example", "exact", 11),  # CNAME *.
        ("domain", "absolute.example", "exact", 12),  # absolute owner, zone origin stripped
        ("domain", "only-sub.example", "subtree", 13),
        ("domain", "dropped.example", "exact", 15),  # rpz-drop.
        ("domain", "tcp.example", "exact", 16),  # rpz-tcp-only.
        ("domain", "garden.example", "exact", 17),  # local data A + AAAA
        ("ip", "1.2.3.4", None, 19),  # 32.4.3.2.1.rpz-ip
        ("ip", "1.2.3.0/24", None, 20),
        ("ip", "2001:db8::1", None, 21),  # 128.1.zz.db8.2001.rpz-ip
    ]
    assert entries(result.exceptions) == [
        ("domain", "allowed.blocked.example", "exact", 14),
        ("ip", "8.8.8.8", None, 22),
    ]
    assert result.skipped == {"rpz_nsdname": 1, "rpz_nsip": 1, "rpz_client_ip": 1}
    assert result.rejected_samples == [
        (26, "x.rpz-ip               CNAME .", "malformed rpz-ip trigger"),
        (27, "bad..example           CNAME .", "empty label (two dots in a row)"),
    ]


def test_rpz_relative_origin_and_soa_owner_name_the_zone() -> None:
    zone = (
        b"rpz.test. 3600 IN SOA ns.test. admin.test. 1 3600 600 86400 300\n"
        b"rpz.test. NS ns.test.\n"
        b"evil.example.rpz.test. CNAME .\n"
        b"$ORIGIN sub.example.rpz.test.\n"
        b"www CNAME .\n"
        b"outside.example. CNAME .\n"
    )
    result = parse(zone, "rpz")
    assert [(i.value, i.match) for i in result.indicators] == [
        ("evil.example", "exact"),
        ("www.sub.example", "exact"),
        ("outside.example", "exact"),  # absolute outside the zone: kept as written
    ]


def test_rpz_unclosed_parenthesis_is_one_rejected_record() -> None:
    result = parse(b"@ SOA a. b. ( 1 2 3\n4 5\n", "rpz")
    assert result.indicators == []
    assert result.rejected == 1
    assert result.rejected_samples[0][0] == 1


# --- csv --------------------------------------------------------------------------------

def test_urlhaus_csv_uses_the_hash_header_and_reads_threat_tags_and_link() -> None:
    result = parse(fixture("urlhaus.csv"), "csv")

    assert entries(result.indicators) == [
        ("url", "http://malware.example/bin.sh", None, 6),
        ("url", "https://dropper.example/a/b?c=d", None, 7),
        ("url", "http://192.0.2.7:8080/x", None, 8),
    ]
    first, second, _ = result.indicators
    assert (first.threat, first.malware, first.reference) == (
        "malware_download", "elf,mips,Mozi", "https://urlhaus.example/url/1001/",
    )
    assert second.malware is None  # "None" in the tags column
    assert result.rejected == 2
    assert [(line, reason) for line, _text, reason in result.rejected_samples] == [
        (9, "unsupported scheme 'javascript' (only http and https)"),
        (10, "no value in column 'url'"),
    ]


FEODO_CSV = b"""#####
# Feodo-style (fixture)
#####
"first_seen_utc","dst_ip","dst_port","c2_status","last_online","malware"
"2024-02-08 19:20:49","192.0.2.155","5000","offline","2024-03-11","Pikabot"
"2024-02-09 06:56:00","198.51.100.136","2078","online","2024-03-11","QakBot"
"""


def test_feodo_csv_header_row_picks_dst_ip_and_malware() -> None:
    result = parse(FEODO_CSV, "csv")
    assert [(i.kind, i.value, i.malware, i.line) for i in result.indicators] == [
        ("ip", "192.0.2.155", "Pikabot", 5),
        ("ip", "198.51.100.136", "QakBot", 6),
    ]
    assert result.rejected == 0


def test_csv_column_by_name_number_delimiter_and_no_header() -> None:
    by_name = parse(FEODO_CSV, "csv", options=FormatOptions(column="DST_IP"))
    by_number = parse(FEODO_CSV, "csv", options=FormatOptions(column=1))
    assert values(by_name.indicators) == values(by_number.indicators) == {
        "192.0.2.155", "198.51.100.136",
    }
    semicolons = b"# no header here\n1;evil.example;x\n2;other.example;y\n"
    result = parse(
        semicolons, "csv", options=FormatOptions(delimiter=";", column=1, has_header=False)
    )
    assert entries(result.indicators) == [
        ("domain", "evil.example", None, 2),
        ("domain", "other.example", None, 3),
    ]
    tabs = parse(b"a\tb\n7\tevil.example\n", "csv", options=FormatOptions(delimiter="\t"))
    assert values(tabs.indicators) == {"evil.example"}


def test_csv_without_a_known_column_takes_the_first_field_that_canonicalises() -> None:
    data = b'1001,"2024-01-01 00:00:00",evil.example,online\n1002,x,http://u.example/p,online\n'
    result = parse(data, "csv", options=FormatOptions(has_header=False))
    assert entries(result.indicators) == [
        ("domain", "evil.example", None, 1),  # the numeric id is never read as an address
        ("url", "http://u.example/p", None, 2),
    ]


def test_csv_column_missing_from_the_header_rejects_the_file() -> None:
    with pytest.raises(RejectedFile, match=r"feeds/f\.csv: no column 'address'"):
        parse(FEODO_CSV, "csv", options=FormatOptions(column="address"), source="feeds/f.csv")


# --- json -------------------------------------------------------------------------------

def test_threatfox_json_maps_types_ports_and_details() -> None:
    result = parse(fixture("threatfox.json"), "json")

    assert entries(result.indicators) == [
        ("domain", "c2.example", None, 1),
        ("ip", "198.51.100.7", None, 2),  # "198.51.100.7:443" (ip:port)
        ("url", "http://payload.example/x.exe", None, 3),
        ("ip", "2001:db8::5", None, 5),  # "[2001:db8::5]:8443"
    ]
    c2 = result.indicators[0]
    assert (c2.threat, c2.malware, c2.confidence, c2.reference) == (
        "botnet_cc", "win.cobalt_strike", 75, "https://report.example/1",
    )
    assert result.skipped == {"unsupported_type": 1}  # md5_hash
    assert result.rejected == 2
    assert result.rejected_samples[0] == (6, "bad..example", "empty label (two dots in a row)")
    assert result.rejected_samples[1][0] == 7 and "no text value at 'ioc'" in result.rejected_samples[1][2]


def test_json_export_style_list_of_strings_and_custom_paths() -> None:
    export = {"1001": [{"ioc_value": "a.example", "ioc_type": "domain"}],
              "1002": [{"ioc_value": "192.0.2.1:80", "ioc_type": "ip:port"}]}
    result = parse(json.dumps(export).encode(), "json",
                   options=FormatOptions(json_value="ioc_value"))
    assert values(result.indicators) == {"a.example", "192.0.2.1"}

    strings = parse(b'["a.example", "192.0.2.9", 42]', "json")
    assert values(strings.indicators) == {"a.example", "192.0.2.9"}
    assert strings.rejected == 1

    nested = {"response": {"items": [
        {"attributes": {"value": "x.example", "kind": "fqdn", "until": "2030-01-01T00:00:00Z"}},
        {"attributes": {"value": "y.example", "kind": "email"}},
        {"attributes": {"value": "z.example", "kind": "mutex"}},
    ]}}
    options = FormatOptions(
        json_items="response.items", json_value="attributes.value",
        json_type="attributes.kind", json_expiry="attributes.until",
        type_map={"email": "skip", "mutex": "domain"},
    )
    result = parse(json.dumps(nested).encode(), "json", options=options)
    assert [(i.value, i.expires_at) for i in result.indicators] == [
        ("x.example", 1893456000.0), ("z.example", None),
    ]
    assert result.skipped == {"unsupported_type": 1}


def test_threatfox_no_result_is_empty_and_an_error_status_rejects_the_file() -> None:
    empty = parse(b'{"query_status": "no_result", "data": "Your search did not yield any results"}',
                  "json")
    assert empty.indicators == [] and empty.rejected == 0
    with pytest.raises(RejectedFile, match="query_status 'unknown_auth_key'"):
        parse(b'{"query_status": "unknown_auth_key"}', "json")


# --- stix2 ------------------------------------------------------------------------------

def test_stix_bundle_reads_or_patterns_expiry_malware_and_revocations() -> None:
    result = parse(fixture("stix2.json"), "stix2")

    assert entries(result.indicators) == [
        ("domain", "c2.example", None, 1),
        ("ip", "198.51.100.1", None, 1),
        ("url", "http://phish.example/it's/login", None, 2),  # \' inside the value
        ("ip", "2001:db8::/32", None, 2),
        ("ip", "203.0.113.0/24", None, 2),  # ISSUBSET of a range
    ]
    c2 = result.indicators[0]
    assert c2.expires_at == 1893456000.0  # valid_until 2030-01-01T00:00:00Z
    assert (c2.threat, c2.malware, c2.confidence, c2.reference) == (
        "C2 domains and address", "ExampleRAT", 80, "https://report.example/c2",
    )
    assert result.indicators[2].threat == "compromised"  # indicator_types when no name
    assert entries(result.revoked) == [("domain", "false-positive.example", None, 6)]
    # AND, a file hash and LIKE; a snort pattern
    assert result.skipped == {"unsupported_pattern": 3, "unsupported_pattern_type": 1}
    assert result.rejected == 1
    assert result.rejected_samples[0][0] == 8
    assert result.rejected_samples[0][2].startswith("bad STIX pattern")


@pytest.mark.parametrize(
    ("pattern", "expected"),
    [
        ("[domain-name:value = 'a.example']", {"a.example"}),
        ("[domain-name:value = 'a.example' OR domain-name:value = 'b.example']",
         {"a.example", "b.example"}),
        ("([url:value = 'http://a.example/x']) OR [ipv4-addr:value = '10.0.0.0/8']",
         {"http://a.example/x", "10.0.0.0/8"}),
        # an OR alternative of another type is dropped, the others stand alone
        ("[file:hashes.MD5 = 'd41d8cd98f00b204e9800998ecf8427e' OR domain-name:value = 'c.example']",
         {"c.example"}),
        ("[domain-name:value = 'a.example' AND domain-name:value = 'b.example']", None),
        ("[domain-name:value = 'a.example'] FOLLOWEDBY [domain-name:value = 'b.example']", None),
        ("[domain-name:value = 'a.example'] WITHIN 300 SECONDS", None),
        ("[domain-name:value MATCHES '^a']", None),
        ("[domain-name:value IN ('a.example', 'b.example')]", None),
        ("[domain-name:value != 'a.example']", None),
        ("[email-addr:value = 'x@a.example']", None),
    ],
)
def test_stix_pattern_support(pattern: str, expected: set[str] | None) -> None:
    indicator = {"type": "indicator", "id": "indicator--1", "pattern": pattern,
                 "pattern_type": "stix"}
    result = parse(json.dumps(indicator).encode(), "stix2")
    if expected is None:
        assert result.indicators == []
        assert result.skipped == {"unsupported_pattern": 1}
    else:
        assert values(result.indicators) == expected
    assert result.rejected == 0


def test_stix_2_0_objects_without_pattern_type_and_lists_of_objects() -> None:
    objects = [
        {"type": "indicator", "id": "indicator--a", "labels": ["malicious-activity"],
         "pattern": "[ipv4-addr:value = '192.0.2.10']"},
        {"type": "identity", "id": "identity--b", "name": "ACME"},
    ]
    result = parse(json.dumps(objects).encode(), "stix2")
    assert [(i.value, i.threat) for i in result.indicators] == [("192.0.2.10", "malicious-activity")]
    bundle_2_0 = {"type": "bundle", "id": "bundle--c", "spec_version": "2.0", "objects": objects}
    assert values(parse(json.dumps(bundle_2_0).encode(), "stix2").indicators) == {"192.0.2.10"}


def test_taxii_envelope_gives_objects_more_and_next() -> None:
    envelope = {"more": True, "next": "page-2", "objects": [
        {"type": "indicator", "id": "indicator--t", "pattern_type": "stix",
         "pattern": "[domain-name:value = 't.example']"}]}
    result, more, following = parse_taxii_envelope(json.dumps(envelope).encode())
    assert (values(result.indicators), more, following) == ({"t.example"}, True, "page-2")
    result, more, following = parse_taxii_envelope(b"{}")
    assert (result.indicators, more, following) == ([], False, None)


# --- misp -------------------------------------------------------------------------------

def test_misp_event_takes_to_ids_network_attributes_from_event_and_objects() -> None:
    result = parse(fixture("misp.json"), "misp")

    assert entries(result.indicators) == [
        ("domain", "c2.example", None, 1),
        ("domain", "www.c2.example", None, 2),
        ("url", "http://c2.example/gate.php", None, 3),
        ("ip", "198.51.100.20", None, 4),
        ("ip", "203.0.113.0/24", None, 5),
        ("domain", "pair.example", None, 10),  # domain|ip gives both
        ("ip", "192.0.2.44", None, 10),
        ("ip", "192.0.2.45", None, 11),  # ip-dst|port gives the address
    ]
    assert {i.threat for i in result.indicators} == {"Example campaign"}
    assert result.indicators[0].reference == "seen in sample A"
    assert result.indicators[1].reference is None  # an empty comment
    assert result.skipped == {"not_to_ids": 1, "deleted": 1, "unsupported_type": 2}
    assert result.rejected_samples == [(9, "bad..example", "empty label (two dots in a row)")]


def test_misp_search_response_reads_every_event() -> None:
    event = json.loads(fixture("misp.json"))["Event"]
    other = {"info": "Second", "Attribute": [
        {"type": "domain", "value": "second.example", "to_ids": "1"}]}
    response = {"response": [{"Event": event}, {"Event": other}]}
    result = parse(json.dumps(response).encode(), "misp")
    assert "second.example" in values(result.indicators)
    assert len(result.indicators) == 9


def test_misp_manifest_lists_event_uuids() -> None:
    manifest = {"5f5e5d5c-0000-4000-8000-000000000001": {"info": "x"},
                "not-a-uuid": {"info": "y"}}
    assert parse_misp_manifest(json.dumps(manifest).encode()) == [
        "5f5e5d5c-0000-4000-8000-000000000001"
    ]
    with pytest.raises(RejectedFile, match="manifest.json"):
        parse_misp_manifest(b"[1, 2]", source="feeds/misp/manifest.json")


# --- sniffing, encodings, rejection -------------------------------------------------------

FIXTURE_FORMATS = {
    "plain.txt": "plain",
    "hosts.txt": "hosts",
    "adblock.txt": "adblock",
    "wildcard.txt": "wildcard",
    "rpz.txt": "rpz",
    "urlhaus.csv": "csv",
    "threatfox.json": "json",
    "stix2.json": "stix2",
    "misp.json": "misp",
}


@pytest.mark.parametrize(("name", "fmt"), FIXTURE_FORMATS.items())
def test_auto_sniffs_each_fixture_to_its_format(name: str, fmt: str) -> None:
    data = fixture(name)
    assert sniff(data) == fmt
    auto = parse(data)
    assert auto.format == fmt
    assert auto == parse(data, fmt)


def test_sniffing_small_inline_lists() -> None:
    assert sniff(b"") == "plain"
    assert sniff(b"# only a comment\n") == "plain"
    assert sniff(b"1.2.3.0/24 ; SBL1\n5.6.7.0/24 ; SBL2\n") == "plain"
    assert sniff(b"192.0.2.1\t7\n192.0.2.2\t3\n") == "plain"  # IP<TAB>count
    assert sniff(b"0.0.0.0 a.example\n0.0.0.0 b.example\n") == "hosts"
    assert sniff(b"a.example CNAME .\n*.a.example CNAME .\n") == "rpz"
    assert sniff(b"[Adblock Plus 2.0]\na.example\n") == "adblock"
    assert sniff(b'[{"ioc": "a.example"}]') == "json"
    assert sniff(b'{"Attribute": [], "info": "x"}') == "misp"


@pytest.mark.parametrize("name", FIXTURE_FORMATS)
def test_crlf_and_bom_change_nothing(name: str) -> None:
    data = fixture(name)
    expected = parse(data)
    for variant in (data.replace(b"\n", b"\r\n"), b"\xef\xbb\xbf" + data,
                    b"\xef\xbb\xbf" + data.replace(b"\n", b"\r\n")):
        result = parse(variant)
        assert entries(result.indicators) == entries(expected.indicators)
        assert entries(result.exceptions) == entries(expected.exceptions)
        assert result.skipped == expected.skipped
        assert result.rejected == expected.rejected


def test_utf16_hosts_file_from_windows_is_read() -> None:
    data = "\ufeff0.0.0.0 a.example\r\n0.0.0.0 b.example\r\n".encode("utf-16-le")
    assert values(parse(data).indicators) == {"a.example", "b.example"}


def test_a_few_undecodable_bytes_reject_only_their_lines() -> None:
    good = b"".join(b"host%d.example\n" % n for n in range(30))
    result = parse(good + b"caf\xe9-\xff.example\n" + b"last.example\n", "plain")
    assert len(result.indicators) == 31
    assert result.rejected == 1
    assert result.rejected_samples[0][0] == 31


@pytest.mark.parametrize("fmt", FORMATS)
def test_html_page_is_rejected_whatever_the_format(fmt: str) -> None:
    page = b"\n  <!DOCTYPE html>\n<html><head><title>Sign in</title></head><body></body></html>"
    with pytest.raises(RejectedFile, match=r"feeds/x: an HTML page"):
        parse(page, fmt, source="feeds/x")
    with pytest.raises(RejectedFile, match="HTML"):
        parse(b"<html>\n<body>502 Bad Gateway</body></html>", fmt)


@pytest.mark.parametrize("fmt", FORMATS)
def test_binary_content_is_rejected_whatever_the_format(fmt: str) -> None:
    with pytest.raises(RejectedFile, match=r"feeds/x\.gz: binary content \(NUL bytes\)"):
        parse(b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03evil", fmt, source="feeds/x.gz")
    with pytest.raises(RejectedFile, match="binary content"):
        parse(bytes(range(0x80, 0x100)) * 8, fmt)


@pytest.mark.parametrize("fmt", ["json", "stix2", "misp"])
def test_broken_json_is_rejected_with_the_place(fmt: str) -> None:
    with pytest.raises(RejectedFile, match=r"feeds/t\.json line 2 column 1: not valid JSON"):
        parse(b'{"data": [\n', fmt, source="feeds/t.json")
    with pytest.raises(RejectedFile, match="not valid JSON"):
        parse_taxii_envelope(b'{"objects": [', source="feeds/t.json")


@pytest.mark.parametrize("fmt", FORMATS)
def test_empty_and_comment_only_files_are_empty_lists_not_rejections(fmt: str) -> None:
    for data in (b"", b"\n\n  \n", b"\xef\xbb\xbf"):
        result = parse(data, fmt)
        assert (result.indicators, result.rejected) == ([], 0)
    if fmt not in ("json", "stix2", "misp"):
        result = parse(b"# nothing listed today\n#\n", fmt)
        assert (result.indicators, result.rejected) == ([], 0)


def test_unknown_format_or_kind_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="unknown feed format 'xml'"):
        parse(b"", "xml")
    with pytest.raises(ValueError, match="unknown indicator kind 'hash'"):
        parse(b"", "plain", kind="hash")


# --- options ----------------------------------------------------------------------------

def test_format_options_from_mapping_validates_and_names_the_key() -> None:
    options = FormatOptions.from_mapping(
        {"column": "url", "delimiter": "tab", "comment_prefixes": "#", "has_header": True,
         "json_items": "data", "type_map": {"FQDN": "domain", "email": None}},
        "feeds[0].options",
    )
    assert options.column == "url" and options.delimiter == "\t"
    assert options.comment_prefixes == ("#",)
    assert dict(options.type_map or {}) == {"fqdn": "domain", "email": "skip"}

    bad = [
        ({"colum": "url"}, "feeds[0].options.colum"),
        ({"delimiter": ",,"}, "feeds[0].options.delimiter"),
        ({"column": -1}, "feeds[0].options.column"),
        ({"has_header": "yes"}, "feeds[0].options.has_header"),
        ({"comment_prefixes": ["#", ""]}, "feeds[0].options.comment_prefixes"),
        ({"type_map": {"fqdn": "hostname"}}, "feeds[0].options.type_map.fqdn"),
        ({"json_value": ""}, "feeds[0].options.json_value"),
    ]
    for data, path in bad:
        with pytest.raises(ConfigError) as caught:
            FormatOptions.from_mapping(data, "feeds[0].options")
        assert caught.value.path == path
    with pytest.raises(ConfigError):
        FormatOptions.from_mapping(["column"], "feeds[0].options")  # type: ignore[arg-type]


# --- the real public feeds in ../shared/feeds ----------------------------------------------

@pytest.fixture
def shared() -> Path:
    if not SHARED_FEEDS.is_dir():
        pytest.skip("shared feeds not present (../shared/feeds is outside a user's clone)")
    return SHARED_FEEDS


def read(shared: Path, name: str) -> bytes:
    return (shared / name).read_bytes()


SHARED_FORMATS = {
    "abusech/feodotracker_ipblocklist.csv": "csv",
    "abusech/feodotracker_ipblocklist_recommended.txt": "plain",
    "abusech/urlhaus_csv_recent_2022-09-13_sample.csv": "csv",
    "domains/hagezi_fake_adblock.txt": "adblock",
    "domains/hagezi_fake_domains.txt": "plain",
    "domains/hagezi_fake_wildcard.txt": "wildcard",
    "hosts/stevenblack_unified_hosts_2024-09-27.txt": "hosts",
    "hosts/urlhaus_hostfile_2020-04-14.txt": "hosts",
    "ip/firehol_level1.netset": "plain",
    "ip/spamhaus_drop.txt": "plain",
    "ip/spamhaus_dropv6.txt": "plain",
    "misp/misp_event_osint_sednit.json": "misp",
    "misp/misp_feed_event_56bf399d-c46c-4fdb-a9cf-d9bb02de0b81.json": "misp",
    "misp/misp_feed_manifest.json": "json",
    "misp/warninglist_public-dns-v4.json": "json",
    "misp/warninglist_tranco10k.json": "json",
    "phishing/openphish_feed.txt": "plain",
    "rpz/hagezi_fake_rpz.txt": "rpz",
    "stix/oasis_doc_indicator-for-malicious-url.json": "stix2",
    "stix/oasis_indicator-for-c2-ip-address.json": "stix2",
    "stix/oasis_poisonivy.json": "stix2",
}


def test_every_shared_feed_is_known_and_sniffed_right(shared: Path) -> None:
    present = {str(p.relative_to(shared)) for p in shared.rglob("*")
               if p.is_file() and p.name != "README.md"}
    assert present == set(SHARED_FORMATS)
    for name, fmt in SHARED_FORMATS.items():
        assert sniff(read(shared, name)) == fmt, name


def test_spamhaus_drop_yields_only_ip_ranges_without_rejects(shared: Path) -> None:
    v4 = parse(read(shared, "ip/spamhaus_drop.txt"))
    assert len(v4.indicators) == 1385  # every "CIDR ; SBLnnn" line
    assert all(i.kind == "ip" and "/" in i.value and ":" not in i.value for i in v4.indicators)
    assert (v4.rejected, v4.host_bits_normalised, v4.skipped) == (0, 0, {})
    assert "1.10.16.0/20" in values(v4.indicators)
    v6 = parse(read(shared, "ip/spamhaus_dropv6.txt"))
    assert len(v6.indicators) == 78
    assert all(i.kind == "ip" and ":" in i.value and "/" in i.value for i in v6.indicators)
    assert v6.rejected == 0


def test_firehol_netset_yields_its_6612_entries(shared: Path) -> None:
    result = parse(read(shared, "ip/firehol_level1.netset"))
    assert len(result.indicators) == 6612  # "Entries : 6612 subnets"
    assert {i.kind for i in result.indicators} == {"ip"} and result.rejected == 0
    assert {"0.0.0.0/8", "1.93.0.224"} <= values(result.indicators)


def test_feodo_lists_yield_ips_including_the_planted_public_resolver(shared: Path) -> None:
    txt = parse(read(shared, "abusech/feodotracker_ipblocklist_recommended.txt"))
    assert "8.8.8.8" in values(txt.indicators)  # the false-positive probe
    assert len(txt.indicators) == 244 and txt.rejected == 0
    csv_result = parse(read(shared, "abusech/feodotracker_ipblocklist.csv"))
    assert len(csv_result.indicators) == 28 and csv_result.rejected == 0
    assert {i.kind for i in csv_result.indicators} == {"ip"}
    assert csv_result.indicators[0].value == "192.9.135.73"
    assert csv_result.indicators[0].malware == "Pikabot"


def test_urlhaus_csv_dump_yields_urls_with_their_details(shared: Path) -> None:
    result = parse(read(shared, "abusech/urlhaus_csv_recent_2022-09-13_sample.csv"))
    assert len(result.indicators) == 150 and result.rejected == 0
    assert {i.kind for i in result.indicators} == {"url"}
    first = result.indicators[0]
    assert first.value == "http://117.216.19.13:42598/i"
    assert (first.threat, first.reference) == (
        "malware_download", "https://urlhaus.abuse.ch/url/2301008/",
    )


def test_hagezi_lists_agree_on_their_domains(shared: Path) -> None:
    adblock = parse(read(shared, "domains/hagezi_fake_adblock.txt"))
    wildcard = parse(read(shared, "domains/hagezi_fake_wildcard.txt"))
    domains = parse(read(shared, "domains/hagezi_fake_domains.txt"))
    rpz = parse(read(shared, "rpz/hagezi_fake_rpz.txt"))
    for result in (adblock, wildcard, domains, rpz):
        assert result.rejected == 0 and result.exceptions == []

    # the compressed lists (parents cover their subdomains) are the same 7355 subtrees
    assert values(adblock.indicators) == values(wildcard.indicators)
    assert len(adblock.indicators) == 7355
    assert {i.match for i in adblock.indicators + wildcard.indicators} == {"subtree"}
    # the full list (same 2022 version) names 14043 domains, each under one of those subtrees
    assert len(domains.indicators) == 14043
    assert {i.match for i in domains.indicators} == {None}
    roots = values(adblock.indicators)
    assert roots <= values(domains.indicators)
    for name in values(domains.indicators):
        labels = name.split(".")
        assert any(".".join(labels[k:]) in roots for k in range(len(labels))), name
    # the RPZ file is a 2025 snapshot: 28112 records, each "d" + "*.d" pair one subtree
    assert len(rpz.indicators) == 14056
    assert {i.match for i in rpz.indicators} == {"subtree"}
    assert "degussa-goldhandel.ac" in values(rpz.indicators)


def test_stevenblack_hosts_skips_the_localhost_preamble(shared: Path) -> None:
    result = parse(read(shared, "hosts/stevenblack_unified_hosts_2024-09-27.txt"))
    assert result.skipped == {"localhost": 14}  # 13 preamble lines, ::1 has two
    assert result.rejected == 0
    assert len(result.indicators) == 115262  # "Number of unique domains: 115,262"
    assert "ck.getcookiestxt.com" in values(result.indicators)
    assert not {"localhost", "0.0.0.0", "broadcasthost"} & values(result.indicators)


def test_urlhaus_hostfile_with_tabs_and_crlf(shared: Path) -> None:
    result = parse(read(shared, "hosts/urlhaus_hostfile_2020-04-14.txt"))
    assert len(result.indicators) == 869 and result.rejected == 0
    assert "0400msc.com" in values(result.indicators)


def test_openphish_sample_holds_host_names_not_urls(shared: Path) -> None:
    # the README calls it a URL list; this 2020 copy has host names (and a few addresses)
    result = parse(read(shared, "phishing/openphish_feed.txt"))
    assert {i.kind for i in result.indicators} == {"domain", "ip"}
    assert len(result.indicators) == 1434  # 4011 lines, many repeated
    assert result.rejected == 0
    assert "renderdownunder.com.au" in values(result.indicators)


def test_stix_examples_yield_the_values_in_their_patterns(shared: Path) -> None:
    url = parse(read(shared, "stix/oasis_doc_indicator-for-malicious-url.json"))
    assert [(i.kind, i.value, i.malware) for i in url.indicators] == [
        ("url", "http://x4z9arb.cn/4712/", "x4z9arb backdoor"),
    ]
    c2 = parse(read(shared, "stix/oasis_indicator-for-c2-ip-address.json"))
    assert [(i.kind, i.value) for i in c2.indicators] == [("ip", "10.0.0.0")]

    raw = read(shared, "stix/oasis_poisonivy.json")
    poisonivy = parse(raw)
    in_patterns = set(re.findall(
        r"(?:domain-name|ipv4-addr):value = '([^']*)'", raw.decode()
    ))
    assert values(poisonivy.indicators) == in_patterns - {"domain autuo.xicp.net"}
    assert poisonivy.rejected_samples[0][1].startswith("[domain-name:value = 'domain autuo")
    assert poisonivy.rejected == 1
    assert poisonivy.skipped == {"unsupported_pattern": 2}  # [file:name = ...]


def test_misp_sednit_event_yields_its_to_ids_domains_and_ips(shared: Path) -> None:
    result = parse(read(shared, "misp/misp_event_osint_sednit.json"))
    assert values(result.indicators, "domain") == {
        "movieultimate.com", "meteost.com", "faststoragefiles.org", "nethostnet.com",
        "fsportal.net", "fastdataexchange.org", "newfilmts.com",
        "servicecdp.com", "wmdmediacodecs.com", "mvband.net", "mvtband.net",
        "runvercheck.com", "remsupport.org", "viters.org", "myinvestgroup.com",
        "space-delivery.com", "satellitedeluxpanorama.com", "webviewres.net",
    }
    assert values(result.indicators, "ip") == {
        "87.236.211.182", "95.215.45.43", "89.45.67.144", "89.33.246.117",
        "185.156.173.70", "191.101.31.96", "89.187.150.44", "146.185.253.132",
        "86.106.131.141", "89.34.111.160", "185.216.35.26",
    }
    assert {i.threat for i in result.indicators} == {
        "OSINT - Sednit update: How Fancy Bear Spent the Year"
    }
    assert result.rejected == 0
    assert result.skipped == {"unsupported_type": 91}  # file hashes, names, text, a link


def test_misp_feed_event_and_manifest(shared: Path) -> None:
    event = parse(read(shared, "misp/misp_feed_event_56bf399d-c46c-4fdb-a9cf-d9bb02de0b81.json"))
    assert (event.indicators, event.skipped) == ([], {"unsupported_type": 1})  # a link
    assert parse_misp_manifest(read(shared, "misp/misp_feed_manifest.json")) == [
        "56bf399d-c46c-4fdb-a9cf-d9bb02de0b81"
    ]


def test_misp_warninglists_read_as_json_lists(shared: Path) -> None:
    dns = parse(read(shared, "misp/warninglist_public-dns-v4.json"))
    assert "8.8.8.8" in values(dns.indicators) and dns.rejected == 0
    tranco = parse(read(shared, "misp/warninglist_tranco10k.json"))
    assert len(tranco.indicators) == 10000 and tranco.rejected == 0


# --- fuzzing ----------------------------------------------------------------------------

def check_result(result: ParseResult) -> None:
    assert isinstance(result, ParseResult)
    assert 0 <= len(result.rejected_samples) <= min(10, result.rejected)
    for item in result.indicators + result.exceptions + result.revoked:
        assert item.kind in ("domain", "url", "ip")
        assert canonicalize(item.value, item.kind).value == item.value
        assert item.match in (None, "exact", "subtree")
        assert item.match is None or item.kind == "domain"


def parse_or_reject(data: bytes, fmt: str) -> None:
    try:
        result = parse(data, fmt)
    except RejectedFile:
        return
    check_result(result)


FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(data=st.binary(max_size=1024), fmt=st.sampled_from(FORMATS))
def test_parse_of_arbitrary_bytes_returns_a_result_or_rejects_the_file(data: bytes, fmt: str) -> None:
    parse_or_reject(data, fmt)


FEED_CHARS = "abcdexyz019.-_*|^$#@!;/:=,'\"()[]{}% \tAZé\u0130"
feed_lines = st.lists(st.text(alphabet=FEED_CHARS, max_size=40), max_size=20)
line_prefixes = st.sampled_from(["", "||", "@@||", "*.", "0.0.0.0 ", "# ", "$ORIGIN ", "1.2.3.4/"])


@FUZZ
@given(lines=st.lists(st.tuples(line_prefixes, st.text(alphabet=FEED_CHARS, max_size=40)),
                      max_size=20),
       fmt=st.sampled_from(FORMATS), crlf=st.booleans())
def test_parse_of_feed_like_text_returns_a_result_or_rejects_the_file(
    lines: list[tuple[str, str]], fmt: str, crlf: bool
) -> None:
    text = ("\r\n" if crlf else "\n").join(prefix + rest for prefix, rest in lines)
    parse_or_reject(text.encode("utf-8"), fmt)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False)
    | st.text(alphabet=FEED_CHARS, max_size=30),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.sampled_from(["type", "pattern", "objects", "Event", "Attribute",
                                       "Object", "value", "to_ids", "ioc", "ioc_type", "data",
                                       "response", "valid_until", "revoked", "id", "more",
                                       "next", "pattern_type", "relationship_type"]),
                      children, max_size=5),
    max_leaves=20,
)
stix_patterns = st.lists(
    st.sampled_from(["[", "]", "(", ")", " OR ", " AND ", "domain-name:value", "ipv4-addr:value",
                     "url:value", "file:hashes.'SHA-256'", " = ", " LIKE ", " ISSUBSET ",
                     "'a.example'", "'10.0.0.0/8'", "'x\\'y'", "'", " WITHIN 5 SECONDS",
                     "t'2024-01-01T00:00:00Z'", " NOT "]),
    max_size=12,
).map("".join)


@FUZZ
@given(doc=json_values, fmt=st.sampled_from(["json", "stix2", "misp"]))
def test_parse_of_arbitrary_json_returns_a_result_or_rejects_the_file(doc: object, fmt: str) -> None:
    data = json.dumps(doc).encode()
    parse_or_reject(data, fmt)
    try:
        result, _more, _next = parse_taxii_envelope(data)
        check_result(result)
        parse_misp_manifest(data)
    except RejectedFile:
        pass


@FUZZ
@given(pattern=stix_patterns, revoked=st.booleans())
def test_stix_patterns_never_break_the_parser(pattern: str, revoked: bool) -> None:
    indicator = {"type": "indicator", "id": "indicator--f", "pattern": pattern,
                 "pattern_type": "stix", "revoked": revoked, "valid_until": pattern}
    check_result(parse(json.dumps(indicator).encode(), "stix2"))
