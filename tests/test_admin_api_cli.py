"""``atr-proxy mdr`` and the running worker process (``atr-proxy sync`` with its admin API)
as real subprocesses."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from .conftest import api_up, atr_cli
from .feedserver import FeedServer, Route
from .support import free_port, stop_process


def cli(*args: str, index: Path, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([*atr_cli(), "--index", str(index), *args], capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def test_mdr_add_list_remove(tmp_path: Path):
    index = tmp_path / "index.db"
    r = cli("mdr", "add", "evil-cli.example", "203.0.113.9", "--ttl", "7d",
            "--comment", "case 7", "--json", index=index)
    assert r.returncode == 0, r.stderr
    added = json.loads(r.stdout)
    assert [a["value"] for a in added] == ["evil-cli.example", "203.0.113.9"]
    assert all(a["feed"] == "mdr" and a["expires_at"] for a in added)
    r = cli("mdr", "add", "http://watch.example/a", "--action", "monitor", index=index)
    assert r.returncode == 0 and "monitor url watch.example/a (feed mdr-monitor)" in r.stdout
    listed = json.loads(cli("mdr", "list", "--json", index=index).stdout)
    assert listed["total"] == 3 and listed["items"][0]["value"] == "watch.example/a"
    assert json.loads(cli("mdr", "list", "-q", "case 7", "--json", index=index).stdout)[
        "total"] == 2
    look = json.loads(cli("lookup", "www.evil-cli.example", "--json", index=index).stdout)
    assert look[0]["verdict"] == "block" and look[0]["hits"][0]["module"] == "mdr"
    r = cli("mdr", "remove", str(added[0]["id"]), "203.0.113.9", index=index)
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("removed") == 2
    assert cli("mdr", "remove", "nothing.example", index=index).returncode == 1
    bad = cli("mdr", "add", "not a domain!", index=index)
    assert bad.returncode == 1 and "'not a domain!': value:" in bad.stderr
    look = json.loads(cli("lookup", "evil-cli.example", "--json", index=index).stdout)
    assert look[0]["verdict"] == "allow"


@pytest.fixture
def worker_process(tmp_path: Path):
    """``atr-proxy sync`` with its admin API on a free loopback port."""
    with FeedServer() as server:
        url = server.add("/list.txt", Route(b"evil-run.example\n"))
        port = free_port()
        cfg = tmp_path / "atr.yaml"
        cfg.write_text(json.dumps({
            "index": "index.db",
            "feeds": [{"name": "list", "url": url, "interval": "1h"}],
            "admin": {"listen": f"127.0.0.1:{port}", "token": "${TEST_ADMIN_TOKEN}"},
            "events": {"jsonl": "events.jsonl"},
        }))
        env = {**os.environ, "TEST_ADMIN_TOKEN": "tok-proc"}
        proc = subprocess.Popen([*atr_cli(), "--config", str(cfg), "sync"], env=env,
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        try:
            base = f"http://127.0.0.1:{port}"
            if not api_up(base, proc, 20):
                pytest.fail("the worker's admin API did not come up")
            yield proc, base, tmp_path / "index.db", server
        finally:
            stop_process(proc, 15)


def test_the_worker_syncs_serves_the_api_and_stops_cleanly(worker_process):
    proc, base, index, server = worker_process
    auth = {"Authorization": "Bearer tok-proc"}
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:  # the feed is fetched at start (spread over <= 5 s)
        feeds = httpx.get(f"{base}/api/v1/feeds", headers=auth, timeout=5).json()["feeds"]
        if next(f for f in feeds if f["name"] == "list")["status"] == "ok":
            break
        time.sleep(0.2)
    else:
        pytest.fail("the feed was not synced")
    pushed = httpx.post(f"{base}/api/v1/mdr/indicators", headers=auth, timeout=5,
                        json=[{"value": "pushed-run.example", "action": "block"}])
    assert pushed.status_code == 201
    look = json.loads(cli("lookup", "pushed-run.example", "evil-run.example", "--json",
                          index=index).stdout)
    assert [x["verdict"] for x in look] == ["block", "block"]
    assert httpx.get(f"{base}/api/v1/feeds", timeout=5).status_code == 401
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(15) == 0
    err = proc.stderr.read()
    assert "admin API on http://127.0.0.1:" in err and "tok-proc" not in err
