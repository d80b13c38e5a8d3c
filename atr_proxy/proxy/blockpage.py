"""The block page: an HTML template file (operator-replaceable) or plain text, by Accept.

The template uses ``string.Template`` placeholders (``$event_id``, ``$time``,
``$indicator``, ``$kind``, ``$feed``, ``$module``, ``$url``, ``$host``, ``$client``,
``$detail``); every value is HTML-escaped before it is put in, so a hostile URL or host
name shows as text and never as markup.
"""

from __future__ import annotations

import html
import time
from dataclasses import dataclass
from pathlib import Path
from string import Template

from ..errors import ConfigError
from ..events import Event

DEFAULT_TEMPLATE = Path(__file__).with_name("block_page.html")
FIELDS = ("event_id", "time", "indicator", "kind", "feed", "module", "url", "host", "client",
          "detail")


@dataclass(frozen=True)
class Rendered:
    content_type: str
    body: bytes


class BlockPage:
    """Renders the page shown for a blocked request."""

    def __init__(self, path: str | Path | None = None) -> None:
        """Load and check the template (``proxy.block_page``, else the bundled one); raises
        ConfigError naming the file if it cannot be read or has an unknown placeholder."""
        self.path = Path(path) if path else DEFAULT_TEMPLATE
        try:
            text = self.path.read_text(encoding="utf-8")
        except (OSError, UnicodeError) as exc:
            raise ConfigError("proxy.block_page", f"cannot read {self.path}: {exc}") from None
        self.template = Template(text)
        try:
            self.template.substitute({name: "" for name in FIELDS})
        except (KeyError, ValueError) as exc:
            what = f"unknown placeholder ${exc.args[0]}" if isinstance(exc, KeyError) \
                else str(exc)
            raise ConfigError(
                "proxy.block_page",
                f"{self.path}: {what} (known: {', '.join('$' + f for f in FIELDS)};"
                " write $$ for a dollar sign)",
            ) from None

    def render(self, event: Event, *, accept: str = "", url: str | None = None,
               host: str | None = None) -> Rendered:
        """HTML if the client accepts it (browsers do), plain text otherwise."""
        values = _values(event, url=url, host=host)
        if "text/html" in accept or "application/xhtml+xml" in accept:
            escaped = {k: html.escape(v, quote=True) for k, v in values.items()}
            return Rendered("text/html; charset=utf-8",
                            self.template.substitute(escaped).encode("utf-8"))
        lines = ["Blocked by atr-proxy: this address is listed in a threat feed.", ""]
        for label, key in (("URL", "url"), ("Indicator", "indicator"), ("Kind", "kind"),
                           ("Feed", "feed"), ("Module", "module"), ("Time", "time"),
                           ("Event id", "event_id"), ("Client", "client")):
            lines.append(f"{label + ':':<11}{_printable(values[key])}")
        if values["detail"]:
            lines += ["", _printable(values["detail"])]
        return Rendered("text/plain; charset=utf-8", ("\n".join(lines) + "\n").encode("utf-8"))


def _values(event: Event, *, url: str | None, host: str | None) -> dict[str, str]:
    when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(event.at))
    return {
        "event_id": event.event_id,
        "time": when,
        "indicator": event.indicator or "-",
        "kind": event.kind or "-",
        "feed": event.feed or "-",
        "module": event.module or "-",
        "url": url or event.url or "-",
        "host": host or event.dest_host or event.dest_ip or "-",
        "client": event.client_ip or "-",
        "detail": event.detail or "",
    }


def _printable(text: str) -> str:
    """Control characters shown as escapes: a plain-text page must not drive a terminal."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
