"""``atr-proxy run``: the bundled demo, the supervisor, and one real run on free loopback
ports with curl and dig as the clients (the commands docker-compose.yml runs, natively)."""

from __future__ import annotations

import io
import os
import shutil
import signal
import sys
import threading
import time
from pathlib import Path

import pytest

from atr_proxy import config
from atr_proxy.admin import commands as run_cmd
from atr_proxy.events import EventWriter, recent
from atr_proxy.index import connect
from tests.operator_harness import DashboardSession, shared_run
from tests.proxy_harness import Origin

needs_tools = pytest.mark.skipif(
    not (shutil.which("curl") and shutil.which("dig")),
    reason="needs curl and dig (make deps-test deps-operator)")


# -- the demo config ----------------------------------------------------------------------
def test_demo_config_is_written_with_absolute_paths_and_loads(tmp_path: Path) -> None:
    path = run_cmd.demo_config(tmp_path, proxy="127.0.0.1:18080", dns="127.0.0.1:15353",
                               admin="127.0.0.1:18081", upstreams=["127.0.0.1:53000"])
    settings = config.load(path)
    assert settings.index == tmp_path.resolve() / "atr-index.db"
    assert Path(settings.proxy.certs) == tmp_path.resolve() / "certs"
    assert settings.events.jsonl == str(tmp_path.resolve() / "events.jsonl")
    assert settings.proxy.listen == ("127.0.0.1", 18080)
    assert settings.dns.listen == ("127.0.0.1", 15353)
    assert settings.dns.upstreams == (("127.0.0.1", 53000),)
    assert settings.admin.listen == ("127.0.0.1", 18081)
    formats = {f.format for f in settings.feeds}
    assert {"plain", "hosts", "adblock", "csv", "stix2"} <= formats
    for feed in settings.feeds:
        assert feed.url.startswith("file:///")
        assert Path(feed.url[len("file://"):]).is_file(), feed.url


def test_examples_folder_is_the_bundled_demo() -> None:
    root = Path(__file__).resolve().parents[1]
    assert (root / "examples" / "atr.yaml").resolve() == run_cmd.DEMO_CONFIG.resolve()
    assert config.load(root / "examples" / "atr.yaml").feeds


def test_run_refuses_demo_options_with_a_config(tmp_path: Path) -> None:
    from atr_proxy.cli import main

    cfg = tmp_path / "atr.yaml"
    cfg.write_text("index: x.db\n")
    assert main(["--config", str(cfg), "run", "--proxy-listen", "127.0.0.1:1"]) == 1


# -- the supervisor -----------------------------------------------------------------------
def test_supervisor_restarts_a_dead_child_with_backoff_and_records_an_event(
        tmp_path: Path) -> None:
    index = tmp_path / "index.db"
    connect(index).close()
    events = EventWriter(index, None)
    crasher = run_cmd.Child("dns", [sys.executable, "-c", "import sys; sys.exit(3)"])
    sleeper = run_cmd.Child("sync", [sys.executable, "-c", "import time; time.sleep(60)"])
    out = io.StringIO()
    sup = run_cmd.Supervisor([sleeper, crasher], events=events, out=out)
    stop = threading.Event()
    timer = threading.Timer(4.0, stop.set)
    timer.start()
    try:
        sup.run(until=stop)  # 4 s: exits at ~0, restarts at ~1 s and ~3 s
    finally:
        timer.cancel()
        sup.stop(grace=5)
        events.close()
    assert 2 <= crasher.restarts <= 3, out.getvalue()
    assert crasher.exits[:2] == [3, 3]
    assert crasher.backoff >= 4  # 1 s, then 2 s, then 4 s
    assert sleeper.restarts == 0 and sleeper.proc is None or sleeper.proc.poll() is not None
    assert "dns exited with code 3" in out.getvalue()
    rows = recent(connect(index), source="admin", traffic="system")
    assert len(rows) == crasher.restarts
    assert rows[0]["indicator"] is None and "dns exited with code 3" in rows[0]["detail"]


def test_supervisor_stop_kills_a_child_that_ignores_sigterm(tmp_path: Path) -> None:
    stubborn = run_cmd.Child("proxy", [
        sys.executable, "-c",
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN);"
        " print('ready', flush=True); time.sleep(60)"])
    out = io.StringIO()
    sup = run_cmd.Supervisor([stubborn], out=out)
    sup.check()
    deadline = time.monotonic() + 10
    while "ready" not in out.getvalue() and time.monotonic() < deadline:
        time.sleep(0.05)
    proc = stubborn.proc
    started = time.monotonic()
    sup.stop(grace=1)
    assert proc.poll() == -signal.SIGKILL
    assert time.monotonic() - started < 6
    assert "did not stop in 1 s: killing it" in out.getvalue()


# -- one real run -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def atr_run(pytestconfig, tmp_path_factory):
    if not (shutil.which("curl") and shutil.which("dig")):
        pytest.skip("needs curl and dig (make deps-test deps-operator)")
    return shared_run(pytestconfig, tmp_path_factory)


@needs_tools
def test_run_prints_addresses_and_what_to_try(atr_run) -> None:
    log = atr_run.log()
    assert f"proxy      http://127.0.0.1:{atr_run.proxy_port}" in log
    assert f"dashboard  http://127.0.0.1:{atr_run.admin_port}/" in log
    assert f"curl -x http://127.0.0.1:{atr_run.proxy_port} http://malware.example/" in log
    assert f"dig @127.0.0.1 -p {atr_run.dns_port} malware.example" in log
    assert (atr_run.state / "certs" / "mitmproxy-ca-cert.pem").is_file()
    assert set(atr_run.children) == {"sync", "dns", "proxy"}


@needs_tools
def test_demo_indicator_is_blocked_by_the_proxy_and_sinkholed_by_dns(atr_run) -> None:
    result = atr_run.curl("http://malware.example/")
    body, status = result.stdout.rsplit("\n", 1)
    assert status == "403", result
    assert "Blocked by atr-proxy" in body and "Indicator: malware.example" in body
    assert "Feed:      demo-plain" in body
    html = atr_run.curl("http://www.malware.example/a", "-H", "Accept: text/html").stdout
    assert "<html" in html.lower() and "malware.example" in html

    answer = atr_run.dig("malware.example")
    assert "status: NXDOMAIN" in answer, answer
    assert "EDE: 15 (Blocked)" in answer and "feed demo-plain" in answer
    answer = atr_run.dig("c2.example", "AAAA", "+tcp")  # a vendor (xops) feed, over TCP
    assert "status: NXDOMAIN" in answer and "feed demo-c2" in answer

    # both blocks are events, newest first, through the admin API
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        status, data = atr_run.api("GET", "/api/v1/events?limit=50")
        sources = {(e["source"], e["indicator"]) for e in data["events"]}
        if {("proxy", "malware.example"), ("dns", "malware.example")} <= sources:
            break
        time.sleep(0.2)
    assert {("proxy", "malware.example"), ("dns", "malware.example")} <= sources
    assert data["events"][0]["at"] >= data["events"][-1]["at"]


@needs_tools
def test_dashboard_exception_lifts_a_block_within_a_second(atr_run) -> None:
    origin = Origin("127.0.0.3")
    try:
        status, _ = atr_run.api("POST", "/api/v1/mdr/indicators",
                                [{"value": "127.0.0.3", "action": "block",
                                  "comment": "test_run"}])
        assert status == 201
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            result = atr_run.curl(origin.url())
            if result.stdout.endswith("\n403"):
                break
            time.sleep(0.1)
        assert result.stdout.endswith("\n403") and "127.0.0.3" in result.stdout, result

        dash = DashboardSession(atr_run.admin, atr_run.token)
        status, made = dash.call("POST", "exceptions",
                                 {"scope": "destination", "value": "127.0.0.3",
                                  "comment": "from the dashboard"})
        assert status == 201, made
        added = time.monotonic()
        while time.monotonic() - added < 3:
            result = atr_run.curl(origin.url())
            if result.stdout.endswith("\n200"):
                break
            time.sleep(0.05)
        took = time.monotonic() - added
        assert result.stdout == "origin ok /\n" + "\n200", result
        assert took < 1.0, f"the exception took {took:.2f} s"
    finally:
        origin.close()


@needs_tools
def test_a_killed_child_is_restarted_and_the_restart_is_an_event(atr_run) -> None:
    dns_pid = atr_run.children["dns"]
    os.kill(dns_pid, signal.SIGKILL)
    deadline = time.monotonic() + 15
    new_pid = None
    while time.monotonic() < deadline:
        new_pid = atr_run.child_pids().get("dns")
        if new_pid and new_pid != dns_pid and "status: NXDOMAIN" in atr_run.dig(
                "ransomware.test"):
            break
        time.sleep(0.2)
    assert new_pid and new_pid != dns_pid, atr_run.log()[-2000:]
    atr_run.children["dns"] = new_pid
    assert "dns exited with signal 9" in atr_run.log()
    status, data = atr_run.api("GET", "/api/v1/events?source=admin&traffic=system")
    assert any("dns exited with signal 9" in (e["detail"] or "") for e in data["events"])


@needs_tools
def test_run_stops_every_child_on_sigterm(atr_run) -> None:
    children = atr_run.child_pids()
    assert set(children) == {"sync", "dns", "proxy"}
    code = atr_run.stop()
    assert code == 0, atr_run.log()[-2000:]
    for role, pid in children.items():
        assert not Path(f"/proc/{pid}").exists() or "Z" in Path(
            f"/proc/{pid}/stat").read_text().split()[2], role
    assert atr_run.log().rstrip().endswith("run   | stopped")
