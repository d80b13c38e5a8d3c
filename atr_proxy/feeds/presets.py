"""Vendor presets: the well-known public feeds shipped in ``presets.yaml`` (module xops).

A preset is an ordinary feed definition that atr.yaml can name (``- preset: urlhaus``);
the config loader merges it under the feed's own keys. Nothing here fetches anything.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from typing import Any

import yaml

from ..errors import ConfigError

PRESETS_FILE = "presets.yaml"
_INFO_KEYS = ("description", "homepage", "terms")


@dataclass(frozen=True)
class Preset:
    """One vendor feed: ``feed`` holds feed keys as atr.yaml would write them."""

    name: str
    feed: Mapping[str, Any]
    description: str = ""
    homepage: str = ""
    terms: str = ""
    extra: Mapping[str, Any] = field(default_factory=dict)


@lru_cache(maxsize=1)
def load_presets() -> dict[str, Preset]:
    """Every shipped preset by name (read once per process)."""
    text = resources.files(__package__).joinpath(PRESETS_FILE).read_text(encoding="utf-8")
    return parse_presets(yaml.safe_load(text) or {}, PRESETS_FILE)


def parse_presets(data: Any, source: str) -> dict[str, Preset]:
    if not isinstance(data, Mapping):
        raise ConfigError(source, "the presets file must map preset names to feeds")
    out: dict[str, Preset] = {}
    for name, body in data.items():
        if not isinstance(body, Mapping) or "url" not in body:
            raise ConfigError(f"{source}: {name}", "a preset needs at least a url")
        feed = {k: v for k, v in body.items() if k not in _INFO_KEYS}
        feed.setdefault("module", "xops")
        out[str(name)] = Preset(
            name=str(name), feed=feed,
            **{k: str(body.get(k, "")) for k in _INFO_KEYS},
        )
    return out
