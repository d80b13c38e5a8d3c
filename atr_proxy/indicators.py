"""Canonical forms of indicators of compromise: the only place that parses them.

A value is canonicalised the same way when a feed is ingested and when traffic is looked
up, so matching is plain string and integer comparison everywhere else. Every function
here is pure; every invalid input raises :class:`~atr_proxy.errors.InvalidIndicator`
(a ``ValueError``) whose reason says why, and nothing else escapes.

Canonical forms
---------------
domain
    lower case, trailing dots dropped, IDN labels as punycode (UTS 46, non-transitional),
    labels of 1..63 characters from ``a-z 0-9 - _``, at most 253 characters. Single-label
    names are valid. ``*.`` wildcards are refused: feed parsers strip them and set the
    match mode. Numeric names that browsers read as IPv4 addresses ("3279880203",
    "1.2.3") are refused rather than silently never matching.
ip
    ``"1.2.3.4"``, ``"2001:db8::1"`` (compressed, lower case) for one address, including
    one written as a /32 or /128; ``"10.0.0.0/8"`` for a range, normalised to its network
    (``host_bits_set`` reports that host bits were cleared). IPv4-mapped IPv6 addresses,
    and mapped ranges of prefix >= 96, become IPv4. Zone ids, leading-zero octets and
    netmask-style prefixes are refused.
url
    Google Safe Browsing canonicalisation
    (https://developers.google.com/safe-browsing/v4/urls-hashing#canonicalization):
    strip tab/CR/LF, drop the fragment, percent-unescape the whole URL until nothing
    changes, then parse it; host dots stripped and collapsed, lower case, IDN to punycode,
    numeric IPv4 forms (decimal, octal, hex, fewer than four parts) to a dotted quad;
    path ``.``/``..`` resolved and ``//`` runs collapsed (never in the query); every byte
    <= 0x20, >= 0x7F, ``#`` and ``%`` escaped with upper-case hex. Additions and
    decisions, each pinned by a test:

    * the whole URL is unescaped before it is parsed, as in Google's reference client, so
      ``%2F`` and ``%3F`` act as ``/`` and ``?`` (``/a%3Fb`` has the query ``b``).
    * only ``http`` and ``https``; a value without a scheme is ``http``. As browsers do,
      ``http:host`` and extra slashes (``http:///host``) are accepted.
    * user info (``user:pass@``) is dropped; a non-default port is kept, 80 (http) and
      443 (https) are dropped.
    * ``[IPv6]`` hosts are kept in brackets, compressed; an IPv4-mapped one becomes IPv4.
    * URL hosts are laxer than domain indicators, as the Safe Browsing examples require
      (``http://%01%80.com/``, ``http://%20leadingspace.com/``): any bytes except
      brackets, escaped; a name that is not valid IDNA keeps its bytes. A numeric host out
      of IPv4 range stays a name. Hosts also escape the characters RFC 3986 forbids in a
      host (``"<>\\^`{|}``) and ``*``, which browsers never send.
    * a literal defang marker left after unescaping (``[.]``, ``(.)``, ``{.}``,
      ``[dot]``, ``[:]``, ``[://]``) has its middle character escaped (``[%2E]``) so that
      :func:`refang` never changes a canonical URL and canonicalisation stays idempotent.
    * inputs or canonical URLs over 8192 characters are refused.

URL keys and look-up expressions
--------------------------------
The index stores a URL indicator as :func:`url_key`: the canonical URL without its scheme
(``"evil.com:8080/a?q"``), so http and https share indicators. A request URL is looked up
by the Safe Browsing expressions of :func:`url_lookup_expressions`: host suffixes × path
prefixes. Decisions:

* port: ``":port"`` appears only for a port other than 80 and 443 (a key has no scheme,
  so both defaults are dropped whatever the scheme, and a key canonicalises to itself),
  only in the key and in the expressions of the exact host. A URL on such a port yields
  both ``host:port/...`` expressions (hitting port-pinned indicators) and plain
  ``host/...`` ones, so an indicator without a port matches on any port. Parent hosts
  never carry the port. So the cap is 30 expressions, 36 with a port.
* an empty query (``/q?``) is a query: the canonical URL keeps the ``?`` (as the Safe
  Browsing examples do) and the expressions include ``path?`` so that a URL's key is
  always one of its own expressions.

Mixed feeds
-----------
:func:`classify` tries, in order: IP address or CIDR range; URL with a scheme; a valid
host followed by ``/``, ``?`` or ``:port`` (``evil.com/a``, ``1.2.3.4:8080/x``, and also
``evil.com:8080``, which cannot be a domain); domain name.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from dataclasses import dataclass
from typing import Literal, NamedTuple
from urllib.parse import quote_from_bytes, unquote_to_bytes

import idna

from .errors import InvalidIndicator

__all__ = [
    "Indicator",
    "Kind",
    "MAX_URL_LENGTH",
    "canonical_domain",
    "canonical_ip",
    "canonical_url",
    "canonicalize",
    "classify",
    "domain_suffixes",
    "host_suffixes",
    "ip_network",
    "ip_to_int",
    "refang",
    "url_key",
    "url_lookup_expressions",
]

Kind = Literal["domain", "url", "ip"]

MAX_URL_LENGTH = 8192
MAX_DOMAIN_LENGTH = 253
MAX_LABEL_LENGTH = 63
_MAX_HOST_SUFFIXES = 4  # besides the exact host (Safe Browsing)
_MAX_PATH_PREFIXES = 4  # "/", "/a/", "/a/b/", "/a/b/c/" (Safe Browsing)


@dataclass(frozen=True, slots=True)
class Indicator:
    """One indicator in canonical form.

    ``value`` is the canonical domain, the canonical IP/CIDR text, or the full canonical
    URL (the index stores :func:`url_key` of it). ``host_bits_set`` is true when an IP
    range was written with host bits set and was normalised to its network.
    """

    kind: Kind
    value: str
    host_bits_set: bool = False


# --- refang ------------------------------------------------------------------------------

# One pattern serves refang() and the escaping of literal markers in canonical URLs, so the
# two can never drift apart (that would break idempotence).
_DEFANG_MARKER = re.compile(r"\[\.\]|\(\.\)|\{\.\}|\[dot\]|\(dot\)|\{dot\}|\[://\]|\[:\]", re.I)
_DEFANGED_SCHEME = re.compile(r"^hxxp(s?)://", re.I)


def _refanged_marker(match: re.Match[str]) -> str:
    inner = match[0][1:-1]
    return inner if inner.startswith(":") else "."


def refang(value: str) -> str:
    """Undo common defanging and trim surrounding whitespace.

    ``hxxp://``/``hxxps://`` (any case) become ``http://``/``https://``; ``[.]``, ``(.)``,
    ``{.}``, ``[dot]``, ``(dot)``, ``{dot}`` become ``.``; ``[:]`` becomes ``:`` and
    ``[://]`` becomes ``://``. Anything else is returned unchanged; never raises.
    """
    text = value.strip()
    if "[" in text or "(" in text or "{" in text:
        text = _DEFANG_MARKER.sub(_refanged_marker, text)
    if text[:1] in ("h", "H"):
        text = _DEFANGED_SCHEME.sub(lambda m: f"http{m[1].lower()}://", text)
    return text


def _escape_marker(match: re.Match[str]) -> str:
    marker = match[0]
    return f"{marker[0]}%{ord(marker[1]):02X}{marker[2:]}"


# --- domains ------------------------------------------------------------------------------

_LABEL = re.compile(r"[a-z0-9_-]{1,63}")
_NAME = re.compile(r"(?:[a-z0-9_-]{1,63}\.)*[a-z0-9_-]{1,63}")
_BAD_NAME_CHAR = re.compile(r"[^a-z0-9_.-]")


def _idna_to_ascii(text: str) -> str:
    """Punycode of a name that contains non-ASCII text (UTS 46, non-transitional).

    Label by label, so that ASCII labels with underscores (which IDNA 2008 refuses) can sit
    beside IDN labels. Raises ``UnicodeError`` (``idna.IDNAError``) or ``ValueError``.
    """
    mapped = idna.uts46_remap(text, std3_rules=False, transitional=False)
    labels = []
    for label in mapped.split("."):
        if label.isascii():
            labels.append(label)
        else:
            labels.append(idna.alabel(label).decode("ascii"))
    return ".".join(labels)


def _domain_reason(name: str) -> str | None:
    """Why an ASCII, lower-case, dot-trimmed name is not a valid domain (None if it is)."""
    if len(name) <= MAX_DOMAIN_LENGTH and _NAME.fullmatch(name):
        return None
    if not name:
        return "empty domain name"
    if name.startswith("."):
        return "a domain name cannot start with a dot"
    bad = _BAD_NAME_CHAR.search(name)
    if bad:
        return f"character {bad[0]!r} is not allowed in a domain name (a-z 0-9 - _ only)"
    for label in name.split("."):
        if not label:
            return "empty label (two dots in a row)"
        if len(label) > MAX_LABEL_LENGTH:
            return f"label {label[:20]!r}... is longer than {MAX_LABEL_LENGTH} characters"
    return f"domain name is longer than {MAX_DOMAIN_LENGTH} characters"


def canonical_domain(value: str) -> str:
    """The canonical form of a domain name (see the module docstring).

    Strips whitespace, lower-cases, drops trailing dots, converts IDN labels to punycode.
    Raises InvalidIndicator for wildcards, URLs, IP literals, numeric names that browsers
    read as IPv4 addresses, empty or over-long labels, and characters outside
    ``a-z 0-9 - _``.
    """
    name = value.strip()
    if not name:
        raise InvalidIndicator(value, "empty domain name")
    if "://" in name or "/" in name:
        try:
            canonical_ip(name)
        except InvalidIndicator:
            raise InvalidIndicator(value, "looks like a URL, not a domain name") from None
        raise InvalidIndicator(value, "is an IP range, not a domain name")
    if not name.isascii():
        try:
            name = idna.uts46_remap(name, std3_rules=False, transitional=False)
        except (UnicodeError, ValueError) as exc:
            raise InvalidIndicator(value, f"not a valid internationalised name: {exc}") from None
    if "*" in name:
        raise InvalidIndicator(
            value, "wildcards are not domain names; strip '*.' and use the feed's match mode"
        )
    name = name.lower().rstrip(".")
    if not name:
        raise InvalidIndicator(value, "empty domain name")
    if ip_to_int(name) is not None or (":" in name and _is_ip(name)):
        raise InvalidIndicator(value, "is an IP address, not a domain name")
    if not name.isascii():
        try:
            name = _idna_to_ascii(name)
        except (UnicodeError, ValueError) as exc:
            raise InvalidIndicator(value, f"not a valid internationalised name: {exc}") from None
    reason = _domain_reason(name)
    if reason is not None:
        raise InvalidIndicator(value, reason)
    # only a name whose last label is digits or hex ("0x1f") can be a numeric address
    numeric = _loose_ipv4(name) if name[-1] in _HEX_OR_X else None
    if numeric is not None:
        raise InvalidIndicator(
            value, f"a numeric name that browsers read as the IPv4 address {numeric}; "
            "write it as an IP address"
        )
    return name


def domain_suffixes(name: str) -> list[str]:
    """Every parent of a canonical name on label boundaries, the name first.

    ``"a.b.c"`` → ``["a.b.c", "b.c", "c"]``. Cheap enough for every request.
    """
    out = [name]
    dot = name.find(".")
    while dot >= 0:
        out.append(name[dot + 1:])
        dot = name.find(".", dot + 1)
    return out


# --- IP addresses -----------------------------------------------------------------------

_inet_pton = socket.inet_pton
_AF_INET = socket.AF_INET
_AF_INET6 = socket.AF_INET6
_from_bytes = int.from_bytes
_MAPPED_PREFIX = b"\x00" * 10 + b"\xff\xff"
_DIGITS = frozenset("0123456789")
_HEX_OR_X = frozenset("0123456789abcdefxABCDEFX")
_LEADING_ZERO_OCTET = re.compile(r"(?:^|[.:])0[0-9]")

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def ip_to_int(value: str) -> tuple[int, int] | None:
    """``(4, n)`` or ``(6, n)`` for a plain address string, else None. Hot path.

    IPv4-mapped IPv6 gives ``(4, n)``. Brackets (``"[::1]"``) are accepted; a zoned
    address (``"fe80::1%eth0"``), a range, or anything else gives None. Never raises for
    a ``str``.
    """
    if ":" not in value:
        # Names are the common case: refuse them without paying for an exception.
        if not value or value[-1] not in _DIGITS:
            return None
        try:
            return 4, _from_bytes(_inet_pton(_AF_INET, value), "big")
        except (OSError, ValueError):
            return None
    if value[0] == "[" and value[-1] == "]":
        value = value[1:-1]
    if "%" in value:
        return None  # a zone id names a link, not a target
    try:
        packed = _inet_pton(_AF_INET6, value)
    except (OSError, ValueError):
        return None
    if packed[:12] == _MAPPED_PREFIX:
        return 4, _from_bytes(packed[12:], "big")
    return 6, _from_bytes(packed, "big")


def _parse_ip(value: str) -> tuple[IPNetwork, bool]:
    """(canonical network, host bits were set) of an address or CIDR range."""
    text = value.strip()
    if not text:
        raise InvalidIndicator(value, "empty IP address")
    if "%" in text:
        raise InvalidIndicator(value, "IPv6 zone ids ('%eth0') name a link, not an indicator")
    if text[0] == "[" and text[-1] == "]":
        text = text[1:-1]
    addr_text, slash, prefix_text = text.partition("/")
    try:
        address = ipaddress.ip_address(addr_text)
    except ValueError:
        if "." in addr_text and _LEADING_ZERO_OCTET.search(addr_text):
            reason = "leading zeros in an IPv4 octet are ambiguous (octal or decimal)"
        else:
            reason = "not an IPv4 or IPv6 address"
        raise InvalidIndicator(value, reason) from None
    bits = address.max_prefixlen
    if slash:
        if not (prefix_text.isascii() and prefix_text.isdigit()) or len(prefix_text) > 3:
            raise InvalidIndicator(value, f"the prefix must be a length 0..{bits} in decimal")
        prefix = int(prefix_text)
        if prefix > bits:
            raise InvalidIndicator(value, f"prefix /{prefix} is longer than {bits} bits")
    else:
        prefix = bits
    network = ipaddress.ip_network((address, prefix), strict=False)
    host_bits = network.network_address != address
    if isinstance(network, ipaddress.IPv6Network) and prefix >= 96:
        mapped = network.network_address.ipv4_mapped
        if mapped is not None:
            network = ipaddress.IPv4Network((mapped, prefix - 96))
    return network, host_bits


def _is_ip(value: str) -> bool:
    try:
        _parse_ip(value)
    except InvalidIndicator:
        return False
    return True


def _may_be_ip(value: str) -> bool:
    """A cheap pre-check: only text with a ':' or ending in a digit (before any '/') can
    be an address or range, so most names skip the exception-raising full parse."""
    head = value.partition("/")[0].rstrip()
    return ":" in head or (bool(head) and head[-1] in _DIGITS)


def canonical_ip(value: str) -> tuple[str, bool]:
    """(canonical text, host_bits_set) of an IPv4/IPv6 address or CIDR range.

    One address (also one written as /32 or /128) has no prefix; a range is
    ``network/len``. ``host_bits_set`` is true when the range was written with host bits
    set and has been normalised to its network. IPv4-mapped forms become IPv4.
    """
    network, host_bits = _parse_ip(value)
    if network.prefixlen == network.max_prefixlen:
        return str(network.network_address), host_bits
    return str(network), host_bits


def ip_network(value: str) -> IPNetwork:
    """The network of an ip indicator value (a single address is a /32 or /128).

    Meant for values produced by :func:`canonical_ip`; any form it accepts works.
    """
    return _parse_ip(value)[0]


# --- URLs -------------------------------------------------------------------------------

_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.\-]*):")
# What may follow "name:" when "name" is a host and not a scheme: a port, maybe a path.
_PORT_THEN_PATH = re.compile(r"(?:[0-9]+(?:[/?].*)?)?", re.S)
_ESCAPE = re.compile(rb"%[0-9A-Fa-f]{2}")
_HEX_BYTES = frozenset(b"0123456789abcdefABCDEF")
_DOT_RUNS = re.compile(rb"\.{2,}")
_IPV4_PART = re.compile(r"0[xX][0-9a-fA-F]*|0[0-7]*|[1-9][0-9]*")
# Safe Browsing escapes bytes <= 0x20, >= 0x7F, '#' and '%'; every other printable byte
# is "safe" for quote_from_bytes.
_SAFE = "".join(chr(c) for c in range(0x21, 0x7F) if chr(c) not in "#%")
# Hosts also escape what RFC 3986 does not allow in a host name ('<', '^', ...) and '*'
# (a wildcard is a feed's match mode): browsers never send such hosts, and an escaped
# host reads back as a host in a scheme-less key.
_HOST_SAFE = "".join(c for c in _SAFE if c not in '"<>\\^`{|}*')
_DEFAULT_PORTS = {"http": 80, "https": 443}
_KEY_DEFAULT_PORTS = frozenset(_DEFAULT_PORTS.values())


class _Url(NamedTuple):
    scheme: str
    host: str  # escaped; "[v6]" for IPv6
    port: int | None  # None for the scheme's default port
    path: str  # escaped, starts with "/"
    query: str | None  # escaped; None without "?", "" for a bare "?"


def _unescape_fully(data: bytes) -> bytes:
    """Percent-unescape until no escape is left (Safe Browsing "repeatedly unescape").

    Escapes never overlap, so the result does not depend on the order of decoding: a few
    fast whole-string passes handle real URLs, and a one-pass stack decoder finishes
    adversarial nesting ("%25252525...") in linear time.
    """
    for _ in range(4):
        if b"%" not in data:
            return data
        decoded = unquote_to_bytes(data)
        if decoded == data:
            return data
        data = decoded
    if not _ESCAPE.search(data):
        return data
    out = bytearray()
    for byte in data:
        out.append(byte)
        while len(out) >= 3 and out[-3] == 0x25 and out[-2] in _HEX_BYTES and out[-1] in _HEX_BYTES:
            decoded_byte = int(out[-2:], 16)
            del out[-3:]
            out.append(decoded_byte)
    return bytes(out)


def _escape(data: bytes) -> str:
    return quote_from_bytes(data, safe=_SAFE)


def _loose_ipv4(host: str) -> str | None:
    """Dotted quad of a host in any inet_aton form ("3279880203", "0x12.0x43.0x44.0x01",
    "1.2.3", "012.034.01.055"), or None if it is not one (or is out of range)."""
    parts = host.split(".")
    if len(parts) > 4:
        return None
    numbers = []
    for part in parts:
        # 12 characters cover every in-range form and keep int() away from huge strings.
        if len(part) > 12 or not _IPV4_PART.fullmatch(part):
            return None
        if part[:2] in ("0x", "0X"):
            numbers.append(int(part[2:] or "0", 16))
        elif part[0] == "0":
            numbers.append(int(part, 8))
        else:
            numbers.append(int(part))
    last = numbers.pop()
    if last >= 1 << (8 * (4 - len(numbers))) or any(n > 255 for n in numbers):
        return None
    for i, number in enumerate(numbers):
        last |= number << (8 * (3 - i))
    return socket.inet_ntoa(last.to_bytes(4, "big"))


def _canonical_host(raw: str, original: str) -> str:
    """Canonical URL host from its unescaped (latin-1 mapped) text."""
    if raw.startswith("["):
        inner, close, rest = raw[1:].partition("]")
        if not close or rest or "%" in inner:
            raise InvalidIndicator(original, "invalid IPv6 host in brackets")
        try:
            address = ipaddress.IPv6Address(inner)
        except ValueError:
            raise InvalidIndicator(original, "invalid IPv6 host in brackets") from None
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return f"[{address}]"
    if "[" in raw or "]" in raw:
        raise InvalidIndicator(original, "brackets in a host are only valid around IPv6")
    host = raw.encode("latin-1").lower()  # lower-cases ASCII only, bytes stay bytes
    host = _DOT_RUNS.sub(b".", host).strip(b".")
    if not host.isascii():
        try:
            name = _idna_to_ascii(host.decode("utf-8")).lower()
        except (UnicodeError, ValueError):
            pass  # not a valid IDN: keep the bytes, escaped (Safe Browsing does)
        else:
            # UTS 46 maps some symbols to ASCII delimiters ("／" → "/"): such a "name"
            # keeps its original bytes instead, or the canonical URL would re-parse
            # differently.
            if not _BAD_NAME_CHAR.search(name):
                host = _DOT_RUNS.sub(b".", name.encode("ascii")).strip(b".")
    if not host:
        raise InvalidIndicator(original, "URL has no host")
    if host.isascii():
        numeric = _loose_ipv4(host.decode("ascii"))
        if numeric is not None:
            return numeric
    return quote_from_bytes(host, safe=_HOST_SAFE)


def _canonical_path(path: str) -> str:
    """Resolve "." and ".." and collapse "/" runs (path only, never the query)."""
    if path == "/" or not path:
        return "/"
    segments: list[str] = []
    raw = path.split("/")
    for segment in raw:
        if segment == "" or segment == ".":
            continue
        if segment == "..":
            if segments:
                segments.pop()
            continue
        segments.append(segment)
    if not segments:
        return "/"
    trailing = "/" if raw[-1] in ("", ".", "..") else ""
    return "/" + "/".join(segments) + trailing


def _parse_url(value: str) -> _Url:
    """Canonical parts of a URL (see the module docstring for the rules)."""
    text = value.strip()
    if "\t" in text or "\r" in text or "\n" in text:
        text = text.replace("\t", "").replace("\r", "").replace("\n", "")
    if not text:
        raise InvalidIndicator(value, "empty URL")
    if len(text) > MAX_URL_LENGTH:
        raise InvalidIndicator(value, f"URL longer than {MAX_URL_LENGTH} characters")
    text = text.partition("#")[0]
    try:
        data = text.encode("utf-8", "surrogateescape")
    except UnicodeError:
        raise InvalidIndicator(value, "not valid Unicode text (lone surrogate)") from None
    # latin-1 maps each unescaped byte to one character, so the structure can be parsed
    # with str methods and the bytes recovered exactly.
    text = _unescape_fully(data).decode("latin-1")

    scheme = "http"
    match = _SCHEME.match(text)
    rest = text
    has_scheme = False
    if match:
        name = match[1].lower()
        after = text[match.end():]
        if name in _DEFAULT_PORTS or after.startswith("//"):
            scheme, rest, has_scheme = name, after.lstrip("/"), True
        elif not _PORT_THEN_PATH.fullmatch(after):
            scheme = name  # "mailto:x", "javascript:..." (not "host:8080/path")
    if scheme not in _DEFAULT_PORTS:
        hint = "; refang defanged values first" if scheme.startswith("hxxp") else ""
        raise InvalidIndicator(
            value, f"unsupported scheme {scheme!r} (only http and https){hint}"
        )
    if not has_scheme:
        if rest.startswith("//"):
            rest = rest.lstrip("/")  # scheme-relative "//host/path"
        elif rest.startswith("/"):
            raise InvalidIndicator(value, "URL has no host")

    end = len(rest)
    for delimiter in "/?":
        found = rest.find(delimiter)
        if 0 <= found < end:
            end = found
    authority, rest = rest[:end], rest[end:]
    hostport = authority.rpartition("@")[2]  # user info is dropped

    port_text = ""
    if hostport.startswith("["):
        close = hostport.find("]")
        if close >= 0 and hostport[close + 1:close + 2] == ":":
            hostport, port_text = hostport[:close + 1], hostport[close + 2:]
    elif ":" in hostport:
        hostport, _, port_text = hostport.partition(":")
    port: int | None = None
    if port_text:
        digits = port_text.lstrip("0") or "0"
        if not (port_text.isascii() and port_text.isdigit()) or len(digits) > 5:
            raise InvalidIndicator(value, f"invalid port {port_text[:20]!r}")
        port = int(digits)
        if port > 65535:
            raise InvalidIndicator(value, f"port {port} is out of range")
        if port == _DEFAULT_PORTS[scheme]:
            port = None
    host = _canonical_host(hostport, value)

    path, question, query = rest.partition("?")
    path = _escape_markers(_escape(_canonical_path(path).encode("latin-1")))
    parts = _Url(
        scheme,
        _escape_markers(host),
        port,
        path,
        _escape_markers(_escape(query.encode("latin-1"))) if question else None,
    )
    if len(_join(parts)) > MAX_URL_LENGTH:
        raise InvalidIndicator(value, f"canonical URL longer than {MAX_URL_LENGTH} characters")
    return parts


def _escape_markers(text: str) -> str:
    if "[" in text or "(" in text or "{" in text:
        return _DEFANG_MARKER.sub(_escape_marker, text)
    return text


def _hostport(parts: _Url) -> str:
    # A key has no scheme, so it drops both default ports: "https://h:80/" and
    # "http://h:443/" have the key "h/", and a key canonicalises to itself.
    if parts.port is None or parts.port in _KEY_DEFAULT_PORTS:
        return parts.host
    return f"{parts.host}:{parts.port}"


def _key(parts: _Url) -> str:
    host = _hostport(parts)
    if parts.query is None:
        return host + parts.path
    return f"{host}{parts.path}?{parts.query}"


def _join(parts: _Url) -> str:
    host = parts.host if parts.port is None else f"{parts.host}:{parts.port}"
    if parts.query is None:
        return f"{parts.scheme}://{host}{parts.path}"
    return f"{parts.scheme}://{host}{parts.path}?{parts.query}"


def canonical_url(value: str) -> str:
    """The full canonical URL ``scheme://host[:port]/path[?query]`` (Safe Browsing style).

    A value without a scheme is taken as http. Raises InvalidIndicator for other schemes,
    a missing host, a bad port or IPv6 literal, and over-long URLs.
    """
    return _join(_parse_url(value))


def url_key(value: str) -> str:
    """The indicator key of a URL: its canonical form without the scheme (and so without
    port 80 or 443 either), ``host[:port]/path[?query]``. This is what the index stores
    for URL indicators; it is one of the URL's own :func:`url_lookup_expressions`, and
    ``url_key(key) == key``."""
    return _key(_parse_url(value))


def url_key_host(key: str) -> str:
    """The host of a URL key ("host[:port]/path?query"), without its port. Cheap: the key
    is already canonical."""
    authority = key.partition("/")[0]
    if authority.startswith("["):
        return authority[: authority.find("]") + 1]
    return authority.partition(":")[0]


def host_suffixes(host: str) -> list[str]:
    """Safe Browsing host expressions of a canonical host, exact host first.

    The exact host, then up to four more formed from the last five labels, dropping one
    leading label at a time down to the last two labels. An IP literal gives only itself.
    """
    if host[:1] == "[" or ip_to_int(host) is not None:
        return [host]
    # starts[k] is where the last k + 1 labels begin; at most the last five are needed.
    starts = []
    end = len(host)
    for _ in range(_MAX_HOST_SUFFIXES + 1):
        end = host.rfind(".", 0, end)
        if end < 0:
            break
        starts.append(end + 1)
    out = [host]
    for k in range(len(starts) - 1, 0, -1):
        out.append(host[starts[k]:])
    return out


def url_lookup_expressions(url: str) -> list[str]:
    """Every Safe Browsing expression ``host/path`` of a URL, most specific first.

    The URL is canonicalised first. Hosts: with a port other than 80 and 443, the exact
    ``host:port`` first; then :func:`host_suffixes`. Paths: path and query (when the URL
    has a ``?``), the path, and up to four prefixes ``/``, ``/a/``, ``/a/b/``,
    ``/a/b/c/``. No duplicates; at most 30 expressions (36 with a port other than 80
    and 443).
    """
    parts = _parse_url(url)
    path = parts.path
    paths = [path]
    if parts.query is not None:
        paths.insert(0, f"{path}?{parts.query}")
    components = [c for c in path.split("/") if c]
    prefix = "/"
    if prefix not in paths:
        paths.append(prefix)
    # Directories only: the last component is the path itself, already listed.
    for component in components[:min(len(components), _MAX_PATH_PREFIXES) - 1]:
        prefix = f"{prefix}{component}/"
        if prefix not in paths:
            paths.append(prefix)
    hosts = host_suffixes(parts.host)
    hostport = _hostport(parts)
    if hostport != parts.host:
        hosts.insert(0, hostport)
    return [host + p for host in hosts for p in paths]


# --- classification ----------------------------------------------------------------------

_IP_CHARS = re.compile(r"[0-9A-Fa-f:./\[\]%]+")
_LOOKS_LIKE_IP = re.compile(r"[0-9.]+")
_LOOKS_LIKE_CIDR = re.compile(r"(?:[0-9.]+|[0-9A-Fa-f.]*:[0-9A-Fa-f.]*:[0-9A-Fa-f:.]*)/[0-9]+")


# A value without a scheme is a URL only if what precedes its first "/" or "?" reads as an
# authority: RFC 3986 host characters (escapes included, '*' excluded: wildcards are a
# feed's match mode), IDN letters, ":port", "user@" and "[IPv6]". This keeps "a b/c" and
# "<p>x</p>" out, and lets every canonical URL key read back as a URL.
_AUTHORITY = re.compile(r"[A-Za-z0-9._~!$&'()+,;=%:@\[\]\u0080-\U0010ffff-]+")


def _ip_error(value: str) -> InvalidIndicator:
    try:
        canonical_ip(value)
    except InvalidIndicator as exc:
        return exc
    raise AssertionError("only called for values that are not addresses")  # pragma: no cover


def _guess(value: str) -> Indicator:
    """Indicator of a refanged value of unknown kind (see :func:`classify`)."""
    if not value:
        raise InvalidIndicator(value, "empty value")
    if "/" not in value and "?" not in value and ":" not in value and value[-1] not in _DIGITS:
        return Indicator("domain", canonical_domain(value))  # the common case, cheaply
    # IP and CIDR first: "1.2.3.0/24" is a range, not a scheme-less URL. The character
    # test spares names the cost of a failed address parse.
    if _IP_CHARS.fullmatch(value):
        try:
            text, host_bits = canonical_ip(value)
        except InvalidIndicator:
            pass
        else:
            return Indicator("ip", text, host_bits)
    authority = re.split(r"[/?]", value, maxsplit=1)[0]
    if _LOOKS_LIKE_CIDR.fullmatch(value) or (
        # Two colons before any "/", without a scheme or brackets: a broken IPv6 address.
        authority.count(":") >= 2 and value[0] != "["
        and not value.lower().startswith(("http:", "https:"))
    ):
        raise _ip_error(value)  # and "1.2.3.4/33" is a broken range, not a URL path
    match = _SCHEME.match(value)
    if match and value[match.end():match.end() + 2] == "//":
        return Indicator("url", canonical_url(value))
    if "/" in value or "?" in value or ":" in value:
        if not _AUTHORITY.fullmatch(authority):
            raise InvalidIndicator(
                value, "not a domain, URL or IP address (a URL without a scheme needs a "
                "host before its first '/')"
            )
        return Indicator("url", canonical_url(value))
    try:
        return Indicator("domain", canonical_domain(value))
    except InvalidIndicator:
        if value.count(".") == 3 and _LOOKS_LIKE_IP.fullmatch(value):
            raise _ip_error(value) from None  # "010.1.1.1": say what is wrong with it
        raise


def _auto(value: str, original: str) -> Indicator:
    try:
        return _guess(value)
    except InvalidIndicator as exc:
        if exc.value is original:
            raise
        raise InvalidIndicator(original, exc.reason) from None


def classify(value: str) -> Kind:
    """The kind of a value from a mixed feed, after :func:`refang`.

    An address or CIDR range is ``"ip"``; a value with a scheme, or a valid host followed
    by ``/``, ``?`` or ``:port``, is ``"url"``; a valid domain name is ``"domain"``.
    Raises InvalidIndicator, with the reason, when it is none of these.
    """
    return _auto(refang(value), value).kind


def canonicalize(value: str, kind: str = "auto") -> Indicator:
    """Refang ``value`` and canonicalise it as ``kind`` ("auto", "domain", "url", "ip").

    An IP address or range given as a domain becomes an ip Indicator; a URL given as a
    domain is invalid. The result's value is canonical: canonicalising it again (with the
    same kind or "auto") returns an equal Indicator.
    """
    text = refang(value)
    if kind == "auto":
        return _auto(text, value)
    if kind == "domain":
        if _may_be_ip(text) and _is_ip(text):
            ip_text, host_bits = canonical_ip(text)
            return Indicator("ip", ip_text, host_bits)
        return Indicator("domain", canonical_domain(text))
    if kind == "url":
        return Indicator("url", canonical_url(text))
    if kind == "ip":
        ip_text, host_bits = canonical_ip(text)
        return Indicator("ip", ip_text, host_bits)
    raise InvalidIndicator(value, f"unknown indicator kind {kind!r} (auto, domain, url, ip)")
