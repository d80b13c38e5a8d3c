"""The one configuration loader: ``atr.yaml`` (JSON works too) → typed settings.

Everything is validated when the file is loaded, and every error names the key path
(``feeds[2].interval``) and what is wrong. Secrets are written as ``${ENV_VAR}`` and read
from the environment; they are held as :class:`Secret`, which never prints its value.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError

DEFAULT_CONFIG_ENV = "ATR_CONFIG"
PRIVATE_AND_LOOPBACK = (
    "127.0.0.0/8", "::1/128", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16",
    "fc00::/7", "fe80::/10", "100.64.0.0/10",
)
FORMATS = ("plain", "hosts", "adblock", "wildcard", "rpz", "csv", "json", "stix2", "taxii2",
           "misp", "auto")
_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)?\s*$")
_UNITS = {"ms": 0.001, "s": 1, None: 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_FEED_NAME = re.compile(r"^[A-Za-z0-9_-]{1,63}$")


class Secret(str):
    """A string read from the environment that never shows itself in logs or errors."""

    def __repr__(self) -> str:
        return "Secret('***')"

    def __str__(self) -> str:  # format() and f-strings go through __str__ / __format__
        return "***"

    def __format__(self, spec: str) -> str:
        return "***"

    def reveal(self) -> str:
        return str.__str__(self)


def parse_duration(value: Any, path: str) -> float:
    """Seconds from ``30``, ``"90s"``, ``"5m"``, ``"6h"``, ``"7d"``, ``"2w"``."""
    if isinstance(value, bool):
        raise ConfigError(path, "expected a duration such as 30s, 5m, 1h, 7d")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        match = _DURATION.match(str(value))
        if not match:
            raise ConfigError(path, f"{value!r} is not a duration (use e.g. 30s, 5m, 1h, 7d)")
        seconds = float(match.group(1)) * _UNITS[match.group(2)]
    if seconds <= 0:
        raise ConfigError(path, "a duration must be positive")
    return seconds


def parse_size(value: Any, path: str) -> int:
    """Bytes from ``1048576``, ``"512k"``, ``"64M"``, ``"1G"``."""
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    match = re.match(r"^\s*(\d+)\s*([kmgKMG])?i?[bB]?\s*$", str(value))
    if not match:
        raise ConfigError(path, f"{value!r} is not a size (use e.g. 65536, 512k, 64M)")
    return int(match.group(1)) * {None: 1, "k": 1024, "m": 1024**2, "g": 1024**3}[
        (match.group(2) or "").lower() or None]


def parse_hostport(value: Any, path: str, default_port: int) -> tuple[str, int]:
    """("host", port) from ``"127.0.0.1:8080"``, ``"[::1]:53"``, ``"0.0.0.0"``."""
    text = str(value).strip()
    host, port = text, default_port
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise ConfigError(path, f"{text!r}: unclosed '['")
        host, rest = text[1:end], text[end + 1:]
        if rest:
            if not rest.startswith(":"):
                raise ConfigError(path, f"{text!r}: expected [host]:port")
            port = rest[1:]
    elif text.count(":") == 1:
        host, port = text.split(":")
    try:
        port = int(port)
    except ValueError:
        raise ConfigError(path, f"{text!r}: port must be a number") from None
    if not 0 < port < 65536 or not host:
        raise ConfigError(path, f"{text!r}: expected host:port with a port 1-65535")
    return host, port


@dataclass(frozen=True)
class Auth:
    kind: str = "none"          # none | basic | bearer | api_key
    user: str | None = None
    password: Secret | None = None
    token: Secret | None = None
    name: str | None = None     # api_key: header or parameter name
    value: Secret | None = None
    send_in: str = "header"     # api_key: header | query


@dataclass(frozen=True)
class ModuleSettings:
    enabled: bool = True
    action: str = "block"


@dataclass(frozen=True)
class FeedSettings:
    name: str
    module: str = "third_party"
    url: str | None = None
    format: str = "auto"
    type: str = "auto"
    action: str | None = None          # None: the module's default action
    enabled: bool = True
    order: int = 0
    interval: float = 3600.0
    auth: Auth = field(default_factory=Auth)
    verify_tls: bool = True
    ca_file: str | None = None
    timeout: float = 30.0
    max_bytes: int = 256 * 1024 * 1024
    match: str = "subtree"
    expire_after: float | None = None
    max_shrink: float = 0.5
    options: Mapping[str, Any] = field(default_factory=dict)
    preset: str | None = None


@dataclass(frozen=True)
class ExceptionSettings:
    scope: str                   # source | destination
    value: str
    comment: str | None = None


@dataclass(frozen=True)
class SuppressSettings:
    name: str
    path: str                    # a MISP warninglist JSON or a plain list
    format: str = "auto"         # auto | misp-warninglist | plain


@dataclass(frozen=True)
class ProxySettings:
    listen: tuple[str, int] = ("127.0.0.1", 8080)
    allow_clients: tuple[str, ...] = PRIVATE_AND_LOOPBACK
    intercept: str = "auto"      # auto | all | none
    no_intercept: tuple[str, ...] = ()
    fail: str = "open"           # open | closed
    block_page: str | None = None
    certs: str = "certs"


@dataclass(frozen=True)
class DnsSettings:
    listen: tuple[str, int] = ("127.0.0.1", 5353)
    upstreams: tuple[tuple[str, int], ...] = ()   # empty: the system's resolv.conf
    allow_clients: tuple[str, ...] = PRIVATE_AND_LOOPBACK
    sinkhole: str = "nxdomain"   # nxdomain | nodata | null | address | refused
    sinkhole_address: tuple[str, ...] = ()
    sinkhole_ttl: int = 60
    timeout: float = 2.0
    cache_size: int = 10_000
    rate_limit: float = 0.0      # queries per second per client; 0 = off
    query_log: bool = False
    event_window: float | None = None  # repeats of one hit folded; None: sinkhole_ttl


@dataclass(frozen=True)
class AdminSettings:
    listen: tuple[str, int] = ("127.0.0.1", 8081)
    token: Secret | None = None


@dataclass(frozen=True)
class SyncSettings:
    """The feed-sync worker's own knobs (``sync:`` in atr.yaml)."""

    concurrency: int = 4         # feeds fetched at once
    jitter: float = 0.1          # each run is moved by up to this share of the interval
    retries: int = 2             # extra attempts after a transport error, 5xx or 429
    backoff: float = 1.0         # seconds before the first retry; doubles each time
    housekeeping: float = 60.0   # seconds between expiry purges and change-log pruning
    keep_changes: float = 86400.0  # change-log entries older than this are pruned


@dataclass(frozen=True)
class EventSettings:
    jsonl: str | None = "events.jsonl"
    syslog: str | None = None    # udp://host:514 or tcp://host:514
    keep: float = 30 * 86400.0   # events older than this leave the index (0: kept forever)
    max_rows: int = 5_000_000    # and past this many, the oldest go (0: no limit)


@dataclass(frozen=True)
class Settings:
    index: Path = Path("atr-index.db")
    modules: Mapping[str, ModuleSettings] = field(
        default_factory=lambda: {m: ModuleSettings() for m in ("mdr", "xops", "third_party")}
    )
    feeds: tuple[FeedSettings, ...] = ()
    exceptions: tuple[ExceptionSettings, ...] = ()
    suppress: tuple[SuppressSettings, ...] = ()
    proxy: ProxySettings = field(default_factory=ProxySettings)
    dns: DnsSettings = field(default_factory=DnsSettings)
    admin: AdminSettings = field(default_factory=AdminSettings)
    events: EventSettings = field(default_factory=EventSettings)
    sync: SyncSettings = field(default_factory=SyncSettings)
    source: Path | None = None

    def feed(self, name: str) -> FeedSettings | None:
        return next((f for f in self.feeds if f.name == name), None)

    def feed_action(self, feed: FeedSettings) -> str:
        return feed.action or self.modules[feed.module].action


# -- loading ---------------------------------------------------------------------------
def load(path: str | os.PathLike[str] | None = None, *, env: Mapping[str, str] | None = None
         ) -> Settings:
    """Load and validate a config file (``path``, else ``$ATR_CONFIG``); without either,
    the defaults. Relative paths in the file are relative to the file's folder."""
    env = os.environ if env is None else env
    path = path or env.get(DEFAULT_CONFIG_ENV)
    if not path:
        return Settings()
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError("", f"cannot read config {file}: {exc.strerror or exc}") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ConfigError("", f"{file}{where}: not valid YAML: {exc}") from None
    return from_mapping(data or {}, base=file.parent, env=env, source=file)


def from_mapping(data: Any, *, base: Path = Path("."), env: Mapping[str, str] | None = None,
                 source: Path | None = None) -> Settings:
    """Validate an already parsed config mapping."""
    env = os.environ if env is None else env
    r = _Reader(env, base)
    top = r.mapping(data, "", {"index", "modules", "feeds", "exceptions", "suppress", "proxy",
                               "dns", "admin", "events", "sync"})
    modules = {m: ModuleSettings() for m in ("mdr", "xops", "third_party")}
    for name, value in r.mapping(top.get("modules", {}), "modules",
                                 {"mdr", "xops", "third_party"}).items():
        m = r.mapping(value or {}, f"modules.{name}", {"enabled", "action"})
        modules[name] = ModuleSettings(
            enabled=r.boolean(m.get("enabled", True), f"modules.{name}.enabled"),
            action=r.choice(m.get("action", "block"), f"modules.{name}.action",
                            ("block", "monitor")),
        )
    feeds = tuple(r.feed(item, f"feeds[{i}]") for i, item in
                  enumerate(r.sequence(top.get("feeds", []), "feeds")))
    names = [f.name for f in feeds]
    for i, name in enumerate(names):
        if name in names[:i]:
            raise ConfigError(f"feeds[{i}].name", f"{name!r} is used by another feed")
    exceptions = tuple(
        r.exception(item, f"exceptions[{i}]")
        for i, item in enumerate(r.sequence(top.get("exceptions", []), "exceptions"))
    )
    suppress = tuple(
        r.suppress(item, f"suppress[{i}]")
        for i, item in enumerate(r.sequence(top.get("suppress", []), "suppress"))
    )
    return Settings(
        index=r.path(top.get("index", "atr-index.db"), "index"),
        modules=modules, feeds=feeds, exceptions=exceptions, suppress=suppress,
        proxy=r.proxy(top.get("proxy", {})), dns=r.dns(top.get("dns", {})),
        admin=r.admin(top.get("admin", {})), events=r.events(top.get("events", {})),
        sync=r.sync(top.get("sync", {})), source=source,
    )


class _Reader:
    def __init__(self, env: Mapping[str, str], base: Path) -> None:
        self.env = env
        self.base = base

    # scalars
    def mapping(self, value: Any, path: str, keys: set[str]) -> dict[str, Any]:
        if not isinstance(value, Mapping):
            raise ConfigError(path, f"expected a mapping, got {type(value).__name__}")
        for key in value:
            if key not in keys:
                raise ConfigError(_join(path, str(key)),
                                  f"unknown key (expected one of: {', '.join(sorted(keys))})")
        return dict(value)

    def sequence(self, value: Any, path: str) -> list[Any]:
        if value is None:
            return []
        if not isinstance(value, list):
            raise ConfigError(path, f"expected a list, got {type(value).__name__}")
        return value

    def text(self, value: Any, path: str, *, secret: bool = False) -> str:
        if not isinstance(value, str | int | float) or isinstance(value, bool):
            raise ConfigError(path, "expected text")
        text = str(value)
        missing = [m for m in _ENV.findall(text) if m not in self.env]
        if missing:
            raise ConfigError(path, f"environment variable {missing[0]} is not set")
        expanded = _ENV.sub(lambda m: self.env[m.group(1)], text)
        return Secret(expanded) if secret else expanded

    def secret(self, value: Any, path: str) -> Secret:
        return self.text(value, path, secret=True)

    def boolean(self, value: Any, path: str) -> bool:
        if not isinstance(value, bool):
            raise ConfigError(path, "expected true or false")
        return value

    def number(self, value: Any, path: str, *, low: float | None = None,
               high: float | None = None) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(path, "expected a number")
        if (low is not None and value < low) or (high is not None and value > high):
            raise ConfigError(path, f"must be between {low} and {high}")
        return value

    def choice(self, value: Any, path: str, choices: tuple[str, ...]) -> str:
        if value not in choices:
            raise ConfigError(path, f"{value!r} is not one of {', '.join(choices)}")
        return value

    def path(self, value: Any, path: str) -> Path:
        p = Path(self.text(value, path))
        return p if p.is_absolute() else self.base / p

    def networks(self, value: Any, path: str) -> tuple[str, ...]:
        from .indicators import canonical_ip  # late: config must load before indicators

        out = []
        for i, item in enumerate(self.sequence(value, path)):
            try:
                out.append(canonical_ip(str(item))[0])
            except ValueError as exc:
                raise ConfigError(f"{path}[{i}]", str(exc)) from None
        return tuple(out)

    # sections
    def feed(self, value: Any, path: str) -> FeedSettings:
        keys = {"name", "module", "url", "format", "type", "action", "enabled", "order",
                "interval", "auth", "verify_tls", "ca_file", "timeout", "max_bytes", "match",
                "expire_after", "max_shrink", "options", "preset"}
        d = self.mapping(value, path, keys)
        if "preset" in d:
            d = self.preset(d, path)
        if "name" not in d:
            raise ConfigError(path, "a feed needs a name")
        name = self.text(d["name"], f"{path}.name")
        if not _FEED_NAME.match(name):
            raise ConfigError(f"{path}.name",
                              f"{name!r}: use 1-63 letters, digits, '_' or '-'")
        url = None
        if "url" in d:
            url = self.text(d["url"], f"{path}.url")
            scheme = url.split(":", 1)[0].lower()
            if scheme not in ("http", "https", "file") or "://" not in url:
                raise ConfigError(f"{path}.url", f"{url!r}: use an http, https or file URL")
            if scheme == "file":
                local = url[len("file://"):]
                if not Path(local).is_absolute():
                    url = "file://" + str((self.base / local).resolve())
        elif "preset" not in d and d.get("module", "third_party") != "mdr":
            raise ConfigError(path, "a feed needs a url (or a preset)")
        auth = self.auth(d.get("auth", {"type": "none"}), f"{path}.auth")
        options = self.mapping(d.get("options", {}) or {}, f"{path}.options", {
            "column", "delimiter", "comment_prefixes", "has_header", "json_items",
            "json_value", "json_type", "type_map", "json_expiry", "json_threat",
            "json_malware", "json_confidence", "json_reference"})
        from .feeds.formats import FormatOptions  # late: the parsers import the canonicaliser

        FormatOptions.from_mapping(options, f"{path}.options")  # raises naming the bad key
        return FeedSettings(
            name=name,
            module=self.choice(d.get("module", "third_party"), f"{path}.module",
                               ("mdr", "xops", "third_party")),
            url=url,
            format=self.choice(d.get("format", "auto"), f"{path}.format", FORMATS),
            type=self.choice(d.get("type", "auto"), f"{path}.type",
                             ("auto", "ip", "domain", "url")),
            action=self.choice(d["action"], f"{path}.action", ("block", "monitor"))
            if "action" in d else None,
            enabled=self.boolean(d.get("enabled", True), f"{path}.enabled"),
            order=int(self.number(d.get("order", 0), f"{path}.order")),
            interval=parse_duration(d.get("interval", "1h"), f"{path}.interval"),
            auth=auth,
            verify_tls=self.boolean(d.get("verify_tls", True), f"{path}.verify_tls"),
            ca_file=str(self.path(d["ca_file"], f"{path}.ca_file")) if "ca_file" in d else None,
            timeout=parse_duration(d.get("timeout", 30), f"{path}.timeout"),
            max_bytes=parse_size(d.get("max_bytes", 256 * 1024 * 1024), f"{path}.max_bytes"),
            match=self.choice(d.get("match", "subtree"), f"{path}.match", ("subtree", "exact")),
            expire_after=parse_duration(d["expire_after"], f"{path}.expire_after")
            if d.get("expire_after") is not None else None,
            max_shrink=float(self.number(d.get("max_shrink", 0.5), f"{path}.max_shrink",
                                         low=0, high=1)),
            options=options,
            preset=self.text(d["preset"], f"{path}.preset") if "preset" in d else None,
        )

    def preset(self, d: dict[str, Any], path: str) -> dict[str, Any]:
        """A feed that names a preset: the preset's keys, overridden by the feed's own
        (``options`` are merged key by key); the name defaults to the preset's."""
        from .feeds.presets import load_presets  # late: only configs that use presets

        name = self.text(d["preset"], f"{path}.preset")
        presets = load_presets()
        if name not in presets:
            raise ConfigError(f"{path}.preset",
                              f"unknown preset {name!r} (known: {', '.join(sorted(presets))})")
        merged = {**presets[name].feed, **d}
        if isinstance(d.get("options"), Mapping):
            merged["options"] = {**presets[name].feed.get("options", {}), **d["options"]}
        merged.setdefault("name", name)
        return merged

    def auth(self, value: Any, path: str) -> Auth:
        d = self.mapping(value, path, {"type", "user", "password", "token", "name", "value",
                                       "in"})
        kind = self.choice(d.get("type", "none"), f"{path}.type",
                           ("none", "basic", "bearer", "api_key"))
        need = {"basic": ("user", "password"), "bearer": ("token",),
                "api_key": ("name", "value")}.get(kind, ())
        for key in need:
            if key not in d:
                raise ConfigError(f"{path}.{key}", f"required for auth type {kind}")
        return Auth(
            kind=kind,
            user=self.text(d["user"], f"{path}.user") if "user" in d else None,
            password=self.secret(d["password"], f"{path}.password") if "password" in d else None,
            token=self.secret(d["token"], f"{path}.token") if "token" in d else None,
            name=self.text(d["name"], f"{path}.name") if "name" in d else None,
            value=self.secret(d["value"], f"{path}.value") if "value" in d else None,
            send_in=self.choice(d.get("in", "header"), f"{path}.in", ("header", "query")),
        )

    def exception(self, value: Any, path: str) -> ExceptionSettings:
        d = self.mapping(value, path, {"scope", "value", "comment"})
        if "value" not in d:
            raise ConfigError(path, "an exception needs a value")
        scope = self.choice(d.get("scope", "destination"), f"{path}.scope",
                            ("source", "destination"))
        text = self.text(d["value"], f"{path}.value")
        from .indicators import canonical_ip, canonicalize  # late, as in networks()

        try:
            canonical_ip(text) if scope == "source" else canonicalize(text)
        except ValueError as exc:
            raise ConfigError(f"{path}.value", str(exc)) from None
        return ExceptionSettings(
            scope=scope,
            value=text,
            comment=self.text(d["comment"], f"{path}.comment") if "comment" in d else None,
        )

    def suppress(self, value: Any, path: str) -> SuppressSettings:
        d = self.mapping(value, path, {"name", "path", "format"})
        for key in ("name", "path"):
            if key not in d:
                raise ConfigError(f"{path}.{key}", "required")
        return SuppressSettings(
            name=self.text(d["name"], f"{path}.name"),
            path=str(self.path(d["path"], f"{path}.path")),
            format=self.choice(d.get("format", "auto"), f"{path}.format",
                               ("auto", "misp-warninglist", "plain")),
        )

    def proxy(self, value: Any) -> ProxySettings:
        d = self.mapping(value or {}, "proxy", {"listen", "allow_clients", "intercept",
                                               "no_intercept", "fail", "block_page", "certs"})
        default = ProxySettings()
        return ProxySettings(
            listen=parse_hostport(d["listen"], "proxy.listen", 8080) if "listen" in d
            else default.listen,
            allow_clients=self.networks(d["allow_clients"], "proxy.allow_clients")
            if "allow_clients" in d else default.allow_clients,
            intercept=self.choice(d.get("intercept", "auto"), "proxy.intercept",
                                  ("auto", "all", "none")),
            no_intercept=tuple(self.text(v, f"proxy.no_intercept[{i}]") for i, v in
                               enumerate(self.sequence(d.get("no_intercept", []),
                                                       "proxy.no_intercept"))),
            fail=self.choice(d.get("fail", "open"), "proxy.fail", ("open", "closed")),
            block_page=str(self.path(d["block_page"], "proxy.block_page"))
            if d.get("block_page") else None,
            certs=str(self.path(d.get("certs", "certs"), "proxy.certs")),
        )

    def dns(self, value: Any) -> DnsSettings:
        d = self.mapping(value or {}, "dns", {"listen", "upstreams", "allow_clients",
                                             "sinkhole", "sinkhole_address", "sinkhole_ttl",
                                             "timeout", "cache_size", "rate_limit",
                                             "query_log", "event_window"})
        default = DnsSettings()
        sinkhole = self.choice(d.get("sinkhole", "nxdomain"), "dns.sinkhole",
                               ("nxdomain", "nodata", "null", "address", "refused"))
        addresses = tuple(
            self.text(v, f"dns.sinkhole_address[{i}]") for i, v in
            enumerate(self.sequence(d.get("sinkhole_address", []), "dns.sinkhole_address")))
        if sinkhole == "address" and not addresses:
            raise ConfigError("dns.sinkhole_address", "required when dns.sinkhole is address")
        for i, text in enumerate(addresses):
            import ipaddress

            try:
                ipaddress.ip_address(text)
            except ValueError:
                raise ConfigError(f"dns.sinkhole_address[{i}]",
                                  f"{text!r} is not an IPv4 or IPv6 address") from None
        return DnsSettings(
            listen=parse_hostport(d["listen"], "dns.listen", 53) if "listen" in d
            else default.listen,
            upstreams=tuple(parse_hostport(v, f"dns.upstreams[{i}]", 53) for i, v in
                            enumerate(self.sequence(d.get("upstreams", []), "dns.upstreams"))),
            allow_clients=self.networks(d["allow_clients"], "dns.allow_clients")
            if "allow_clients" in d else default.allow_clients,
            sinkhole=sinkhole,
            sinkhole_address=addresses,
            sinkhole_ttl=int(self.number(d.get("sinkhole_ttl", 60), "dns.sinkhole_ttl",
                                         low=0, high=86400)),
            timeout=parse_duration(d.get("timeout", 2.0), "dns.timeout"),
            cache_size=int(self.number(d.get("cache_size", 10_000), "dns.cache_size", low=0)),
            rate_limit=float(self.number(d.get("rate_limit", 0), "dns.rate_limit", low=0)),
            query_log=self.boolean(d.get("query_log", False), "dns.query_log"),
            event_window=float(self.number(d["event_window"], "dns.event_window", low=0))
            if d.get("event_window") is not None else None,
        )

    def admin(self, value: Any) -> AdminSettings:
        d = self.mapping(value or {}, "admin", {"listen", "token"})
        return AdminSettings(
            listen=parse_hostport(d["listen"], "admin.listen", 8081) if "listen" in d
            else AdminSettings().listen,
            token=self.secret(d["token"], "admin.token") if "token" in d else None,
        )

    def sync(self, value: Any) -> SyncSettings:
        d = self.mapping(value or {}, "sync", {"concurrency", "jitter", "retries", "backoff",
                                              "housekeeping", "keep_changes"})
        default = SyncSettings()
        return SyncSettings(
            concurrency=int(self.number(d.get("concurrency", default.concurrency),
                                        "sync.concurrency", low=1, high=64)),
            jitter=float(self.number(d.get("jitter", default.jitter), "sync.jitter",
                                     low=0, high=0.5)),
            retries=int(self.number(d.get("retries", default.retries), "sync.retries",
                                    low=0, high=10)),
            backoff=parse_duration(d.get("backoff", default.backoff), "sync.backoff"),
            housekeeping=parse_duration(d.get("housekeeping", default.housekeeping),
                                        "sync.housekeeping"),
            keep_changes=parse_duration(d.get("keep_changes", default.keep_changes),
                                        "sync.keep_changes"),
        )

    def events(self, value: Any) -> EventSettings:
        d = self.mapping(value or {}, "events", {"jsonl", "syslog", "keep", "max_rows"})
        jsonl = d.get("jsonl", "events.jsonl")
        default = EventSettings()
        return EventSettings(
            jsonl=str(self.path(jsonl, "events.jsonl")) if jsonl else None,
            syslog=self.text(d["syslog"], "events.syslog") if d.get("syslog") else None,
            keep=0.0 if d.get("keep") in (0, "0") else parse_duration(
                d.get("keep", default.keep), "events.keep"),
            max_rows=int(self.number(d.get("max_rows", default.max_rows), "events.max_rows",
                                     low=0)),
        )


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key
