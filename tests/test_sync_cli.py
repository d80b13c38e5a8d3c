"""``atr-proxy sync --once``, ``atr-proxy feeds`` and ``feeds test`` as real subprocesses."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from .conftest import atr_cli
from .feedserver import FeedServer, Route


def run(*args: str, config: Path, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([*atr_cli(), "--config", str(config), *args], capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL)


@pytest.fixture
def setup(tmp_path: Path):
    with FeedServer() as server:
        server.add("/good.txt", Route(b"# list\nevil-cli.example\n198.51.100.77\nbad line!\n"))
        server.add("/down.txt", Route(b"no", status=503))
        cfg = tmp_path / "atr.yaml"
        cfg.write_text(json.dumps({
            "index": "index.db",
            "sync": {"retries": 0},
            "feeds": [
                {"name": "good", "url": server.url("/good.txt"), "format": "plain"},
                {"name": "down", "url": server.url("/down.txt")},
                {"preset": "openphish", "url": server.url("/good.txt"), "enabled": False},
            ],
        }))
        yield server, cfg


def test_sync_once_json_reports_each_feed_and_fails_when_one_fails(setup):
    server, cfg = setup
    r = run("sync", "--once", "--json", config=cfg)
    assert r.returncode == 1, r.stderr
    out = {o["feed"]: o for o in json.loads(r.stdout)}
    assert set(out) == {"good", "down"}
    assert out["good"]["status"] == "ok" and out["good"]["added"] == 2
    assert out["good"]["rejected"] == 1 and out["good"]["rejected_samples"][0][1] == "bad line!"
    assert out["down"]["status"] == "error" and "HTTP 503" in out["down"]["error"]
    r = run("sync", "--once", "--feed", "good", config=cfg)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("good: not modified (2 indicators, ")


def test_feeds_table_and_json_show_status(setup):
    server, cfg = setup
    run("sync", "--once", config=cfg)
    r = run("feeds", "--json", config=cfg)
    assert r.returncode == 0, r.stderr
    rows = {x["name"]: x for x in json.loads(r.stdout)}
    assert rows["good"]["status"] == "ok" and rows["good"]["indicator_count"] == 2
    assert rows["down"]["status"] == "error" and "HTTP 503" in rows["down"]["last_error"]
    assert rows["openphish"]["enabled"] is False and rows["openphish"]["module"] == "xops"
    table = run("feeds", config=cfg).stdout.splitlines()
    assert table[0].split()[:4] == ["FEED", "MODULE", "ACTION", "STATUS"]
    line = next(x for x in table if x.startswith("down "))
    assert "error" in line and "HTTP 503" in line
    assert "disabled" in next(x for x in table if x.startswith("openphish "))


def test_feeds_test_fetches_and_parses_but_stores_nothing(setup, tmp_path):
    server, cfg = setup
    r = run("feeds", "test", "good", config=cfg)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("good: OK") and "2 indicators, 1 rejected" in r.stdout
    assert "evil-cli.example" in r.stdout
    data = json.loads(run("feeds", "test", "good", "--json", config=cfg).stdout)
    assert data["indicators"] == 2 and data["sample"][0]["value"] == "evil-cli.example"
    failed = run("feeds", "test", "down", config=cfg)
    assert failed.returncode == 1 and "FAILED" in failed.stdout and "503" in failed.stdout
    assert not (tmp_path / "index.db").exists()


def test_feeds_presets_lists_the_vendor_feeds(setup):
    _, cfg = setup
    r = run("feeds", "presets", "--json", config=cfg)
    names = {p["name"] for p in json.loads(r.stdout)}
    assert {"urlhaus", "threatfox", "feodotracker", "spamhaus-drop", "spamhaus-dropv6",
            "openphish"} <= names


def test_a_config_error_names_the_key(tmp_path):
    cfg = tmp_path / "atr.yaml"
    cfg.write_text("feeds:\n  - name: x\n    url: http://127.0.0.1:9/x\n    interval: soon\n")
    r = run("sync", "--once", config=cfg)
    assert r.returncode == 1
    assert "feeds[0].interval" in r.stderr and "'soon' is not a duration" in r.stderr
