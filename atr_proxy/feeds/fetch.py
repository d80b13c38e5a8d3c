"""Fetching a feed's bytes: HTTP(S) with httpx, or a local file.

What the sync worker gets back is a :class:`Fetched`: the body (decompressed, at most
``max_bytes``), or ``not_modified`` when the source says nothing changed, in which case
there is nothing to parse and nothing to write. Every failure raises :class:`FetchError`
naming the feed and saying what to do; the feed then keeps its last good indicators.

- conditional GET: ``If-None-Match`` / ``If-Modified-Since`` from the last good fetch; a
  ``file://`` feed compares the file's modification time and size instead.
- compression: ``Content-Encoding`` gzip/deflate/br is decoded by httpx; a body that is
  itself a ``.gz`` or a one-file ``.zip`` (served as a download) is unpacked too.
- ``max_bytes`` is enforced while reading, on the decoded bytes (a gzip bomb stops early);
  a gzip stream cut short is an error, and a whole transfer ends after 10 x ``timeout``.
- retries with exponential backoff on timeouts, connection errors, 5xx, 408 and 429.
- TAXII 2.1: the collection's objects endpoint, paged with ``next``, and after the first
  full fetch only what was added after the last ``X-TAXII-Date-Added-Last``.
- MISP feeds: ``manifest.json`` plus one ``<uuid>.json`` per event.
"""

from __future__ import annotations

import asyncio
import gzip
import io
import json
import logging
import re
import ssl
import zipfile
import zlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from email.utils import formatdate
from functools import lru_cache
from pathlib import Path
from urllib.parse import unquote, urljoin, urlsplit

import httpx

from ..config import FeedSettings
from ..errors import FeedError, RejectedFile
from .formats import parse_misp_manifest

log = logging.getLogger("atr_proxy.feeds")

USER_AGENT = "atr-proxy/0.1 (threat feed sync)"
TAXII_MEDIA_TYPE = "application/taxii+json;version=2.1"
MAX_TAXII_PAGES = 1000
MAX_MISP_EVENTS = 20_000
MISP_EVENT_CONCURRENCY = 4
MAX_RETRY_AFTER = 60.0
# ``timeout`` bounds connecting and each read; a whole transfer may take this many times
# it: a server that trickles bytes for ever is cut off instead of holding a sync slot
TRANSFER_TIMEOUTS = 10
_RETRY_STATUS = frozenset({408, 429, 500, 502, 503, 504})
_MANIFEST_HEAD = re.compile(rb'^\s*\{\s*"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-')


class FetchError(FeedError):
    """A feed could not be fetched; ``http_status`` is the last status seen, if any."""

    def __init__(self, feed: str, reason: str, *, http_status: int | None = None,
                 retryable: bool = False) -> None:
        super().__init__(feed, reason)
        self.http_status = http_status
        self.retryable = retryable
        self.retry_after: float | None = None  # seconds, from a Retry-After header


@dataclass
class Fetched:
    """One fetch's outcome."""

    status: str                    # "ok" | "not_modified"
    data: bytes = b""
    format: str | None = None      # the format of ``data`` when fetching decided it
    http_status: int | None = None
    bytes: int = 0                 # decoded bytes received (all pages, all event files)
    etag: str | None = None        # validators to send next time
    last_modified: str | None = None
    cursor: str | None = None      # TAXII: added_after for the next fetch
    incremental: bool = False      # TAXII: ``data`` holds only objects added since ``cursor``
    pages: int = 1
    url: str = ""
    headers: dict[str, str] = field(default_factory=dict, repr=False)

    @property
    def not_modified(self) -> bool:
        return self.status == "not_modified"


Sleep = Callable[[float], Awaitable[None]]


class Fetcher:
    """Fetches feeds; one instance serves every feed of a worker."""

    def __init__(self, *, retries: int = 2, backoff: float = 1.0,
                 user_agent: str = USER_AGENT, sleep: Sleep = asyncio.sleep) -> None:
        self.retries = retries
        self.backoff = backoff
        self.user_agent = user_agent
        self._sleep = sleep

    async def fetch(
        self,
        feed: FeedSettings,
        *,
        etag: str | None = None,
        last_modified: str | None = None,
        cursor: str | None = None,
    ) -> Fetched:
        """Fetch ``feed``; pass the validators of the last good fetch for a conditional
        request (None for an unconditional one). Raises :class:`FetchError`."""
        if not feed.url:
            raise FetchError(feed.name, "has no url to fetch")
        scheme = urlsplit(feed.url).scheme.lower()
        if scheme == "file":
            return await asyncio.to_thread(_read_file, feed, etag)
        if scheme not in ("http", "https"):
            raise FetchError(feed.name, f"cannot fetch {feed.url!r}: use http, https or file")
        async with self._client(feed) as client:
            if feed.format == "taxii2":
                return await self._taxii(client, feed, cursor)
            if feed.format in ("misp", "auto") and _is_manifest_url(feed.url):
                return await self._misp_feed(client, feed, feed.url, etag, last_modified)
            got = await self._get(client, feed, feed.url, etag=etag, last_modified=last_modified)
            if got.not_modified:
                return got
            if feed.format in ("misp", "auto") and _MANIFEST_HEAD.match(got.data[:200]):
                # a manifest behind a URL that does not say so: its events sit beside it
                return await self._misp_feed(client, feed, feed.url, None, None, got)
            got.data = _unpack(feed, got.data)
            return got

    # -- HTTP ------------------------------------------------------------------------
    def _client(self, feed: FeedSettings) -> httpx.AsyncClient:
        try:
            verify = _tls_context(feed.verify_tls, feed.ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise FetchError(feed.name, f"cannot load ca_file {feed.ca_file}: {exc}") from None
        headers = {"User-Agent": self.user_agent}
        params: dict[str, str] = {}
        auth: httpx.Auth | None = None
        a = feed.auth
        if a.kind == "basic":
            auth = httpx.BasicAuth(a.user or "", a.password.reveal() if a.password else "")
        elif a.kind == "bearer" and a.token is not None:
            headers["Authorization"] = f"Bearer {a.token.reveal()}"
        elif a.kind == "api_key" and a.name and a.value is not None:
            if a.send_in == "query":
                params[a.name] = a.value.reveal()
            else:
                headers[a.name] = a.value.reveal()
        return httpx.AsyncClient(
            verify=verify, auth=auth, headers=headers, params=params,
            timeout=httpx.Timeout(feed.timeout), follow_redirects=True, max_redirects=5,
        )

    async def _get(
        self,
        client: httpx.AsyncClient,
        feed: FeedSettings,
        url: str,
        *,
        etag: str | None = None,
        last_modified: str | None = None,
        headers: dict[str, str] | None = None,
        params: dict[str, str] | None = None,
        limit: int | None = None,
    ) -> Fetched:
        """One GET with retries; the body is streamed and cut off past ``limit``."""
        limit = feed.max_bytes if limit is None else limit
        request_headers = dict(headers or {})
        if etag:
            request_headers["If-None-Match"] = etag
        if last_modified:
            request_headers["If-Modified-Since"] = last_modified
        attempt = 0
        while True:
            try:
                return await self._get_once(client, feed, url, request_headers, params, limit)
            except FetchError as exc:
                if not exc.retryable or attempt >= self.retries:
                    raise
                delay = exc.retry_after or self.backoff * (2 ** attempt)
                attempt += 1
                log.info("feed %s: %s; retry %d of %d in %.1fs", feed.name, exc.reason,
                         attempt, self.retries, delay)
                await self._sleep(delay)

    async def _get_once(self, client: httpx.AsyncClient, feed: FeedSettings, url: str,
                        headers: dict[str, str], params: dict[str, str] | None,
                        limit: int) -> Fetched:
        shown = redact_url(url)
        budget = feed.timeout * TRANSFER_TIMEOUTS
        try:
            async with asyncio.timeout(budget), \
                    client.stream("GET", url, headers=headers, params=params) as resp:
                status = resp.status_code
                if status == 304:
                    return Fetched("not_modified", http_status=304, url=shown,
                                   etag=headers.get("If-None-Match"),
                                   last_modified=headers.get("If-Modified-Since"))
                if not 200 <= status < 300:
                    raise _status_error(feed, resp, shown)
                length = resp.headers.get("Content-Length")
                if (length and length.isdigit() and int(length) > limit
                        and not resp.headers.get("Content-Encoding")):
                    raise FetchError(feed.name, f"{shown} is {int(length)} bytes, more than"
                                     f" max_bytes {limit}; raise max_bytes if this is expected",
                                     http_status=status)
                chunks, total = [], 0
                # gzip is inflated here, not by httpx: its decoder accepts a stream cut
                # short (half a list would pass as the whole feed); zlib's eof tells
                inflater = None
                if resp.headers.get("Content-Encoding", "").strip().lower() in (
                        "gzip", "x-gzip"):
                    inflater = zlib.decompressobj(zlib.MAX_WBITS | 16)
                stream = resp.aiter_raw() if inflater else resp.aiter_bytes()
                async for data in stream:
                    while data:
                        if inflater is None:
                            chunk, data = data, b""
                        else:
                            try:
                                chunk = inflater.decompress(data, limit - total + 1)
                            except zlib.error as exc:
                                raise httpx.DecodingError(str(exc)) from None
                            data = inflater.unconsumed_tail
                        total += len(chunk)
                        if total > limit:
                            raise FetchError(feed.name, f"{shown} sent more than max_bytes"
                                             f" {limit} bytes; stopped reading (raise"
                                             " max_bytes if this is expected)",
                                             http_status=status)
                        chunks.append(chunk)
                if inflater is not None and not inflater.eof:
                    raise FetchError(feed.name, f"{shown}: the gzip body is truncated (the"
                                     " compressed stream ends early); the feed keeps its"
                                     " indicators", http_status=status, retryable=True)
                return Fetched(
                    "ok", b"".join(chunks), http_status=status, bytes=total, url=shown,
                    etag=resp.headers.get("ETag"),
                    last_modified=resp.headers.get("Last-Modified"),
                    headers={k.lower(): v for k, v in resp.headers.items()},
                )
        except TimeoutError:
            raise FetchError(feed.name, f"{shown}: timed out: the transfer took more than"
                             f" {budget:g}s ({TRANSFER_TIMEOUTS} x timeout); the feed keeps"
                             " its indicators", retryable=True) from None
        except httpx.TimeoutException as exc:
            raise FetchError(feed.name, f"{shown}: timed out after {feed.timeout:g}s"
                             f" ({type(exc).__name__}); the feed keeps its indicators",
                             retryable=True) from None
        except httpx.ConnectError as exc:
            text = str(exc)
            if "CERTIFICATE_VERIFY_FAILED" in text or "certificate verify failed" in text:
                raise FetchError(feed.name, f"{shown}: TLS certificate verification failed"
                                 f" ({_short(text)}); set ca_file to the issuer's certificate,"
                                 " or verify_tls: false for a server you trust") from None
            raise FetchError(feed.name, f"{shown}: cannot connect ({_short(text)})",
                             retryable=True) from None
        except httpx.RemoteProtocolError as exc:
            raise FetchError(feed.name, f"{shown}: the transfer broke off ({_short(str(exc))});"
                             " the body was incomplete", retryable=True) from None
        except httpx.DecodingError as exc:
            raise FetchError(feed.name, f"{shown}: cannot decode the compressed body"
                             f" ({_short(str(exc))})", retryable=True) from None
        except httpx.TooManyRedirects:
            raise FetchError(feed.name, f"{shown}: too many redirects") from None
        except httpx.HTTPError as exc:
            raise FetchError(feed.name, f"{shown}: {type(exc).__name__}: {_short(str(exc))}",
                             retryable=True) from None

    # -- TAXII 2.1 -------------------------------------------------------------------
    async def _taxii(self, client: httpx.AsyncClient, feed: FeedSettings,
                     cursor: str | None) -> Fetched:
        url = feed.url or ""
        path = urlsplit(url).path.rstrip("/")
        if not path.endswith("/objects"):
            url = url.rstrip("/") + "/objects/"
        headers = {"Accept": TAXII_MEDIA_TYPE}
        objects: list = []
        total = 0
        newest = cursor
        next_token: str | None = None
        last_status = None
        for page in range(1, MAX_TAXII_PAGES + 1):
            params = {}
            if cursor:
                params["added_after"] = cursor
            if next_token:
                params["next"] = next_token
            got = await self._get(client, feed, url, headers=headers, params=params,
                                  limit=feed.max_bytes - total)
            total += got.bytes
            last_status = got.http_status
            try:
                envelope = json.loads(got.data or b"{}")
            except ValueError as exc:
                raise FetchError(feed.name, f"{got.url}: page {page} is not a TAXII envelope"
                                 f" (not JSON: {exc})", http_status=got.http_status) from None
            if not isinstance(envelope, dict) or not isinstance(envelope.get("objects", []), list):
                raise FetchError(feed.name, f"{got.url}: page {page} is not a TAXII envelope",
                                 http_status=got.http_status)
            objects.extend(envelope.get("objects", []))
            added_last = got.headers.get("x-taxii-date-added-last")
            if added_last and (newest is None or added_last > newest):
                newest = added_last
            token = envelope.get("next")
            if envelope.get("more") is True and token:
                next_token = str(token)
                continue
            break
        else:
            raise FetchError(feed.name, f"more than {MAX_TAXII_PAGES} TAXII pages; refused")
        if cursor and not objects:
            return Fetched("not_modified", http_status=last_status, bytes=total,
                           cursor=cursor, incremental=True, pages=page, url=redact_url(url))
        data = json.dumps({"type": "bundle", "objects": objects}).encode()
        return Fetched("ok", data, format="stix2", http_status=last_status, bytes=total,
                       cursor=newest, incremental=cursor is not None, pages=page,
                       url=redact_url(url))

    # -- MISP feeds ------------------------------------------------------------------
    async def _misp_feed(self, client: httpx.AsyncClient, feed: FeedSettings, url: str,
                         etag: str | None, last_modified: str | None,
                         manifest: Fetched | None = None) -> Fetched:
        if not urlsplit(url).path.endswith(".json"):
            url = url.rstrip("/") + "/manifest.json"
        if manifest is None:
            manifest = await self._get(client, feed, url, etag=etag, last_modified=last_modified)
            if manifest.not_modified:
                return manifest
        try:
            uuids = parse_misp_manifest(manifest.data, source=redact_url(url))
        except RejectedFile as exc:
            raise FetchError(feed.name, str(exc), http_status=manifest.http_status) from None
        if len(uuids) > MAX_MISP_EVENTS:
            raise FetchError(feed.name, f"the manifest lists {len(uuids)} events, more than"
                             f" {MAX_MISP_EVENTS}; refused")
        total = manifest.bytes
        gate = asyncio.Semaphore(MISP_EVENT_CONCURRENCY)
        budget = [feed.max_bytes - total]

        async def event(uuid: str) -> bytes:
            async with gate:
                if budget[0] <= 0:
                    raise FetchError(feed.name, f"the events exceed max_bytes {feed.max_bytes}")
                got = await self._get(client, feed, urljoin(url, f"{uuid}.json"),
                                      limit=budget[0])
                budget[0] -= got.bytes
                try:
                    doc = json.loads(got.data)
                except ValueError as exc:
                    raise FetchError(feed.name, f"{got.url}: not JSON ({exc})") from None
                if not isinstance(doc, dict):
                    raise FetchError(feed.name, f"{got.url}: not a MISP event")
                return got.data.strip()

        bodies = await asyncio.gather(*(event(u) for u in uuids))
        total = feed.max_bytes - budget[0]
        # each event file is {"Event": {...}}: exactly an item of a MISP search response
        data = b'{"response": [' + b",".join(bodies) + b"]}"
        return Fetched("ok", data, format="misp", http_status=manifest.http_status, bytes=total,
                       etag=manifest.etag, last_modified=manifest.last_modified,
                       pages=1 + len(uuids), url=redact_url(url))


# -- helpers -----------------------------------------------------------------------------
@lru_cache(maxsize=32)
def _tls_context(verify: bool, ca_file: str | None) -> ssl.SSLContext:
    """One TLS context per setting, made once: loading the system's CA certificates costs
    tens of milliseconds, more than a whole 304 re-sync should."""
    if not verify:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return context
    return ssl.create_default_context(cafile=ca_file) if ca_file else \
        ssl.create_default_context()


def _status_error(feed: FeedSettings, resp: httpx.Response, shown: str) -> FetchError:
    status = resp.status_code
    hint = {
        401: "check the feed's auth settings",
        403: "access refused: check auth, or whether the vendor wants a key",
        404: "check the url",
        429: "the server is rate limiting: lengthen the interval",
    }.get(status, "the server had a problem" if status >= 500 else "")
    error = FetchError(feed.name, f"{shown}: HTTP {status} {resp.reason_phrase}"
                       + (f"; {hint}" if hint else ""), http_status=status,
                       retryable=status in _RETRY_STATUS)
    retry_after = resp.headers.get("Retry-After", "")
    if retry_after.isdigit():
        error.retry_after = min(float(retry_after), MAX_RETRY_AFTER)
    return error


def _is_manifest_url(url: str) -> bool:
    path = urlsplit(url).path
    return path.endswith("/manifest.json") or path == "manifest.json"


def redact_url(url: str) -> str:
    """The URL without its query string or user info (where an API key may sit)."""
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    return f"{parts.scheme}://{host}{parts.path}" + ("?…" if parts.query else "")


def _short(text: str, limit: int = 200) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _unpack(feed: FeedSettings, data: bytes) -> bytes:
    """A body that is itself a gzip file or a one-member zip archive, unpacked (bounded)."""
    if data[:2] == b"\x1f\x8b":
        out = io.BytesIO()
        try:
            with gzip.GzipFile(fileobj=io.BytesIO(data)) as packed:
                while chunk := packed.read(1 << 20):
                    out.write(chunk)
                    if out.tell() > feed.max_bytes:
                        raise FetchError(feed.name, f"the gzip body unpacks to more than"
                                         f" max_bytes {feed.max_bytes}")
        except (OSError, EOFError, zlib.error) as exc:
            raise FetchError(feed.name, f"the body looks gzipped but does not unpack: {exc}") \
                from None
        return out.getvalue()
    if data[:4] == b"PK\x03\x04":
        try:
            with zipfile.ZipFile(io.BytesIO(data)) as archive:
                members = [m for m in archive.infolist() if not m.is_dir()]
                if len(members) != 1:
                    raise FetchError(feed.name, f"a zip archive with {len(members)} files;"
                                     " expected exactly one")
                if members[0].file_size > feed.max_bytes:
                    raise FetchError(feed.name, f"the zip member is {members[0].file_size}"
                                     f" bytes, more than max_bytes {feed.max_bytes}")
                return archive.read(members[0])
        except zipfile.BadZipFile as exc:
            raise FetchError(feed.name, f"a broken zip archive: {exc}") from None
    return data


def _read_file(feed: FeedSettings, etag: str | None) -> Fetched:
    """A ``file://`` feed: its mtime and size stand in for an ETag."""
    path = Path(unquote(urlsplit(feed.url or "").path))
    try:
        stat = path.stat()
    except OSError as exc:
        raise FetchError(feed.name, f"cannot read {path}: {exc.strerror or exc}") from None
    validator = f'"file-{stat.st_mtime_ns:x}-{stat.st_size:x}"'
    modified = formatdate(stat.st_mtime, usegmt=True)
    if etag is not None and etag == validator:
        return Fetched("not_modified", etag=validator, last_modified=modified,
                       url=f"file://{path}")
    if stat.st_size > feed.max_bytes:
        raise FetchError(feed.name, f"{path} is {stat.st_size} bytes, more than max_bytes"
                         f" {feed.max_bytes}")
    try:
        with open(path, "rb") as handle:
            data = handle.read(feed.max_bytes + 1)
    except OSError as exc:
        raise FetchError(feed.name, f"cannot read {path}: {exc.strerror or exc}") from None
    if len(data) > feed.max_bytes:
        raise FetchError(feed.name, f"{path} grew past max_bytes {feed.max_bytes} while read")
    size = len(data)
    return Fetched("ok", _unpack(feed, data), bytes=size, etag=validator,
                   last_modified=modified, url=f"file://{path}")

