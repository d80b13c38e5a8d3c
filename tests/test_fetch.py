"""Fetching feeds from a real HTTP(S) server on loopback, and from files."""

from __future__ import annotations

import gzip
import io
import json
import time
import zipfile
from pathlib import Path

import pytest

from atr_proxy import config
from atr_proxy.feeds.fetch import Fetcher, FetchError

from .feedserver import FeedServer, Route, self_signed_cert

BODY = b"# test feed\nevil.example\nbad.example\n"
ENV = {"FEED_PASSWORD": "s3cret", "FEED_TOKEN": "tok-123", "FEED_KEY": "k-9"}


def make_feed(url: str, **keys) -> config.FeedSettings:
    return config.from_mapping({"feeds": [{"name": "t", "url": url, **keys}]}, env=ENV).feeds[0]


def fetcher(retries: int = 2) -> Fetcher:
    return Fetcher(retries=retries, backoff=0.01)


@pytest.fixture
def server():
    with FeedServer() as s:
        yield s


async def test_first_fetch_returns_body_and_validators_then_304_costs_nothing(server):
    url = server.add("/f.txt", Route(BODY, last_modified=time.time() - 60))
    feed = make_feed(url)
    first = await fetcher().fetch(feed)
    assert first.status == "ok" and first.data == BODY and first.http_status == 200
    assert first.etag and first.last_modified
    again = await fetcher().fetch(feed, etag=first.etag, last_modified=first.last_modified)
    assert again.not_modified and again.data == b"" and again.http_status == 304
    sent = server.hits("/f.txt")[-1].headers
    assert sent["if-none-match"] == first.etag
    assert sent["if-modified-since"] == first.last_modified


async def test_if_modified_since_alone_gives_304(server):
    url = server.add("/lm.txt", Route(BODY, etag=False, last_modified=time.time() - 60))
    first = await fetcher().fetch(make_feed(url))
    assert first.etag is None and first.last_modified
    again = await fetcher().fetch(make_feed(url), last_modified=first.last_modified)
    assert again.not_modified


async def test_gzip_encoded_response_is_decoded(server):
    big = b"".join(b"host%d.example\n" % i for i in range(5000))
    url = server.add("/gz.txt", Route(big, gzip=True))
    got = await fetcher().fetch(make_feed(url))
    assert got.data == big
    assert "gzip" in server.hits("/gz.txt")[0].headers["accept-encoding"]


async def test_gzip_file_served_as_download_is_unpacked(server):
    url = server.add("/list.txt.gz", Route(gzip.compress(BODY),
                                           content_type="application/gzip"))
    assert (await fetcher().fetch(make_feed(url))).data == BODY


async def test_one_file_zip_is_unpacked(server):
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as z:
        z.writestr("feed.csv", BODY)
    url = server.add("/list.zip", Route(out.getvalue(), content_type="application/zip"))
    assert (await fetcher().fetch(make_feed(url))).data == BODY


@pytest.mark.parametrize("auth,route_auth", [
    ({"type": "basic", "user": "ana", "password": "${FEED_PASSWORD}"}, ("basic", "ana", "s3cret")),
    ({"type": "bearer", "token": "${FEED_TOKEN}"}, ("bearer", "tok-123")),
    ({"type": "api_key", "name": "Auth-Key", "value": "${FEED_KEY}"}, ("header", "Auth-Key", "k-9")),
    ({"type": "api_key", "name": "apikey", "value": "${FEED_KEY}", "in": "query"},
     ("query", "apikey", "k-9")),
])
async def test_auth_kinds_are_sent_and_wrong_credentials_fail(server, auth, route_auth):
    url = server.add("/private.txt", Route(BODY, auth=route_auth))
    got = await fetcher().fetch(make_feed(url, auth=auth))
    assert got.data == BODY
    with pytest.raises(FetchError) as err:
        await fetcher().fetch(make_feed(url))
    assert err.value.http_status == 401
    assert "check the feed's auth settings" in str(err.value)


async def test_query_api_key_is_not_shown_in_the_url(server):
    url = server.add("/q.txt", Route(BODY, auth=("query", "apikey", "k-9")))
    got = await fetcher().fetch(make_feed(url, auth={"type": "api_key", "name": "apikey",
                                                     "value": "${FEED_KEY}", "in": "query"}))
    assert "k-9" not in got.url


async def test_server_errors_are_retried_with_backoff_then_succeed(server):
    url = server.add("/flaky.txt", Route(BODY, fail_first=2))
    got = await fetcher(retries=2).fetch(make_feed(url))
    assert got.data == BODY
    assert len(server.hits("/flaky.txt")) == 3


async def test_persistent_500_fails_after_the_retries(server):
    url = server.add("/down.txt", Route(b"boom", status=500))
    with pytest.raises(FetchError) as err:
        await fetcher(retries=2).fetch(make_feed(url))
    assert err.value.http_status == 500 and "HTTP 500" in str(err.value)
    assert len(server.hits("/down.txt")) == 3


async def test_404_is_not_retried(server):
    with pytest.raises(FetchError) as err:
        await fetcher(retries=3).fetch(make_feed(server.url("/missing.txt")))
    assert err.value.http_status == 404 and "check the url" in str(err.value)
    assert len(server.hits("/missing.txt")) == 1


async def test_slow_server_times_out(server):
    url = server.add("/slow.txt", Route(BODY, delay=1.5))
    started = time.monotonic()
    with pytest.raises(FetchError) as err:
        await fetcher(retries=0).fetch(make_feed(url, timeout="0.3s"))
    assert "timed out after 0.3s" in str(err.value)
    assert time.monotonic() - started < 1.4


async def test_truncated_body_is_an_error(server):
    url = server.add("/cut.txt", Route(BODY * 100, truncate=True, etag=False))
    with pytest.raises(FetchError) as err:
        await fetcher(retries=1).fetch(make_feed(url))
    assert "incomplete" in str(err.value) or "broke off" in str(err.value)


async def test_oversized_body_with_length_is_refused_before_reading(server):
    url = server.add("/big.txt", Route(b"x.example\n" * 2000))
    with pytest.raises(FetchError) as err:
        await fetcher().fetch(make_feed(url, max_bytes=1000))
    assert "more than max_bytes 1000" in str(err.value)


async def test_oversized_chunked_body_is_cut_off_while_streaming(server):
    url = server.add("/stream.txt", Route(b"x.example\n" * 50_000, chunked=True))
    with pytest.raises(FetchError) as err:
        await fetcher().fetch(make_feed(url, max_bytes="64k"))
    assert "stopped reading" in str(err.value)


async def test_gzip_bomb_is_stopped_by_max_bytes(server):
    url = server.add("/bomb.txt", Route(b"a" * 5_000_000, gzip=True))
    with pytest.raises(FetchError):
        await fetcher().fetch(make_feed(url, max_bytes="1M"))


async def test_self_signed_certificate_fails_verification_unless_trusted(tmp_path: Path):
    cert, key = self_signed_cert(tmp_path)
    with FeedServer(certfile=cert, keyfile=key) as tls:
        url = tls.add("/tls.txt", Route(BODY))
        with pytest.raises(FetchError) as err:
            await fetcher().fetch(make_feed(url))
        assert "certificate verification failed" in str(err.value)
        assert "verify_tls: false" in str(err.value)
        assert (await fetcher().fetch(make_feed(url, verify_tls=False))).data == BODY
        assert (await fetcher().fetch(make_feed(url, ca_file=str(cert)))).data == BODY


async def test_file_feed_is_read_and_unchanged_file_is_not_modified(tmp_path: Path):
    path = tmp_path / "list.txt"
    path.write_bytes(BODY)
    feed = make_feed(f"file://{path}")
    first = await fetcher().fetch(feed)
    assert first.data == BODY and first.etag
    assert (await fetcher().fetch(feed, etag=first.etag)).not_modified
    path.write_bytes(BODY + b"new.example\n")
    changed = await fetcher().fetch(feed, etag=first.etag)
    assert changed.status == "ok" and b"new.example" in changed.data


async def test_missing_file_is_an_error(tmp_path: Path):
    with pytest.raises(FetchError) as err:
        await fetcher().fetch(make_feed(f"file://{tmp_path}/nope.txt"))
    assert "cannot read" in str(err.value)


async def test_taxii_collection_pages_and_asks_only_for_new_objects(server):
    def indicator(n: int) -> dict:
        return {"type": "indicator", "spec_version": "2.1", "id": f"indicator--{n:08d}-0000-4000-8000-000000000000",
                "pattern_type": "stix", "pattern": f"[domain-name:value = 'c2-{n}.example']",
                "valid_from": "2024-01-01T00:00:00Z"}

    def objects(rec):
        if rec.query.get("added_after"):
            return 200, {"X-TAXII-Date-Added-Last": "2024-03-01T00:00:00Z"}, json.dumps(
                {"more": False, "objects": [indicator(9)]}).encode()
        page = rec.query.get("next", ["0"])[0]
        if page == "0":
            return 200, {"X-TAXII-Date-Added-Last": "2024-01-01T00:00:00Z"}, json.dumps(
                {"more": True, "next": "1", "objects": [indicator(1), indicator(2)]}).encode()
        return 200, {"X-TAXII-Date-Added-Last": "2024-02-01T00:00:00Z"}, json.dumps(
            {"more": False, "objects": [indicator(3)]}).encode()

    server.add("/taxii2/api/collections/c1/objects/", Route(objects, etag=False,
                                                           content_type="application/taxii+json"))
    feed = make_feed(server.url("/taxii2/api/collections/c1/"), format="taxii2")
    full = await fetcher().fetch(feed)
    assert full.pages == 2 and not full.incremental and full.format == "stix2"
    assert full.cursor == "2024-02-01T00:00:00Z"
    assert len(json.loads(full.data)["objects"]) == 3
    accept = server.hits("/taxii2/api/collections/c1/objects/")[0].headers["accept"]
    assert accept.startswith("application/taxii+json")
    delta = await fetcher().fetch(feed, cursor=full.cursor)
    assert delta.incremental and delta.cursor == "2024-03-01T00:00:00Z"
    assert server.hits("/taxii2/api/collections/c1/objects/")[-1].query["added_after"] == \
        ["2024-02-01T00:00:00Z"]


async def test_misp_feed_fetches_manifest_and_each_event(server):
    uuid = "5e0f9c8a-1111-4c3b-9a11-000000000001"
    server.add("/misp/manifest.json", Route(json.dumps({uuid: {"info": "t"}}).encode()))
    event = {"Event": {"info": "t", "uuid": uuid, "Attribute": [
        {"type": "domain", "value": "misp-c2.example", "to_ids": True}]}}
    server.add(f"/misp/{uuid}.json", Route(json.dumps(event).encode()))
    got = await fetcher().fetch(make_feed(server.url("/misp/manifest.json"), format="misp"))
    assert got.format == "misp" and got.pages == 2
    assert json.loads(got.data)["response"][0]["Event"]["uuid"] == uuid
    again = await fetcher().fetch(make_feed(server.url("/misp/manifest.json"), format="misp"),
                                  etag=got.etag)
    assert again.not_modified
    assert len(server.hits(f"/misp/{uuid}.json")) == 1
