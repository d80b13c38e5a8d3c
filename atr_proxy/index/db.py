"""Opening the index: WAL mode, pragmas, and the numbered migrations."""

from __future__ import annotations

import fcntl
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..errors import IndexUnavailable
from .schema import MIGRATIONS, SCHEMA_VERSION

log = logging.getLogger("atr_proxy.index")

DEFAULT_INDEX = "atr-index.db"
BUSY_TIMEOUT_MS = 5000
SHM_DMS_BYTE = 128  # SQLite's unix VFS: every connection holds a read lock here on the -shm


class IndexConnection(sqlite3.Connection):
    """A connection that knows which file it opened: ``replaced()`` says whether the path
    now names another file (renamed over the index while this connection was open)."""

    path: Path
    inode: int

    def replaced(self) -> bool:
        return _inode(self.path) != self.inode


def _inode(path: Path | str) -> int | None:
    try:
        return os.stat(path).st_ino
    except FileNotFoundError:
        return None


def _owner_file(path: Path) -> Path:
    return path.with_name(path.name + "-wal-owner")


def _record_owner(path: Path, opened: int) -> None:
    """Write down which database file the -wal and -shm beside it belong to (their inodes
    and the database's: ``opened``, the file our connection has), so that a process can
    tell them apart from a replaced file's."""
    inodes = [opened, _inode(f"{path}-wal"), _inode(f"{path}-shm")]
    if _inode(path) != opened:  # replaced since: these sidecars are not the new file's
        return
    text = " ".join("-" if i is None else str(i) for i in inodes) + "\n"
    owner = _owner_file(path)
    try:
        if owner.read_text() == text:
            return
    except OSError:
        pass
    try:
        tmp = owner.with_name(f"{owner.name}.{os.getpid()}.{threading.get_ident()}")
        tmp.write_text(text)
        os.replace(tmp, owner)
    except OSError:  # a read-only directory: no guard, as before
        pass


def _guard_replaced(path: Path) -> None:
    """Before opening ``path``: if the index file was replaced (a new file renamed over it)
    while the old file's -wal and -shm are still beside it, SQLite would read the old WAL
    over the new file (and a checkpoint would write it in). Those files are removed once no
    process holds them any more; until then the index is unavailable (readers keep their
    last snapshot). Files copied together (a new inode for the WAL too) are left alone."""
    try:
        recorded = _owner_file(path).read_text().split()
    except OSError:
        return
    if len(recorded) != 3 or recorded[0] == str(_inode(path)):
        return
    stale = [f"{path}{suffix}" for suffix, was in zip(("-wal", "-shm"), recorded[1:], strict=True)
             if was != "-" and str(_inode(f"{path}{suffix}")) == was]
    if not stale:
        return
    shm = f"{path}-shm"
    fd = None
    try:
        try:
            fd = os.open(shm, os.O_RDWR)
        except FileNotFoundError:
            pass  # nobody has the WAL open: nothing to wait for
        else:
            try:  # the dead-man byte: free only when no other process has the WAL open
                fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, SHM_DMS_BYTE)
            except OSError:
                raise IndexUnavailable(
                    f"index {path} was replaced while in use; the old file's WAL is still held"
                    f" by another process, so the new file is not read until it lets go (use"
                    f" 'atr-proxy index restore' to replace a live index)") from None
        for name in stale:  # while we hold the lock: no one opens them meanwhile
            try:
                os.unlink(name)
            except FileNotFoundError:
                pass
        log.warning("index %s was replaced while in use: removed the old file's %s",
                    path, " and ".join(Path(n).name for n in stale))
    finally:
        if fd is not None:
            os.close(fd)


def resolve_path(path: str | os.PathLike[str] | None) -> Path:
    """The index file to use: the argument, else ``$ATR_INDEX``, else ``./atr-index.db``."""
    return Path(path or os.environ.get("ATR_INDEX") or DEFAULT_INDEX)


def connect(path: str | os.PathLike[str], *, readonly: bool = False,
            cache_kib: int | None = None) -> IndexConnection:
    """Open the index, creating and migrating it unless ``readonly``.

    Readers (proxy, DNS) open with ``readonly=True`` and never write; the worker and the
    operator tools migrate. ``cache_kib`` caps the page cache (default: 128 MiB for
    writers, 512 KiB for readers): a long-lived process that only appends small rows (the
    event writer in the proxy and the resolver) keeps it small, or every page it ever
    touched stays in its RSS. Raises :class:`IndexUnavailable` naming the file on failure.
    """
    path = Path(path)
    for _ in range(3):
        before = _inode(path)
        conn = _open(path, readonly=readonly, cache_kib=cache_kib)
        opened = before if before is not None else _inode(path)  # None: we created it
        if opened is not None and _inode(path) == opened:
            conn.path, conn.inode = path, opened
            _record_owner(path, opened)
            return conn
        # renamed over while we opened it: we may hold the new file read through the old
        # file's WAL, and closing would checkpoint those old pages into the new file
        _close_without_checkpoint(conn)
    raise IndexUnavailable(f"index {path} was replaced each time it was opened")


def _close_without_checkpoint(conn: sqlite3.Connection) -> None:
    """Close without SQLite's checkpoint on close (Python 3.12+: ``setconfig``; 3.11 has no
    way to ask, and closes as usual: a rename in the microseconds of an open is a gap)."""
    setconfig = getattr(conn, "setconfig", None)
    if setconfig is not None:
        setconfig(sqlite3.SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, True)
    conn.close()


def _open(path: Path, *, readonly: bool, cache_kib: int | None) -> IndexConnection:
    try:
        if readonly:
            if not path.exists():
                raise IndexUnavailable(f"index {path} does not exist (run a sync or import first)")
            _guard_replaced(path)
            # read-write with query_only, not mode=ro: a read-only connection that closes
            # last leaves the WAL behind, and a replaced file's WAL must go
            conn = sqlite3.connect(
                f"file:{path}?mode=rw", uri=True, timeout=BUSY_TIMEOUT_MS / 1000,
                check_same_thread=False, factory=IndexConnection,
            )
            conn.execute("PRAGMA query_only=1")
        else:
            if path.parent and not path.parent.exists():
                path.parent.mkdir(parents=True, exist_ok=True)
            _guard_replaced(path)  # also for a new file where a deleted one's WAL is left
            conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_MS / 1000, check_same_thread=False,
                                   factory=IndexConnection)
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
    committed on success and rolled back on any exception. Inside another one it is a
    savepoint: the steps commit together with the outer transaction (a feed's new rows and
    their suppression marks, so that readers never see one without the other)."""
    if conn.in_transaction:
        conn.execute("SAVEPOINT atr_step")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK TO atr_step")
            conn.execute("RELEASE atr_step")
            raise
        conn.execute("RELEASE atr_step")
        return
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
