"""Pure feed parsers: the bytes of a threat feed in, canonical indicators and counted problems out.

Every format keeps one promise: a bad line is counted (and the first few sampled), never
raised; only a file that is not a list at all (binary, an HTML page, JSON that does not
parse) raises :class:`RejectedFile`. An empty or comment-only file is not rejected: it
yields zero indicators and the caller decides what that means for the feed.

Values are canonicalised by :mod:`atr_proxy.indicators` and nowhere else; this module only
takes feed syntax apart (comments, ``||d^``, ``*.d``, RPZ owner names, STIX patterns...).
"""

from __future__ import annotations

import csv
import json
import math
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, fields, replace
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any

from atr_proxy.errors import ConfigError, RejectedFile
from atr_proxy.indicators import canonicalize
from atr_proxy.memory import full_collections_paused

__all__ = [
    "FORMATS",
    "KINDS",
    "FormatOptions",
    "ParseResult",
    "ParsedIndicator",
    "parse",
    "parse_misp_manifest",
    "parse_taxii_envelope",
    "sniff",
]

FORMATS: tuple[str, ...] = (
    "plain", "hosts", "adblock", "wildcard", "rpz", "csv", "json", "stix2", "misp", "auto",
)
KINDS: tuple[str, ...] = ("auto", "domain", "url", "ip")

EXACT = "exact"
SUBTREE = "subtree"

_MAX_SAMPLES = 10
_SAMPLE_TEXT = 200
_SNIFF_CHARS = 65536
_SNIFF_LINES = 2000


@dataclass(frozen=True, slots=True)
class ParsedIndicator:
    """One indicator read from a feed, already canonical."""

    kind: str  # "domain" | "url" | "ip"
    value: str  # canonical (from canonicalize)
    match: str | None = None  # "exact" | "subtree" for domains; None = the feed's configured default
    expires_at: float | None = None  # unix time (STIX valid_until etc.)
    threat: str | None = None
    malware: str | None = None
    confidence: int | None = None
    reference: str | None = None
    line: int = 0  # 1-based source line (or object index for JSON formats)


@dataclass
class ParseResult:
    """What one parse produced; each list holds a value once (first line kept, broadest match)."""

    indicators: list[ParsedIndicator]
    exceptions: list[ParsedIndicator]  # adblock @@ rules, rpz-passthru: exceptions of that feed
    revoked: list[ParsedIndicator]  # STIX revoked indicators (to remove)
    rejected: int  # bad lines, counted
    rejected_samples: list[tuple[int, str, str]]  # (line, text[:200], reason), the first 10
    skipped: dict[str, int]  # counted skips by reason; comments and blank lines are not counted
    host_bits_normalised: int  # CIDRs written with host bits set
    format: str  # the format actually used (after auto-sniffing)


_LINE_COMMENTS: tuple[str, ...] = ("#", ";", "!")
_CSV_COMMENTS: tuple[str, ...] = ("#",)
_TYPE_KINDS = frozenset({"domain", "url", "ip"})
_SKIP_TYPE = "skip"

# Source type -> kind. Types not listed (md5_hash, sha256_hash, ...) count as "unsupported_type".
_DEFAULT_TYPE_MAP: Mapping[str, str] = MappingProxyType({
    "domain": "domain",
    "hostname": "domain",
    "fqdn": "domain",
    "domain-name": "domain",
    "url": "url",
    "uri": "url",
    "ip": "ip",
    "ipv4": "ip",
    "ipv6": "ip",
    "ip:port": "ip",
    "ip-dst": "ip",
    "ip-src": "ip",
    "ip-dst|port": "ip",
    "ip-src|port": "ip",
    "ipv4-addr": "ip",
    "ipv6-addr": "ip",
    "cidr": "ip",
})


@dataclass(frozen=True)
class FormatOptions:
    """Per-feed knobs for the formats that need them (csv, json); the defaults fit the common feeds."""

    column: str | int | None = None  # csv: header name or 0-based number; default: see _parse_csv
    delimiter: str = ","
    comment_prefixes: tuple[str, ...] = _LINE_COMMENTS  # csv uses ("#",) while this is the default
    has_header: bool | None = None  # csv: None = sniff (a URLhaus '#' header line counts)
    json_items: str | None = None  # dotted path to the list of records; None = find it
    json_value: str = "ioc"
    json_type: str | None = "ioc_type"
    type_map: Mapping[str, str] | None = None  # merged over the default (ThreatFox, MISP types)
    json_expiry: str | None = None
    json_threat: str | None = "threat_type"
    json_malware: str | None = "malware"
    json_confidence: str | None = "confidence_level"
    json_reference: str | None = "reference"

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], path: str) -> FormatOptions:
        """Build options from a config-file mapping; a bad key raises ConfigError naming it."""
        if not isinstance(data, Mapping):
            raise ConfigError(path, "must be a mapping of format options")
        known = [f.name for f in fields(cls)]
        values: dict[str, Any] = {}
        for key, value in data.items():
            where = f"{path}.{key}"
            if key not in known:
                raise ConfigError(where, f"unknown format option; known options: {', '.join(known)}")
            values[key] = _check_option(str(key), value, where)
        return cls(**values)


def _check_option(key: str, value: Any, where: str) -> Any:
    if key == "column":
        if value is None or (isinstance(value, str) and value.strip()):
            return value.strip() if isinstance(value, str) else None
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            return value
        raise ConfigError(where, "must be a header name or a 0-based column number")
    if key == "delimiter":
        if value == "tab":
            return "\t"
        if isinstance(value, str) and len(value) == 1 and value not in "\"\r\n":
            return value
        raise ConfigError(where, "must be one character (or 'tab'), not a quote or a newline")
    if key == "comment_prefixes":
        if isinstance(value, str):
            value = [value]
        if isinstance(value, list | tuple) and all(isinstance(p, str) and p for p in value):
            return tuple(value)
        raise ConfigError(where, "must be a list of non-empty strings, e.g. ['#', ';']")
    if key == "has_header":
        if value is None or isinstance(value, bool):
            return value
        raise ConfigError(where, "must be true, false or null (sniff)")
    if key == "type_map":
        if value is None:
            return None
        if not isinstance(value, Mapping):
            raise ConfigError(where, "must map source types to domain, url, ip or skip")
        checked: dict[str, str] = {}
        for source_type, kind in value.items():
            if not isinstance(source_type, str) or not source_type.strip():
                raise ConfigError(where, f"source type {source_type!r} must be a non-empty string")
            if kind is None:
                kind = _SKIP_TYPE
            if kind not in _TYPE_KINDS and kind != _SKIP_TYPE:
                raise ConfigError(
                    f"{where}.{source_type}", f"{kind!r} is not one of domain, url, ip, skip"
                )
            checked[source_type.strip().lower()] = kind
        return MappingProxyType(checked)
    if key == "json_value":
        if isinstance(value, str) and value.strip():
            return value.strip()
        raise ConfigError(where, "must be a dotted field path such as 'ioc' or 'attributes.value'")
    # the optional dotted field paths
    if value is None or (isinstance(value, str) and value.strip()):
        return value.strip() if isinstance(value, str) else None
    raise ConfigError(where, "must be a dotted field path or null")


# --- shared machinery -----------------------------------------------------------------

_INDICATORS, _EXCEPTIONS, _REVOKED = 0, 1, 2
_MATCH_RANK = {EXACT: 0, None: 1, SUBTREE: 2}


def _fast_constructor() -> Any:
    """A ParsedIndicator constructor about twice as fast as the frozen dataclass __init__.

    The generated __init__ of a frozen class pays an object.__setattr__ call per field, a
    fifth of a line's budget in a million-line list; setting the slots directly is the
    same thing, cheaper. It must list every field: checked here, at import.
    """
    names = ("kind", "value", "match", "expires_at", "threat", "malware", "confidence",
             "reference", "line")
    if tuple(f.name for f in fields(ParsedIndicator)) != names:
        raise RuntimeError("ParsedIndicator changed: update _fast_constructor")
    new = object.__new__
    (set_kind, set_value, set_match, set_expires, set_threat, set_malware, set_confidence,
     set_reference, set_line) = (getattr(ParsedIndicator, name).__set__ for name in names)

    def construct(kind: str, value: str, match: str | None, expires_at: float | None,
                  threat: str | None, malware: str | None, confidence: int | None,
                  reference: str | None, line: int) -> ParsedIndicator:
        item = new(ParsedIndicator)
        set_kind(item, kind)
        set_value(item, value)
        set_match(item, match)
        set_expires(item, expires_at)
        set_threat(item, threat)
        set_malware(item, malware)
        set_confidence(item, confidence)
        set_reference(item, reference)
        set_line(item, line)
        return item

    return construct


_new_indicator = _fast_constructor()


class _Collector:
    """Gathers one parse: canonicalises values, de-duplicates, counts rejects and skips."""

    __slots__ = ("kind", "call_kind", "buckets", "rejected", "samples", "skipped", "host_bits")

    def __init__(self, kind: str) -> None:
        self.kind = kind
        # the kind to canonicalise a value of each natural kind as; None: refused by `kind`.
        # An address is welcome in a domain feed, as canonicalize(value, "domain") has it.
        self.call_kind = {
            natural: (
                kind if natural == "auto"
                else natural if kind in ("auto", natural) or (kind, natural) == ("domain", "ip")
                else None
            )
            for natural in KINDS
        }
        # canonical values never collide across kinds (a domain is never an IP text, a URL
        # has a scheme), so the value alone keys the de-duplication
        self.buckets: tuple[dict[str, ParsedIndicator], ...] = ({}, {}, {})
        self.rejected = 0
        self.samples: list[tuple[int, str, str]] = []
        self.skipped: dict[str, int] = {}
        self.host_bits = 0

    def reject(self, line: int, text: str, reason: str) -> None:
        self.rejected += 1
        if len(self.samples) < _MAX_SAMPLES:
            self.samples.append((line, text[:_SAMPLE_TEXT], reason))

    def skip(self, reason: str) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1

    def add(
        self,
        value: str,
        line: int,
        text: str,
        natural: str = "auto",
        match: str | None = None,
        bucket: int = _INDICATORS,
        expires_at: float | None = None,
        threat: str | None = None,
        malware: str | None = None,
        confidence: int | None = None,
        reference: str | None = None,
        quiet: bool = False,
    ) -> bool:
        """Canonicalise `value` (of the format's `natural` kind) and keep it; False if refused.

        A value already kept stays once, with the broader match mode (subtree > default >
        exact). `quiet` refuses without counting a reject (for trying several CSV fields).
        """
        as_kind = self.call_kind[natural]
        if as_kind is None:
            if not quiet:
                self.reject(line, text, f"{natural} value in a feed of {self.kind} indicators")
            return False
        try:
            indicator = canonicalize(value, as_kind)
        except ValueError as exc:  # InvalidIndicator, and whatever else the canonicaliser refuses
            if not quiet:
                self.reject(line, text, getattr(exc, "reason", None) or str(exc) or "invalid")
            return False
        kind = indicator.kind
        if kind != as_kind and as_kind != "auto" and not (as_kind == "domain" and kind == "ip"):
            if not quiet:  # the canonicaliser keeps kinds; this guards the feed's promise
                self.reject(line, text, f"{kind} value in a feed of {as_kind} indicators")
            return False
        if kind == "domain" and "." not in indicator.value:
            # a feed line like "com" (or a stray word) would block a whole top-level domain
            if not quiet:
                self.reject(line, text, "a single-label name: it would block a whole"
                                        " top-level domain")
            return False
        if match is not None and kind != "domain":
            match = None
        if indicator.host_bits_set:
            self.host_bits += 1
        store = self.buckets[bucket]
        canonical = indicator.value
        old = store.get(canonical)
        if old is None:
            store[canonical] = _new_indicator(
                kind, canonical, match, expires_at, threat, malware, confidence, reference, line
            )
        elif _MATCH_RANK[match] > _MATCH_RANK[old.match]:
            store[canonical] = replace(old, match=match)
        return True

    def result(self, fmt: str) -> ParseResult:
        indicators, exceptions, revoked = (list(b.values()) for b in self.buckets)
        return ParseResult(
            indicators=indicators,
            exceptions=exceptions,
            revoked=revoked,
            rejected=self.rejected,
            rejected_samples=self.samples,
            skipped=dict(self.skipped),
            host_bits_normalised=self.host_bits,
            format=fmt,
        )


_CONTROL_CHARS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def _decode(data: bytes, source: str) -> str:
    """Bytes to text, refusing what is not a list at all (binary, an HTML page)."""
    raw = bytes(data) if not isinstance(data, bytes) else data
    if raw[:2] in (b"\xff\xfe", b"\xfe\xff"):  # UTF-16 with a BOM (Windows-exported hosts files)
        text = raw.decode("utf-16", errors="replace")
    else:
        if b"\x00" in raw:
            raise RejectedFile(f"{source}: binary content (NUL bytes), not a feed")
        text = raw.decode("utf-8", errors="replace")
    if text.startswith("\ufeff"):
        text = text[1:]
    sample = text[:_SNIFF_CHARS]
    if sample:
        bad = sample.count("\ufffd") + len(_CONTROL_CHARS.findall(sample))
        if bad * 10 > len(sample):
            raise RejectedFile(
                f"{source}: binary content ({bad} of the first {len(sample)} characters are "
                "undecodable or control characters), not a feed"
            )
    head = text[:1024].lstrip().lower()
    if head.startswith("<") and ("<!doctype html" in head or "<html" in head):
        raise RejectedFile(
            f"{source}: an HTML page, not a feed (a login or error page, or a moved URL?)"
        )
    if "\n" not in text and "\r" in text:  # classic Mac line ends
        text = text.replace("\r", "\n")
    return text


def _prefixes(options: FormatOptions) -> tuple[str, ...]:
    return tuple(p for p in options.comment_prefixes if p)


def _first_token(s: str) -> str:
    # "value ; comment", "value # comment", "value<TAB>anything": the rest is a comment
    return s.split(None, 1)[0] if (" " in s or "\t" in s) else s


# --- line formats ---------------------------------------------------------------------

def _parse_plain(text: str, col: _Collector, options: FormatOptions, source: str) -> None:
    prefixes = _prefixes(options)
    add = col.add
    for lineno, raw in enumerate(text.split("\n"), 1):
        s = raw.strip()
        if not s or s.startswith(prefixes):
            continue
        value = _first_token(s)
        if value.startswith("*."):
            add(value[2:], lineno, s, "domain", SUBTREE)
        else:
            add(value, lineno, s)


_LOCALHOST_NAMES = frozenset({
    "localhost", "localhost.localdomain", "local", "broadcasthost", "0.0.0.0",
    "localhost4", "localhost4.localdomain4", "localhost6", "localhost6.localdomain6",
})
_SINKHOLE_ADDRESSES = frozenset({"0.0.0.0", "127.0.0.1", "::", "::1", "::0", "0:0:0:0:0:0:0:0"})


def _is_address(token: str) -> bool:
    if token in _SINKHOLE_ADDRESSES:
        return True
    address = token.split("%", 1)[0]  # fe80::1%lo0: the zone is not part of the address
    try:
        return canonicalize(address, "ip").kind == "ip"
    except ValueError:
        return False


def _parse_hosts(text: str, col: _Collector, options: FormatOptions, source: str) -> None:
    prefixes = _prefixes(options)
    add = col.add
    known: dict[str, bool] = {}  # few distinct addresses in a hosts file: check each once
    for lineno, raw in enumerate(text.split("\n"), 1):
        s = raw.strip()
        if not s or s.startswith(prefixes):
            continue
        if "#" in s:
            s = s[: s.index("#")].rstrip()
        fields_ = s.split()
        if len(fields_) > 1:
            address = fields_[0]
            ok = known.get(address)
            if ok is None:
                ok = _is_address(address)
                if len(known) < 4096:
                    known[address] = ok
            if not ok:
                col.reject(lineno, s, f"{address!r} is not an address (expected 'ADDRESS NAME...')")
                continue
            names = fields_[1:]
        else:
            names = fields_  # a bare domain line
        for name in names:
            low = name.lower()
            if low in _LOCALHOST_NAMES or low.startswith("ip6-"):
                col.skip("localhost")
            else:
                add(name, lineno, s, "domain")


# options that keep a rule host-wide (a DNS resolver or CONNECT check can honour them)
_ADBLOCK_HOST_OPTIONS = frozenset({"important", "all", "document", "doc"})
_ADBLOCK_COSMETIC = re.compile(r"#@?[?$%]{0,2}#|\$@?\$")


def _parse_adblock(text: str, col: _Collector, options: FormatOptions, source: str) -> None:
    prefixes = _prefixes(options)
    add = col.add
    skip = col.skip
    for lineno, raw in enumerate(text.split("\n"), 1):
        s = raw.strip()
        if not s:
            continue
        if s[0] == "!" or (s[0] == "[" and s[-1] == "]"):  # a comment, [Adblock Plus 2.0]
            continue
        if ("#" in s or "$$" in s or "$@$" in s) and _ADBLOCK_COSMETIC.search(s):
            skip("cosmetic")
            continue
        if s.startswith(prefixes):
            continue
        bucket = _INDICATORS
        rule = s
        if rule.startswith("@@"):
            bucket = _EXCEPTIONS
            rule = rule[2:]
        if rule.startswith("/"):
            head = rule.split("$", 1)[0]
            skip("regex" if len(head) > 2 and head.endswith("/") else "path_rule")
            continue
        if "$" in rule:
            rule, _, option_text = rule.partition("$")
            rule_options = {o.strip().lower() for o in option_text.split(",")}
            if not rule_options <= _ADBLOCK_HOST_OPTIONS:
                skip("options")
                continue
        bare = not rule.startswith("|")
        if rule.startswith("||"):
            body = rule[2:]
        elif bare:
            body = rule
        else:  # |https://host/... : anchored to a URL start
            skip("path_rule" if "/" in rule else "unsupported_rule")
            continue
        if body.endswith("^|"):
            body = body[:-2]
        elif body.endswith(("^", "|")):
            body = body[:-1]
        if "/" in body:
            skip("path_rule")
            continue
        if body.startswith("*."):
            body = body[2:]
        if "*" in body or "^" in body or "|" in body or (bare and "." not in body):
            skip("pattern")  # a generic pattern, not a host name
            continue
        add(body, lineno, s, "domain", SUBTREE, bucket)


def _parse_wildcard(text: str, col: _Collector, options: FormatOptions, source: str) -> None:
    prefixes = _prefixes(options)
    add = col.add
    for lineno, raw in enumerate(text.split("\n"), 1):
        s = raw.strip()
        if not s or s.startswith(prefixes):
            continue
        value = _first_token(s)
        match = None
        if value.startswith("*."):
            value, match = value[2:], SUBTREE
        elif value.startswith("="):  # dnscrypt-proxy: this name only
            value, match = value[1:], EXACT
        if "*" in value:
            col.skip("pattern")
            continue
        add(value, lineno, s, "domain", match)


# --- RPZ ------------------------------------------------------------------------------

_DNS_CLASSES = frozenset({"IN", "CH", "HS", "CS", "ANY"})
# trigger labels other than a query name; the labels before one are its argument
_RPZ_TRIGGERS = {
    "rpz-ip": None, "rpz-nsdname": "rpz_nsdname", "rpz-nsip": "rpz_nsip",
    "rpz-client-ip": "rpz_client_ip",
}
_RPZ_PASSTHRU = frozenset({"rpz-passthru", "rpz-passthru."})


def _rpz_records(
    text: str, col: _Collector, prefixes: tuple[str, ...]
) -> Iterator[tuple[int, str, bool, list[str]]]:
    """(line, text, starts_with_blank, tokens) per record; joins (...) continuation lines."""
    pending: list[str] | None = None
    pending_line = 0
    for lineno, raw in enumerate(text.split("\n"), 1):
        line = raw.rstrip()
        if line.startswith(prefixes):  # ';' is the zone file comment; '#' lines are tolerated
            continue
        if ";" in line:
            line = line[: line.index(";")].rstrip()
        if pending is not None:
            pending.append(line)
            if ")" in line:
                joined = " ".join(pending)
                pending = None
                yield pending_line, joined, joined[:1] in (" ", "\t"), _rpz_tokens(joined)
            continue
        if not line.strip():
            continue
        if "(" in line and ")" not in line:
            pending, pending_line = [line], lineno
            continue
        yield lineno, line, line[0] in (" ", "\t"), _rpz_tokens(line)
    if pending is not None:
        col.reject(pending_line, " ".join(pending).strip(), "unclosed '(' at the end of the zone")


def _rpz_tokens(line: str) -> list[str]:
    if "(" in line or ")" in line:
        line = line.replace("(", " ").replace(")", " ")
    return line.split()


def _rpz_ip(name: str) -> str | None:
    """'24.0.3.2.1' -> '1.2.3.0/24'; '128.1.zz.db8.2001' -> '2001:db8::1/128' (RPZ encoding)."""
    labels = name.split(".")
    if len(labels) < 2 or not labels[0].isdigit():
        return None
    prefix, address = labels[0], labels[:0:-1]
    if len(address) == 4 and all(label.isdigit() for label in address):
        return f"{'.'.join(address)}/{prefix}"
    text = ":".join("" if label == "zz" else label for label in address)
    if text.startswith(":"):
        text = ":" + text
    if text.endswith(":"):
        text += ":"
    return f"{text}/{prefix}"


def _parse_rpz(text: str, col: _Collector, options: FormatOptions, source: str) -> None:
    zone: str | None = None  # the zone's own name, stripped from absolute owner names
    origin: str | None = None  # the current $ORIGIN, for relative owner names
    owner = "@"
    for lineno, line, continued, tokens in _rpz_records(text, col, _prefixes(options)):
        if not tokens:
            continue
        first = tokens[0]
        if first.startswith("$"):
            directive = first.upper()
            if directive == "$ORIGIN" and len(tokens) > 1:
                new = tokens[1].lower().rstrip(".")
                if not tokens[1].endswith(".") and origin:
                    new = f"{new}.{origin}"
                origin = new
                if zone is None:
                    zone = new
            elif directive == "$INCLUDE":
                col.skip("rpz_include")
            continue  # $TTL and the rest say nothing about triggers
        if not continued:
            owner = tokens.pop(0)
        i = 0
        while i < len(tokens) and i < 2 and (tokens[i][0].isdigit() or tokens[i].upper() in _DNS_CLASSES):
            i += 1  # TTL and class, in either order
        if i >= len(tokens):
            col.reject(lineno, line.strip(), "no record type")
            continue
        rtype = tokens[i].upper()
        rdata = tokens[i + 1 :]
        if rtype in ("SOA", "NS"):
            if rtype == "SOA" and zone is None and owner.endswith(".") and owner != ".":
                zone = owner.lower().rstrip(".")
            continue
        name = owner.lower()
        if name == "@":
            col.skip("apex")
            continue
        if name.endswith("."):
            name = name.rstrip(".")
        elif origin:
            name = f"{name}.{origin}"
        if zone:
            if name == zone:
                col.skip("apex")
                continue
            if name.endswith("." + zone):
                name = name[: -len(zone) - 1]
        if rtype == "CNAME":
            if not rdata:
                col.reject(lineno, line.strip(), "CNAME without a target")
                continue
            target = rdata[0].lower()
            # ".", "*.", rpz-drop., rpz-tcp-only. and local data all block; passthru is an exception
            bucket = _EXCEPTIONS if target in _RPZ_PASSTHRU else _INDICATORS
        else:
            bucket = _INDICATORS  # local data (A, AAAA, TXT...) answers instead of the real name
        trigger = None
        if "rpz-" in name:  # "32.4.3.2.1.rpz-ip", also with an unknown zone name after it
            labels = name.split(".")
            trigger = next((label for label in labels if label in _RPZ_TRIGGERS), None)
        if trigger is None:
            if name.startswith("*."):
                col.add(name[2:], lineno, line.strip(), "domain", SUBTREE, bucket)
            else:
                col.add(name, lineno, line.strip(), "domain", EXACT, bucket)
        elif trigger != "rpz-ip":
            col.skip(_RPZ_TRIGGERS[trigger] or trigger)
        else:
            value = _rpz_ip(".".join(labels[: labels.index(trigger)]))
            if value is None:
                col.reject(lineno, line.strip(), "malformed rpz-ip trigger")
            else:
                col.add(value, lineno, line.strip(), "ip", None, bucket)


# --- CSV ------------------------------------------------------------------------------

_HEADER_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_ \-]*")
_VALUE_COLUMNS = {
    "url": "url", "dst_ip": "ip", "ioc": "auto", "domain": "domain", "ip": "ip",
    "ip_address": "ip", "indicator": "auto", "value": "auto", "hostname": "domain", "host": "domain",
}
_THREAT_COLUMNS = ("threat", "threat_type")
_MALWARE_COLUMNS = ("malware", "malware_printable", "malware_family", "tags")
_REFERENCE_COLUMNS = ("urlhaus_link", "reference", "link")
_CONFIDENCE_COLUMNS = ("confidence", "confidence_level")
_NONE_CELLS = frozenset({"", "none", "null", "n/a", "-"})


def _csv_row(line: str, delimiter: str) -> list[str] | None:
    try:
        return next(csv.reader([line], delimiter=delimiter, skipinitialspace=True), [])
    except csv.Error:
        return None


def _looks_like_header(row: list[str] | None, at_least: int = 1) -> bool:
    return (
        row is not None
        and len(row) >= at_least
        and all(_HEADER_WORD.fullmatch(cell.strip()) for cell in row)
    )


def _column_of(names: list[str] | None, candidates: tuple[str, ...]) -> int | None:
    if names:
        for candidate in candidates:
            if candidate in names:
                return names.index(candidate)
    return None


def _cell(row: list[str], index: int | None) -> str | None:
    if index is None or index >= len(row):
        return None
    value = row[index].strip()
    return None if value.lower() in _NONE_CELLS else value


def _parse_csv(text: str, col: _Collector, options: FormatOptions, source: str) -> None:
    prefixes = _prefixes(options)
    if options.comment_prefixes == _LINE_COMMENTS:
        prefixes = _CSV_COMMENTS  # ';' and '!' can start a CSV value
    delimiter = options.delimiter
    lines = text.split("\n")

    last_comment: str | None = None
    first_data: int | None = None  # 0-based index into lines
    for index, raw in enumerate(lines):
        s = raw.strip()
        if not s:
            continue
        if s.startswith(prefixes):
            last_comment = s
            continue
        first_data = index
        break

    comment_header = None
    if last_comment is not None:
        comment_header = _csv_row(last_comment.lstrip("".join(prefixes)).strip(), delimiter)
    first_row = _csv_row(lines[first_data].strip(), delimiter) if first_data is not None else None
    header: list[str] | None = None
    header_index: int | None = None  # a data line that is the header
    if options.has_header is not False:
        if _looks_like_header(comment_header, 1 if options.has_header else 2):
            header = comment_header
        elif options.has_header or _looks_like_header(first_row):
            header, header_index = first_row, first_data
    names = [cell.strip().strip('"').lower() for cell in header] if header else None
    header_text = ", ".join(names or [])
    if first_data is None:
        return  # empty or comment-only: zero indicators, not a rejection

    natural = "auto"
    column: int | None
    if isinstance(options.column, int):
        column = options.column
        if names and column < len(names):
            natural = _VALUE_COLUMNS.get(names[column], "auto")
    elif isinstance(options.column, str):
        wanted = options.column.lower()
        if not names:
            raise RejectedFile(f"{source}: no header row to find column {options.column!r} in")
        if wanted not in names:
            raise RejectedFile(f"{source}: no column {options.column!r} in the header ({header_text})")
        column = names.index(wanted)
        natural = _VALUE_COLUMNS.get(wanted, "auto")
    else:
        column = _column_of(names, tuple(_VALUE_COLUMNS))
        if column is not None and names:
            natural = _VALUE_COLUMNS[names[column]]
    if column is not None:
        column_name = repr(names[column]) if names and column < len(names) else f"{column} (0-based)"
    threat_at = _column_of(names, _THREAT_COLUMNS)
    malware_at = _column_of(names, _MALWARE_COLUMNS)
    reference_at = _column_of(names, _REFERENCE_COLUMNS)
    confidence_at = _column_of(names, _CONFIDENCE_COLUMNS)

    current = [0]

    def data_lines() -> Iterator[str]:
        for index, raw in enumerate(lines):
            if index == header_index:
                continue
            s = raw.strip()
            if not s or s.startswith(prefixes):
                continue
            current[0] = index + 1
            yield raw.rstrip("\r")

    reader = csv.reader(data_lines(), delimiter=delimiter, skipinitialspace=True)
    while True:
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            col.reject(current[0], lines[current[0] - 1].strip(), f"bad CSV: {exc}")
            continue
        lineno = current[0]
        shown = lines[lineno - 1].strip()
        confidence = _int_or_none(_cell(row, confidence_at))
        meta = {
            "threat": _cell(row, threat_at),
            "malware": _cell(row, malware_at),
            "reference": _cell(row, reference_at),
            "confidence": confidence,
        }
        if column is not None:
            value = _cell(row, column)
            if value is None:
                col.reject(lineno, shown, f"no value in column {column_name}")
            else:
                col.add(value, lineno, shown, natural, **meta)
            continue
        # no known column: the first field that canonicalises (ids and words are not IoCs)
        for cell in row:
            cell = cell.strip()
            if cell and not cell.isdigit() and ("." in cell or ":" in cell):
                if col.add(cell, lineno, shown, "auto", quiet=True, **meta):
                    break
        else:
            col.reject(lineno, shown, "no field is a domain, URL or IP")


def _int_or_none(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and math.isfinite(value):
        return int(value)
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            return None
    return None


# --- JSON (ThreatFox and friends) -------------------------------------------------------

_MISSING: Any = object()


def _load_json(text: str, source: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise RejectedFile(
            f"{source} line {exc.lineno} column {exc.colno}: not valid JSON ({exc.msg})"
        ) from None
    except (ValueError, RecursionError) as exc:
        raise RejectedFile(f"{source}: not valid JSON ({exc})") from None


def _dig(node: Any, path: str) -> Any:
    for part in path.split("."):
        if isinstance(node, dict):
            node = node.get(part, _MISSING)
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return _MISSING
        if node is _MISSING:
            return _MISSING
    return node


def _text_of(node: Any) -> str | None:
    if isinstance(node, str):
        return node.strip() or None
    if isinstance(node, bool) or node is None or node is _MISSING:
        return None
    if isinstance(node, int | float):
        return str(node)
    if isinstance(node, list):
        parts = [str(p).strip() for p in node if isinstance(p, str | int) and str(p).strip()]
        return ", ".join(parts) or None
    return None


def _timestamp(node: Any) -> float | None:
    """Unix time from a number, RFC 3339 ('2024-05-01T00:00:00Z') or '2024-05-01 00:00:00 UTC'."""
    if isinstance(node, bool):
        return None
    if isinstance(node, int | float):
        return float(node) if math.isfinite(node) else None
    if not isinstance(node, str) or not node.strip():
        return None
    text = node.strip()
    if text.isdigit():
        return float(text)
    if text.endswith(" UTC"):
        text = text[:-4]
    try:
        when = datetime.fromisoformat(text)
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        return when.timestamp()
    except (ValueError, OverflowError, OSError):
        return None


def _strip_port(value: str) -> str:
    """'1.2.3.4:443', '[2001:db8::1]:443', '1.2.3.4|443' -> the address."""
    value = value.strip()
    if "|" in value:
        return value.split("|", 1)[0]
    if value.startswith("["):
        end = value.find("]")
        return value[1:end] if end > 0 else value
    if value.count(":") == 1:
        return value.rsplit(":", 1)[0]
    return value


def _json_records(doc: Any, options: FormatOptions, source: str) -> list[Any]:
    if options.json_items:
        node = _dig(doc, options.json_items)
        if node is _MISSING:
            raise RejectedFile(f"{source}: no {options.json_items!r} in the JSON document")
        if isinstance(node, list):
            return node
        if isinstance(node, dict):
            return _flatten_dict_of_lists(node) or [node]
        raise RejectedFile(f"{source}: {options.json_items!r} is not a list of records")
    if isinstance(doc, list):
        return doc
    if isinstance(doc, dict):
        status = doc.get("query_status")
        if status == "no_result":  # ThreatFox: an empty answer, not an error
            return []
        if isinstance(status, str) and status != "ok":
            raise RejectedFile(f"{source}: the API answered query_status {status!r}")
        for key in ("data", "response", "list"):
            if isinstance(doc.get(key), list):
                return doc[key]
        if doc and all(isinstance(v, list) for v in doc.values()):
            return _flatten_dict_of_lists(doc)  # ThreatFox export: {"<id>": [{...}], ...}
        if _dig(doc, options.json_value) is not _MISSING:
            return [doc]
        if not doc:
            return []
    raise RejectedFile(f"{source}: no list of records found in the JSON (set json_items)")


def _flatten_dict_of_lists(node: dict[str, Any]) -> list[Any]:
    records: list[Any] = []
    for value in node.values():
        if isinstance(value, list):
            records.extend(value)
    return records


def _parse_json(text: str, col: _Collector, options: FormatOptions, source: str) -> None:
    records = _json_records(_load_json(text, source), options, source)
    type_map = dict(_DEFAULT_TYPE_MAP)
    if options.type_map:
        type_map.update({str(k).lower(): v for k, v in options.type_map.items()})
    for index, record in enumerate(records, 1):
        if isinstance(record, str):
            col.add(record, index, record)
            continue
        if not isinstance(record, dict):
            col.reject(index, _shown(record), "record is not an object or a string")
            continue
        natural = "auto"
        strip_port = False
        if options.json_type:
            source_type = _text_of(_dig(record, options.json_type))
            if source_type is not None:
                source_type = source_type.lower()
                mapped = type_map.get(source_type)
                if mapped not in _TYPE_KINDS:
                    col.skip("unsupported_type")
                    continue
                natural = mapped
                strip_port = source_type.endswith("port")
        value = _dig(record, options.json_value)
        meta = {
            "expires_at": _timestamp(_dig(record, options.json_expiry)) if options.json_expiry else None,
            "threat": _text_of(_dig(record, options.json_threat)) if options.json_threat else None,
            "malware": _text_of(_dig(record, options.json_malware)) if options.json_malware else None,
            "confidence": (
                _int_or_none(_dig(record, options.json_confidence)) if options.json_confidence else None
            ),
            "reference": (
                _text_of(_dig(record, options.json_reference)) if options.json_reference else None
            ),
        }
        for item in value if isinstance(value, list) else [value]:
            if not isinstance(item, str) or not item.strip():
                col.reject(index, _shown(record), f"no text value at {options.json_value!r}")
                continue
            if strip_port:
                item = _strip_port(item)
            col.add(item, index, item, natural, **meta)


def _shown(node: Any) -> str:
    try:
        return json.dumps(node, ensure_ascii=False)[:_SAMPLE_TEXT]
    except (TypeError, ValueError):
        return repr(node)[:_SAMPLE_TEXT]


# --- STIX 2.x -------------------------------------------------------------------------

_STIX_VALUE_PATHS = {
    "domain-name:value": "domain",
    "url:value": "url",
    "ipv4-addr:value": "ip",
    "ipv6-addr:value": "ip",
}
_QUOTED = r"'(?:\\.|[^'\\])*'"
_STIX_TOKEN = re.compile(
    rf"""\s*(?:
      (?P<str>{_QUOTED})
    | (?P<path>[a-z0-9][a-z0-9\-]*:(?:[A-Za-z0-9_\-]+|{_QUOTED})
               (?:\.(?:[A-Za-z0-9_\-]+|{_QUOTED})|\[(?:\*|\d+)\])*)
    | (?P<lit>[tbh]{_QUOTED}|-?\d+(?:\.\d+)?)
    | (?P<op>!=|>=|<=|=|>|<)
    | (?P<punct>[\[\]()])
    | (?P<comma>,)
    | (?P<word>[A-Za-z_][A-Za-z0-9_]*)
    )""",
    re.VERBOSE,
)
_STIX_WORD_OPS = frozenset({"LIKE", "MATCHES", "ISSUBSET", "ISSUPERSET"})
# a pattern with any of these is skipped whole (IN lists and EXISTS have another shape)
_STIX_UNSUPPORTED = frozenset({
    "AND", "FOLLOWEDBY", "NOT", "WITHIN", "START", "STOP", "REPEATS", "IN", "EXISTS",
})
_UNESCAPE = re.compile(r"\\(.)")


class _PatternError(ValueError):
    pass


def _stix_values(pattern: str) -> list[tuple[str, str]] | None:
    """The (kind, value) pairs of a pure OR of equality comparisons, None if unsupported.

    `[a = 'x' OR b = 'y']` and `[a = 'x'] OR [b = 'y']` give both; any AND, FOLLOWEDBY,
    qualifier or NOT makes the whole pattern unsupported; an alternative of another object
    type or operator is dropped (each OR alternative alone satisfies the pattern).
    `ipv4-addr:value ISSUBSET '10.0.0.0/8'` is a range and kept.
    """
    tokens: list[tuple[str, str]] = []
    depth = 0
    pos = 0
    end = len(pattern.rstrip())
    while pos < end:
        found = _STIX_TOKEN.match(pattern, pos)
        if not found or found.end() == pos:
            raise _PatternError(f"unexpected text at offset {pos}")
        pos = found.end()
        group = found.lastgroup or ""
        token = found.group(group)
        if group == "comma":
            raise _PatternError("unexpected ','")
        if group == "punct":
            depth += 1 if token in "[(" else -1
            if depth < 0:
                raise _PatternError("unbalanced brackets")
            continue
        if group == "word":
            upper = token.upper()
            if upper in _STIX_UNSUPPORTED:
                return None
            if upper in _STIX_WORD_OPS:
                group, token = "op", upper
            elif upper in ("TRUE", "FALSE"):
                group = "lit"
            elif upper != "OR":
                raise _PatternError(f"unexpected word {token!r}")
            else:
                token = upper
        tokens.append((group, token))
    if depth:
        raise _PatternError("unbalanced brackets")
    values: list[tuple[str, str]] = []
    index = 0
    while True:
        comparison = tokens[index : index + 3]
        if [t[0] for t in comparison] not in (["path", "op", "str"], ["path", "op", "lit"]):
            raise _PatternError("expected 'object:path operator value'")
        (_, path), (_, op), (kind_of_value, literal) = comparison
        kind = _STIX_VALUE_PATHS.get(path)
        if kind and kind_of_value == "str" and (op == "=" or (op == "ISSUBSET" and kind == "ip")):
            values.append((kind, _UNESCAPE.sub(r"\1", literal[1:-1])))
        index += 3
        if index == len(tokens):
            break
        if tokens[index] != ("word", "OR"):
            raise _PatternError("expected OR between comparisons")
        index += 1
    return values or None


def _stix_objects(doc: Any, source: str) -> list[Any]:
    if isinstance(doc, list):
        return doc
    if isinstance(doc, dict):
        objects = doc.get("objects")
        if isinstance(objects, list):
            return objects  # a bundle, or a TAXII envelope
        if doc.get("type") == "bundle" or not doc:
            return []
        if isinstance(doc.get("type"), str):
            return [doc]  # one object
    raise RejectedFile(f"{source}: not a STIX bundle, object or list of objects")


def _stix_threat(indicator: dict[str, Any]) -> str | None:
    for key in ("name", "indicator_types", "labels", "description"):
        text = _text_of(indicator.get(key))
        if text:
            return text[:_SAMPLE_TEXT]
    return None


def _stix_reference(indicator: dict[str, Any]) -> str | None:
    refs = indicator.get("external_references")
    if isinstance(refs, list):
        for ref in refs:
            if isinstance(ref, dict) and isinstance(ref.get("url"), str):
                return ref["url"]
    ident = indicator.get("id")
    return ident if isinstance(ident, str) else None


def _collect_stix(objects: list[Any], col: _Collector) -> None:
    malware_names: dict[str, str] = {}
    for obj in objects:
        if isinstance(obj, dict) and obj.get("type") == "malware":
            ident, name = obj.get("id"), obj.get("name")
            if isinstance(ident, str) and isinstance(name, str):
                malware_names[ident] = name
    indicates: dict[str, str] = {}
    for obj in objects:
        if (
            isinstance(obj, dict)
            and obj.get("type") == "relationship"
            and obj.get("relationship_type") == "indicates"
        ):
            target = obj.get("target_ref")
            source_ref = obj.get("source_ref")
            if isinstance(source_ref, str) and isinstance(target, str) and target in malware_names:
                indicates.setdefault(source_ref, malware_names[target])

    for index, obj in enumerate(objects, 1):
        if not isinstance(obj, dict):
            col.reject(index, _shown(obj), "not a STIX object")
            continue
        if obj.get("type") != "indicator":
            continue
        if obj.get("pattern_type", "stix") != "stix":  # STIX 2.0 has no pattern_type
            col.skip("unsupported_pattern_type")
            continue
        pattern = obj.get("pattern")
        if not isinstance(pattern, str):
            col.reject(index, _shown(obj), "indicator without a pattern")
            continue
        try:
            values = _stix_values(pattern)
        except _PatternError as exc:
            col.reject(index, pattern, f"bad STIX pattern: {exc}")
            continue
        if values is None:
            col.skip("unsupported_pattern")
            continue
        ident = obj.get("id")
        bucket = _REVOKED if obj.get("revoked") is True else _INDICATORS
        meta = {
            "expires_at": _timestamp(obj.get("valid_until")),
            "threat": _stix_threat(obj),
            "malware": indicates.get(ident) if isinstance(ident, str) else None,
            "confidence": _int_or_none(obj.get("confidence")),
            "reference": _stix_reference(obj),
        }
        for kind, value in values:
            col.add(value, index, pattern, kind, None, bucket, **meta)


def _parse_stix2(text: str, col: _Collector, options: FormatOptions, source: str) -> None:
    _collect_stix(_stix_objects(_load_json(text, source), source), col)


# --- MISP -----------------------------------------------------------------------------

_MISP_TYPES: Mapping[str, tuple[str, ...]] = MappingProxyType({
    "domain": ("domain",),
    "hostname": ("domain",),
    "url": ("url",),
    "ip-dst": ("ip",),
    "ip-src": ("ip",),
    "domain|ip": ("domain", "ip"),
    "ip-dst|port": ("ip",),
    "ip-src|port": ("ip",),
    "hostname|port": ("domain",),
})


def _truthy(node: Any) -> bool:
    if isinstance(node, str):
        return node.strip().lower() in ("1", "true", "yes")
    return node is True or (isinstance(node, int) and node == 1)


def _misp_events(doc: Any, source: str) -> list[dict[str, Any]]:
    if isinstance(doc, dict):
        if isinstance(doc.get("Event"), dict):
            return [doc["Event"]]
        if isinstance(doc.get("response"), list):
            doc = doc["response"]
        elif any(key in doc for key in ("Attribute", "Object", "info", "uuid")):
            return [doc]  # a bare event
    if isinstance(doc, list):
        events = []
        for item in doc:
            if isinstance(item, dict):
                event = item.get("Event", item)
                if isinstance(event, dict):
                    events.append(event)
        return events
    raise RejectedFile(f"{source}: not a MISP event, feed event or search response")


def _misp_attributes(event: dict[str, Any]) -> Iterator[Any]:
    attributes = event.get("Attribute")
    if isinstance(attributes, list):
        yield from attributes
    objects = event.get("Object")
    if isinstance(objects, list):
        for obj in objects:
            inner = obj.get("Attribute") if isinstance(obj, dict) else None
            if isinstance(inner, list):
                yield from inner


def _parse_misp(text: str, col: _Collector, options: FormatOptions, source: str) -> None:
    index = 0
    for event in _misp_events(_load_json(text, source), source):
        info = _text_of(event.get("info"))
        for attribute in _misp_attributes(event):
            index += 1
            if not isinstance(attribute, dict):
                col.reject(index, _shown(attribute), "attribute is not an object")
                continue
            if _truthy(attribute.get("deleted")):
                col.skip("deleted")
                continue
            attribute_type = str(attribute.get("type", "")).lower()
            kinds = _MISP_TYPES.get(attribute_type)
            if kinds is None:
                col.skip("unsupported_type")
                continue
            if not _truthy(attribute.get("to_ids")):
                col.skip("not_to_ids")
                continue
            value = attribute.get("value")
            if not isinstance(value, str) or not value.strip():
                col.reject(index, _shown(attribute), "attribute without a value")
                continue
            parts = value.split("|") if len(kinds) > 1 or "|port" in attribute_type else [value]
            reference = _text_of(attribute.get("comment"))
            for kind, part in zip(kinds, parts, strict=False):
                col.add(part.strip(), index, value, kind, threat=info, reference=reference)


# --- sniffing -------------------------------------------------------------------------

_JSON_STIX = re.compile(r'"type"\s*:\s*"bundle"|"spec_version"\s*:|"pattern"\s*:')
_JSON_MISP = re.compile(r'"Event"\s*:|"Attribute"\s*:')
_JSON_STARTS = frozenset('{["]-0123456789tfn')  # what may follow a JSON list's "["


def sniff(data: bytes) -> str:
    """The format `parse(data, "auto")` would use, from the first 64 KiB."""
    head = bytes(data[: _SNIFF_CHARS * 2])
    if head[:2] in (b"\xff\xfe", b"\xfe\xff"):
        text = head.decode("utf-16", errors="replace")
    else:
        text = head.decode("utf-8", errors="replace")
    return _sniff_text(text.lstrip("\ufeff"), truncated=len(data) > len(head))


def _sniff_text(text: str, truncated: bool = False) -> str:
    head = text[:_SNIFF_CHARS]
    stripped = head.lstrip()
    if stripped[:8].lower().startswith(("[adblock", "[adguard", "[ublock")):
        return "adblock"
    if stripped[:1] == "{" or (stripped[:1] == "[" and stripped[1:].lstrip()[:1] in _JSON_STARTS):
        if _JSON_STIX.search(head):
            return "stix2"
        if _JSON_MISP.search(head):
            return "misp"
        return "json"
    lines = head.split("\n")
    if truncated or len(text) > len(head):
        lines = lines[:-1]  # the last line may be cut
    data: list[str] = []
    comments_before_data: list[str] = []
    for raw in lines:
        s = raw.strip()
        if not s:
            continue
        if s.startswith(_LINE_COMMENTS):
            if not data:
                comments_before_data.append(s)
            continue
        data.append(s)
        if len(data) >= _SNIFF_LINES:
            break
    if not data:
        return "plain"
    half = max(1, len(data) // 2)

    rpz_lines = 0
    for s in data:
        upper = s.upper()
        if upper.startswith(("$TTL", "$ORIGIN")) or " SOA " in f" {upper} ":
            return "rpz"
        if " CNAME " in f" {upper} " and (
            upper.endswith((" .", " *.")) or "RPZ-" in upper
        ):
            rpz_lines += 1
    if rpz_lines >= half:
        return "rpz"

    if sum(1 for s in data if s.startswith(("||", "@@||")) or "##" in s) >= half:
        return "adblock"

    if any("," in s for s in data[:10]):
        widths = [len(_csv_row(s, ",") or ()) for s in data[:500]]
        width = max(set(widths), key=widths.count)
        if width >= 2 and widths.count(width) * 10 >= len(widths) * 9:  # consistent columns
            if comments_before_data:  # URLhaus: "# id,dateadded,url,..." above the data
                banner = _csv_row(comments_before_data[-1].lstrip("#").strip(), ",")
                if _looks_like_header(banner, 2):
                    return "csv"
            quoted = sum(1 for s in data[:500] if '"' in s)
            if quoted * 2 >= len(widths) or _looks_like_header(_csv_row(data[0], ","), 2):
                return "csv"

    known: dict[str, bool] = {}
    hosts_lines = 0
    for s in data[:500]:
        parts = s.split(None, 2)
        # "ADDR name", not "1.2.3.0/24 ; SBL123" or "192.0.2.1<TAB>7" (a plain list)
        if (
            len(parts) >= 2
            and parts[1][0] not in "#;!"
            and "/" not in parts[0]
            and any(c.isalpha() for c in parts[1])
        ):
            ok = known.get(parts[0])
            if ok is None:
                ok = known[parts[0]] = _is_address(parts[0])
            hosts_lines += ok
    if hosts_lines >= max(1, min(len(data), 500) // 2):
        return "hosts"

    if sum(1 for s in data if s.startswith("*.")) >= half:
        return "wildcard"
    return "plain"


# --- entry points ---------------------------------------------------------------------

_PARSERS = {
    "plain": _parse_plain,
    "hosts": _parse_hosts,
    "adblock": _parse_adblock,
    "wildcard": _parse_wildcard,
    "rpz": _parse_rpz,
    "csv": _parse_csv,
    "json": _parse_json,
    "stix2": _parse_stix2,
    "misp": _parse_misp,
}


def parse(
    data: bytes,
    fmt: str = "auto",
    *,
    kind: str = "auto",
    options: FormatOptions | None = None,
    source: str = "<input>",
) -> ParseResult:
    """Parse one feed file.

    Never raises on a bad line (it is counted in `rejected`, the first ten sampled); raises
    RejectedFile, naming `source`, when the data is not a list at all. `kind` restricts what
    is accepted ("domain": every value must be a domain, though an IP becomes an ip indicator).
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown feed format {fmt!r}; expected one of {', '.join(FORMATS)}")
    if kind not in KINDS:
        raise ValueError(f"unknown indicator kind {kind!r}; expected one of {', '.join(KINDS)}")
    text = _decode(data, source)
    if fmt == "auto":
        fmt = _sniff_text(text)
    collector = _Collector(kind)
    if not text.strip():  # empty is a list of nothing, for JSON formats too
        return collector.result(fmt)
    with full_collections_paused():
        _PARSERS[fmt](text, collector, options or FormatOptions(), source)
    return collector.result(fmt)


def parse_taxii_envelope(
    data: bytes, *, source: str = "<taxii>"
) -> tuple[ParseResult, bool, str | None]:
    """Parse a TAXII 2.1 envelope: (result of its "objects", more, next)."""
    text = _decode(data, source)
    doc = _load_json(text, source) if text.strip() else {}
    if not isinstance(doc, dict):
        raise RejectedFile(f"{source}: a TAXII envelope is a JSON object")
    objects = doc.get("objects", [])
    if not isinstance(objects, list):
        raise RejectedFile(f"{source}: the TAXII envelope's 'objects' is not a list")
    collector = _Collector("auto")
    _collect_stix(objects, collector)
    following = doc.get("next")
    next_token = str(following) if isinstance(following, str | int) and not isinstance(following, bool) else None
    return collector.result("stix2"), doc.get("more") is True, next_token or None


_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")


def parse_misp_manifest(data: bytes, *, source: str = "<manifest>") -> list[str]:
    """The event uuids of a MISP feed's manifest.json, in file order (other keys ignored)."""
    text = _decode(data, source)
    doc = _load_json(text, source) if text.strip() else {}
    if not isinstance(doc, dict):
        raise RejectedFile(f"{source}: a MISP manifest is a JSON object keyed by event uuid")
    return [key for key in doc if _UUID.fullmatch(key)]
