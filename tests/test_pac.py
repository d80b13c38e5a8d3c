"""``/proxy.pac``: what the file says, and what a real browser's PAC engine (Chromium's)
makes of it for local, private and public destinations."""

from __future__ import annotations

import json
import subprocess
import tempfile
from pathlib import Path

import httpx
import pytest

from atr_proxy import config
from atr_proxy.admin import pac
from atr_proxy.admin.api import create_app
from tests.browser_harness import CHROMIUM_FLAGS, chromium_path
from tests.operator_harness import AdminHttp

# The PAC helper functions as browsers define them, for evaluating the file in a page.
PAC_HELPERS = """
function isPlainHostName(host) { return host.indexOf('.') < 0 && host.indexOf(':') < 0; }
function dnsDomainIs(host, domain) {
  return host.length >= domain.length && host.substring(host.length - domain.length) == domain;
}
function ip4(s) { return s.split('.').reduce((n, p) => n * 256 + Number(p), 0); }
function isInNet(host, pattern, mask) {
  if (!/^\\d+\\.\\d+\\.\\d+\\.\\d+$/.test(host)) throw new Error('isInNet on a name: ' + host);
  const m = ip4(mask);
  return (ip4(host) & m) >>> 0 === (ip4(pattern) & m) >>> 0;
}
"""
CASES = {
    "localhost": "DIRECT", "printer": "DIRECT", "nas.local": "DIRECT",
    "router.home.arpa": "DIRECT", "app.internal": "DIRECT", "10.1.2.3": "DIRECT",
    "172.20.0.1": "DIRECT", "192.168.1.10": "DIRECT", "127.0.0.1": "DIRECT",
    "169.254.1.1": "DIRECT", "100.64.0.1": "DIRECT", "fd00::1": "DIRECT",
    "fe80::1": "DIRECT", "::1": "DIRECT", "[fd12::3]": "DIRECT",
    "172.32.0.1": "PROXY", "8.8.8.8": "PROXY", "malware.example": "PROXY",
    "www.example.com": "PROXY", "2001:db8::1": "PROXY", "local.example": "PROXY",
}


@pytest.fixture
def served(tmp_path: Path):
    def serve(listen: str) -> AdminHttp:
        settings = config.from_mapping({"index": str(tmp_path / "i.db"),
                                        "proxy": {"listen": listen},
                                        "events": {"jsonl": None}})
        server = AdminHttp(create_app(settings, index_path=tmp_path / "i.db", token="t"))
        servers.append(server)
        return server

    servers: list[AdminHttp] = []
    yield serve
    for server in servers:
        server.close()


def test_pac_names_the_proxy_and_is_public(served) -> None:
    server = served("127.0.0.1:8080")
    response = httpx.get(server.url + "/proxy.pac", timeout=10)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/x-ns-proxy-autoconfig")
    assert 'var ATR_PROXY = "PROXY 127.0.0.1:8080";' in response.text
    assert "DIRECT" in response.text and "; DIRECT" not in response.text  # no fallback
    assert httpx.get(server.url + "/wpad.dat", timeout=10).text == response.text


def test_pac_of_a_proxy_on_every_address_names_the_host_the_client_used(served) -> None:
    server = served("0.0.0.0:3128")
    text = httpx.get(server.url + "/proxy.pac", headers={"Host": "gateway.lan:8081"},
                     timeout=10).text
    assert 'var ATR_PROXY = "PROXY gateway.lan:3128";' in text
    # a Host header that is not a plain name never reaches the script
    assert pac.proxy_address(("0.0.0.0", 3128), 'x";alert(1);"') == "127.0.0.1:3128"
    assert pac.proxy_address(("::", 3128), "[fd00::5]:8081") == "[fd00::5]:3128"


@pytest.mark.skipif(chromium_path() is None, reason="needs chromium (make deps-operator)")
def test_chromium_sends_local_and_private_destinations_direct(served) -> None:
    script = httpx.get(served("127.0.0.1:8080").url + "/proxy.pac", timeout=10).text
    page = f"""<!doctype html><html><body><pre id="out"></pre><script>
{PAC_HELPERS}
{script}
const cases = {json.dumps(list(CASES))};
const out = {{}};
for (const host of cases) {{
  try {{ out[host] = FindProxyForURL('http://' + host + '/', host); }}
  catch (e) {{ out[host] = 'ERROR ' + e.message; }}
}}
document.getElementById('out').textContent = JSON.stringify(out);
</script></body></html>"""
    with tempfile.TemporaryDirectory() as folder:
        html = Path(folder) / "pac.html"
        html.write_text(page)
        result = subprocess.run(
            [chromium_path(), *CHROMIUM_FLAGS, f"--user-data-dir={folder}/profile",
             "--dump-dom", html.as_uri()],
            capture_output=True, text=True, timeout=60)
    dom = result.stdout
    start = dom.index('<pre id="out">') + len('<pre id="out">')
    answers = json.loads(dom[start:dom.index("</pre>", start)].replace("&quot;", '"'))
    expected = {host: ("DIRECT" if want == "DIRECT" else "PROXY 127.0.0.1:8080")
                for host, want in CASES.items()}
    assert answers == expected
