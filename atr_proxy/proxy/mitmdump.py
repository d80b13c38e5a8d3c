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
from typing import Any

from mitmproxy.tools import cmdline, dump
from mitmproxy.tools import main as mitmproxy_main

from .addon import AtrFilter


class AtrDumpMaster(dump.DumpMaster):
    """mitmdump's master, plus the filter."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.addons.add(AtrFilter())


def run(argv: Sequence[str] | None = None) -> None:
    def extra(args: Any) -> dict[str, str]:  # as mitmdump's own entry point does
        if args.filter_args:
            text = " ".join(args.filter_args)
            return dict(save_stream_filter=text, readfile_filter=text, dumper_filter=text)
        return {}

    mitmproxy_main.run(AtrDumpMaster, cmdline.mitmdump,
                       list(argv) if argv is not None else sys.argv[1:], extra)


if __name__ == "__main__":
    run()
