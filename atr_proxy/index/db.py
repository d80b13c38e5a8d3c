"""Opening the index: WAL mode, pragmas, and the numbered migrations."""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..errors import IndexUnavailable
from .schema import MIGRATIONS, SCHEMA_VERSION

DEFAULT_INDEX = "atr-index.db"
BUSY_TIMEOUT_MS = 5000


def resolve_path(path: str | os.PathLike[str] | None) -> Path:
    """The index file to use: the argument, else ``$ATR_INDEX``, else ``./atr-index.db``."""
    return Path(path or os.environ.get("ATR_INDEX") or DEFAULT_INDEX)


def connect(path: str | os.PathLike[str], *, readonly: bool = False,
            cache_kib: int | None = None) -> sqlite3.Connection:
    """Open the index, creating and migrating it unless ``readonly``.

    Readers (proxy, DNS) open with ``readonly=True`` and never write; the worker and the
    operator tools migrate. ``cache_kib`` caps the page cache (default: 128 MiB for
    writers, 512 KiB for readers): a long-lived process that only appends small rows (the
    event writer in the proxy and the resolver) keeps it small, or every page it ever
    touched stays in its RSS. Raises :class:`IndexUnavailable` naming the file on failure.
    """
    path = Path(path)
    try:
        if readonly:
            if not path.exists():
                raise IndexUnavailable(f"index {path} does not exist (run a sync or import first)")
            conn = sqlite3.connect(
                f"file:{path}?mode=ro", uri=True, timeout=BUSY_TIMEOUT_MS / 1000,
                check_same_thread=False,
            )
        else:
            if path.parent and not path.parent.exists():
                path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_MS / 1000, check_same_thread=False)
        conn.isolation_level = None  # explicit transactions only: see transaction()
        conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        if not readonly:
            if schema_version(conn) == 0:
                # a new file: larger pages make bulk inserts of a million rows ~10% cheaper
                conn.execute("PRAGMA page_size=16384")
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if mode.lower() != "wal":
                raise IndexUnavailable(f"index {path}: cannot switch to WAL mode (got {mode})")
            conn.execute("PRAGMA synchronous=NORMAL")
            # a big page cache keeps the (feed, kind, value) index in memory while a large
            # feed is written; it is an upper bound, only used when needed
            conn.execute(f"PRAGMA cache_size=-{cache_kib or 131072:d}")
            conn.execute("PRAGMA foreign_keys=ON")
            migrate(conn)
        else:
            # readers scan the index once per build and read single rows after that: a
            # small page cache keeps the proxy's and the resolver's RSS down
            conn.execute(f"PRAGMA cache_size=-{cache_kib or 512:d}")
            version = schema_version(conn)
            if version > SCHEMA_VERSION:
                raise IndexUnavailable(
                    f"index {path} has schema {version}, newer than this atr-proxy ({SCHEMA_VERSION})"
                )
        return conn
    except sqlite3.Error as exc:
        raise IndexUnavailable(f"index {path}: {exc}") from exc


@contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """One write transaction: ``BEGIN IMMEDIATE`` so writers queue instead of deadlocking,
    committed on success and rolled back on any exception."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def schema_version(conn: sqlite3.Connection) -> int:
    """The schema version recorded in the index (0 for a new, empty file)."""
    row = conn.execute(
        "SELECT name FROM sqlite_master WHERE type='table' AND name='meta'"
    ).fetchone()
    if row is None:
        return 0
    row = conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
    return int(row[0]) if row else 0


def migrate(conn: sqlite3.Connection) -> int:
    """Apply every migration newer than the file's version, each in its own transaction."""
    version = schema_version(conn)
    if version > SCHEMA_VERSION:
        raise IndexUnavailable(
            f"index schema {version} is newer than this atr-proxy ({SCHEMA_VERSION}); upgrade it"
        )
    for number in sorted(n for n in MIGRATIONS if n > version):
        with transaction(conn):
            for statement in _statements(MIGRATIONS[number]):
                conn.execute(statement)
            conn.execute(
                "INSERT OR REPLACE INTO meta(key, value) VALUES ('schema_version', ?)",
                (str(number),),
            )
            conn.execute(
                "INSERT OR IGNORE INTO meta(key, value) VALUES ('created_at', ?)",
                (str(time.time()),),
            )
    return SCHEMA_VERSION


def _statements(script: str) -> list[str]:
    parts: list[str] = []
    current: list[str] = []
    for line in script.splitlines():
        stripped = line.split("--", 1)[0].rstrip()
        if not stripped:
            continue
        current.append(stripped)
        if stripped.endswith(";") and sqlite3.complete_statement("\n".join(current)):
            parts.append("\n".join(current))
            current = []
    if current:
        parts.append("\n".join(current))
    return parts
