"""Event export over syslog (RFC 5424) to real UDP and TCP collectors on loopback."""

from __future__ import annotations

import re
import socket
import time

import pytest

from atr_proxy.errors import ConfigError
from atr_proxy.events import Event, EventWriter, SyslogSink

HEADER = re.compile(
    r"^<(?P<pri>\d+)>1 (?P<ts>\S+) (?P<host>\S+) atr-proxy (?P<pid>\d+) (?P<msgid>\S+)"
    r" \[atr@32473 (?P<sd>(?:[a-z_]+=\"(?:[^\"\\\]]|\\.)*\" ?)+)\] (?P<msg>.*)$", re.S)
PARAM = re.compile(r'([a-z_]+)="((?:[^"\\\]]|\\.)*)"')


def event(**fields: object) -> Event:
    base = dict(event_id="01a2ffffffff00000001", at=1700000000.5, source="proxy",
                traffic="forwarded", action="block", verdict="block", module="third_party",
                feed="demo-plain", indicator="malware.example", kind="domain", target="host",
                client_ip="127.0.0.1", dest_host="www.malware.example", dest_port=443)
    base.update(fields)
    return Event(**base)


def parse(message: bytes) -> tuple[re.Match, dict[str, str]]:
    match = HEADER.match(message.decode())
    assert match, message
    params = {k: re.sub(r"\\(.)", r"\1", v) for k, v in PARAM.findall(match.group("sd"))}
    return match, params


def test_udp_collector_gets_one_rfc5424_message_per_event_with_every_field(tmp_path) -> None:
    collector = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    collector.bind(("127.0.0.1", 0))
    collector.settimeout(5)
    port = collector.getsockname()[1]
    writer = EventWriter(tmp_path / "index.db", None,
                         syslog=f"udp://127.0.0.1:{port}?facility=local3")
    hostile = 'http://x.example/"]\\ <b>\n'
    writer.emit([event(), event(event_id="01a2ffffffff00000002", verdict="monitor",
                                action="monitor", url=hostile)])
    writer.close()
    first, fields = parse(collector.recv(65536))
    assert int(first.group("pri")) == 19 * 8 + 4  # local3, warning
    assert first.group("ts") == "2023-11-14T22:13:20.500000Z"
    assert first.group("msgid") == "block"
    assert fields["event_id"] == "01a2ffffffff00000001"
    assert fields["indicator"] == "malware.example" and fields["feed"] == "demo-plain"
    assert fields["client_ip"] == "127.0.0.1" and fields["dest_port"] == "443"
    assert "url" not in fields  # empty fields are left out
    second, fields = parse(collector.recv(65536))
    assert int(second.group("pri")) == 19 * 8 + 5  # notice
    assert fields["url"] == 'http://x.example/"]\\ <b>\\n'  # escaped, and no raw newline
    assert "\n" not in second.group(0)
    assert writer.failures == 0 and writer.written == 2
    collector.close()


def test_tcp_collector_gets_octet_counted_frames(tmp_path) -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    listener.settimeout(5)
    port = listener.getsockname()[1]
    writer = EventWriter(tmp_path / "index.db", None, syslog=f"tcp://127.0.0.1:{port}")
    writer.emit([event(event_id=f"01a2ffffffff0000001{i}") for i in range(3)])
    conn, _ = listener.accept()
    conn.settimeout(5)
    data = b""
    deadline = time.monotonic() + 5
    frames: list[bytes] = []
    while len(frames) < 3 and time.monotonic() < deadline:
        data += conn.recv(65536)
        while b" " in data:
            length, rest = data.split(b" ", 1)
            if len(rest) < int(length):
                break
            frames.append(rest[: int(length)])
            data = rest[int(length):]
    writer.close()
    assert [parse(f)[1]["event_id"] for f in frames] == [
        f"01a2ffffffff0000001{i}" for i in range(3)]
    assert int(parse(frames[0])[0].group("pri")) == 16 * 8 + 4  # local0 by default
    conn.close()
    listener.close()


def test_an_unreachable_collector_is_counted_and_never_stops_the_writer(tmp_path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed again: nothing listens there
    writer = EventWriter(tmp_path / "index.db", None, syslog=f"tcp://127.0.0.1:{port}")
    writer.emit(event())
    writer.close()
    assert writer.failures >= 1 and "syslog" in writer.last_error
    assert writer.written == 1  # the index still got it


@pytest.mark.parametrize("target", ["syslog://host:514", "udp://", "tcp://h:514?facility=x"])
def test_a_bad_syslog_target_is_a_config_error(target: str) -> None:
    with pytest.raises(ConfigError) as info:
        SyslogSink(target)
    assert "events.syslog" in str(info.value)


def test_the_resolver_sends_its_blocks_to_syslog_too(tmp_path) -> None:
    """The real ``atr-proxy dns`` with ``events.syslog``: a sinkholed name reaches the
    collector (the resolver used to leave the sink out)."""
    import yaml

    from atr_proxy.index import IndexWriter, connect

    from .conftest import fill
    from .dns_authority import Authority
    from .dns_harness import RunningResolver

    index = tmp_path / "index.db"
    writer = IndexWriter(connect(index))
    fill(writer, "bad", [("domain", "evil.example")])
    writer.conn.close()
    collector = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    collector.bind(("127.0.0.1", 0))
    collector.settimeout(10)
    with Authority("www.good.test. 300 IN A 192.0.2.1\n") as auth:
        config = tmp_path / "atr.yaml"
        config.write_text(yaml.safe_dump({
            "index": str(index), "dns": {"upstreams": [f"127.0.0.1:{auth.port}"]},
            "events": {"jsonl": None,
                       "syslog": f"udp://127.0.0.1:{collector.getsockname()[1]}"}}))
        with RunningResolver(["--config", str(config)], tmp_path / "dns.log") as resolver:
            try:
                assert resolver.ask("www.evil.example", timeout=5).rcode() == 3  # NXDOMAIN
                message, fields = parse(collector.recv(65536))
            finally:
                collector.close()
    assert message.group("msgid") == "block"
    assert fields["source"] == "dns" and fields["indicator"] == "evil.example"
    assert fields["dest_host"] == "www.evil.example"
