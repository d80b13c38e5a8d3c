"""The admin HTTP API, served by uvicorn inside the feed-sync worker process.

``create_app(settings, ...)`` builds a Starlette app; later parts (a dashboard, /metrics)
add their routes to the same app through ``extra_routes`` or ``app.router``. Two guards
wrap every request, in this order:

1. source check: a client whose address is an indicator with action block is refused with
   403 before anything else, authentication included, and an event is recorded
   (source ``admin``, traffic ``system``): the admin API is traffic to our own service;
2. token: ``Authorization: Bearer <token>`` (or ``X-ATR-Token``) on every ``/api/`` path
   but ``/api/v1/health``.

Endpoints (JSON in, JSON out; errors are ``{"error": ...}``):

- ``GET /api/v1/health``
- ``GET /api/v1/feeds``, ``GET /api/v1/feeds/{name}``, ``POST /api/v1/feeds/{name}/sync``
- ``POST /api/v1/mdr/indicators`` (a list of ``{type, value, action, ttl|expires_at,
  comment, reference, match}``), ``GET`` with ``q``, ``action``, ``type``, ``limit``,
  ``offset``; ``DELETE /api/v1/mdr/indicators/{id}``, ``DELETE ...?value=V[&type=T]``
- ``GET|POST /api/v1/exceptions``, ``DELETE /api/v1/exceptions/{id}``
- ``GET /api/v1/lookup?value=V[&value=W][&client=IP]`` (or POST ``{"values", "client"}``)

A pushed indicator is committed to the index, with its change-log entry, before the
response is sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import sqlite3
import threading
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from ..config import Settings
from ..errors import AtrError, IndexUnavailable
from ..index.db import connect

log = logging.getLogger("atr_proxy.admin")

API = "/api/v1"
PUBLIC_PATHS = frozenset({f"{API}/health"})
MAX_BODY = 8 * 1024 * 1024
MAX_PAGE = 1000
DB_BUSY_MS = 30_000  # a push may wait behind a big feed's transaction


@dataclass
class AdminContext:
    """What the handlers share; ``app.state.atr``."""

    settings: Settings
    index_path: Path
    token: str | None
    watcher: Any = None          # atr_proxy.index.watch.SnapshotWatcher
    events: Any = None           # atr_proxy.events.EventWriter
    worker: Any = None           # atr_proxy.feeds.sync.SyncWorker, when in the worker
    _local: threading.local = field(default_factory=threading.local)
    _conns: list[sqlite3.Connection] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def db(self) -> sqlite3.Connection:
        """This thread's index connection (handlers run in a thread pool)."""
        conn = getattr(self._local, "conn", None)
        if conn is not None and conn.replaced():
            # the index file was renamed over: every thread's connection lets go of the old
            # file (its WAL must be released before the new file may be read), this one
            # reopens now, the others on their next request
            self._close_replaced()
            conn = None
        if conn is None:
            conn = connect(self.index_path)
            conn.execute(f"PRAGMA busy_timeout={DB_BUSY_MS}")
            self._local.conn = conn
            with self._lock:
                self._conns.append(conn)
        return conn

    def _close_replaced(self) -> None:
        with self._lock:
            for old in [c for c in self._conns if c.replaced()]:
                with contextlib.suppress(sqlite3.Error):
                    old.close()
                self._conns.remove(old)

    def close(self) -> None:
        with self._lock:
            for conn in self._conns:
                with contextlib.suppress(sqlite3.Error):
                    conn.close()
            self._conns.clear()


def create_app(
    settings: Settings,
    *,
    index_path: str | Path | None = None,
    token: str | None = None,
    watcher: Any = None,
    events: Any = None,
    worker: Any = None,
    extra_routes: Sequence[BaseRoute] = (),
) -> Starlette:
    """The admin ASGI app. Without ``watcher`` or ``events`` it makes its own (and closes
    them at shutdown). ``token`` None refuses every authenticated request."""
    index = Path(index_path or settings.index)
    owns_watcher, owns_events = watcher is None, events is None
    if watcher is None:
        from ..index.watch import SnapshotWatcher

        watcher = SnapshotWatcher(index)
    if events is None:
        from ..events import EventWriter

        events = EventWriter(index, settings.events.jsonl, syslog=settings.events.syslog)
    ctx = AdminContext(settings, index, token, watcher, events, worker)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        stop = asyncio.Event()
        with contextlib.suppress(AtrError):
            await run_in_threadpool(watcher.load)  # an empty index is loaded by poll later
        poller = asyncio.create_task(watcher.run(stop))
        try:
            yield
        finally:
            stop.set()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(poller, 5)
            if owns_watcher:
                watcher.close()
            if owns_events:
                await run_in_threadpool(events.close)
            else:
                await run_in_threadpool(events.flush)
            ctx.close()

    from .dashboard import operator_routes  # the dashboard, /metrics and /proxy.pac

    app = Starlette(routes=[*api_routes(), *extra_routes, *operator_routes()],
                    lifespan=lifespan)
    app.state.atr = ctx
    app.add_middleware(TokenGuard, ctx=ctx)
    app.add_middleware(SourceGuard, ctx=ctx)  # added last: runs first
    return app


# -- guards -------------------------------------------------------------------------------
class SourceGuard:
    """Refuses (403) a client whose address is a blocking indicator, before any auth."""

    def __init__(self, app: ASGIApp, ctx: AdminContext) -> None:
        self.app = app
        self.ctx = ctx

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        client = (scope.get("client") or (None,))[0]
        verdict = self._verdict(client) if client else None
        if verdict is None or not verdict.blocked:
            await self.app(scope, receive, send)
            return
        from ..events import events_for, new_event_id

        event_id = new_event_id()
        server = scope.get("server") or (None, None)
        host = dict(scope.get("headers") or []).get(b"host", b"").decode("latin-1") or None
        self.ctx.events.emit(events_for(
            verdict, source="admin", traffic="system", client_ip=client,
            dest_host=host, dest_ip=server[0], dest_port=server[1],
            url=scope.get("path"), detail=f"admin API {scope.get('method')} refused",
            event_id=event_id))
        hit = verdict.decisive
        log.warning("admin API: refused %s (indicator %s of feed %s), event %s",
                    client, hit.indicator if hit else "?", hit.feed.name if hit else "?",
                    event_id)
        response = JSONResponse({"error": "your address is blocked by a threat indicator",
                                  "event_id": event_id}, status_code=403)
        await response(scope, receive, send)

    def _verdict(self, client: str) -> Any:
        from ..policy import decide

        snap = self.ctx.watcher.snapshot
        try:
            hits = snap.check(client=client)
        except ValueError:
            return None
        if not hits:
            return None
        return decide(hits, snap.exceptions, client=client)


class TokenGuard:
    """Requires the admin token on ``/api/`` paths other than the public ones."""

    def __init__(self, app: ASGIApp, ctx: AdminContext) -> None:
        self.app = app
        self.ctx = ctx

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or not path.startswith("/api/") or path in PUBLIC_PATHS:
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        given = headers.get(b"x-atr-token", b"").decode("latin-1")
        auth = headers.get(b"authorization", b"").decode("latin-1")
        if auth[:7].lower() == "bearer ":
            given = auth[7:].strip()
        expected = self.ctx.token
        if not expected or not given or not hmac.compare_digest(given.encode(), expected.encode()):
            error = ("no admin token is configured: set admin.token or ATR_ADMIN_TOKEN"
                     if not expected else "missing or wrong token"
                     " (send Authorization: Bearer <admin token>)")
            response = JSONResponse({"error": error}, status_code=401,
                                    headers={"WWW-Authenticate": "Bearer"})
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


# -- handlers -----------------------------------------------------------------------------
def api_routes() -> list[BaseRoute]:
    return [
        Route(f"{API}/health", health, methods=["GET"]),
        Route(f"{API}/feeds", feeds, methods=["GET"]),
        Route(f"{API}/feeds/{{name}}", feed_one, methods=["GET"]),
        Route(f"{API}/feeds/{{name}}/sync", feed_sync, methods=["POST"]),
        Route(f"{API}/mdr/indicators", mdr_list, methods=["GET"]),
        Route(f"{API}/mdr/indicators", mdr_push, methods=["POST"]),
        Route(f"{API}/mdr/indicators", mdr_delete_value, methods=["DELETE"]),
        Route(f"{API}/mdr/indicators/{{ident:int}}", mdr_get, methods=["GET"]),
        Route(f"{API}/mdr/indicators/{{ident:int}}", mdr_delete_id, methods=["DELETE"]),
        Route(f"{API}/exceptions", exceptions_list, methods=["GET"]),
        Route(f"{API}/exceptions", exception_add, methods=["POST"]),
        Route(f"{API}/exceptions/{{ident:int}}", exception_delete, methods=["DELETE"]),
        Route(f"{API}/lookup", lookup, methods=["GET", "POST"]),
    ]


def _ctx(request: Request) -> AdminContext:
    return request.app.state.atr


def _error(status: int, message: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": message, **extra}, status_code=status)


async def _db(request: Request, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    ctx = _ctx(request)
    return await run_in_threadpool(lambda: fn(ctx.db(), *args, **kwargs))


async def _body(request: Request) -> Any:
    length = request.headers.get("content-length")
    if length and length.isdigit() and int(length) > MAX_BODY:
        raise _BadRequest(413, f"the body is larger than {MAX_BODY} bytes")
    raw = await request.body()
    if len(raw) > MAX_BODY:
        raise _BadRequest(413, f"the body is larger than {MAX_BODY} bytes")
    try:
        return json.loads(raw or b"null")
    except ValueError as exc:
        raise _BadRequest(400, f"the body is not JSON: {exc}") from None


class _BadRequest(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _handled(fn: Callable[[Request], Any]) -> Callable[[Request], Any]:
    async def wrapper(request: Request) -> Response:
        try:
            return await fn(request)
        except _BadRequest as exc:
            return _error(exc.status, exc.message)
        except IndexUnavailable as exc:  # not the request's fault: say so, and when to retry
            log.error("admin API: %s", exc)
            return _error(503, f"the index is unavailable: {exc}; try again")
        except AtrError as exc:
            return _error(400, str(exc))
        except sqlite3.Error as exc:
            log.error("admin API: index error: %s", exc)
            return _error(503, f"the index is unavailable: {exc}; try again")
    wrapper.__name__ = fn.__name__
    wrapper.__doc__ = fn.__doc__
    return wrapper


def _int_param(request: Request, name: str, default: int, low: int, high: int) -> int:
    text = request.query_params.get(name)
    if text is None:
        return default
    try:
        value = int(text)
    except ValueError:
        raise _BadRequest(400, f"{name} must be a whole number") from None
    if not low <= value <= high:
        raise _BadRequest(400, f"{name} must be between {low} and {high}")
    return value


@_handled
async def health(request: Request) -> Response:
    ctx = _ctx(request)
    snap = ctx.watcher.snapshot
    return JSONResponse({"status": "ok", "generation": snap.generation,
                         "indicators": snap.count(), "index": str(ctx.index_path),
                         "index_error": ctx.watcher.last_error})


@_handled
async def feeds(request: Request) -> Response:
    from ..feeds.sync import feed_status

    return JSONResponse({"feeds": await _db(request, feed_status)})


@_handled
async def feed_one(request: Request) -> Response:
    from ..feeds.sync import feed_status

    rows = await _db(request, feed_status, request.path_params["name"])
    if not rows:
        return _error(404, f"no feed named {request.path_params['name']!r}")
    return JSONResponse(rows[0])


@_handled
async def feed_sync(request: Request) -> Response:
    """Sync a configured feed now (the worker's schedule goes on as before)."""
    worker = _ctx(request).worker
    name = request.path_params["name"]
    if worker is None:
        return _error(409, "this API is not running inside the sync worker")
    if name not in worker.feeds or not worker.feeds[name].url:
        return _error(404, f"no configured feed named {name!r} with a url")
    outcome = await worker.sync_feed(name)
    return JSONResponse(outcome.as_dict())


@_handled
async def mdr_list(request: Request) -> Response:
    from ..feeds import mdr

    action = request.query_params.get("action")
    kind = request.query_params.get("type")
    if action not in (None, "block", "monitor"):
        raise _BadRequest(400, "action must be block or monitor")
    if kind not in (None, "domain", "url", "ip"):
        raise _BadRequest(400, "type must be domain, url or ip")
    page = await _db(request, mdr.search, q=request.query_params.get("q"), action=action,
                     kind=kind, limit=_int_param(request, "limit", 100, 1, MAX_PAGE),
                     offset=_int_param(request, "offset", 0, 0, 10**9))
    return JSONResponse(page)


@_handled
async def mdr_push(request: Request) -> Response:
    from ..feeds import mdr

    body = await _body(request)
    try:
        pushes = mdr.validate(body)
    except mdr.PushError as exc:
        return _error(400, str(exc), errors=exc.errors)
    stored = await _db(request, mdr.push, pushes)
    return JSONResponse({"indicators": stored}, status_code=201)


@_handled
async def mdr_get(request: Request) -> Response:
    from ..feeds import mdr

    found = await _db(request, mdr.describe, request.path_params["ident"])
    if found is None:
        return _error(404, f"no MDR indicator with id {request.path_params['ident']}")
    return JSONResponse(found)


@_handled
async def mdr_delete_id(request: Request) -> Response:
    from ..feeds import mdr

    found = await _db(request, mdr.remove_id, request.path_params["ident"])
    if found is None:
        return _error(404, f"no MDR indicator with id {request.path_params['ident']}")
    return JSONResponse({"removed": [found]})


@_handled
async def mdr_delete_value(request: Request) -> Response:
    from ..feeds import mdr

    value = request.query_params.get("value")
    kind = request.query_params.get("type", "auto")
    if not value:
        raise _BadRequest(400, "give ?value=... (or DELETE /api/v1/mdr/indicators/{id})")
    if kind not in ("auto", "domain", "url", "ip"):
        raise _BadRequest(400, "type must be auto, domain, url or ip")
    try:
        removed = await _db(request, mdr.remove_value, value, kind)
    except ValueError as exc:
        raise _BadRequest(400, str(exc)) from None
    if not removed:
        return _error(404, f"{value!r} is not an MDR indicator")
    return JSONResponse({"removed": removed})


def _exceptions(conn: sqlite3.Connection) -> list[dict[str, Any]]:
    from ..index import reader

    names = {f.id: f.name for f in reader.feeds(conn)}
    return [{"id": e.id, "scope": e.scope, "type": e.kind, "value": e.value,
             "feed": names.get(e.feed_id) if e.feed_id else None, "comment": e.comment}
            for e in reader.exceptions(conn)]


@_handled
async def exceptions_list(request: Request) -> Response:
    return JSONResponse({"exceptions": await _db(request, _exceptions)})


def _add_exception(conn: sqlite3.Connection, body: Any) -> dict[str, Any]:
    from ..index import IndexWriter
    from ..index.writer import stored_value
    from ..indicators import canonical_ip, canonicalize

    if not isinstance(body, dict):
        raise _BadRequest(400, "expected {scope, value, feed?, comment?}")
    unknown = set(body) - {"scope", "value", "feed", "comment", "type"}
    if unknown:
        raise _BadRequest(400, f"unknown field {sorted(unknown)[0]!r}")
    scope = body.get("scope", "destination")
    value = body.get("value")
    if scope not in ("source", "destination"):
        raise _BadRequest(400, "scope must be source or destination")
    if not isinstance(value, str) or not value.strip():
        raise _BadRequest(400, "value is required")
    try:
        if scope == "source":
            kind, value = "ip", canonical_ip(value.strip())[0]
        else:
            ind = canonicalize(value.strip(), body.get("type", "auto") or "auto")
            kind, value = ind.kind, stored_value(ind.kind, ind.value)
    except ValueError as exc:
        raise _BadRequest(400, f"value: {exc}") from None
    writer = IndexWriter(conn)
    feed_id = None
    if body.get("feed"):
        feed_id = writer.feed_id(str(body["feed"]))
        if feed_id is None:
            raise _BadRequest(404, f"no feed named {body['feed']!r}")
    comment = body.get("comment")
    if comment is not None and not isinstance(comment, str):
        raise _BadRequest(400, "comment must be text")
    ident = writer.add_exception(scope, kind, value, feed_id=feed_id, comment=comment)
    return {"id": ident, "scope": scope, "type": kind, "value": value,
            "feed": body.get("feed"), "comment": comment}


@_handled
async def exception_add(request: Request) -> Response:
    body = await _body(request)
    return JSONResponse(await _db(request, _add_exception, body), status_code=201)


@_handled
async def exception_delete(request: Request) -> Response:
    from ..index import IndexWriter

    ident = request.path_params["ident"]
    removed = await _db(request, lambda conn: IndexWriter(conn).remove_exception(ident))
    if not removed:
        return _error(404, f"no exception with id {ident}")
    return JSONResponse({"removed": ident})


def _suppressed(conn: sqlite3.Connection, results: list[dict]) -> None:
    """Add what a suppression list keeps from being enforced, so a look-up says why a
    listed value is allowed."""
    for item in results:
        if not item.get("canonical"):
            continue
        from ..index.writer import stored_value

        rows = conn.execute(
            "SELECT i.id, f.name, i.suppressed_by FROM indicators i JOIN feeds f"
            " ON f.id = i.feed_id WHERE i.kind=? AND i.value=? AND i.suppressed_by IS NOT NULL",
            (item["kind"], stored_value(item["kind"], item["canonical"]))).fetchall()
        if rows:
            item["suppressed"] = [{"indicator_id": r[0], "feed": r[1], "list": r[2]}
                                  for r in rows]


@_handled
async def lookup(request: Request) -> Response:
    from ..cli import lookup_values

    if request.method == "POST":
        body = await _body(request)
        if not isinstance(body, dict) or not isinstance(body.get("values"), list):
            raise _BadRequest(400, 'expected {"values": [...], "client": "..."}')
        values = [str(v) for v in body["values"]]
        client = body.get("client")
    else:
        values = request.query_params.getlist("value")
        client = request.query_params.get("client")
    if not values or len(values) > MAX_PAGE:
        raise _BadRequest(400, f"give 1 to {MAX_PAGE} values (?value=...)")
    ctx = _ctx(request)
    await run_in_threadpool(ctx.watcher.poll)  # what was just pushed is in the answer
    try:
        results = lookup_values(ctx.watcher.snapshot, values, client)
    except ValueError as exc:
        raise _BadRequest(400, str(exc)) from None
    await _db(request, _suppressed, results)
    return JSONResponse({"generation": ctx.watcher.snapshot.generation, "results": results})


# -- serving ------------------------------------------------------------------------------
class AdminServer(uvicorn.Server):
    """uvicorn, minus its own signal handling: the worker owns SIGINT/SIGTERM and stops
    the server by setting ``should_exit``."""

    def __init__(self, app: ASGIApp, host: str, port: int, **options: Any) -> None:
        config = uvicorn.Config(app, host=host, port=port, log_level="warning",
                                access_log=False, lifespan="on", **options)
        super().__init__(config)

    @contextlib.contextmanager
    def capture_signals(self):  # noqa: ANN201 - uvicorn's hook
        yield
