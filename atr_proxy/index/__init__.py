"""The SQLite index: schema and migrations, the writer, read queries, and the snapshot watcher."""

from .db import connect, resolve_path, transaction
from .writer import Diff, FeedSpec, IndexWriter

__all__ = ["Diff", "FeedSpec", "IndexWriter", "connect", "resolve_path", "transaction"]
