"""The one exception family of atr-proxy.

Every error says what is at fault (a feed, a file and line, a config key) and, where it
can, what to do about it.
"""

from __future__ import annotations


class AtrError(Exception):
    """Base class of every error atr-proxy raises on purpose."""


class InvalidIndicator(AtrError, ValueError):
    """A value is not a valid domain, URL or IP indicator; the message says why."""

    def __init__(self, value: object, reason: str) -> None:
        self.value = value
        self.reason = reason
        shown = repr(value)
        if len(shown) > 120:
            shown = shown[:117] + "..."
        super().__init__(f"{shown}: {reason}")


class ConfigError(AtrError):
    """The configuration is invalid; `path` names the key (e.g. ``feeds[2].url``)."""

    def __init__(self, path: str, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(f"{path}: {reason}" if path else reason)


class IndexUnavailable(AtrError):
    """The SQLite index cannot be opened, read or written."""


class FeedError(AtrError):
    """A feed could not be fetched or parsed; the feed keeps its last good indicators."""

    def __init__(self, feed: str, reason: str) -> None:
        self.feed = feed
        self.reason = reason
        super().__init__(f"feed {feed!r}: {reason}")


class RejectedFile(AtrError):
    """A whole input file was refused (not a list, or it would empty a feed)."""


class ShrinkHeld(AtrError):
    """A feed update would remove more than ``max_shrink`` of the feed: held back, not
    applied, until an operator looks (or the feed recovers)."""
