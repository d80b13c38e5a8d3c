"""Memory habits of bulk work (parsing a feed, diffing it, building a snapshot).

Bulk work allocates millions of short-lived objects in one go. Two things then cost more
than the work itself: full garbage collections, which walk every live object and come
often while the heap grows, and glibc keeping freed blocks in the heap, which shows as an
RSS that never drops after a build.
"""

from __future__ import annotations

import ctypes
import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def full_collections_paused() -> Iterator[None]:
    """Hold off full (and middle) garbage collections during bulk work.

    Young collections go on: they free the exception cycles that a refused value leaves
    behind, and they stay cheap. The thresholds are restored afterwards, also on error.
    """
    young, middle, old = gc.get_threshold()
    gc.set_threshold(young, max(middle, 1_000_000), max(old, 1_000_000))
    try:
        yield
    finally:
        gc.set_threshold(young, middle, old)


def return_freed_memory() -> None:
    """Give freed heap memory back to the OS (glibc's malloc_trim; a no-op elsewhere)."""
    global _malloc_trim
    if _malloc_trim is None:
        try:
            _malloc_trim = ctypes.CDLL("libc.so.6").malloc_trim
        except (OSError, AttributeError):
            _malloc_trim = False
    if _malloc_trim:
        _malloc_trim(0)


_malloc_trim = None
