"""The feed parts of atr.yaml: presets, per-feed keys, format options, suppression lists,
exceptions and the sync section, validated when the file is loaded."""

from __future__ import annotations

from pathlib import Path

import pytest

from atr_proxy import config
from atr_proxy.errors import ConfigError
from atr_proxy.feeds.presets import load_presets

ENV = {"ABUSE_KEY": "k-123", "FEED_PW": "pw"}


def load_text(tmp_path: Path, text: str) -> config.Settings:
    path = tmp_path / "atr.yaml"
    path.write_text(text)
    return config.load(path, env=ENV)


def error_of(data: dict) -> ConfigError:
    with pytest.raises(ConfigError) as err:
        config.from_mapping(data, env=ENV)
    return err.value


def test_enabling_a_preset_is_one_line(tmp_path):
    settings = load_text(tmp_path, "feeds:\n  - preset: urlhaus\n")
    [feed] = settings.feeds
    assert (feed.name, feed.module, feed.format, feed.type) == ("urlhaus", "xops", "csv", "url")
    assert feed.url.startswith("https://urlhaus.abuse.ch/") and feed.enabled
    assert feed.options == {"column": "url"} and feed.interval == 900


def test_preset_keys_are_overridden_by_the_feed_and_options_merge(tmp_path):
    settings = load_text(tmp_path, """
feeds:
  - preset: threatfox
    name: tf
    action: monitor
    interval: 6h
    options: {json_malware: malware}
    auth: {type: api_key, name: Auth-Key, value: "${ABUSE_KEY}"}
""")
    [feed] = settings.feeds
    assert feed.name == "tf" and settings.feed_action(feed) == "monitor"
    assert feed.interval == 6 * 3600
    assert feed.options["json_malware"] == "malware"
    assert feed.options["json_value"] == "ioc_value"  # kept from the preset
    assert feed.auth.value.reveal() == "k-123" and "k-123" not in repr(feed)


def test_every_preset_is_a_valid_disabled_by_default_feed():
    presets = load_presets()
    assert {"urlhaus", "threatfox", "feodotracker", "spamhaus-drop", "spamhaus-dropv6",
            "openphish"} <= set(presets)
    for name, preset in presets.items():
        assert "enabled" not in preset.feed  # nothing runs unless atr.yaml names it
        [feed] = config.from_mapping({"feeds": [{"preset": name}]}).feeds
        assert feed.module == "xops" and feed.url.startswith("https://"), name
        assert preset.description and preset.homepage


def test_presets_run_only_when_named():
    assert config.from_mapping({}).feeds == ()


@pytest.mark.parametrize("feed,path,words", [
    ({"preset": "nope"}, "feeds[0].preset", "unknown preset 'nope'"),
    ({"name": "bad name!", "url": "http://x/"}, "feeds[0].name", "letters, digits"),
    ({"name": "x", "url": "ftp://x/"}, "feeds[0].url", "http, https or file"),
    ({"name": "x", "url": "http://x/", "interval": "often"}, "feeds[0].interval",
     "not a duration"),
    ({"name": "x", "url": "http://x/", "format": "xml"}, "feeds[0].format", "not one of"),
    ({"name": "x", "url": "http://x/", "options": {"column": -2}}, "feeds[0].options.column",
     "column number"),
    ({"name": "x", "url": "http://x/", "options": {"delimiter": "ab"}},
     "feeds[0].options.delimiter", "one character"),
    ({"name": "x", "url": "http://x/", "options": {"type_map": {"md5": "hash"}}},
     "feeds[0].options.type_map.md5", "not one of domain, url, ip, skip"),
    ({"name": "x", "url": "http://x/", "auth": {"type": "basic", "user": "u"}},
     "feeds[0].auth.password", "required for auth type basic"),
    ({"name": "x", "url": "http://x/", "auth": {"type": "bearer", "token": "${NOPE}"}},
     "feeds[0].auth.token", "NOPE is not set"),
    ({"name": "x", "url": "http://x/", "max_shrink": 2}, "feeds[0].max_shrink", "between"),
])
def test_feed_errors_name_the_key(feed, path, words):
    err = error_of({"feeds": [feed]})
    assert err.path == path and words in err.reason


def test_exceptions_and_sync_section_are_validated():
    err = error_of({"exceptions": [{"scope": "source", "value": "evil.example"}]})
    assert err.path == "exceptions[0].value"
    err = error_of({"exceptions": [{"value": "not a domain!"}]})
    assert err.path == "exceptions[0].value"
    err = error_of({"sync": {"concurrency": 0}})
    assert err.path == "sync.concurrency"
    err = error_of({"sync": {"speed": 1}})
    assert err.path == "sync.speed"
    settings = config.from_mapping({"sync": {"concurrency": 8, "backoff": "2s",
                                             "keep_changes": "3d"}})
    assert (settings.sync.concurrency, settings.sync.backoff, settings.sync.keep_changes) == \
        (8, 2.0, 3 * 86400)


def test_json_config_with_every_feed_key(tmp_path):
    ca = tmp_path / "ca.pem"
    settings = load_text(tmp_path, """{
  "index": "idx.db",
  "feeds": [{"name": "full", "module": "third_party", "url": "file://lists/a.txt",
             "format": "csv", "type": "url", "action": "monitor", "enabled": true,
             "order": 2, "interval": "30d",
             "auth": {"type": "basic", "user": "ana", "password": "${FEED_PW}"},
             "verify_tls": false, "ca_file": "ca.pem", "timeout": "45s",
             "max_bytes": "64M", "match": "exact", "expire_after": "7d",
             "max_shrink": 0.2,
             "options": {"column": 2, "delimiter": ";", "comment_prefixes": ["#"]}}],
  "suppress": [{"name": "top", "path": "top.txt", "format": "plain"}]
}""")
    [f] = settings.feeds
    assert f.url == f"file://{(tmp_path / 'lists/a.txt').resolve()}"
    assert (f.order, f.interval, f.timeout, f.max_bytes, f.expire_after, f.max_shrink) == \
        (2, 30 * 86400, 45, 64 * 1024**2, 7 * 86400, 0.2)
    assert f.ca_file == str(ca) and f.verify_tls is False and f.match == "exact"
    assert f.auth.password.reveal() == "pw" and "pw" not in f"{f.auth.password}"
    assert settings.suppress[0].path == str(tmp_path / "top.txt")
