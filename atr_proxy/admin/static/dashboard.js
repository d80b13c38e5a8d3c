// atr-proxy dashboard. Every value from the server goes into the page as text
// (textContent / setAttribute), never as markup, so a hostile host name or URL in an
// event shows as what it is.
"use strict";

const CSRF = document.querySelector('meta[name="csrf-token"]').content;
const REFRESH_MS = 5000;
const state = { eventFilters: {}, mdrQuery: "", feeds: [] };

// -- helpers ---------------------------------------------------------------------------
async function api(method, path, body) {
  const options = { method, credentials: "same-origin", headers: { Accept: "application/json" } };
  if (method !== "GET") options.headers["X-CSRF-Token"] = CSRF;
  if (body !== undefined) {
    options.headers["Content-Type"] = "application/json";
    options.body = JSON.stringify(body);
  }
  const response = await fetch("/ui/api/" + path, options);
  let data = null;
  try { data = await response.json(); } catch (e) { data = null; }
  if (response.status === 401) {
    setStatus("session expired: reload the page to log in");
  }
  if (!response.ok) {
    let message = (data && data.error) || response.status + " " + response.statusText;
    if (data && Array.isArray(data.errors)) {
      message += ": " + data.errors.map((e) => e.field + " " + e.error).join("; ");
    }
    throw new Error(message);
  }
  return data;
}

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "onclick") node.addEventListener("click", value);
    else if (key === "className") node.className = value;
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function svg(tag, attrs, text) {
  const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, String(value));
  if (text !== undefined) node.textContent = String(text);
  return node;
}

function pad(n) { return String(n).padStart(2, "0"); }

function when(ts) {
  if (!ts) return "-";
  const d = new Date(ts * 1000);
  return d.getFullYear() + "-" + pad(d.getMonth() + 1) + "-" + pad(d.getDate()) + " " +
    pad(d.getHours()) + ":" + pad(d.getMinutes()) + ":" + pad(d.getSeconds());
}

function span(seconds) {
  seconds = Math.max(0, Math.round(seconds));
  if (seconds >= 86400) return Math.round(seconds / 86400) + "d";
  if (seconds >= 3600) return Math.round(seconds / 3600) + "h";
  if (seconds >= 60) return Math.round(seconds / 60) + "m";
  return seconds + "s";
}

function ago(ts) { return ts ? span(Date.now() / 1000 - ts) + " ago" : "-"; }

function until(ts) {
  if (!ts) return "-";
  const left = ts - Date.now() / 1000;
  return left <= 0 ? "due" : "in " + span(left);
}

function badge(text, kind) { return el("span", { className: "badge " + (kind || text) }, text); }

function notice(text, isError) {
  const box = el("div", { className: isError ? "error" : "" }, text);
  document.getElementById("notice").append(box);
  setTimeout(() => box.remove(), isError ? 12000 : 6000);
}

function setStatus(text) { document.getElementById("status").textContent = text; }

function fill(table, headers, rows, emptyText) {
  table.replaceChildren();
  table.append(el("thead", {}, el("tr", {}, headers.map((h) =>
    el("th", { className: h.endsWith("#") ? "num" : "" }, h.replace(/#$/, ""))))));
  const body = el("tbody");
  if (!rows.length) {
    body.append(el("tr", {}, el("td", { colspan: headers.length, className: "empty" },
      emptyText || "nothing yet")));
  }
  for (const cells of rows) {
    body.append(el("tr", {}, cells.map((cell, i) =>
      cell instanceof Node && cell.tagName === "TD" ? cell
        : el("td", { className: headers[i].endsWith("#") ? "num" : "" }, cell))));
  }
  table.append(body);
}

function guarded(fn) {
  return async (event) => {
    if (event && event.preventDefault) event.preventDefault();
    try { await fn(event); } catch (err) { notice(err.message, true); }
  };
}

// -- overview ----------------------------------------------------------------------------
async function loadOverview() {
  const hours = document.getElementById("hours").value;
  const data = await api("GET", "overview?hours=" + encodeURIComponent(hours));
  const modules = data.indicators || {};
  const sum = (key) => Object.values(modules).reduce((n, m) => n + (m[key] || 0), 0);
  const traffic = data.totals.by_traffic || {};
  const cards = [
    ["indicators enforced", data.snapshot.indicators, ""],
    ["feeds enabled", sum("enabled_feeds") + " / " + sum("feeds"), ""],
    ["blocks", data.totals.blocks, "block"],
    ["monitored hits", data.totals.monitored, "monitor"],
    ["proxy hits", traffic.forwarded || 0, ""],
    ["DNS hits", traffic.dns || 0, ""],
    ["index generation", data.snapshot.generation, ""],
  ];
  document.getElementById("cards").replaceChildren(...cards.map(([label, value, kind]) =>
    el("div", { className: "card " + kind }, el("div", { className: "value" }, value),
      el("div", { className: "label" }, label))));
  drawChart(data);
  fill(document.getElementById("top-blocked"), ["Indicator", "Kind", "Feed", "Hits#", "Last"],
    data.top_blocked.map((r) => [el("td", { className: "wrap" }, r.indicator), r.kind,
      r.feed, r.hits, when(r.last)]), "no blocks in this period");
  fill(document.getElementById("top-clients"), ["Client", "Hits#", "Blocks#", "Last"],
    data.top_clients.map((r) => [r.client || "-", r.hits, r.blocks, when(r.last)]),
    "no hits in this period");
  fill(document.getElementById("per-feed"), ["Feed", "Module", "Blocks#", "Monitored#"],
    data.per_feed.map((r) => [r.feed, r.module, r.blocks, r.monitored]),
    "no hits in this period");
  fill(document.getElementById("per-indicator"), ["Indicator", "Feed", "Action", "Hits#", "Last"],
    data.per_indicator.map((r) => [el("td", { className: "wrap" }, r.indicator), r.feed,
      badge(r.action), r.hits, when(r.last)]), "no hits in this period");
}

function drawChart(data) {
  const width = 960, height = 180, left = 36, bottom = 22, top = 8;
  const blocks = data.series.block, monitored = data.series.monitor;
  const n = blocks.length;
  const max = Math.max(1, ...blocks.map((b, i) => b + monitored[i]));
  const plotH = height - bottom - top, step = (width - left - 4) / n;
  const chart = svg("svg", { viewBox: `0 0 ${width} ${height}`, preserveAspectRatio: "none",
    id: "chart-svg" });
  chart.append(svg("line", { x1: left, y1: top + plotH, x2: width, y2: top + plotH, class: "axis" }));
  chart.append(svg("line", { x1: left, y1: top, x2: left, y2: top + plotH, class: "axis" }));
  chart.append(svg("text", { x: left - 4, y: top + 8, "text-anchor": "end" }, max));
  chart.append(svg("text", { x: left - 4, y: top + plotH, "text-anchor": "end" }, 0));
  for (let i = 0; i < n; i++) {
    const x = left + i * step + 1, w = Math.max(1, step - 2);
    const hb = (blocks[i] / max) * plotH, hm = (monitored[i] / max) * plotH;
    const start = data.since + i * data.bucket_seconds;
    if (blocks[i]) {
      const bar = svg("rect", { x, y: top + plotH - hb, width: w, height: hb, class: "bar-block" });
      bar.append(svg("title", {}, when(start) + ": " + blocks[i] + " blocks"));
      chart.append(bar);
    }
    if (monitored[i]) {
      const bar = svg("rect", { x, y: top + plotH - hb - hm, width: w, height: hm, class: "bar-monitor" });
      bar.append(svg("title", {}, when(start) + ": " + monitored[i] + " monitored"));
      chart.append(bar);
    }
  }
  chart.append(svg("text", { x: left, y: height - 6 }, when(data.since)));
  chart.append(svg("text", { x: width - 2, y: height - 6, "text-anchor": "end" }, when(data.now)));
  document.getElementById("chart").replaceChildren(chart);
}

// -- events ------------------------------------------------------------------------------
function destinationOf(ev) {
  if (ev.kind === "url" && ev.url) return ev.url;
  if (ev.kind === "ip") return ev.dest_ip || ev.indicator;
  return ev.dest_host || ev.indicator;
}

async function addException(scope, value, ev) {
  const made = await api("POST", "exceptions", { scope, value,
    comment: "from the dashboard, event " + ev.event_id });
  notice("Exception " + made.id + " added: " + scope + " " + made.type + " " + made.value +
    " (in force within a second)");
  await loadExceptions();
}

async function loadEvents() {
  const query = new URLSearchParams({ limit: "100" });
  for (const [key, value] of Object.entries(state.eventFilters)) if (value) query.set(key, value);
  const data = await api("GET", "events?" + query.toString());
  const rows = data.events.map((ev) => {
    const actions = el("td", {});
    if (ev.indicator) {
      if (ev.client_ip) {
        actions.append(el("button", { type: "button", title: "never block this client",
          onclick: guarded(() => addException("source", ev.client_ip, ev)) },
          "except client"));
      }
      if (ev.target !== "client" && destinationOf(ev)) {
        actions.append(el("button", { type: "button", title: "never block this destination",
          onclick: guarded(() => addException("destination", destinationOf(ev), ev)) },
          "except destination"));
      }
    }
    const where = ev.url || [ev.dest_host, ev.dest_ip].filter(Boolean).join(" ") || "-";
    return [
      when(ev.at), badge(ev.verdict), ev.source + " / " + ev.traffic, ev.client_ip || "-",
      el("td", { className: "wrap" }, where + (ev.dest_port ? " :" + ev.dest_port : "")),
      el("td", { className: "wrap" }, ev.indicator ? ev.indicator + " (" + ev.kind + ", " +
        ev.target + ")" : (ev.detail || "-")),
      ev.feed ? ev.feed + " [" + ev.module + "]" : "-",
      el("td", { className: "mono" }, ev.event_id), actions,
    ];
  });
  fill(document.getElementById("events-table"),
    ["Time", "Verdict", "Source / traffic", "Client", "Destination", "Indicator", "Feed",
      "Event id", "Exception"], rows, "no events match");
}

// -- feeds -------------------------------------------------------------------------------
async function loadFeeds() {
  const data = await api("GET", "feeds");
  state.feeds = data.feeds;
  const rows = data.feeds.map((f) => {
    const source = f.source || {};
    const actions = el("td", {});
    if (source.url) {
      actions.append(el("button", { type: "button", onclick: guarded(async () => {
        notice("Syncing " + f.name + "...");
        const r = await api("POST", "feeds/" + encodeURIComponent(f.name) + "/sync");
        notice(f.name + ": " + r.status + (r.error ? " (" + r.error + ")" : "") + ", " +
          r.total + " indicators (+" + r.added + " -" + r.removed + ")", r.status === "error");
        await loadFeeds();
      }) }, "sync now"));
      actions.append(el("button", { type: "button", onclick: guarded(async () => {
        const r = await api("POST", "feeds/" + encodeURIComponent(f.name) + "/test");
        notice(r.status === "ok"
          ? f.name + " test: " + r.indicators + " indicators, " + r.rejected + " rejected (" +
            r.format + ", " + r.bytes + " bytes); sample: " +
            r.sample.map((s) => s.value).join(", ")
          : f.name + " test failed: " + r.error, r.status !== "ok");
      }) }, "test"));
    }
    actions.append(el("button", { type: "button", onclick: guarded(async () => {
      await api("PATCH", "feeds/" + encodeURIComponent(f.name), { enabled: !f.enabled });
      notice(f.name + (f.enabled ? " disabled" : " enabled"));
      await loadFeeds();
    }) }, f.enabled ? "disable" : "enable"));
    const kind = [source.format || (source.mdr ? "pushed" : source.import ? "import" : "-")];
    return [
      f.name, f.module, kind.join(""), badge(f.action), f.position, f.indicator_count || 0,
      f.last_success ? when(f.last_success) + " (" + ago(f.last_success) + ")" : "-",
      until(f.next_run),
      el("td", {}, f.enabled ? badge(f.status || "never") : badge("disabled")),
      el("td", { className: "wrap" }, f.last_error || ""), actions,
    ];
  });
  fill(document.getElementById("feeds-table"),
    ["Feed", "Module", "Type", "Action", "Order#", "Indicators#", "Last sync", "Next sync",
      "Status", "Last error", ""], rows, "no feeds");
}

// -- look-up -----------------------------------------------------------------------------
async function lookup(event) {
  const form = event.target;
  const query = new URLSearchParams({ value: form.value.value.trim() });
  if (form.client.value.trim()) query.set("client", form.client.value.trim());
  const data = await api("GET", "lookup?" + query.toString());
  const out = document.getElementById("lookup-result");
  out.replaceChildren(...data.results.map((r) => {
    const box = el("div", { className: "result" });
    if (r.kind === "invalid") {
      box.append(el("strong", {}, r.value), ": not a domain, URL or IP (" + r.error + ")");
      return box;
    }
    box.append(el("p", {}, el("strong", {}, r.value), " is a " + r.kind + " (" + r.canonical +
      "): ", badge(r.verdict), r.verdict === "allow" ? " not blocked" : ""));
    if (r.hits.length) {
      const table = el("table");
      fill(table, ["Action", "Indicator", "Kind", "Match", "Feed", "Module", "On"],
        r.hits.map((h) => [badge(h.action), h.indicator, h.kind, h.match, h.feed, h.module,
          h.target]));
      box.append(table);
    }
    for (const e of r.excepted || []) {
      box.append(el("p", {}, "excepted: " + e.indicator + " (feed " + e.feed +
        ") by exception " + e.exception));
    }
    for (const s of r.suppressed || []) {
      box.append(el("p", {}, "suppressed in feed " + s.feed + " by list " + s.list));
    }
    return box;
  }));
}

// -- MDR ---------------------------------------------------------------------------------
async function mdrAdd(event) {
  const form = event.target;
  const item = { value: form.value.value.trim(), type: form.type.value, action: form.action.value };
  for (const key of ["ttl", "comment", "reference"]) {
    if (form[key].value.trim()) item[key] = form[key].value.trim();
  }
  const data = await api("POST", "mdr/indicators", [item]);
  const added = data.indicators[0];
  notice("MDR " + added.action + " " + added.type + " " + added.value + " added (id " + added.id + ")");
  form.reset();
  await loadMdr();
}

async function loadMdr() {
  const query = new URLSearchParams({ limit: "200" });
  if (state.mdrQuery) query.set("q", state.mdrQuery);
  const data = await api("GET", "mdr/indicators?" + query.toString());
  const rows = data.items.map((m) => {
    const ttl = el("select", { "aria-label": "expire after" },
      ["1h", "24h", "7d", "30d"].map((t) => el("option", {}, t)));
    const actions = el("td", {}, ttl,
      el("button", { type: "button", onclick: guarded(async () => {
        await api("POST", "mdr/indicators", [{ value: m.value, type: m.type, action: m.action,
          ttl: ttl.value, comment: m.comment || undefined, reference: m.reference || undefined,
          match: m.type === "domain" ? m.match : undefined }]);
        notice(m.value + " now expires in " + ttl.value);
        await loadMdr();
      }) }, "expire"),
      el("button", { type: "button", onclick: guarded(async () => {
        await api("DELETE", "mdr/indicators/" + m.id);
        notice(m.value + " removed");
        await loadMdr();
      }) }, "remove"));
    return [m.id, m.type, el("td", { className: "wrap" }, m.value), badge(m.action),
      when(m.created_at), m.expires_at ? when(m.expires_at) + " (" + until(m.expires_at) + ")" : "never",
      m.comment || "", m.reference || "", actions];
  });
  fill(document.getElementById("mdr-table"),
    ["Id#", "Type", "Value", "Action", "Added", "Expires", "Comment", "Reference", ""], rows,
    "no MDR indicators");
}

// -- exceptions ----------------------------------------------------------------------------
async function loadExceptions() {
  const data = await api("GET", "exceptions");
  fill(document.getElementById("exceptions-table"),
    ["Id#", "Scope", "Type", "Value", "Feed", "Comment", ""],
    data.exceptions.map((e) => [e.id, e.scope, e.type, el("td", { className: "wrap" }, e.value),
      e.feed || "all feeds", e.comment || "",
      el("td", {}, el("button", { type: "button", onclick: guarded(async () => {
        await api("DELETE", "exceptions/" + e.id);
        notice("exception " + e.id + " removed");
        await loadExceptions();
      }) }, "remove"))]), "no exceptions");
}

// -- start -------------------------------------------------------------------------------
async function refresh() {
  const results = await Promise.allSettled([loadOverview(), loadEvents(), loadFeeds()]);
  const failed = results.find((r) => r.status === "rejected");
  setStatus(failed ? "update failed: " + failed.reason.message : "updated " + when(Date.now() / 1000));
  document.body.dataset.loaded = "1";  // tests wait for this
}

document.addEventListener("DOMContentLoaded", () => {
  document.getElementById("event-filters").addEventListener("submit", guarded((event) => {
    state.eventFilters = Object.fromEntries(new FormData(event.target));
    return loadEvents();
  }));
  document.getElementById("event-filters").addEventListener("reset", () => {
    state.eventFilters = {};
    setTimeout(guarded(loadEvents), 0);
  });
  document.getElementById("hours").addEventListener("change", guarded(loadOverview));
  document.getElementById("lookup-form").addEventListener("submit", guarded(lookup));
  document.getElementById("mdr-form").addEventListener("submit", guarded(mdrAdd));
  document.getElementById("mdr-search").addEventListener("submit", guarded((event) => {
    state.mdrQuery = event.target.q.value.trim();
    return loadMdr();
  }));
  document.getElementById("logout").addEventListener("click", guarded(async () => {
    await fetch("/ui/logout", { method: "POST", credentials: "same-origin",
      headers: { "X-CSRF-Token": CSRF } });
    location.reload();
  }));
  refresh();
  loadMdr().catch((err) => notice(err.message, true));
  loadExceptions().catch((err) => notice(err.message, true));
  setInterval(() => { if (document.visibilityState === "visible") refresh(); }, REFRESH_MS);
});
