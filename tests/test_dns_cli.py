"""``atr-proxy dns`` as a real process, asked with ``dig`` (Debian's dnsutils)."""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import time

import pytest

from .conftest import atr_cli, fill
from .dns_authority import Authority
from .dns_harness import RunningResolver

needs_dig = pytest.mark.skipif(shutil.which("dig") is None,
                               reason="dig is not installed (make deps-test installs dnsutils)")


@pytest.fixture
def upstream():
    with Authority("www.good.test. 300 IN A 192.0.2.1\n"
                   "alias.test. 300 IN CNAME www.evil-cdn.test.\n"
                   "www.evil-cdn.test. 300 IN A 192.0.2.2\n") as auth:
        yield auth


@pytest.fixture
def start_dns(index_path, writer, tmp_path):
    fill(writer, "bad", [("domain", "evil.test"), ("domain", "evil-cdn.test")])
    started: list[RunningResolver] = []

    def start(*args: str, config: str | None = None) -> tuple[subprocess.Popen, int]:
        global_args = ["--index", str(index_path)]
        if config is not None:
            path = tmp_path / "atr.yaml"
            path.write_text(config)
            global_args += ["--config", str(path)]
        resolver = RunningResolver(global_args, tmp_path / f"dns{len(started)}.log",
                                   dns_args=args, cwd=tmp_path)
        started.append(resolver)
        if "enforcing 2 indicators" not in resolver.ready:
            pytest.fail(f"atr-proxy dns did not load the index: {resolver.ready!r}"
                        f" {resolver.stop()}")
        return resolver.process, resolver.port

    yield start
    for resolver in started:
        resolver.stop()


def dig(port: int, *args: str) -> str:
    out = subprocess.run(["dig", "@127.0.0.1", "-p", str(port), "+tries=1", "+time=3", *args],
                         capture_output=True, text=True, timeout=20)
    return out.stdout


def status(output: str) -> str:
    return re.search(r"status: (\w+)", output).group(1)


@needs_dig
def test_dig_sees_the_sinkhole_with_its_ede_and_real_answers_for_the_rest(start_dns,
                                                                          upstream):
    proc, port = start_dns("--upstream", f"127.0.0.1:{upstream.port}")
    blocked = dig(port, "www.evil.test")
    assert status(blocked) == "NXDOMAIN"
    assert re.search(r"EDE: 15 \(Blocked\).*domain evil\.test \(feed bad", blocked), blocked
    assert "sinkhole.atr-proxy.invalid." in blocked  # the SOA of the negative answer
    allowed = dig(port, "www.good.test", "+short")
    assert allowed.strip() == "192.0.2.1"
    assert dig(port, "www.good.test", "+tcp", "+short").strip() == "192.0.2.1"
    assert status(dig(port, "alias.test")) == "NXDOMAIN"  # CNAME into a listed domain
    assert status(dig(port, "www.evil.test", "+noedns")) == "NXDOMAIN"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(10) == 0


@needs_dig
def test_sinkhole_mode_and_allow_list_come_from_the_config(start_dns, upstream):
    config = f"""
dns:
  upstreams: ["127.0.0.1:{upstream.port}"]
  sinkhole: address
  sinkhole_address: ["192.0.2.250", "2001:db8::250"]
  sinkhole_ttl: 15
  allow_clients: ["127.0.0.1/32"]
"""
    proc, port = start_dns(config=config)
    out = dig(port, "www.evil.test", "+noall", "+answer")
    assert re.search(r"www\.evil\.test\.\s+15\s+IN\s+A\s+192\.0\.2\.250", out), out
    assert dig(port, "www.evil.test", "AAAA", "+short").strip() == "2001:db8::250"
    refused = dig(port, "-b", "127.0.0.2", "www.good.test")
    assert status(refused) == "REFUSED"


def test_the_listen_and_upstream_options_are_checked(index_path, writer, tmp_path):
    fill(writer, "bad", [("domain", "evil.test")])
    out = subprocess.run(atr_cli() + ["--index", str(index_path), "dns", "--upstream",
                                      "127.0.0.1:notaport"],
                         capture_output=True, text=True, timeout=30, cwd=tmp_path)
    assert out.returncode == 1 and "--upstream" in out.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text("dns:\n  sinkhole: address\n  sinkhole_address: [not-an-ip]\n")
    out = subprocess.run(atr_cli() + ["--config", str(bad), "--index", str(index_path), "dns"],
                         capture_output=True, text=True, timeout=30, cwd=tmp_path)
    assert out.returncode == 1 and "dns.sinkhole_address[0]" in out.stderr


def test_a_busy_port_is_reported_naming_dns_listen(index_path, writer, tmp_path, upstream):
    fill(writer, "bad", [("domain", "evil.test")])
    started = time.monotonic()
    out = subprocess.run(atr_cli() + ["--index", str(index_path), "dns", "--listen",
                                      f"127.0.0.1:{upstream.port}", "--upstream",
                                      "127.0.0.1:9"],
                         capture_output=True, text=True, timeout=30, cwd=tmp_path)
    assert out.returncode == 1 and "dns.listen" in out.stderr, out.stderr
    assert time.monotonic() - started < 20


def test_forwarding_to_itself_is_refused(index_path, writer, tmp_path):
    fill(writer, "bad", [("domain", "evil.test")])
    out = subprocess.run(atr_cli() + ["--index", str(index_path), "dns", "--listen",
                                      "127.0.0.1:5399", "--upstream", "127.0.0.1:5399"],
                         capture_output=True, text=True, timeout=30, cwd=tmp_path)
    assert out.returncode == 1 and "is this resolver itself" in out.stderr
