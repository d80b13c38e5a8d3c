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

test: $(STAMP) deps-test
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

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

clean:
	rm -rf $(VENV) build *.egg-info
