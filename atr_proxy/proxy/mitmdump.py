"""mitmdump with the atr-proxy addon built in: what ``atr-proxy proxy`` runs.

``python -m atr_proxy.proxy.mitmdump [mitmdump arguments]`` is mitmdump (same options,
same output) with ``AtrFilter`` registered on the master itself. ``mitmdump -s
addons/atr_filter.py`` gives the same behaviour, but mitmproxy walks a script's wrapper
objects on every event: an empty script alone measured 30-40 us of CPU a plain-HTTP
request over bare mitmdump (about 4%, on a noisy shared machine).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import IO, Any

from mitmproxy.tools import cmdline, dump
from mitmproxy.tools import main as mitmproxy_main

from .addon import AtrFilter


class AtrDumpMaster(dump.DumpMaster):
    """mitmdump's master, plus the filter."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.addons.add(AtrFilter())


class TolerantStream:
    """Standard output that never raises. mitmproxy's terminal log exits the process on
    the first failed write (mitmproxy#4669, for a closed pipe): with the log redirected to
    a file on a full disk, that would take the proxy down with it. Enforcement matters
    more than the log: failed writes are dropped and counted."""

    def __init__(self, inner: IO[str]) -> None:
        self.inner = inner
        self.dropped = 0

    def write(self, text: str) -> int:
        try:
            return self.inner.write(text)
        except OSError:
            self.dropped += 1
            return len(text)

    def flush(self) -> None:
        try:
            self.inner.flush()
        except OSError:
            self.dropped += 1

    def __getattr__(self, name: str) -> Any:  # isatty, fileno, encoding, ...
        return getattr(self.inner, name)


def run(argv: Sequence[str] | None = None) -> None:
    sys.stdout = TolerantStream(sys.stdout)  # type: ignore[assignment]
    sys.stderr = TolerantStream(sys.stderr)  # type: ignore[assignment]

    def extra(args: Any) -> dict[str, str]:  # as mitmdump's own entry point does
        if args.filter_args:
            text = " ".join(args.filter_args)
            return dict(save_stream_filter=text, readfile_filter=text, dumper_filter=text)
        return {}

    mitmproxy_main.run(AtrDumpMaster, cmdline.mitmdump,
                       list(argv) if argv is not None else sys.argv[1:], extra)


if __name__ == "__main__":
    run()
