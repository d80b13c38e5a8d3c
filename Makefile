PY ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv test lint run bench clean

$(STAMP): pyproject.toml
	@command -v $(PY) >/dev/null 2>&1 || { echo "need $(PY)"; exit 1; }
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

# Debian tools the tests use as clients: dig (dnsutils) for the DNS resolver's tests.
.PHONY: deps-test bench-dns
deps-test:
	@command -v dig >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq dnsutils; } \
	  || { echo "install dnsutils (dig) as root: apt-get install dnsutils"; exit 1; }

# Debian tools of the operator tests: curl (through the proxy), chromium (headless browser
# tests) and docker-compose (validates docker-compose.yml; no Docker engine is needed).
.PHONY: deps-operator
deps-operator:
	@{ command -v curl && command -v chromium && command -v docker-compose; } >/dev/null 2>&1 \
	  || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	       curl chromium docker-compose; } \
	  || { echo "install curl, chromium and docker-compose as root"; exit 1; }

test: $(STAMP) deps-test deps-operator
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

# everything on loopback with the bundled demo config: proxy 8080, DNS 5353, admin 8081;
# the index, events.jsonl and the CA (certs/) in this folder
run: $(STAMP)
	$(BIN)/atr-proxy run

lint: $(STAMP)
	$(BIN)/ruff check .

bench: $(STAMP)
	$(BIN)/python bench/bench_matcher.py
	$(BIN)/python bench/bench_sync.py

# the DNS resolver against dnsmasq with dnsperf (dnsmasq-base: the binary, no system service)
bench-dns: $(STAMP)
	@{ command -v dnsperf && command -v dnsmasq; } >/dev/null 2>&1 \
	  || { apt-get update -qq && apt-get install -y -qq dnsperf dnsmasq-base; } \
	  || { echo "install dnsperf and dnsmasq-base as root"; exit 1; }
	$(BIN)/python bench/bench_dns.py $(BENCH_DNS_ARGS)

# the proxy against bare mitmdump and Squid (the squid package: the bench starts its own
# instance on a loopback port with a config of its own, never the system service)
.PHONY: bench-proxy
bench-proxy: $(STAMP)
	@{ command -v squid || test -x /usr/sbin/squid; } >/dev/null 2>&1 \
	  || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq squid; } \
	  || { echo "install squid as root: apt-get install squid"; exit 1; }
	$(BIN)/python bench/bench_proxy.py $(BENCH_PROXY_ARGS)

# the whole suite on Python 3.12 with mitmproxy 12 (the Docker image's versions); pyenv's
# 3.12 where there is one, else python3.12 on the PATH
PY312 ?= $(shell ls $(HOME)/.pyenv/versions/3.12*/bin/python3.12 2>/dev/null | tail -n 1 || command -v python3.12)
VENV312 ?= .venv312
.PHONY: test-mitm12
test-mitm12: deps-test deps-operator
	@test -n "$(PY312)" || { echo "need python3.12 (pyenv install 3.12)"; exit 1; }
	test -x $(VENV312)/bin/python || $(PY312) -m venv $(VENV312)
	$(VENV312)/bin/python -m pip install -q --upgrade pip
	$(VENV312)/bin/python -m pip install -q -e '.[test]' 'mitmproxy>=12,<13'
	$(VENV312)/bin/python -m pytest -q

clean:
	rm -rf $(VENV) $(VENV312) build *.egg-info

# the slow part of the hardening suite (RELIABILITY.md): the bounded soak of proxy and DNS
# (ATR_SOAK_SECONDS, default 600), 200 SIGKILLs during syncs, 1,000,000 hostile DNS packets
.PHONY: soak
soak: $(STAMP) deps-test deps-operator
	ATR_SOAK_KILLS=$${ATR_SOAK_KILLS:-200} ATR_SOAK_PACKETS=$${ATR_SOAK_PACKETS:-1000000} \
	  ATR_SOAK_PARSE_BYTES=$${ATR_SOAK_PARSE_BYTES:-4000000} $(BIN)/python -m pytest -q -s \
	  tests/test_faults_storage.py tests/test_hostile_input.py
	$(BIN)/python bench/soak.py
