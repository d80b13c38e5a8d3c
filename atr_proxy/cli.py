"""The ``atr-proxy`` command: one entry point for every process and operator tool.

Each sub-command is a small function taking the parsed arguments and returning an exit
code; heavy modules (mitmproxy, dnslib, the worker) are imported only by the command that
runs them, so ``atr-proxy lookup`` starts fast.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from . import config as config_mod
from .errors import AtrError

EXIT_OK, EXIT_ERROR, EXIT_USAGE = 0, 1, 2


def _settings(args: argparse.Namespace) -> config_mod.Settings:
    return config_mod.load(args.config)


def _index_path(args: argparse.Namespace, settings: config_mod.Settings | None = None) -> Path:
    """``--index``, else ``$ATR_INDEX``, else the config's ``index``."""
    if args.index:
        return Path(args.index)
    if os.environ.get("ATR_INDEX"):
        return Path(os.environ["ATR_INDEX"])
    settings = settings or _settings(args)
    return settings.index


def _print_json(value: object) -> None:
    json.dump(value, sys.stdout, indent=2, default=str)
    sys.stdout.write("\n")


# -- import ----------------------------------------------------------------------------
def cmd_import(args: argparse.Namespace) -> int:
    from .feeds.ingest import ingest
    from .index import FeedSpec, connect

    settings = _settings(args)
    conn = connect(_index_path(args, settings))
    row = conn.execute(
        "SELECT module, type, action, position, enabled, match, source FROM feeds WHERE name=?",
        (args.feed,),
    ).fetchone()
    known = dict(zip(("module", "type", "action", "position", "enabled", "match", "source"),
                     row, strict=True)) if row else {}
    source_name = "<stdin>" if args.file == "-" else args.file
    spec = FeedSpec(
        name=args.feed,
        module=args.module or known.get("module", "third_party"),
        type=args.type or known.get("type", "auto"),
        action=args.action or known.get("action", "block"),
        position=known.get("position", 0),
        enabled=bool(known.get("enabled", True)),
        match=args.match or known.get("match", "subtree"),
        source=json.loads(known["source"]) if known.get("source") and not args.file
        else {"import": os.path.abspath(args.file) if args.file != "-" else "-"},
    )
    try:
        data = sys.stdin.buffer.read() if args.file == "-" else Path(args.file).read_bytes()
    except OSError as exc:
        raise AtrError(f"{source_name}: cannot read: {exc.strerror or exc}") from exc
    started = time.perf_counter()
    result = ingest(conn, spec, data, fmt=args.format, source=source_name,
                    allow_empty=args.allow_empty)
    out = result.as_dict()
    out["seconds"] = round(time.perf_counter() - started, 3)
    if args.json:
        _print_json(out)
    else:
        print(f"{out['feed']}: +{out['added']} -{out['removed']} = {out['total']} indicators"
              f" ({out['format']}, {out['rejected']} rejected, {out['seconds']} s)")
        for line, text, reason in result.parse.rejected_samples:
            print(f"  {source_name} line {line}: {reason}: {text!r}")
    return EXIT_OK


# -- lookup ----------------------------------------------------------------------------
def lookup_values(snapshot, values: Sequence[str], client: str | None = None) -> list[dict]:
    """What ``atr-proxy lookup`` (and the admin API's look-up) reports for each value."""
    from urllib.parse import urlsplit

    from .indicators import canonical_url, canonicalize
    from .policy import decide

    out = []
    for value in values:
        item: dict[str, object] = {"value": value}
        try:
            ind = canonicalize(value)
        except ValueError as exc:
            item.update(kind="invalid", canonical=None, verdict=None, hits=[], error=str(exc))
            out.append(item)
            continue
        host, url = ind.value, None
        if ind.kind == "url":
            url = canonical_url(ind.value)
            host = urlsplit(url).hostname or ""
        elif ind.kind == "ip" and "/" in ind.value:
            host = ind.value.split("/", 1)[0]  # a range: check its first address
        hits = snapshot.check(client=client, host=host, url=url)
        verdict = decide(hits, snapshot.exceptions, client=client, host=host, url=url)
        item.update(
            kind=ind.kind, canonical=ind.value, verdict=verdict.action,
            hits=[{k: h.as_dict()[k] for k in ("indicator", "kind", "match", "feed", "module",
                                               "action", "target")} for h in verdict.hits],
        )
        if verdict.excepted:
            item["excepted"] = [
                {"indicator": h.indicator, "feed": h.feed.name, "exception": e.value}
                for h, e in verdict.excepted
            ]
        out.append(item)
    return out


def cmd_lookup(args: argparse.Namespace) -> int:
    from .index.watch import SnapshotWatcher

    watcher = SnapshotWatcher(_index_path(args))
    snapshot = watcher.load()
    results = lookup_values(snapshot, args.values, args.client)
    if args.json:
        _print_json(results)
        return EXIT_OK
    for r in results:
        if r["kind"] == "invalid":
            print(f"{r['value']}: invalid: {r['error']}")
            continue
        print(f"{r['value']}: {r['kind']} {r['canonical']} -> {r['verdict']}")
        for h in r["hits"]:
            print(f"  {h['action']:7} {h['kind']} {h['indicator']} ({h['match']})"
                  f" feed {h['feed']} [{h['module']}] on {h['target']}")
        for e in r.get("excepted", []):
            print(f"  excepted {e['indicator']} (feed {e['feed']}) by exception {e['exception']}")
    return EXIT_OK


# -- exceptions ------------------------------------------------------------------------
def cmd_exceptions(args: argparse.Namespace) -> int:
    from .index import IndexWriter, connect, reader
    from .indicators import canonical_ip, canonicalize

    conn = connect(_index_path(args))
    writer = IndexWriter(conn)
    if args.action == "list":
        rows = reader.exceptions(conn)
        names = {f.id: f.name for f in reader.feeds(conn)}
        items = [{"id": e.id, "scope": e.scope, "kind": e.kind, "value": e.value,
                  "feed": names.get(e.feed_id) if e.feed_id else None, "comment": e.comment}
                 for e in rows]
        if args.json:
            _print_json(items)
        else:
            for e in items:
                scope = f"feed {e['feed']}" if e["feed"] else "all feeds"
                print(f"{e['id']:>5}  {e['scope']:11} {e['kind']:6} {e['value']}  ({scope})"
                      + (f"  # {e['comment']}" if e["comment"] else ""))
        return EXIT_OK
    if args.action == "add":
        if args.scope == "source":
            kind, value = "ip", canonical_ip(args.value)[0]
        else:
            ind = canonicalize(args.value)
            kind, value = ind.kind, ind.value
        feed_id = None
        if args.feed:
            feed_id = writer.feed_id(args.feed)
            if feed_id is None:
                raise AtrError(f"no feed named {args.feed!r}")
        ident = writer.add_exception(args.scope, kind, value, feed_id=feed_id,
                                     comment=args.comment)
        result = {"id": ident, "scope": args.scope, "kind": kind, "value": value}
        _print_json(result) if args.json else print(
            f"exception {ident}: {args.scope} {kind} {value}")
        return EXIT_OK
    removed = writer.remove_exception(args.id)
    if not removed:
        print(f"no exception with id {args.id}", file=sys.stderr)
        return EXIT_ERROR
    print(f"removed exception {args.id}")
    return EXIT_OK


# -- events ----------------------------------------------------------------------------
def cmd_events(args: argparse.Namespace) -> int:
    from .events import recent
    from .index import connect

    conn = connect(_index_path(args))
    filters = {"module": args.module, "feed": args.feed, "client_ip": args.client,
               "verdict": args.verdict, "traffic": args.traffic}
    rows = list(reversed(recent(conn, limit=args.limit, **filters)))
    last = 0
    deadline = time.monotonic() + args.follow_seconds if args.follow_seconds else None
    while True:
        for row in rows:
            last = max(last, int(row["id"]))
            if args.json:
                row = {k: v for k, v in row.items() if k != "id"}
                print(json.dumps(row, ensure_ascii=True), flush=True)
            else:
                when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(row["at"])))
                where = row["url"] or row["dest_host"] or row["dest_ip"] or ""
                print(f"{when} {row['event_id']} {row['verdict']:7} {row['traffic']:9}"
                      f" client={row['client_ip']} {where} indicator={row['indicator']}"
                      f" feed={row['feed']} [{row['module']}]", flush=True)
        if not args.follow or (deadline is not None and time.monotonic() > deadline):
            return EXIT_OK
        time.sleep(0.5)
        rows = recent(conn, after_id=last, limit=1000, newest_first=False, **filters)


# -- parser ----------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="atr-proxy",
        description="Threat-feed indicators enforced by an HTTP(S) proxy and a DNS resolver.",
    )
    parser.add_argument("--config", default=os.environ.get("ATR_CONFIG"),
                        help="the YAML config file (env ATR_CONFIG)")
    parser.add_argument("--index", default=None,
                        help="the SQLite index file (env ATR_INDEX; default from the config)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("import", help="import a file into a feed (parse, diff, commit)")
    p.add_argument("file", help="the file to import ('-' for standard input)")
    p.add_argument("--feed", required=True, help="the feed to replace with the file's content")
    p.add_argument("--format", default="auto",
                   help="plain, hosts, adblock, wildcard, rpz, csv, json, stix2, misp or auto")
    p.add_argument("--type", choices=("auto", "domain", "url", "ip"), default=None)
    p.add_argument("--module", choices=("third_party", "xops", "mdr"), default=None)
    p.add_argument("--action", choices=("block", "monitor"), default=None)
    p.add_argument("--match", choices=("subtree", "exact"), default=None,
                   help="for domains: the name and everything under it, or the name only")
    p.add_argument("--allow-empty", action="store_true",
                   help="allow a file with no indicators to empty the feed")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_import)

    p = sub.add_parser("lookup", help="would these values be blocked, and why")
    p.add_argument("values", nargs="+", metavar="VALUE", help="a domain, URL or IP")
    p.add_argument("--client", help="the client address to check too")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_lookup)

    p = sub.add_parser("exceptions", help="add, remove or list exceptions")
    esub = p.add_subparsers(dest="action", required=True)
    e = esub.add_parser("add", help="add an exception")
    e.add_argument("scope", choices=("source", "destination"))
    e.add_argument("value", help="a client network (source); a domain, URL or IP (destination)")
    e.add_argument("--feed", help="only for this feed's hits")
    e.add_argument("--comment")
    e.add_argument("--json", action="store_true")
    e = esub.add_parser("remove", help="remove an exception by id")
    e.add_argument("id", type=int)
    e = esub.add_parser("list", help="list exceptions")
    e.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_exceptions)

    p = sub.add_parser("events", help="show blocks and monitored hits")
    p.add_argument("--follow", "-f", action="store_true", help="keep printing new events")
    p.add_argument("--follow-seconds", type=float, default=None, help=argparse.SUPPRESS)
    p.add_argument("--limit", type=int, default=50, help="how many recent events (default 50)")
    p.add_argument("--module")
    p.add_argument("--feed")
    p.add_argument("--client")
    p.add_argument("--verdict", choices=("block", "monitor", "allow"))
    p.add_argument("--traffic", choices=("forwarded", "system", "dns"))
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.set_defaults(func=cmd_events)

    for module_name in COMMAND_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name != module_name:  # a missing dependency is a real error
                raise
            continue
        module.register(sub)
    return parser


# Each of these modules has ``register(subparsers)`` adding its own sub-commands, so the
# proxy, DNS, feed and admin code each keep their command next to their code. They must
# import their heavy dependencies inside the command function, not at module level.
COMMAND_MODULES: tuple[str, ...] = (
    "atr_proxy.feeds.commands",    # sync, feeds, mdr
    "atr_proxy.proxy.commands",    # proxy
    "atr_proxy.dns.commands",      # dns
    "atr_proxy.admin.commands",    # run
    "atr_proxy.index.commands",    # index backup, index restore
)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except AtrError as exc:
        print(f"atr-proxy: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
