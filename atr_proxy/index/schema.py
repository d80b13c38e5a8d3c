"""The index schema: numbered migrations, applied in order, recorded in ``meta``.

This file is the one place the schema is written down; the README's "Index schema" section
mirrors it for operators who query the file with ``sqlite3``. Never edit a released
migration: add the next number.
"""

from __future__ import annotations

MIGRATIONS: dict[int, str] = {
    1: """
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

-- One row per feed, whatever its source (a URL, a preset, an analyst's pushes, a file import).
CREATE TABLE feeds (
    id               INTEGER PRIMARY KEY,
    name             TEXT NOT NULL UNIQUE,
    module           TEXT NOT NULL CHECK (module IN ('mdr', 'xops', 'third_party')),
    type             TEXT NOT NULL DEFAULT 'auto' CHECK (type IN ('auto', 'domain', 'url', 'ip')),
    action           TEXT NOT NULL DEFAULT 'block' CHECK (action IN ('block', 'monitor')),
    position         INTEGER NOT NULL DEFAULT 0,      -- the feed's order within its module
    enabled          INTEGER NOT NULL DEFAULT 1,
    match            TEXT NOT NULL DEFAULT 'subtree' CHECK (match IN ('exact', 'subtree')),
    source           TEXT NOT NULL DEFAULT '{}',      -- JSON: url, format, interval, options; never secrets
    -- sync status, written by the worker
    status           TEXT NOT NULL DEFAULT 'never',   -- never | ok | error | held | not_modified
    last_attempt     REAL,
    last_success     REAL,
    http_status      INTEGER,
    bytes            INTEGER,
    parsed           INTEGER,
    accepted         INTEGER,
    rejected         INTEGER,
    rejected_samples TEXT,                            -- JSON list of [line, text, reason]
    indicator_count  INTEGER NOT NULL DEFAULT 0,
    domain_count     INTEGER NOT NULL DEFAULT 0,      -- per kind, for sizing snapshots
    url_count        INTEGER NOT NULL DEFAULT 0,
    ip_count         INTEGER NOT NULL DEFAULT 0,
    url_host_count   INTEGER NOT NULL DEFAULT 0,      -- distinct hosts of the URL indicators
    duration         REAL,
    last_error       TEXT,
    next_run         REAL,
    etag             TEXT,
    last_modified    TEXT
);

-- Indicators of compromise, in canonical form (atr_proxy.indicators). A URL is stored as its
-- key: the canonical URL without its scheme ("evil.com/a/b?q").
CREATE TABLE indicators (
    id            INTEGER PRIMARY KEY,
    feed_id       INTEGER NOT NULL REFERENCES feeds(id) ON DELETE CASCADE,
    kind          TEXT NOT NULL CHECK (kind IN ('domain', 'url', 'ip')),
    value         TEXT NOT NULL,
    match         TEXT NOT NULL DEFAULT 'exact' CHECK (match IN ('exact', 'subtree')),
    first_seen    REAL NOT NULL,
    last_seen     REAL NOT NULL,
    expires_at    REAL,                               -- stops matching at this time
    threat        TEXT,
    malware       TEXT,
    confidence    INTEGER,
    reference     TEXT,
    comment       TEXT,
    suppressed_by TEXT,                               -- name of a suppression list: stored, not enforced
    host          TEXT,                               -- a URL's host, without port
    UNIQUE (feed_id, kind, value)
);
CREATE INDEX indicators_expiry ON indicators (expires_at) WHERE expires_at IS NOT NULL;

-- Exceptions: a 'source' exception is a client network that is never blocked; a
-- 'destination' exception is a domain (with its subdomains), URL or IP that is never blocked.
-- feed_id NULL means every feed; otherwise only that feed's hits (adblock @@ rules).
CREATE TABLE exceptions (
    id         INTEGER PRIMARY KEY,
    scope      TEXT NOT NULL CHECK (scope IN ('source', 'destination')),
    kind       TEXT NOT NULL CHECK (kind IN ('domain', 'url', 'ip')),
    value      TEXT NOT NULL,
    feed_id    INTEGER REFERENCES feeds(id) ON DELETE CASCADE,
    comment    TEXT,
    created_at REAL NOT NULL
);
CREATE UNIQUE INDEX exceptions_unique ON exceptions (scope, kind, value, IFNULL(feed_id, 0));

-- The change log: every committed change appends here; seq is the index generation.
-- op: add | del (one indicator), reload (a feed changed wholesale: readers rebuild),
--     feed (feed settings changed), exception (exceptions changed).
CREATE TABLE changes (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    at           REAL NOT NULL,
    op           TEXT NOT NULL,
    indicator_id INTEGER,
    feed_id      INTEGER,
    kind         TEXT,
    value        TEXT,
    match        TEXT,
    expires_at   REAL
);

-- Blocks and monitored hits from the proxy, the DNS resolver and the admin API.
CREATE TABLE events (
    id           INTEGER PRIMARY KEY,
    event_id     TEXT NOT NULL UNIQUE,
    at           REAL NOT NULL,
    source       TEXT NOT NULL,         -- proxy | dns | admin
    traffic      TEXT NOT NULL,         -- forwarded | system | dns
    action       TEXT NOT NULL,         -- the indicator's action: block | monitor
    verdict      TEXT NOT NULL,         -- what happened: block | monitor | allow
    module       TEXT,
    feed         TEXT,
    indicator    TEXT,
    kind         TEXT,
    target       TEXT,                  -- what matched: client | host | sni | url | ip | cname | answer
    client_ip    TEXT,
    dest_host    TEXT,
    dest_ip      TEXT,
    dest_port    INTEGER,
    url          TEXT,
    detail       TEXT
);
CREATE INDEX events_at ON events (at);
""",
    2: """
-- Running totals kept by each process's event writer, e.g. name 'checks': requests and
-- queries checked by the proxy or the DNS resolver, hit or not. Each write adds to value.
CREATE TABLE counters (
    source     TEXT,                    -- proxy | dns
    traffic    TEXT,                    -- forwarded | system | dns
    name       TEXT,                    -- checks
    value      INTEGER,
    updated_at REAL,
    PRIMARY KEY (source, traffic, name)
);
""",
}

SCHEMA_VERSION = max(MIGRATIONS)
