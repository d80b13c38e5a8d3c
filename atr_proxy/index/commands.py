"""``atr-proxy index backup|restore``: copy the live index out, or replace it, safely.

Both use SQLite's backup API, which takes the proper locks: the worker, the proxy and the
resolver may keep running. A restore is one write transaction on the live file, so each
reader sees the old index or the restored one, never a mix; a ``reload`` entry after it
makes every reader rebuild its snapshot. (Renaming another file over the live index also
works, see RELIABILITY.md, but a reader then waits until every process has let go of the
old file.)
"""

from __future__ import annotations

import argparse
import sqlite3
import tempfile
import time
from pathlib import Path

from ..errors import AtrError


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "index", help="back up the live index, or restore one into it",
        description="Copies made and restored with SQLite's backup API: safe while the "
                    "worker, the proxy and the resolver run.")
    sub = p.add_subparsers(dest="action", required=True)
    b = sub.add_parser("backup", help="copy the live index to FILE")
    b.add_argument("file", help="where to write the copy")
    b.add_argument("--force", action="store_true", help="overwrite FILE if it exists")
    r = sub.add_parser("restore", help="replace the live index with FILE (a backup)")
    r.add_argument("file", help="the index file to restore")
    r.add_argument("--no-keep", action="store_true",
                   help="do not save the index being replaced to <index>.before-restore")
    p.set_defaults(func=cmd_index)


def _summary(conn: sqlite3.Connection) -> str:
    from . import reader

    count = conn.execute("SELECT COUNT(*) FROM indicators").fetchone()[0]
    return f"generation {reader.generation(conn)}, {count} indicators"


def _copy(src: sqlite3.Connection, dest: Path) -> None:
    out = sqlite3.connect(dest)
    try:
        src.backup(out)
    finally:
        out.close()


def cmd_index(args: argparse.Namespace) -> int:
    from ..cli import _index_path
    from .db import connect

    path = _index_path(args)
    if args.action == "backup":
        dest = Path(args.file)
        if dest.exists() and not args.force:
            raise AtrError(f"{dest} exists (--force overwrites it)")
        live = connect(path, readonly=True)
        try:
            _copy(live, dest)
            print(f"backed up {path} to {dest}: {_summary(live)}")
        finally:
            live.close()
        return 0
    return _restore(path, Path(args.file), keep=not args.no_keep)


def _open_source(source: Path) -> sqlite3.Connection:
    from .schema import SCHEMA_VERSION

    if not source.is_file():
        raise AtrError(f"{source}: no such file")
    try:
        src = sqlite3.connect(f"file:{source}?mode=ro", uri=True)
        check = src.execute("PRAGMA quick_check").fetchone()[0]
        row = src.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
    except sqlite3.Error as exc:
        raise AtrError(f"{source} is not an atr-proxy index: {exc}") from None
    if check != "ok":
        src.close()
        raise AtrError(f"{source} is damaged: {check}")
    if row is None or int(row[0]) > SCHEMA_VERSION:
        src.close()
        raise AtrError(f"{source}: schema {row and row[0]} is not one this atr-proxy reads")
    return src


def _restore(path: Path, source: Path, *, keep: bool) -> int:
    from . import reader
    from .db import connect, migrate, transaction

    src = _open_source(source)
    live = connect(path)
    try:
        before = reader.generation(live)
        if keep:
            saved = path.with_name(path.name + ".before-restore")
            _copy(live, saved)
            print(f"saved the index being replaced to {saved}: {_summary(live)}")
        page = live.execute("PRAGMA page_size").fetchone()[0]
        with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
            if src.execute("PRAGMA page_size").fetchone()[0] != page:
                # a WAL database keeps its page size: copy the source at ours first
                same = Path(tmp) / "restore.db"
                src.execute(f"PRAGMA page_size={int(page)}")
                src.execute("VACUUM INTO ?", (str(same),))
                src.close()
                src = sqlite3.connect(same)
            try:
                src.backup(live)  # one write transaction on the live file
            except sqlite3.Error as exc:
                raise AtrError(f"restoring {source} into {path}: {exc}") from None
            finally:
                src.close()
        migrate(live)  # a backup from an older atr-proxy
        with transaction(live):
            # the readers rebuild when the generation moves; past the one they hold, even
            # if the restored file's own log is shorter
            live.execute("INSERT INTO changes(seq, at, op) VALUES (?, ?, 'reload')",
                         (max(before, reader.generation(live)) + 1, time.time()))
        print(f"restored {source} into {path}: {_summary(live)}")
    finally:
        live.close()
    return 0
