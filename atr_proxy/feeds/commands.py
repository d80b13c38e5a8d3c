"""Sub-commands of the feed worker: ``sync``, ``feeds`` and ``mdr``.

- ``atr-proxy sync`` runs the worker and the admin API until stopped; ``--once`` syncs
  every enabled feed (or ``--feed NAME``) one time and exits.
- ``atr-proxy feeds`` shows every feed with its status; ``feeds test NAME`` fetches and
  parses a feed (or a preset) and stores nothing; ``feeds presets`` lists the presets.
- ``atr-proxy mdr add|remove|list`` does what the admin API's MDR endpoints do.
"""

from __future__ import annotations

import argparse
import os
import secrets
import sys
import time
from pathlib import Path
from typing import Any

EXIT_OK, EXIT_ERROR = 0, 1
TOKEN_ENV = "ATR_ADMIN_TOKEN"


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("sync", help="run the feed-sync worker and the admin API")
    p.add_argument("--once", action="store_true", help="sync each feed once and exit")
    p.add_argument("--feed", action="append", metavar="NAME",
                   help="only this feed (repeatable; with --once)")
    p.add_argument("--json", action="store_true", help="with --once: print JSON")
    p.add_argument("--no-admin", action="store_true", help="do not serve the admin API")
    p.set_defaults(func=cmd_sync)

    p = subparsers.add_parser("feeds", help="feeds and their sync status; test a feed")
    p.add_argument("--json", action="store_true")
    fsub = p.add_subparsers(dest="feeds_action", metavar="ACTION")
    t = fsub.add_parser("test", help="fetch and parse a feed (or a preset); store nothing")
    t.add_argument("name", help="a feed of the config, or a preset name")
    t.add_argument("--json", action="store_true")
    t.add_argument("--sample", type=int, default=5, help="how many indicators to show")
    t = fsub.add_parser("presets", help="list the vendor presets")
    t.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_feeds)

    p = subparsers.add_parser("mdr", help="analyst-pushed indicators (module mdr)")
    msub = p.add_subparsers(dest="mdr_action", metavar="ACTION", required=True)
    m = msub.add_parser("add", help="push indicators")
    m.add_argument("values", nargs="+", metavar="VALUE", help="a domain, URL or IP")
    m.add_argument("--type", choices=("auto", "domain", "url", "ip"), default="auto")
    m.add_argument("--action", choices=("block", "monitor"), default="block")
    m.add_argument("--match", choices=("subtree", "exact"), default=None)
    when = m.add_mutually_exclusive_group()
    when.add_argument("--ttl", help="expire after this long (e.g. 12h, 7d)")
    when.add_argument("--expires-at", help="expire at this time (ISO 8601 or unix time)")
    m.add_argument("--comment")
    m.add_argument("--reference")
    m.add_argument("--json", action="store_true")
    m = msub.add_parser("remove", help="remove MDR indicators by id or by value")
    m.add_argument("targets", nargs="+", metavar="ID_OR_VALUE")
    m.add_argument("--type", choices=("auto", "domain", "url", "ip"), default="auto")
    m.add_argument("--json", action="store_true")
    m = msub.add_parser("list", help="list MDR indicators, newest first")
    m.add_argument("--search", "-q", help="a substring of the value, comment or reference")
    m.add_argument("--action", choices=("block", "monitor"))
    m.add_argument("--type", choices=("domain", "url", "ip"))
    m.add_argument("--limit", type=int, default=100)
    m.add_argument("--offset", type=int, default=0)
    m.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_mdr)


# -- sync ----------------------------------------------------------------------------------
def cmd_sync(args: argparse.Namespace) -> int:
    import asyncio
    import logging

    from ..cli import _index_path, _print_json, _settings
    from .sync import SyncWorker

    settings = _settings(args)
    index = _index_path(args, settings)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.once:
        logging.getLogger().setLevel(logging.WARNING)
        worker = SyncWorker(settings, index)
        try:
            worker.prepare()
            outcomes = asyncio.run(worker.sync_all(args.feed))
            worker.housekeeping()
        finally:
            worker.close()
        if args.json:
            _print_json([o.as_dict() for o in outcomes])
        else:
            for o in outcomes:
                print(o.line())
            if not outcomes:
                print("no feeds to sync (none with a url is enabled in the config)")
        return EXIT_ERROR if any(o.status in ("error", "held") for o in outcomes) else EXIT_OK
    return asyncio.run(_serve(settings, index, admin=not args.no_admin))


def admin_token(settings: Any, index: Path) -> tuple[str, str]:
    """The admin API token and where it came from: ``admin.token``, ``$ATR_ADMIN_TOKEN``,
    else a random one written next to the index (mode 0600) for local tools to read."""
    if settings.admin.token is not None:
        return settings.admin.token.reveal(), "admin.token"
    if os.environ.get(TOKEN_ENV):
        return os.environ[TOKEN_ENV], TOKEN_ENV
    path = index.with_name(index.name + ".admin-token")
    if path.exists():
        token = path.read_text(encoding="ascii").strip()
        if token:
            return token, str(path)
    token = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as out:
        out.write(token + "\n")
    return token, str(path)


async def _serve(settings: Any, index: Path, *, admin: bool = True) -> int:
    import asyncio
    import logging
    import signal

    from .sync import SyncWorker

    log = logging.getLogger("atr_proxy.sync")
    worker = SyncWorker(settings, index)
    await asyncio.to_thread(worker.prepare)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    tasks = [asyncio.create_task(worker.run(stop), name="worker")]
    server = None
    if admin:
        from ..admin.api import AdminServer, create_app
        from ..events import EventWriter
        from ..index.watch import SnapshotWatcher

        token, origin = admin_token(settings, index)
        watcher = SnapshotWatcher(index)
        events = EventWriter(index, settings.events.jsonl, syslog=settings.events.syslog)
        app = create_app(settings, index_path=index, watcher=watcher, events=events,
                         worker=worker, token=token)
        host, port = settings.admin.listen
        server = AdminServer(app, host, port)
        tasks.append(asyncio.create_task(server.serve(), name="admin"))
        log.info("admin API on http://%s:%d (token from %s)", host, port, origin)
    log.info("syncing %d feeds into %s", len(worker.due_feeds()), index)
    stopper = asyncio.create_task(stop.wait())
    done, _ = await asyncio.wait([stopper, *tasks], return_when=asyncio.FIRST_COMPLETED)
    code = EXIT_OK
    for task in done:
        if task is not stopper and task.exception() is not None:
            exc = task.exception()
            print(f"atr-proxy: {task.get_name()} stopped: {exc}", file=sys.stderr)
            code = EXIT_ERROR
        elif task is not stopper and task.get_name() == "admin" and server and not stop.is_set():
            print(f"atr-proxy: the admin API could not listen on {settings.admin.listen[0]}:"
                  f"{settings.admin.listen[1]} (in use? see above)", file=sys.stderr)
            code = EXIT_ERROR
    stop.set()
    if server is not None:
        server.should_exit = True
    await asyncio.gather(*tasks, return_exceptions=True)
    stopper.cancel()
    await asyncio.to_thread(worker.close)
    return code


# -- feeds ---------------------------------------------------------------------------------
def cmd_feeds(args: argparse.Namespace) -> int:
    if args.feeds_action == "test":
        return _feeds_test(args)
    if args.feeds_action == "presets":
        return _feeds_presets(args)
    from ..cli import _index_path, _print_json, _settings
    from ..index import connect
    from .sync import feed_status

    settings = _settings(args)
    conn = connect(_index_path(args, settings))
    rows = feed_status(conn)
    known = {r["name"] for r in rows}
    for feed in settings.feeds:  # configured but never synced: the worker adds it at start
        if feed.name not in known:
            rows.append({"name": feed.name, "module": feed.module,
                         "action": settings.feed_action(feed), "enabled": feed.enabled,
                         "status": "never", "indicator_count": 0, "suppressed": 0,
                         "last_success": None, "next_run": None, "last_error": None})
    if args.json:
        _print_json(rows)
        return EXIT_OK
    now = time.time()
    print(f"{'FEED':24} {'MODULE':11} {'ACTION':7} {'STATUS':12} {'COUNT':>9} {'SUPP':>5}"
          f" {'LAST OK':>9} {'NEXT':>9}  ERROR")
    for r in rows:
        status = r["status"] if r["enabled"] else "disabled"
        print(f"{r['name'][:24]:24} {r['module']:11} {r['action']:7} {status:12}"
              f" {r['indicator_count'] or 0:>9} {r.get('suppressed') or 0:>5}"
              f" {_ago(r.get('last_success'), now):>9} {_until(r.get('next_run'), now):>9}"
              f"  {(r.get('last_error') or '')[:120]}")
    return EXIT_OK


def _feeds_test(args: argparse.Namespace) -> int:
    import asyncio
    import json

    from .. import config as config_mod
    from ..cli import _print_json, _settings
    from ..errors import AtrError
    from .fetch import Fetcher, FetchError
    from .formats import FormatOptions, parse

    settings = _settings(args)
    feed = settings.feed(args.name)
    if feed is None:
        from .presets import load_presets

        if args.name not in load_presets():
            raise AtrError(f"no feed or preset named {args.name!r}")
        feed = config_mod.from_mapping({"feeds": [{"preset": args.name}]}).feeds[0]
    if not feed.url:
        raise AtrError(f"feed {feed.name!r} has no url to test")
    fetcher = Fetcher(retries=0)
    started = time.perf_counter()
    out: dict[str, Any] = {"feed": feed.name, "url": None}
    try:
        got = asyncio.run(fetcher.fetch(feed))
        fmt = got.format or ("stix2" if feed.format == "taxii2" else feed.format)
        options = FormatOptions.from_mapping(feed.options, f"{feed.name}.options")
        result = parse(got.data, fmt, kind=feed.type, options=options, source=got.url)
    except (FetchError, AtrError) as exc:
        out.update(status="error", error=str(exc),
                   http_status=getattr(exc, "http_status", None),
                   seconds=round(time.perf_counter() - started, 3))
        if args.json:
            _print_json(out)
        else:
            print(f"{feed.name}: FAILED: {exc}")
        return EXIT_ERROR
    sample = [{"type": i.kind, "value": i.value, "match": i.match or feed.match}
              for i in result.indicators[: max(args.sample, 0)]]
    out.update(status="ok", url=got.url, http_status=got.http_status, bytes=got.bytes,
               format=result.format, indicators=len(result.indicators),
               rejected=result.rejected,
               rejected_samples=[list(s) for s in result.rejected_samples],
               skipped=result.skipped, exceptions=len(result.exceptions), sample=sample,
               seconds=round(time.perf_counter() - started, 3))
    if args.json:
        _print_json(out)
        return EXIT_OK
    print(f"{feed.name}: OK {got.url} HTTP {got.http_status or '-'}, {got.bytes} bytes,"
          f" {result.format}: {len(result.indicators)} indicators, {result.rejected} rejected"
          f" ({out['seconds']} s)")
    for item in sample:
        print(f"  {item['type']:6} {item['value']}")
    for line, text, reason in result.rejected_samples[:5]:
        print(f"  rejected line {line}: {reason}: {json.dumps(text)}")
    return EXIT_OK


def _feeds_presets(args: argparse.Namespace) -> int:
    from ..cli import _print_json
    from .presets import load_presets

    presets = load_presets()
    if args.json:
        _print_json([{"name": p.name, "description": p.description, "homepage": p.homepage,
                      "terms": p.terms, **dict(p.feed)} for p in presets.values()])
        return EXIT_OK
    for p in presets.values():
        print(f"{p.name:16} {p.feed.get('format', 'auto'):8} {p.feed.get('type', 'auto'):6}"
              f" {p.description}")
    print("\nenable one in atr.yaml:  feeds: [{preset: NAME}]")
    return EXIT_OK


def _ago(at: float | None, now: float) -> str:
    return "-" if not at else _span(now - at) + " ago"


def _until(at: float | None, now: float) -> str:
    return "-" if not at else ("due" if at <= now else "in " + _span(at - now))


def _span(seconds: float) -> str:
    seconds = max(seconds, 0)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f}{unit}"
    return f"{seconds:.0f}s"


# -- mdr -----------------------------------------------------------------------------------
def cmd_mdr(args: argparse.Namespace) -> int:
    from ..cli import _index_path, _print_json
    from ..index import connect
    from . import mdr

    conn = connect(_index_path(args))
    if args.mdr_action == "add":
        items = [{"type": args.type, "value": v, "action": args.action, "ttl": args.ttl,
                  "expires_at": _number_or_text(args.expires_at), "comment": args.comment,
                  "reference": args.reference, "match": args.match} for v in args.values]
        items = [{k: v for k, v in item.items() if v is not None} for item in items]
        try:
            stored = mdr.push(conn, mdr.validate(items))
        except mdr.PushError as exc:
            for e in exc.errors:
                print(f"atr-proxy: {args.values[e['index']]!r}: {e['field']}: {e['error']}",
                      file=sys.stderr)
            return EXIT_ERROR
        if args.json:
            _print_json(stored)
        else:
            for s in stored:
                until = (time.strftime(" until %Y-%m-%d %H:%M:%S", time.localtime(s["expires_at"]))
                         if s["expires_at"] else "")
                print(f"{s['id']}: {s['action']} {s['type']} {s['value']} (feed {s['feed']}){until}")
        return EXIT_OK
    if args.mdr_action == "remove":
        removed, missing = [], []
        for target in args.targets:
            if target.isdigit() and args.type == "auto":
                found = mdr.remove_id(conn, int(target))
                removed += [found] if found else []
                missing += [] if found else [target]
            else:
                try:
                    gone = mdr.remove_value(conn, target, args.type)
                except ValueError as exc:
                    print(f"atr-proxy: {target!r}: {exc}", file=sys.stderr)
                    return EXIT_ERROR
                removed += gone
                missing += [] if gone else [target]
        if args.json:
            _print_json({"removed": removed, "not_found": missing})
        else:
            for r in removed:
                print(f"removed {r['id']}: {r['action']} {r['type']} {r['value']}")
            for m in missing:
                print(f"not found: {m}", file=sys.stderr)
        return EXIT_ERROR if missing else EXIT_OK
    page = mdr.search(conn, q=args.search, action=args.action, kind=args.type,
                      limit=max(1, min(args.limit, 10_000)), offset=max(0, args.offset))
    if args.json:
        _print_json(page)
        return EXIT_OK
    for s in page["items"]:
        extra = f"  # {s['comment']}" if s["comment"] else ""
        print(f"{s['id']:>7} {s['action']:7} {s['type']:6} {s['value']}{extra}")
    print(f"{len(page['items'])} of {page['total']} (offset {page['offset']})")
    return EXIT_OK


def _number_or_text(value: str | None) -> float | str | None:
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        return value
