"""Canonical forms of domains, IPs and URLs, and the Safe Browsing look-up expressions."""

from __future__ import annotations

import ipaddress
import re
import timeit

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from hypothesis.provisional import domains, urls

from atr_proxy.errors import InvalidIndicator
from atr_proxy.indicators import (
    Indicator,
    canonical_domain,
    canonical_ip,
    canonical_url,
    canonicalize,
    classify,
    domain_suffixes,
    host_suffixes,
    ip_network,
    ip_to_int,
    refang,
    url_key,
    url_lookup_expressions,
)

# --- URL canonicalisation: the published Safe Browsing examples ---------------------------
# https://developers.google.com/safe-browsing/v4/urls-hashing#canonicalization

SAFE_BROWSING_EXAMPLES = [
    ("http://host/%25%32%35", "http://host/%25"),
    ("http://host/%25%32%35%25%32%35", "http://host/%25%25"),
    ("http://host/%2525252525252525", "http://host/%25"),
    ("http://host/asdf%25%32%35asd", "http://host/asdf%25asd"),
    ("http://host/%%%25%32%35asd%%", "http://host/%25%25%25asd%25%25"),
    ("http://www.google.com/", "http://www.google.com/"),
    (
        "http://%31%36%38%2e%31%38%38%2e%39%39%2e%32%36/%2E%73%65%63%75%72%65/"
        "%77%77%77%2E%65%62%61%79%2E%63%6F%6D/",
        "http://168.188.99.26/.secure/www.ebay.com/",
    ),
    (
        "http://195.127.0.11/uploads/%20%20%20%20/.verify/"
        ".eBaysecure=updateuserdataxplimnbqmn-xplmvalidateinfoswqpcmlx=hgplmcx/",
        "http://195.127.0.11/uploads/%20%20%20%20/.verify/"
        ".eBaysecure=updateuserdataxplimnbqmn-xplmvalidateinfoswqpcmlx=hgplmcx/",
    ),
    (
        "http://host%23.com/%257Ea%2521b%2540c%2523d%2524e%25f%255E00%252611%252A22%252833"
        "%252944_55%252B",
        "http://host%23.com/~a!b@c%23d$e%25f^00&11*22(33)44_55+",
    ),
    ("http://3279880203/blah", "http://195.127.0.11/blah"),
    ("http://www.google.com/blah/..", "http://www.google.com/"),
    ("www.google.com/", "http://www.google.com/"),
    ("www.google.com", "http://www.google.com/"),
    ("http://www.evil.com/blah#frag", "http://www.evil.com/blah"),
    ("http://www.GOOgle.com/", "http://www.google.com/"),
    ("http://www.google.com.../", "http://www.google.com/"),
    ("http://www.google.com/foo\tbar\rbaz\n2", "http://www.google.com/foobarbaz2"),
    ("http://www.google.com/q?", "http://www.google.com/q?"),
    ("http://www.google.com/q?r?", "http://www.google.com/q?r?"),
    ("http://www.google.com/q?r?s", "http://www.google.com/q?r?s"),
    ("http://evil.com/foo#bar#baz", "http://evil.com/foo"),
    ("http://evil.com/foo;", "http://evil.com/foo;"),
    ("http://evil.com/foo?bar;", "http://evil.com/foo?bar;"),
    # The published example is the C byte string "http://\x01\x80.com/". A Python str
    # carries raw non-UTF-8 bytes as surrogate escapes (b"\x80" is "\udc80"); "\x80" in a
    # str would be U+0080, i.e. the UTF-8 bytes C2 80.
    ("http://\x01\udc80.com/", "http://%01%80.com/"),
    ("http://notrailingslash.com", "http://notrailingslash.com/"),
    ("http://www.gotaport.com:1234/", "http://www.gotaport.com:1234/"),
    ("  http://www.google.com/  ", "http://www.google.com/"),
    ("http:// leadingspace.com/", "http://%20leadingspace.com/"),
    ("http://%20leadingspace.com/", "http://%20leadingspace.com/"),
    ("%20leadingspace.com/", "http://%20leadingspace.com/"),
    ("https://www.securesite.com/", "https://www.securesite.com/"),
    ("http://host.com/ab%23cd", "http://host.com/ab%23cd"),
    ("http://host.com//twoslashes?more//slashes", "http://host.com/twoslashes?more//slashes"),
]

# Further cases, from the reference client's test vectors (github.com/google/safebrowsing
# urls_test.go) and from the rules of the same doc; each names the rule it pins.
FURTHER_URL_CASES = [
    ("http://www.\u00fcmlat.com/", "http://www.xn--mlat-zra.com/"),  # IDN host → punycode
    ("http%3A%2F%2Fwackyurl.com:80/", "http://wackyurl.com/"),  # unescape before parsing
    # URL hosts are lax, but characters RFC 3986 forbids in a host are escaped (the Go
    # client keeps "<>^" as they are) so that the key reads back as a URL.
    ("http://W!eird<>Ho$^.com/", "http://w!eird%3C%3Eho$%5E.com/"),
    ("http://[2001:470:1:18::114]/", "http://[2001:470:1:18::114]/"),
    ("http://i.have.way.too.many.dots.com/", "http://i.have.way.too.many.dots.com/"),
    # The Go client keeps lower-case hex here; the doc asks for upper case, so do we.
    ("http://some%1bhost.com/%1b", "http://some%1Bhost.com/%1B"),
    ("http://0x12.0x43.0x44.0x01/", "http://18.67.68.1/"),  # hex octets
    ("http://012.034.01.055/", "http://10.28.1.45/"),  # octal octets
    ("http://167838211/", "http://10.1.2.3/"),  # one 32-bit number
    ("http://1.2.3/", "http://1.2.0.3/"),  # three parts: the last is 16 bits
    ("http://1.0x2/", "http://1.0.0.2/"),  # two parts: the last is 24 bits
    ("http://google.com.:8080/foo.html", "http://google.com:8080/foo.html"),
    ("http://..google.com/foo.html", "http://google.com/foo.html"),
    ("http://google...com/foo.html", "http://google.com/foo.html"),
    ("http://a.com/foo/.././bar/./../foo.html", "http://a.com/foo.html"),
    ("http://a.com//a//b///c////", "http://a.com/a/b/c/"),
    (
        "http://[FEDC:BA98:7654:3210:FEDC:BA98:7654:3210]:80/index.html",
        "http://[fedc:ba98:7654:3210:fedc:ba98:7654:3210]/index.html",
    ),
    ("http://[::ffff:1.2.3.4]/", "http://1.2.3.4/"),  # mapped IPv6 host is the IPv4 host
    ("http://user:pass@evil.com/", "http://evil.com/"),  # user info dropped
    ("http://good.com@evil.com/x", "http://evil.com/x"),
    ("https://evil.com:443/x", "https://evil.com/x"),  # default port dropped
    ("https://evil.com:80/x", "https://evil.com:80/x"),  # only the scheme's default
    ("http://evil.com:0080/", "http://evil.com/"),
    ("HTTP://EVIL.COM/A/B", "http://evil.com/A/B"),  # path case is kept
    ("http:evil.com/x", "http://evil.com/x"),  # browsers accept a missing "//"
    ("http:///evil.com/x", "http://evil.com/x"),
    ("//evil.com/x", "http://evil.com/x"),
    ("1.2.3.4:8080/x", "http://1.2.3.4:8080/x"),
    ("evil.com:8080", "http://evil.com:8080/"),
    ("http://evil.com/a/./b/../c/%2e%2E/d", "http://evil.com/a/d"),
    ("http://evil.com/a%2Fb", "http://evil.com/a/b"),
    # %3F unescapes to a literal "?" before parsing, so it starts the query, as in the
    # reference client: the path then is a prefix that path indicators can hit.
    ("http://evil.com/a%3Fb", "http://evil.com/a?b"),
    ("http://evil.com/a?b=%2F..%2Fc#x", "http://evil.com/a?b=/../c"),
    ("http://evil.com/\u00e9t\u00e9", "http://evil.com/%C3%A9t%C3%A9"),  # UTF-8 bytes
    ("http://evil.com/a b", "http://evil.com/a%20b"),
    ("http://b\u00fccher.example/", "http://xn--bcher-kva.example/"),
    ("http://\uff11\uff12\uff17.\uff10.\uff10.\uff11/", "http://127.0.0.1/"),  # full-width
    ("http://999.1.1.1/", "http://999.1.1.1/"),  # out of IPv4 range: stays a name
]


@pytest.mark.parametrize(("given_url", "expected"), SAFE_BROWSING_EXAMPLES)
def test_url_canonicalisation_matches_safe_browsing_published_examples(given_url, expected):
    assert canonical_url(given_url) == expected


@pytest.mark.parametrize(("given_url", "expected"), FURTHER_URL_CASES)
def test_url_canonicalisation_further_cases(given_url, expected):
    assert canonical_url(given_url) == expected


def test_url_canonicalisation_has_at_least_forty_pinned_cases():
    assert len(SAFE_BROWSING_EXAMPLES) + len(FURTHER_URL_CASES) >= 40


@pytest.mark.parametrize(
    ("given_url", "reason"),
    [
        ("ftp://ftp.myfiles.com/", "unsupported scheme 'ftp'"),
        ("javascript:alert(1)", "unsupported scheme 'javascript'"),
        ("data:text/html,<b>x</b>", "unsupported scheme 'data'"),
        ("mailto:bryner@google.com", "unsupported scheme 'mailto'"),
        ("file:/etc/passwd", "unsupported scheme 'file'"),
        ("hxxp://evil.com/", "refang"),
        ("", "empty"),
        ("   ", "empty"),
        ("#ref", "no host"),
        ("/blah", "no host"),
        ("/blah?query#ref", "no host"),
        ("http://#ref", "no host"),
        ("http://?query#ref", "no host"),
        (":8080/foo.html", "no host"),
        ("http://...", "no host"),
        ("http://evil.com:99999/", "out of range"),
        ("http://evil.com:80a/", "invalid port"),
        ("http://[::1/", "IPv6"),
        ("http://[1.2.3.4]/", "IPv6"),
        ("http://[fe80::1%25eth0]/", "IPv6"),
        ("http://ev[il.com/", "brackets"),
        ("http://evil.com/" + "a" * 8200, "longer than 8192"),
        ("http://evil.com/" + "%20" * 3000, "longer than 8192"),  # grows when escaped
        ("http://evil.com/\ud800", "surrogate"),
    ],
)
def test_url_invalid_inputs_raise_invalid_indicator_with_reason(given_url, reason):
    with pytest.raises(InvalidIndicator) as caught:
        canonical_url(given_url)
    assert reason in caught.value.reason


def test_url_deeply_nested_escapes_unescape_in_linear_time():
    nested = "http://host/%25" + "25" * 4000  # 4000 rounds of unescaping
    assert timeit.timeit(lambda: canonical_url(nested), number=1) < 0.5
    assert canonical_url(nested) == "http://host/%25"


def test_url_literal_defang_marker_is_escaped_so_refang_cannot_change_it():
    # "%5B.%5D" unescapes to a literal "[.]", which refang() would otherwise turn into "."
    canonical = canonical_url("http://evil.com/a%5B.%5Db(.)c")
    assert canonical == "http://evil.com/a[%2E]b(%2E)c"
    assert refang(canonical) == canonical
    assert canonicalize(canonical) == Indicator("url", canonical)


def test_url_key_is_canonical_url_without_scheme():
    assert url_key("HTTPS://Evil.COM:8443/a/../b?q=1#frag") == "evil.com:8443/b?q=1"
    assert url_key("https://evil.com:443/") == "evil.com/"
    assert url_key("evil.com") == "evil.com/"


def test_url_key_drops_both_default_ports_because_it_has_no_scheme():
    assert canonical_url("https://evil.com:80/x") == "https://evil.com:80/x"
    assert url_key("https://evil.com:80/x") == "evil.com/x"
    assert url_key("http://evil.com:443/x") == "evil.com/x"
    assert url_lookup_expressions("http://evil.com:443/x") == ["evil.com/x", "evil.com/"]


# --- Safe Browsing look-up expressions ---------------------------------------------------


def test_url_expressions_match_published_example_with_query():
    assert url_lookup_expressions("http://a.b.c/1/2.html?param=1") == [
        "a.b.c/1/2.html?param=1",
        "a.b.c/1/2.html",
        "a.b.c/",
        "a.b.c/1/",
        "b.c/1/2.html?param=1",
        "b.c/1/2.html",
        "b.c/",
        "b.c/1/",
    ]


def test_url_expressions_match_published_example_with_many_labels():
    # b.c.d.e.f.g is skipped: only the last five labels, and the full host, are used.
    assert url_lookup_expressions("http://a.b.c.d.e.f.g/1.html") == [
        "a.b.c.d.e.f.g/1.html",
        "a.b.c.d.e.f.g/",
        "c.d.e.f.g/1.html",
        "c.d.e.f.g/",
        "d.e.f.g/1.html",
        "d.e.f.g/",
        "e.f.g/1.html",
        "e.f.g/",
        "f.g/1.html",
        "f.g/",
    ]


def test_url_expressions_match_published_example_with_ip_host():
    assert url_lookup_expressions("http://1.2.3.4/1/") == ["1.2.3.4/1/", "1.2.3.4/"]


@pytest.mark.parametrize(
    ("given_url", "expected"),
    [
        ("http://a.b.c/1/2/3/4/5/", [
            "a.b.c/1/2/3/4/5/", "a.b.c/", "a.b.c/1/", "a.b.c/1/2/", "a.b.c/1/2/3/",
            "b.c/1/2/3/4/5/", "b.c/", "b.c/1/", "b.c/1/2/", "b.c/1/2/3/",
        ]),
        ("http://a.b.c.d.e.f.g.h.i/", [
            "a.b.c.d.e.f.g.h.i/", "e.f.g.h.i/", "f.g.h.i/", "g.h.i/", "h.i/",
        ]),
        ("http://a.b.c.d.e/1.html", [
            "a.b.c.d.e/1.html", "a.b.c.d.e/", "b.c.d.e/1.html", "b.c.d.e/",
            "c.d.e/1.html", "c.d.e/", "d.e/1.html", "d.e/",
        ]),
        ("[2001:470:1:18::114]/a/b", [
            "[2001:470:1:18::114]/a/b", "[2001:470:1:18::114]/", "[2001:470:1:18::114]/a/",
        ]),
        ("http://b/", ["b/"]),
    ],
)
def test_url_expressions_cover_host_suffixes_and_path_prefixes(given_url, expected):
    assert url_lookup_expressions(given_url) == expected


def test_url_expressions_pin_port_on_exact_host_and_also_try_it_without():
    # An indicator with a port hits only that port; one without a port hits any port.
    assert url_lookup_expressions("http://x.evil.com:8080/a") == [
        "x.evil.com:8080/a", "x.evil.com:8080/",
        "x.evil.com/a", "x.evil.com/",
        "evil.com/a", "evil.com/",
    ]


def test_url_expressions_include_empty_query_so_the_key_is_among_them():
    assert url_key("http://a.b/q?") == "a.b/q?"
    assert url_lookup_expressions("http://a.b/q?") == ["a.b/q?", "a.b/q", "a.b/"]


def test_url_expressions_are_capped_at_thirty_or_thirty_six_with_a_port():
    long_url = "http://a.b.c.d.e.f.g/1/2/3/4/5/6.html?q"
    assert len(url_lookup_expressions(long_url)) == 30
    assert len(url_lookup_expressions(long_url.replace(".g/", ".g:81/"))) == 36


def test_url_indicator_hits_subdomain_and_deeper_path():
    key = url_key("http://evil.com/a/")
    assert key in url_lookup_expressions("http://x.evil.com/a/b?q")
    assert key not in url_lookup_expressions("http://notevil.com/a/b")
    assert key not in url_lookup_expressions("http://evil.com/ab")


# --- domains ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given_name", "expected"),
    [
        ("evil.com", "evil.com"),
        ("  EVIL.Com  ", "evil.com"),
        ("evil.com.", "evil.com"),
        ("evil.com...", "evil.com"),
        ("localhost", "localhost"),
        ("_dmarc.evil.com", "_dmarc.evil.com"),
        ("-bad-.evil.com", "-bad-.evil.com"),
        ("xn--bcher-kva.example", "xn--bcher-kva.example"),
        ("a" * 63 + ".com", "a" * 63 + ".com"),
        ("1.2.3.4.5", "1.2.3.4.5"),  # five parts: not an address anywhere
        ("4.3.2.1.in-addr.arpa", "4.3.2.1.in-addr.arpa"),
    ],
)
def test_domain_canonical_form(given_name, expected):
    assert canonical_domain(given_name) == expected


def test_domain_idn_becomes_punycode():
    assert canonical_domain("b\u00fccher.example") == "xn--bcher-kva.example"


def test_domain_idn_uppercase_and_trailing_dots_are_normalised():
    assert canonical_domain("B\u00dcCHER.Example..") == "xn--bcher-kva.example"


def test_domain_idn_is_non_transitional():
    # UTS 46 non-transitional: "ß" stays a distinct letter instead of becoming "ss".
    assert canonical_domain("fa\u00df.de") == "xn--fa-hia.de"


def test_domain_idn_ideographic_full_stop_separates_labels():
    assert canonical_domain("b\u00fccher\u3002example") == "xn--bcher-kva.example"


def test_domain_idn_label_beside_underscore_label():
    assert canonical_domain("_srv.b\u00fccher.de") == "_srv.xn--bcher-kva.de"


@pytest.mark.parametrize(
    ("given_name", "reason"),
    [
        ("", "empty"),
        ("...", "empty"),
        (".evil.com", "start with a dot"),
        ("a..b", "empty label"),
        ("*.evil.com", "wildcard"),
        ("a.*.com", "wildcard"),
        ("1.2.3.4", "IP address"),
        ("::1", "IP address"),
        ("10.0.0.0/8", "IP range"),
        ("http://evil.com/", "URL"),
        ("evil.com/a", "URL"),
        ("evil.com:8080", "':'"),
        ("ev il.com", "' '"),
        ("a" * 64 + ".com", "longer than 63"),
        (".".join(["a" * 63] * 4), "longer than 253"),
        ("3279880203", "195.127.0.11"),
        ("0x7f.1", "127.0.0.1"),
        ("\u2603_.com", "internationalised"),
    ],
)
def test_domain_invalid_inputs_raise_invalid_indicator_with_reason(given_name, reason):
    with pytest.raises(InvalidIndicator) as caught:
        canonical_domain(given_name)
    assert reason in caught.value.reason


def test_domain_suffixes_are_every_parent_on_label_boundaries():
    assert domain_suffixes("a.b.c") == ["a.b.c", "b.c", "c"]
    assert domain_suffixes("localhost") == ["localhost"]
    assert "otevil.com" not in domain_suffixes("notevil.com")


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("a.b.c", ["a.b.c", "b.c"]),
        ("a.b", ["a.b"]),
        ("localhost", ["localhost"]),
        ("a.b.c.d.e", ["a.b.c.d.e", "b.c.d.e", "c.d.e", "d.e"]),
        ("a.b.c.d.e.f.g", ["a.b.c.d.e.f.g", "c.d.e.f.g", "d.e.f.g", "e.f.g", "f.g"]),
        ("1.2.3.4", ["1.2.3.4"]),
        ("[2001:db8::1]", ["[2001:db8::1]"]),
    ],
)
def test_host_suffixes_follow_safe_browsing(host, expected):
    assert host_suffixes(host) == expected


# --- IP addresses -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given_ip", "expected"),
    [
        ("1.2.3.4", ("1.2.3.4", False)),
        (" 1.2.3.4 ", ("1.2.3.4", False)),
        ("1.2.3.4/32", ("1.2.3.4", False)),  # a one-address range is the address
        ("10.0.0.0/8", ("10.0.0.0/8", False)),
        ("0.0.0.0/0", ("0.0.0.0/0", False)),
        ("2001:DB8:0:0:0:0:0:1", ("2001:db8::1", False)),
        ("[2001:db8::1]", ("2001:db8::1", False)),
        ("2001:db8::/32", ("2001:db8::/32", False)),
        ("2001:db8::1/128", ("2001:db8::1", False)),
        ("::/0", ("::/0", False)),
        ("::ffff:1.2.3.4", ("1.2.3.4", False)),
        ("::ffff:102:304", ("1.2.3.4", False)),
        ("::ffff:1.2.3.0/120", ("1.2.3.0/24", False)),
        ("::ffff:0:0/96", ("0.0.0.0/0", False)),
        ("::ffff:1.2.3.4/64", ("::/64", True)),  # wider than the mapped block: stays IPv6
    ],
)
def test_ip_canonical_form(given_ip, expected):
    assert canonical_ip(given_ip) == expected


@pytest.mark.parametrize(
    ("given_ip", "expected"),
    [
        ("10.1.2.3/8", "10.0.0.0/8"),
        ("192.168.1.77/24", "192.168.1.0/24"),
        ("1.2.3.4/0", "0.0.0.0/0"),
        ("2001:db8::1/32", "2001:db8::/32"),
        ("::ffff:1.2.3.4/120", "1.2.3.0/24"),
    ],
)
def test_ip_cidr_with_host_bits_is_normalised_and_reported(given_ip, expected):
    assert canonical_ip(given_ip) == (expected, True)
    assert canonicalize(given_ip) == Indicator("ip", expected, True)


@pytest.mark.parametrize(
    ("given_ip", "reason"),
    [
        ("", "empty"),
        ("010.1.1.1", "leading zeros"),
        ("1.2.3.04", "leading zeros"),
        ("fe80::1%eth0", "zone"),
        ("1.2.3.4/33", "longer than 32"),
        ("2001:db8::/129", "longer than 128"),
        ("10.0.0.0/255.0.0.0", "decimal"),
        ("10.0.0.0/", "decimal"),
        ("10.0.0.0/+8", "decimal"),
        ("1.2.3", "not an IPv4 or IPv6"),
        ("256.1.1.1", "not an IPv4 or IPv6"),
        ("evil.com", "not an IPv4 or IPv6"),
        ("1.2.3.4:80", "not an IPv4 or IPv6"),
    ],
)
def test_ip_invalid_inputs_raise_invalid_indicator_with_reason(given_ip, reason):
    with pytest.raises(InvalidIndicator) as caught:
        canonical_ip(given_ip)
    assert reason in caught.value.reason


def test_ip_network_of_canonical_values():
    assert ip_network("10.0.0.0/8") == ipaddress.IPv4Network("10.0.0.0/8")
    assert ip_network("1.2.3.4") == ipaddress.IPv4Network("1.2.3.4/32")
    assert ip_network("2001:db8::/32") == ipaddress.IPv6Network("2001:db8::/32")
    assert ip_network("::ffff:1.2.3.4") == ipaddress.IPv4Network("1.2.3.4/32")
    with pytest.raises(InvalidIndicator):
        ip_network("evil.com")


@pytest.mark.parametrize(
    ("given_value", "expected"),
    [
        ("1.2.3.4", (4, 0x01020304)),
        ("0.0.0.0", (4, 0)),
        ("255.255.255.255", (4, 0xFFFFFFFF)),
        ("::1", (6, 1)),
        ("[::1]", (6, 1)),
        ("2001:db8::1", (6, 0x20010DB8 << 96 | 1)),
        ("::ffff:1.2.3.4", (4, 0x01020304)),
        ("[::ffff:1.2.3.4]", (4, 0x01020304)),
        ("fe80::1%eth0", None),
        ("[fe80::1%eth0]", None),
        ("010.1.1.1", None),
        ("1.2.3", None),
        ("3279880203", None),
        ("1.2.3.0/24", None),
        ("evil.com", None),
        ("", None),
        ("[", None),
        (":", None),
        ("1.2.3.4\x00", None),
        ("::1\x00", None),
    ],
)
def test_ip_to_int_parses_plain_addresses_only(given_value, expected):
    assert ip_to_int(given_value) == expected


# --- refang, classify, canonicalize ----------------------------------------------------


@pytest.mark.parametrize(
    ("given_value", "expected"),
    [
        ("hxxp://evil[.]com/a", "http://evil.com/a"),
        ("HXXPS://evil(.)com", "https://evil.com"),
        ("hXXps[://]evil{.}com", "https://evil.com"),
        ("hxxp[:]//evil[dot]com", "http://evil.com"),
        ("evil[DOT]com", "evil.com"),
        ("1[.]2[.]3[.]4", "1.2.3.4"),
        ("  evil.com\n", "evil.com"),
        ("http://evil.com/", "http://evil.com/"),
        ("http://evil.com/hxxp://x", "http://evil.com/hxxp://x"),
    ],
)
def test_refang_undoes_common_defanging(given_value, expected):
    assert refang(given_value) == expected


@pytest.mark.parametrize(
    ("given_value", "kind"),
    [
        ("evil.com", "domain"),
        ("EVIL.COM.", "domain"),
        ("b\u00fccher.example", "domain"),
        ("localhost", "domain"),
        ("evil[.]com", "domain"),
        ("http://evil.com/a", "url"),
        ("https://evil.com", "url"),
        ("hxxps://evil[.]com/a", "url"),
        ("evil.com/a.exe", "url"),
        ("www.google.com/", "url"),
        ("evil.com/?q", "url"),
        ("1.2.3.4:8080/x", "url"),
        ("evil.com:8080", "url"),
        ("[2001:db8::1]/a", "url"),
        ("%20leadingspace.com/", "url"),
        ("b\u00fccher.example/a", "url"),
        ("1.2.3.4", "ip"),
        ("1[.]2[.]3[.]4", "ip"),
        ("1.2.3.0/24", "ip"),
        ("1.2.3.4/24", "ip"),
        ("2001:db8::1", "ip"),
        ("2001:db8::/32", "ip"),
        ("::ffff:1.2.3.4", "ip"),
    ],
)
def test_classify_mixed_feed_values(given_value, kind):
    assert classify(given_value) == kind
    assert canonicalize(given_value).kind == kind


@pytest.mark.parametrize(
    ("given_value", "reason"),
    [
        ("", "empty"),
        ("*.evil.com", "wildcard"),
        ("1.2.3.4/33", "longer than 32"),
        ("010.1.1.1", "leading zeros"),
        ("2001:db8::zz", "not an IPv4 or IPv6"),
        ("ftp://evil.com/", "unsupported scheme"),
        ("mailto:x@evil.com", "unsupported scheme"),
        ("not a valid entry/x", "host before its first '/'"),
        ("<p>evil.com</p>", "host before its first '/'"),
        ("*.evil.com/x", "host before its first '/'"),
        ("ev il.com", "' '"),
    ],
)
def test_classify_refuses_values_that_are_none_of_the_kinds(given_value, reason):
    with pytest.raises(InvalidIndicator) as caught:
        classify(given_value)
    assert reason in caught.value.reason


def test_canonicalize_turns_an_ip_given_as_domain_into_an_ip_indicator():
    assert canonicalize("1.2.3.4", "domain") == Indicator("ip", "1.2.3.4")
    assert canonicalize("10.1.0.0/8", "domain") == Indicator("ip", "10.0.0.0/8", True)


def test_canonicalize_refuses_a_url_given_as_domain():
    with pytest.raises(InvalidIndicator, match="URL"):
        canonicalize("http://evil.com/a", "domain")


def test_canonicalize_refangs_before_each_kind():
    assert canonicalize("evil[.]com", "domain") == Indicator("domain", "evil.com")
    assert canonicalize("hxxp://evil[.]com/a", "url") == Indicator("url", "http://evil.com/a")
    assert canonicalize("1[.]2[.]3[.]4", "ip") == Indicator("ip", "1.2.3.4")


def test_canonicalize_url_of_a_bare_domain_is_its_root():
    assert canonicalize("evil.com", "url") == Indicator("url", "http://evil.com/")


def test_canonicalize_unknown_kind_is_invalid():
    with pytest.raises(InvalidIndicator, match="unknown indicator kind"):
        canonicalize("evil.com", "hash")


def test_invalid_indicator_is_a_value_error_naming_the_value():
    with pytest.raises(ValueError, match="'a..b'"):
        canonical_domain("a..b")


# --- properties ---------------------------------------------------------------------------

_IDN_LABELS = st.text(
    # Letters only: digits, hyphens and right-to-left letters have IDNA rules of their own
    # (bidi, hyphen placement) that make a label invalid, which other tests cover.
    alphabet=st.sampled_from("abcxyz\u00e4\u00f6\u00fc\u00df\u00e9\u0436\u4e2d"),
    min_size=1,
    max_size=12,
)


@st.composite
def messy_domains(draw: st.DrawFn) -> str:
    """Valid names, as feeds write them: any case, trailing dots, IDN labels."""
    name = draw(domains(max_length=200))
    labels = name.split(".")
    if draw(st.booleans()):
        labels.insert(0, draw(_IDN_LABELS))
    if draw(st.booleans()):
        labels = [label.upper() for label in labels]
    return ".".join(labels) + "." * draw(st.integers(0, 2))


@st.composite
def ip_values(draw: st.DrawFn) -> str:
    address = draw(st.ip_addresses())
    text = str(address) if draw(st.booleans()) else address.exploded.upper()
    if draw(st.booleans()):
        text += f"/{draw(st.integers(0, address.max_prefixlen))}"
    return text


_URL_NOISE = st.text(
    alphabet=st.sampled_from(
        "aZ09./?#%:@[]()._-~+;=&!$ \t\n\\" "2F5E" "\u00e9\u4e2d\x00\x7f\udc80"
    ),
    max_size=25,
)


@st.composite
def messy_urls(draw: st.DrawFn) -> str:
    """URLs with escapes, dot segments, odd bytes, ports, user info and defang markers."""
    scheme = draw(st.sampled_from(["http://", "HTTPS://", "hxxp://", "", "//", "http:"]))
    user = draw(st.sampled_from(["", "user:pw@", "a%40b@"]))
    host = draw(st.one_of(
        domains(),
        messy_domains(),
        st.ip_addresses(v=4).map(str),
        st.ip_addresses(v=6).map(lambda a: f"[{a}]"),
        st.sampled_from(["3279880203", "0x7f.1", "evil[.]com", "%65vil.com", "a..b.", "x%00y"]),
    ))
    port = draw(st.sampled_from(["", ":80", ":443", ":8080", ":0"]))
    return scheme + user + host + port + "/" + draw(_URL_NOISE)


@given(messy_domains())
@example("B\u00dcCHER.example.")
def test_property_domain_canonical_form_is_idempotent(name):
    first = canonicalize(name, "domain")
    assert canonicalize(first.value) == first
    assert canonical_domain(first.value) == first.value


@given(ip_values())
@example("::ffff:1.2.3.4/100")
def test_property_ip_canonical_form_is_idempotent(value):
    first = canonicalize(value, "ip")
    assert canonicalize(first.value) == Indicator("ip", first.value)
    assert canonical_ip(first.value) == (first.value, False)
    assert ip_network(first.value) == ipaddress.ip_network(first.value)


@settings(max_examples=400, suppress_health_check=[HealthCheck.filter_too_much])
@given(st.one_of(urls(), messy_urls()))
@example("http://evil.com/a%5B.%5Db")
@example("http://h/a/.%3Fx")
@example("http://a%28..%29b/")
def test_property_url_canonical_form_is_idempotent(value):
    try:
        first = canonicalize(value, "url")
    except InvalidIndicator:
        return
    assert canonicalize(first.value, "url") == first
    assert canonicalize(first.value) == first
    assert canonical_url(first.value) == first.value
    # Expressions depend only on the canonical URL.
    assert url_lookup_expressions(first.value) == url_lookup_expressions(refang(value))


@settings(max_examples=300)
@given(st.one_of(urls(), messy_urls()))
@example("%2a")  # host "*": escaped, so the key still reads as a URL
@example("http://0.0.0.0:8080/0")  # "ip:port/n" is no CIDR range
@example("http://3279880203/::")  # colons after the first "/" are path
@example("https://evil.com:80/")
def test_property_url_key_is_one_of_its_own_expressions(value):
    try:
        key = url_key(value)
        expressions = url_lookup_expressions(value)
    except InvalidIndicator:
        return
    assert key in expressions
    assert len(expressions) == len(set(expressions)) <= 36
    # A stored key canonicalises to itself and reads back as a URL.
    assert url_key(key) == key
    # ...except that a key like "1.2.3.4/24" (from "http://1.2.3.4/24") reads as a range.
    if not re.fullmatch(r"[0-9a-f:.\[\]]+/[0-9]+", key):
        assert classify(key) == "url"


_FUNCTIONS = [
    canonical_domain,
    canonical_ip,
    canonical_url,
    url_key,
    url_lookup_expressions,
    classify,
    canonicalize,
    ip_network,
    lambda v: canonicalize(v, "domain"),
    lambda v: canonicalize(v, "url"),
    lambda v: canonicalize(v, "ip"),
]


@settings(max_examples=300)
@given(st.one_of(st.text(), _URL_NOISE, messy_urls(), messy_domains(), ip_values()))
@example("\ud800")
@example("http://\ud800/")
@example("1" * 5000)
@example("http://" + "1" * 5000 + "/")
@example("http://x:" + "0" * 5000 + "/")
@example("[" + "1" * 5000 + "]")
def test_property_any_text_canonicalises_or_raises_invalid_indicator(value):
    for function in _FUNCTIONS:
        try:
            function(value)
        except InvalidIndicator:
            pass
    # These never raise for a str.
    refang(value)
    ip_to_int(value)
    domain_suffixes(value)
    host_suffixes(value)


@given(st.ip_addresses())
def test_property_ip_to_int_agrees_with_ipaddress(address):
    mapped = getattr(address, "ipv4_mapped", None)
    expected = (4, int(mapped)) if mapped is not None else (address.version, int(address))
    assert ip_to_int(str(address)) == expected
    assert ip_to_int(address.exploded) == expected
    if address.version == 6:
        assert ip_to_int(f"[{address}]") == expected
