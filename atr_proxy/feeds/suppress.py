"""The false-positive guard: suppression lists (MISP warninglists, plain lists).

An indicator that a suppression list covers is stored but not enforced (the index's
``indicators.suppressed_by`` names the list; snapshot builders skip such rows), so a
public resolver's address in a botnet list, or a top site in a phishing list, never
blocks anything, and the operator can still see that the feed listed it.

What "covers" means, per kind of indicator:

- ip (address or range): it overlaps a listed address or network. Blocking 8.8.8.0/24
  would block 8.8.8.8 too.
- domain: it is a listed name, or (a subtree indicator) a parent of one: ``google.com``
  matching subtree would block ``www.google.com``. A name *under* a listed one is not
  suppressed: malware on ``evil.github.io`` is exactly what feeds are for.
- url: the URL is listed, or it is the root of a listed host (``http://google.com/``).

MISP warninglist types ``cidr``, ``hostname`` and ``string`` are read; ``substring`` and
``regex`` lists cannot be applied to indicators this way and are refused when loaded.
Plain lists hold one value per line (``#`` comments; a ``rank,domain`` CSV line such as a
Tranco top-sites list keeps its last field).
"""

from __future__ import annotations

import json
from bisect import bisect_right
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from ..config import SuppressSettings
from ..errors import AtrError
from ..indicators import canonicalize, domain_suffixes, ip_network, url_key

_APPLICABLE_MISP_TYPES = ("cidr", "hostname", "string")


class SuppressionError(AtrError):
    """A suppression list cannot be read or used."""


@dataclass
class SuppressionList:
    """One list, indexed for fast checks."""

    name: str
    names: set[str] = field(default_factory=set)      # listed domain names
    parents: set[str] = field(default_factory=set)    # every suffix of a listed name
    urls: set[str] = field(default_factory=set)       # listed URL keys
    ranges: dict[int, tuple[list[int], list[int]]] = field(default_factory=dict)
    entries: int = 0
    skipped: int = 0

    def add_network(self, version: int, start: int, end: int) -> None:
        starts, ends = self.ranges.setdefault(version, ([], []))
        starts.append(start)
        ends.append(end)

    def finish(self) -> SuppressionList:
        """Merge overlapping ranges so an overlap test is one bisect."""
        for version, (starts, ends) in list(self.ranges.items()):
            merged: list[list[int]] = []
            for start, end in sorted(zip(starts, ends, strict=True)):
                if merged and start <= merged[-1][1] + 1:
                    merged[-1][1] = max(merged[-1][1], end)
                else:
                    merged.append([start, end])
            self.ranges[version] = ([m[0] for m in merged], [m[1] for m in merged])
        for name in self.names:
            self.parents.update(domain_suffixes(name))
        return self

    def overlaps(self, version: int, start: int, end: int) -> bool:
        found = self.ranges.get(version)
        if not found:
            return False
        starts, ends = found
        i = bisect_right(starts, end) - 1  # the last range starting at or before `end`
        return i >= 0 and ends[i] >= start

    def covers(self, kind: str, value: str, match: str | None = None) -> bool:
        if kind == "ip":
            net = ip_network(value)
            return self.overlaps(net.version, int(net.network_address),
                                 int(net.broadcast_address))
        if kind == "domain":
            return value in self.names or (match == "subtree" and value in self.parents)
        if kind == "url":
            if value in self.urls:
                return True
            host, _, path = value.partition("/")
            if path:  # a URL below the root is a page, not the site
                return False
            host = host.rsplit(":", 1)[0] if not host.startswith("[") else host
            if host in self.names:
                return True
            try:
                ind = canonicalize(host.strip("[]"), "ip")
            except ValueError:
                return False
            return self.covers("ip", ind.value)
        return False


class Suppressor:
    """Every configured list; ``check`` names the first list that covers an indicator."""

    def __init__(self, lists: Iterable[SuppressionList] = ()) -> None:
        self.lists = list(lists)

    def __bool__(self) -> bool:
        return bool(self.lists)

    def check(self, kind: str, value: str, match: str | None = None) -> str | None:
        for item in self.lists:
            try:
                if item.covers(kind, value, match):
                    return item.name
            except ValueError:
                return None
        return None

    @property
    def names(self) -> list[str]:
        return [item.name for item in self.lists]


def load_suppressor(settings: Iterable[SuppressSettings]) -> Suppressor:
    """Read every configured list; raises SuppressionError naming the bad one."""
    return Suppressor(load_list(s) for s in settings)


def load_list(settings: SuppressSettings) -> SuppressionList:
    path = Path(settings.path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise SuppressionError(
            f"suppression list {settings.name!r}: cannot read {path}: {exc.strerror or exc}"
        ) from None
    fmt = settings.format
    if fmt == "auto":
        fmt = "misp-warninglist" if data.lstrip()[:1] == b"{" else "plain"
    return parse_list(settings.name, data, fmt, source=str(path))


def parse_list(name: str, data: bytes, fmt: str, *, source: str = "<list>") -> SuppressionList:
    """A suppression list from a MISP warninglist JSON (``fmt="misp-warninglist"``) or a
    plain list; values that are not a domain, URL or IP are counted in ``skipped``."""
    result = SuppressionList(name)
    if fmt == "misp-warninglist":
        try:
            doc = json.loads(data)
        except ValueError as exc:
            raise SuppressionError(f"suppression list {name!r}: {source} is not JSON: {exc}") \
                from None
        if not isinstance(doc, dict) or not isinstance(doc.get("list"), list):
            raise SuppressionError(f"suppression list {name!r}: {source} is not a MISP"
                                   " warninglist (no 'list')")
        kind = str(doc.get("type", "string")).lower()
        if kind not in _APPLICABLE_MISP_TYPES:
            raise SuppressionError(
                f"suppression list {name!r}: MISP warninglist type {kind!r} cannot be applied"
                f" to indicators (use one of type {', '.join(_APPLICABLE_MISP_TYPES)})"
            )
        values: Iterable[str] = (str(v) for v in doc["list"])
    else:
        text = data.decode("utf-8", errors="replace")
        values = _plain_values(text)
    for value in values:
        _add(result, value.strip())
    return result.finish()


def _plain_values(text: str) -> Iterable[str]:
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";", "!")):
            continue
        if "," in line:  # "1,google.com": a ranked top-sites list
            line = line.rsplit(",", 1)[1].strip()
        yield line.split()[0] if line.split() else line


def _add(result: SuppressionList, value: str) -> None:
    if not value:
        return
    if value.startswith("*."):
        value = value[2:]
    try:
        ind = canonicalize(value.lstrip("."))
    except ValueError:
        result.skipped += 1
        return
    result.entries += 1
    if ind.kind == "ip":
        net = ip_network(ind.value)
        result.add_network(net.version, int(net.network_address), int(net.broadcast_address))
    elif ind.kind == "domain":
        if "." not in ind.value:  # a bare label is no site: never let it hide a TLD
            result.entries -= 1
            result.skipped += 1
            return
        result.names.add(ind.value)
    else:
        result.urls.add(url_key(ind.value) if "://" in ind.value else ind.value)
