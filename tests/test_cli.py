"""The operator commands, run as real subprocesses on a real index."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

ATR = [sys.executable, "-m", "atr_proxy.cli"]


def run(index, *args, check=True, stdin=None):
    proc = subprocess.run([*ATR, "--index", str(index), *args], capture_output=True, text=True,
                          input=stdin, timeout=60)
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}: {proc.stderr}")
    return proc


@pytest.fixture
def plain_list(tmp_path):
    path = tmp_path / "list.txt"
    path.write_bytes(
        b"# a banner\r\n"
        b"evil.example\r\n"
        b"192.0.2.0/24 ; SBL123\r\n"
        b"hxxp://bad[.]example/dl/\r\n"
        b"\r\n"
        b"not a valid entry!\r\n"
        b"ok.example # trailing comment\r\n"
    )
    return path


def test_import_reports_added_total_and_rejected_samples(tmp_path, plain_list):
    index = tmp_path / "i.db"
    out = json.loads(run(index, "import", str(plain_list), "--feed", "mine", "--json").stdout)
    assert out["feed"] == "mine"
    assert (out["added"], out["removed"], out["total"], out["rejected"]) == (4, 0, 4, 1)
    line, text, reason = out["rejected_samples"][0]
    assert line == 6 and "not a valid entry" in text and reason
    # the same file again changes nothing; a smaller one removes what is gone
    again = json.loads(run(index, "import", str(plain_list), "--feed", "mine", "--json").stdout)
    assert (again["added"], again["removed"], again["total"]) == (0, 0, 4)
    smaller = tmp_path / "small.txt"
    smaller.write_text("evil.example\n")
    out = json.loads(run(index, "import", str(smaller), "--feed", "mine", "--json").stdout)
    assert (out["added"], out["removed"], out["total"]) == (0, 3, 1)


def test_lookup_json_names_verdict_and_hits(tmp_path, plain_list):
    index = tmp_path / "i.db"
    run(index, "import", str(plain_list), "--feed", "mine")
    results = json.loads(run(index, "lookup", "WWW.Evil.Example.", "http://bad.example/dl/x.exe",
                             "192.0.2.77", "notevil.example", "--json").stdout)
    by_value = {r["value"]: r for r in results}
    sub = by_value["WWW.Evil.Example."]
    assert (sub["kind"], sub["canonical"], sub["verdict"]) == ("domain", "www.evil.example", "block")
    assert sub["hits"] == [{"indicator": "evil.example", "kind": "domain", "match": "subtree",
                            "feed": "mine", "module": "third_party", "action": "block",
                            "target": "host"}]
    assert by_value["http://bad.example/dl/x.exe"]["hits"][0]["indicator"] == "bad.example/dl/"
    assert by_value["192.0.2.77"]["hits"][0]["indicator"] == "192.0.2.0/24"
    assert by_value["notevil.example"]["verdict"] == "allow"


def test_lookup_with_client_and_text_output(tmp_path):
    index = tmp_path / "i.db"
    run(index, "import", "-", "--feed", "clients", "--type", "ip", stdin="127.0.0.9\n")
    text = run(index, "lookup", "good.example", "--client", "127.0.0.9").stdout
    assert "good.example: domain good.example -> block" in text
    assert "127.0.0.9" in text and "on client" in text


def test_import_of_an_html_page_is_rejected_and_feed_kept(tmp_path, plain_list):
    index = tmp_path / "i.db"
    run(index, "import", str(plain_list), "--feed", "mine")
    page = tmp_path / "error.html"
    page.write_text("<!DOCTYPE html><html><body>502 Bad Gateway</body></html>")
    proc = run(index, "import", str(page), "--feed", "mine", check=False)
    assert proc.returncode == 1 and "error.html" in proc.stderr
    assert json.loads(run(index, "lookup", "evil.example", "--json").stdout)[0]["verdict"] == "block"


def test_empty_file_does_not_empty_a_feed_without_allow_empty(tmp_path, plain_list):
    index = tmp_path / "i.db"
    run(index, "import", str(plain_list), "--feed", "mine")
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing today\n")
    proc = run(index, "import", str(empty), "--feed", "mine", check=False)
    assert proc.returncode == 1 and "--allow-empty" in proc.stderr
    out = json.loads(run(index, "import", str(empty), "--feed", "mine", "--allow-empty",
                         "--json").stdout)
    assert out["total"] == 0 and out["removed"] == 4


def test_hosts_format_and_exact_match(tmp_path):
    index = tmp_path / "i.db"
    hosts = tmp_path / "hosts"
    hosts.write_text("127.0.0.1 localhost\n0.0.0.0 ads.example tracker.example # two\n")
    out = json.loads(run(index, "import", str(hosts), "--feed", "h", "--format", "hosts",
                         "--match", "exact", "--json").stdout)
    assert out["total"] == 2
    results = json.loads(run(index, "lookup", "ads.example", "x.ads.example", "--json").stdout)
    assert [r["verdict"] for r in results] == ["block", "allow"]


def test_exceptions_add_list_remove(tmp_path, plain_list):
    index = tmp_path / "i.db"
    run(index, "import", str(plain_list), "--feed", "mine")
    added = json.loads(run(index, "exceptions", "add", "destination", "safe.evil.example",
                           "--comment", "vendor", "--json").stdout)
    results = json.loads(run(index, "lookup", "a.safe.evil.example", "b.evil.example",
                             "--json").stdout)
    assert [r["verdict"] for r in results] == ["allow", "block"]
    assert results[0]["excepted"][0]["exception"] == "safe.evil.example"
    listed = json.loads(run(index, "exceptions", "list", "--json").stdout)
    assert [(e["id"], e["scope"], e["value"], e["comment"]) for e in listed] == [
        (added["id"], "destination", "safe.evil.example", "vendor")]
    run(index, "exceptions", "remove", str(added["id"]))
    assert json.loads(run(index, "exceptions", "list", "--json").stdout) == []
    bad = run(index, "exceptions", "add", "source", "not-an-ip", check=False)
    assert bad.returncode == 1 and "not-an-ip" in bad.stderr


def test_config_error_names_the_key(tmp_path):
    cfg = tmp_path / "atr.yaml"
    cfg.write_text("index: x.db\nproxy:\n  intercept: sometimes\n")
    proc = subprocess.run([*ATR, "--config", str(cfg), "lookup", "a.example"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert "proxy.intercept" in proc.stderr and "sometimes" in proc.stderr
