"""The docker-compose demo, checked without a Docker engine: the file is valid, every
atr-proxy service runs a command the CLI really has, with the config the image carries;
and the commands are the ones ``atr-proxy run`` starts (tests/test_run.py runs those
natively against each other on loopback)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from atr_proxy import config
from atr_proxy.admin import commands as run_cmd
from atr_proxy.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
ATR_SERVICES = {"worker": "sync", "dns": "dns", "proxy": "proxy"}


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def _entrypoint(service: dict) -> list[str]:
    if "entrypoint" in service:
        return list(service["entrypoint"])
    match = re.search(r"^ENTRYPOINT (\[.*\])$", DOCKERFILE.read_text(), re.M)
    return yaml.safe_load(match.group(1))


def test_services_volumes_and_healthchecks(compose: dict) -> None:
    services = compose["services"]
    assert set(services) == {"feeds", "worker", "dns", "proxy", "client"}
    for name in ("feeds", "worker", "dns", "proxy"):
        test = services[name]["healthcheck"]["test"]
        assert test[0] in ("CMD", "CMD-SHELL") and len(test) > 1
    for name in ATR_SERVICES:
        assert "atr-data:/data" in services[name]["volumes"]  # index, certs, events
    assert "atr-data" in compose["volumes"]
    for name, wanted in (("dns", "worker"), ("proxy", "worker"), ("worker", "feeds")):
        assert services[name]["depends_on"][wanted]["condition"] == "service_healthy"
    client = services["client"]
    assert set(client["depends_on"]) == {"dns", "proxy"}
    script = " ".join(client["command"])
    assert "curl -s -x http://proxy:8080 http://malware.example/" in script
    assert "dig @dns -p 5353" in script and "malware.example" in script
    for name, service in services.items():  # published on the host's loopback only
        for port in service.get("ports", []):
            assert port.startswith("127.0.0.1:"), (name, port)


def test_each_atr_service_runs_a_real_cli_command(compose: dict) -> None:
    parser = build_parser()
    for name, role in ATR_SERVICES.items():
        service = compose["services"][name]
        argv = _entrypoint(service) + list(service["command"])
        assert argv[0] == "atr-proxy", name
        args = parser.parse_args(argv[1:])
        assert args.command == role and callable(args.func), name
        assert args.func.__module__.startswith("atr_proxy."), name
        # the same shape as the children of `atr-proxy run`
        native = run_cmd.child_command(role, Path(args.config), Path(args.index))
        assert native[native.index("--config"):] == argv[1:], name
    assert set(ATR_SERVICES.values()) == set(run_cmd.ROLES)


def test_the_image_config_is_the_demo_served_over_http(compose: dict) -> None:
    text = DOCKERFILE.read_text()
    assert re.search(r"^FROM python:3\.1[2-9]", text, re.M)
    assert '"mitmproxy>=12,<13"' in text
    assert "cp atr_proxy/demo/docker.yaml /etc/atr-proxy/atr.yaml" in text
    docker = config.load(ROOT / "atr_proxy" / "demo" / "docker.yaml")
    demo = config.load(run_cmd.DEMO_CONFIG)
    assert [(f.name, f.format, f.module, f.action) for f in docker.feeds] == [
        (f.name, f.format, f.module, f.action) for f in demo.feeds]
    served = ROOT / "atr_proxy" / "demo" / "feeds"
    for feed in docker.feeds:
        assert feed.url.startswith("http://feeds:8000/")
        assert (served / feed.url.rsplit("/", 1)[1]).is_file(), feed.url
    assert "/app/atr_proxy/demo/feeds" in compose["services"]["feeds"]["entrypoint"]
    assert docker.proxy.listen == ("0.0.0.0", 8080) and docker.dns.listen == ("0.0.0.0", 5353)
    assert docker.admin.listen == ("0.0.0.0", 8081)
    assert str(docker.index).startswith("/data/") and docker.proxy.certs.startswith("/data/")


@pytest.mark.skipif(shutil.which("docker-compose") is None,
                    reason="needs Debian's docker-compose (make deps-operator)")
def test_docker_compose_accepts_the_file() -> None:
    result = subprocess.run(["docker-compose", "-f", str(COMPOSE), "config", "-q"],
                            capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert result.returncode == 0, result.stderr
