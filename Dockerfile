# One image for every role of atr-proxy (worker + admin/dashboard, DNS resolver, proxy)
# and for the demo's feed server and client. mitmproxy 12 needs Python 3.12 or newer.
FROM python:3.12-slim-bookworm

# curl and dig: the demo client and the healthchecks
RUN apt-get update \
 && apt-get install -y --no-install-recommends curl dnsutils \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /app
COPY pyproject.toml README.md ./
COPY atr_proxy ./atr_proxy
RUN pip install --no-cache-dir . "mitmproxy>=12,<13" \
 && mkdir -p /etc/atr-proxy \
 && cp atr_proxy/demo/docker.yaml /etc/atr-proxy/atr.yaml

RUN useradd --system --uid 10001 --home-dir /data atr \
 && mkdir -p /data && chown atr /data
USER atr
VOLUME ["/data"]

ENV ATR_CONFIG=/etc/atr-proxy/atr.yaml \
    PYTHONUNBUFFERED=1
# 8080 proxy, 5353 DNS (UDP and TCP), 8081 admin API, dashboard, /metrics, /proxy.pac
EXPOSE 8080 5353/udp 5353/tcp 8081

ENTRYPOINT ["atr-proxy"]
# everything in one container; docker-compose.yml runs one role per container instead
CMD ["run"]
