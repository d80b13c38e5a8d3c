"""The dashboard: one page served by the admin app, with no outside resources.

- ``/ui/`` is the login form until the admin token is given, then the dashboard. The page
  is static HTML, CSS and JavaScript from ``static/``; the script builds every table with
  ``textContent``, so whatever a feed or a client sends shows as text, never as markup. A
  Content-Security-Policy allows scripts, styles and connections from this origin only.
- A login is a cookie (HttpOnly, SameSite=Strict, 12 h): an HMAC of its expiry keyed by the
  admin token, so it needs no server-side store and dies when the token changes.
- The page talks to ``/ui/api/...``, which checks the cookie (and, for anything but GET,
  the CSRF token from the page's ``<meta>`` in an ``X-CSRF-Token`` header, plus the
  Origin when the browser sends one) and then hands the request to the token-protected
  ``/api/v1/...`` endpoint of the same app, with the admin token. The dashboard thus uses
  exactly the API that scripts use, guards included.

It adds to the API what only the dashboard needed so far (token-protected like the rest):
``GET /api/v1/events`` (filters), ``GET /api/v1/overview`` (totals, time series, top
lists), ``PATCH /api/v1/feeds/{name}`` (``{"enabled": bool}``) and
``POST /api/v1/feeds/{name}/test`` (fetch and parse, store nothing).

``operator_routes()`` is the one hook ``create_app`` calls: the dashboard, ``/metrics`` and
``/proxy.pac``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import html
import json
import secrets
import sqlite3
import time
from pathlib import Path
from string import Template
from typing import Any
from urllib.parse import parse_qs, urlsplit

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.types import Receive, Scope, Send

STATIC = Path(__file__).with_name("static")
STATIC_TYPES = {".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8",
                ".svg": "image/svg+xml"}
API = "/api/v1"
SESSION_COOKIE = "atr_session"
SESSION_TTL = 12 * 3600
CSRF_HEADER = "x-csrf-token"
MAX_EVENTS = 1000
EVENT_FILTERS = {"module": "module", "feed": "feed", "client": "client_ip", "action": "action",
                 "verdict": "verdict", "traffic": "traffic", "source": "source"}
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:;"
        " connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",  # no-referrer would send "Origin: null" on POSTs
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}


def operator_routes() -> list[BaseRoute]:
    """Everything the operator surface adds to the admin app."""
    from .metrics import metrics_routes
    from .pac import pac_routes

    return [*dashboard_routes(), *metrics_routes(), *pac_routes()]


def dashboard_routes() -> list[BaseRoute]:
    return [
        Route("/", lambda request: RedirectResponse("/ui/", status_code=303), methods=["GET"]),
        Route("/ui", lambda request: RedirectResponse("/ui/", status_code=303), methods=["GET"]),
        Route("/ui/", page, methods=["GET"]),
        Route("/ui/login", login, methods=["POST"]),
        Route("/ui/logout", logout, methods=["POST"]),
        Route("/ui/api/{path:path}", UiApi(), methods=["GET", "POST", "PATCH", "DELETE"]),
        Route("/ui/static/{name}", static_file, methods=["GET"]),
        Route(f"{API}/events", events_list, methods=["GET"]),
        Route(f"{API}/overview", overview, methods=["GET"]),
        Route(f"{API}/feeds/{{name}}", feed_enable, methods=["PATCH"]),
        Route(f"{API}/feeds/{{name}}/test", feed_test, methods=["POST"]),
    ]


# -- sessions ------------------------------------------------------------------------------
def _key(token: str) -> bytes:
    return hashlib.sha256(b"atr-proxy dashboard\0" + token.encode()).digest()


def _mac(token: str, purpose: str, text: str) -> str:
    digest = hmac.new(_key(token), f"{purpose}\0{text}".encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")


def new_session(token: str, now: float | None = None) -> str:
    """A session cookie value: expiry, nonce and their MAC."""
    expiry = int((time.time() if now is None else now) + SESSION_TTL)
    body = f"{expiry}.{secrets.token_urlsafe(9)}"
    return f"{body}.{_mac(token, 'session', body)}"


def session_valid(token: str | None, value: str | None, now: float | None = None) -> bool:
    if not token or not value or value.count(".") != 2:
        return False
    body, _, mac = value.rpartition(".")
    if not hmac.compare_digest(mac, _mac(token, "session", body)):
        return False
    expiry = body.split(".", 1)[0]
    return expiry.isdigit() and int(expiry) > (time.time() if now is None else now)


def csrf_token(token: str, session: str) -> str:
    """The CSRF token that goes with one session (never stored, recomputed)."""
    return _mac(token, "csrf", session)


def _same_origin(request: Request) -> bool:
    """The Origin header, when the browser sends one, names this server."""
    origin = request.headers.get("origin")
    if not origin:
        return True  # old browsers and same-origin GETs; the CSRF token still has to match
    if origin == "null":
        return False
    return urlsplit(origin).netloc.lower() == request.headers.get("host", "").lower()


def _token(request: Request) -> str | None:
    return request.app.state.atr.token


# -- pages -------------------------------------------------------------------------------
def _template(name: str) -> Template:
    return Template((STATIC / name).read_text(encoding="utf-8"))


def _html(body: str, status: int = 200, **headers: str) -> HTMLResponse:
    return HTMLResponse(body, status_code=status, headers={**SECURITY_HEADERS, **headers})


def _login_page(error: str = "", status: int = 200) -> HTMLResponse:
    note = f'<p class="error" role="alert">{html.escape(error)}</p>' if error else ""
    return _html(_template("login.html").substitute(error=note), status)


async def static_file(request: Request) -> Response:
    """The page's script, style sheet and icon (the HTML templates are not served raw)."""
    name = request.path_params["name"]
    path = STATIC / name
    kind = STATIC_TYPES.get(path.suffix)
    if kind is None or "/" in name or name.startswith(".") or not path.is_file():
        return Response("not found", status_code=404, media_type="text/plain")
    return Response(path.read_bytes(), media_type=kind,
                    headers={"X-Content-Type-Options": "nosniff", "Cache-Control": "no-cache"})


async def page(request: Request) -> Response:
    token = _token(request)
    session = request.cookies.get(SESSION_COOKIE)
    if not token:
        return _login_page("No admin token is configured: set admin.token or"
                           " ATR_ADMIN_TOKEN and restart the worker.", 503)
    if not session_valid(token, session):
        return _login_page()
    return _html(_template("dashboard.html").substitute(
        csrf=html.escape(csrf_token(token, session), quote=True)))


async def login(request: Request) -> Response:
    token = _token(request)
    if not _same_origin(request):
        return _login_page("This login did not come from the dashboard page.", 403)
    body = (await request.body())[:4096].decode("utf-8", "replace")
    given = (parse_qs(body).get("token") or [""])[0].strip()
    if not token or not given or not hmac.compare_digest(given.encode(), token.encode()):
        return _login_page("Wrong admin token." if token else
                           "No admin token is configured: set admin.token or ATR_ADMIN_TOKEN.",
                           401)
    response = RedirectResponse("/ui/", status_code=303)
    response.set_cookie(SESSION_COOKIE, new_session(token), max_age=SESSION_TTL, path="/ui",
                        httponly=True, samesite="strict",
                        secure=request.url.scheme == "https")
    return response


async def logout(request: Request) -> Response:
    session = request.cookies.get(SESSION_COOKIE)
    token = _token(request)
    if session_valid(token, session) and _csrf_ok(request, token, session):
        response = RedirectResponse("/ui/", status_code=303)
        response.delete_cookie(SESSION_COOKIE, path="/ui")
        return response
    return JSONResponse({"error": "log out from the dashboard page"}, status_code=403)


def _csrf_ok(request: Request, token: str, session: str) -> bool:
    given = request.headers.get(CSRF_HEADER)  # a header: no other site can set one
    return bool(given) and _same_origin(request) and hmac.compare_digest(
        given.encode(), csrf_token(token, session).encode())


class UiApi:
    """``/ui/api/<path>``: the dashboard's session in, the admin API with its token out."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive)
        token = _token(request)
        session = request.cookies.get(SESSION_COOKIE)
        if not session_valid(token, session):
            await JSONResponse({"error": "not logged in (or the session expired): reload"
                                         " the page and log in"}, status_code=401)(
                scope, receive, send)
            return
        if request.method not in ("GET", "HEAD") and not _csrf_ok(request, token, session):
            await JSONResponse({"error": "CSRF check failed: use the dashboard page"},
                               status_code=403)(scope, receive, send)
            return
        rest = scope["path_params"]["path"]
        path = f"{API}/{rest}"
        headers = [(k, v) for k, v in scope["headers"]
                   if k not in (b"cookie", b"authorization", b"x-atr-token", b"x-csrf-token")]
        headers.append((b"authorization", b"Bearer " + token.encode()))
        inner = {**scope, "path": path, "raw_path": path.encode(), "root_path": "",
                 "headers": headers}
        inner.pop("path_params", None)
        inner.pop("endpoint", None)
        inner.pop("route", None)
        await scope["app"](inner, receive, send)


# -- API additions ------------------------------------------------------------------------
def _ctx(request: Request) -> Any:
    return request.app.state.atr


async def _db(request: Request, fn: Any, *args: Any) -> Any:
    ctx = _ctx(request)
    return await run_in_threadpool(lambda: fn(ctx.db(), *args))


def _bad(message: str, status: int = 400) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def _int(request: Request, name: str, default: int, low: int, high: int) -> int:
    text = request.query_params.get(name)
    if text is None or text == "":
        return default
    if not text.lstrip("-").isdigit() or not low <= int(text) <= high:
        raise ValueError(f"{name} must be a whole number from {low} to {high}")
    return int(text)


async def events_list(request: Request) -> Response:
    """Events newest first: ``?module=&feed=&client=&action=&verdict=&traffic=&source=
    &limit=``."""
    from ..events import recent

    try:
        limit = _int(request, "limit", 100, 1, MAX_EVENTS)
    except ValueError as exc:
        return _bad(str(exc))
    filters = {column: request.query_params.get(name) or None
               for name, column in EVENT_FILTERS.items()}
    rows = await _db(request, lambda conn: recent(conn, limit=limit, **filters))
    return JSONResponse({"events": rows})


def overview_data(conn: sqlite3.Connection, hours: int, now: float | None = None,
                  buckets: int = 48) -> dict[str, Any]:
    """Totals, blocks and monitored hits over time, and the top lists, for the last
    ``hours``. Hits are events with an indicator (system records are left out)."""
    now = time.time() if now is None else now
    since = now - hours * 3600
    width = hours * 3600 / buckets
    hit = "at >= ? AND indicator IS NOT NULL"
    conn.execute("BEGIN")  # one read transaction: the numbers agree with each other
    try:
        feeds = conn.execute(
            "SELECT module, COUNT(*), SUM(enabled), SUM(CASE WHEN enabled THEN indicator_count"
            " ELSE 0 END) FROM feeds GROUP BY module").fetchall()
        totals = {row[0]: row[1:] for row in conn.execute(
            f"SELECT verdict, COUNT(*) FROM events WHERE {hit} GROUP BY verdict", (since,))}
        by_traffic = dict(conn.execute(
            f"SELECT traffic, COUNT(*) FROM events WHERE {hit} GROUP BY traffic", (since,)))
        series = {"block": [0] * buckets, "monitor": [0] * buckets}
        for bucket, verdict, n in conn.execute(
                f"SELECT CAST((at - ?) / ? AS INTEGER), verdict, COUNT(*) FROM events"
                f" WHERE {hit} GROUP BY 1, 2", (since, width, since)):
            key = "block" if verdict == "block" else "monitor"
            series[key][min(max(int(bucket), 0), buckets - 1)] += n
        top_blocked = [dict(zip(("indicator", "kind", "feed", "module", "hits", "last"), r,
                                strict=True)) for r in conn.execute(
            f"SELECT indicator, kind, feed, module, COUNT(*), MAX(at) FROM events WHERE {hit}"
            " AND verdict = 'block' GROUP BY indicator, kind, feed ORDER BY 5 DESC, 6 DESC"
            " LIMIT 10", (since,))]
        top_clients = [dict(zip(("client", "hits", "blocks", "last"), r, strict=True))
                       for r in conn.execute(
            f"SELECT client_ip, COUNT(*), SUM(verdict = 'block'), MAX(at) FROM events"
            f" WHERE {hit} GROUP BY client_ip ORDER BY 2 DESC, 4 DESC LIMIT 10", (since,))]
        per_feed = [dict(zip(("feed", "module", "blocks", "monitored"), r, strict=True))
                    for r in conn.execute(
            f"SELECT feed, module, SUM(verdict = 'block'), SUM(verdict != 'block')"
            f" FROM events WHERE {hit} GROUP BY feed, module ORDER BY 3 + 4 DESC", (since,))]
        per_indicator = [dict(zip(("indicator", "kind", "feed", "action", "hits", "last"), r,
                                  strict=True)) for r in conn.execute(
            f"SELECT indicator, kind, feed, action, COUNT(*), MAX(at) FROM events WHERE {hit}"
            " GROUP BY indicator, kind, feed, action ORDER BY 5 DESC, 6 DESC LIMIT 50",
            (since,))]
    finally:
        conn.execute("COMMIT")
    return {
        "hours": hours, "since": since, "now": now, "bucket_seconds": width,
        "indicators": {m: {"feeds": n, "enabled_feeds": int(e or 0), "indicators": int(c or 0)}
                       for m, n, e, c in feeds},
        "totals": {"blocks": int(totals.get("block", (0,))[0]),
                   "monitored": sum(int(v[0]) for k, v in totals.items() if k != "block"),
                   "by_traffic": by_traffic},
        "series": series,
        "top_blocked": top_blocked,
        "top_clients": top_clients,
        "per_feed": per_feed,
        "per_indicator": per_indicator,
    }


async def overview(request: Request) -> Response:
    try:
        hours = _int(request, "hours", 24, 1, 24 * 31)
    except ValueError as exc:
        return _bad(str(exc))
    data = await _db(request, overview_data, hours)
    snap = _ctx(request).watcher.snapshot
    data["snapshot"] = {"generation": snap.generation, "indicators": snap.count()}
    return JSONResponse(data)


async def feed_enable(request: Request) -> Response:
    """Enable or disable a feed now. For a configured feed this lasts until the worker
    restarts, when ``atr.yaml`` decides again (set ``enabled:`` there to keep it)."""
    import dataclasses

    from ..index.writer import FeedSpec, IndexWriter

    name = request.path_params["name"]
    try:
        body = json.loads(await request.body() or b"null")
    except ValueError:
        body = None
    if not isinstance(body, dict) or not isinstance(body.get("enabled"), bool):
        return _bad('expected {"enabled": true|false}')
    enabled = body["enabled"]
    worker = _ctx(request).worker
    if worker is not None and name in worker.feeds:
        # the worker writes the feed's settings at each sync: change what it writes too
        worker.feeds[name] = dataclasses.replace(worker.feeds[name], enabled=enabled)

    def write(conn: sqlite3.Connection) -> dict[str, Any] | None:
        row = conn.execute("SELECT module, type, action, position, match, source FROM feeds"
                           " WHERE name=?", (name,)).fetchone()
        if row is None:
            return None
        IndexWriter(conn).upsert_feed(FeedSpec(
            name=name, module=row[0], type=row[1], action=row[2], position=row[3],
            enabled=enabled, match=row[4], source=json.loads(row[5] or "{}")))
        return {"feed": name, "enabled": enabled}

    result = await _db(request, write)
    if result is None:
        return _bad(f"no feed named {name!r}", 404)
    return JSONResponse(result)


async def feed_test(request: Request) -> Response:
    """Fetch and parse a configured feed now, store nothing: what would a sync get?"""
    from ..errors import AtrError
    from ..feeds.fetch import Fetcher, FetchError
    from ..feeds.formats import FormatOptions, parse

    name = request.path_params["name"]
    settings = _ctx(request).settings
    feed = settings.feed(name)
    if feed is None or not feed.url:
        return _bad(f"no configured feed named {name!r} with a url", 404)
    started = time.perf_counter()
    try:
        got = await Fetcher(retries=0).fetch(feed)
        fmt = got.format or ("stix2" if feed.format == "taxii2" else feed.format)
        options = FormatOptions.from_mapping(feed.options, f"{feed.name}.options")
        result = await run_in_threadpool(
            lambda: parse(got.data, fmt, kind=feed.type, options=options, source=got.url))
    except (FetchError, AtrError) as exc:
        return JSONResponse({"feed": name, "status": "error", "error": str(exc),
                             "seconds": round(time.perf_counter() - started, 3)})
    return JSONResponse({
        "feed": name, "status": "ok", "url": got.url, "http_status": got.http_status,
        "bytes": got.bytes, "format": result.format, "indicators": len(result.indicators),
        "rejected": result.rejected,
        "rejected_samples": [list(s) for s in result.rejected_samples[:5]],
        "sample": [{"type": i.kind, "value": i.value} for i in result.indicators[:5]],
        "seconds": round(time.perf_counter() - started, 3),
    })
