// Subrouter dashboard: reads the JSON endpoints beside it and draws every
// panel with plain DOM and SVG. Nothing is loaded from anywhere else; data is
// only ever put in the page as text, never as markup.
"use strict";

(() => {
  const BASE = "/_subrouter/";
  const TOKEN_KEY = "subrouter-client-token";
  const REFRESH_MS = 15000;
  const RANGES = {
    "24h": { since: "24h", bucket: "hour" },
    "7d": { since: "7d", bucket: "6h" },
    "30d": { since: "30d", bucket: "day" },
  };
  const SVG = "http://www.w3.org/2000/svg";
  const zone = Intl.DateTimeFormat().resolvedOptions().timeZone || "UTC";
  const state = {
    range: "24h", by: "user", usage: null, accounts: null, conversations: null,
    auth: {}, timer: null, loading: false,
  };

  // -- small helpers ----------------------------------------------------------

  const $ = (id) => document.getElementById(id);
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "class") node.className = v; else if (k === "text") node.textContent = v;
      else node.setAttribute(k, v);
    }
    for (const child of children) {
      if (child === null || child === undefined) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }
  function svg(tag, attrs) {
    const node = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
    return node;
  }
  const exact = new Intl.NumberFormat();
  function compact(n) {
    if (n === null || n === undefined) return "–";
    const a = Math.abs(n);
    if (a >= 1e9) return (n / 1e9).toFixed(a >= 1e10 ? 0 : 1) + "B";
    if (a >= 1e6) return (n / 1e6).toFixed(a >= 1e7 ? 0 : 1) + "M";
    if (a >= 1e3) return (n / 1e3).toFixed(a >= 1e4 ? 0 : 1) + "k";
    return String(n);
  }
  function pct(ratio, digits = 1) {
    return ratio === null || ratio === undefined ? "–" : (ratio * 100).toFixed(digits) + "%";
  }
  function when(seconds) {
    if (!seconds) return "–";
    const d = new Date(seconds * 1000);
    const today = new Date();
    const sameDay = d.toDateString() === today.toDateString();
    return sameDay
      ? d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" })
      : d.toLocaleString([], { month: "short", day: "2-digit", hour: "2-digit", minute: "2-digit" });
  }
  function span(seconds) {
    if (seconds === null || seconds === undefined) return "–";
    const s = Math.max(0, Math.round(seconds));
    const d = Math.floor(s / 86400), h = Math.floor((s % 86400) / 3600), m = Math.floor((s % 3600) / 60);
    if (d) return `${d}d ${h}h`;
    if (h) return `${h}h ${m}m`;
    return `${m}m`;
  }
  function bucketLabel(start, bucket) {
    const d = new Date(start * 1000);
    if (bucket === "day") return d.toLocaleDateString([], { month: "short", day: "2-digit" });
    if (bucket >= 86400) return d.toLocaleDateString([], { month: "short", day: "2-digit" });
    if (bucket >= 3600 && state.range !== "24h") {
      return d.toLocaleString([], { weekday: "short", hour: "2-digit" });
    }
    return d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  }

  // -- fetching ---------------------------------------------------------------

  class AuthNeeded extends Error {}

  async function getJSON(path, method = "GET") {
    const headers = { Accept: "application/json" };
    const token = sessionStorage.getItem(TOKEN_KEY);
    if (token) headers["X-Subrouter-Token"] = token;
    const response = await fetch(BASE + path, {
      method, headers, cache: "no-store", credentials: "same-origin", redirect: "error",
    });
    if (response.status === 401) {
      showGate(Boolean(token));
      throw new AuthNeeded("a client token is needed");
    }
    let body = null;
    try { body = await response.json(); } catch (e) { body = null; }
    if (!response.ok) {
      const message = body && body.error && body.error.message;
      throw new Error(message || `HTTP ${response.status}`);
    }
    return body;
  }

  function rangeQuery(extra) {
    const r = RANGES[state.range];
    const q = new URLSearchParams({ since: r.since, bucket: r.bucket, tz: zone, ...(extra || {}) });
    return q.toString();
  }

  function showGate(rejected) {
    const gate = $("token-gate");
    gate.hidden = false;
    gate.querySelector("label").textContent = rejected
      ? "That client token was refused: enter a valid one"
      : "This Subrouter needs a client token";
    $("token-input").focus();
  }

  function setStatus(ok, text) {
    $("status").textContent = text;
    $("status-dot").className = "dot " + (ok ? "ok" : "bad");
  }

  async function load() {
    if (state.loading) return;
    state.loading = true;
    try {
      const [usage, accounts, conversations] = await Promise.all([
        getJSON("token-usage?" + rangeQuery({ by: "user,account,model,agent" })),
        getJSON("accounts"),
        getJSON("conversations?" + rangeQuery({ limit: "200" })),
      ]);
      state.usage = usage; state.accounts = accounts; state.conversations = conversations;
      $("token-gate").hidden = true;
      render();
      if (!$("version").textContent) {
        getJSON("health").then((h) => { $("version").textContent = "Subrouter " + h.version; },
          () => {});
      }
      setStatus(true, "updated " + new Date().toLocaleTimeString());
    } catch (e) {
      if (e instanceof AuthNeeded) setStatus(false, "waiting for a client token");
      else setStatus(false, "cannot reach Subrouter (" + e.message + "); retrying");
    } finally {
      state.loading = false;
    }
  }

  // -- rendering --------------------------------------------------------------

  function render() {
    // one panel's trouble must not blank the others
    const failed = [];
    for (const panel of [renderTotals, renderTokensChart, renderCacheChart, renderBreakdown,
      renderAccounts, renderConversations]) {
      try { panel(); } catch (e) { failed.push(panel.name + ": " + e.message); }
    }
    if (failed.length) throw new Error("drawing failed (" + failed.join("; ") + ")");
    for (const link of document.querySelectorAll("a.json")) {
      const endpoint = link.dataset.endpoint;
      link.href = BASE + endpoint + (endpoint === "accounts" ? "" : "?" + rangeQuery(
        endpoint === "token-usage" ? { by: "user,account,model,agent" } : {}));
      link.title = "The JSON behind this panel (a shared server also needs the token header)";
    }
  }

  function renderTotals() {
    const t = state.usage.totals;
    $("t-total").textContent = compact(t.total_tokens);
    $("t-total").title = exact.format(t.total_tokens);
    $("t-requests").textContent = exact.format(t.requests) + " model calls";
    $("t-input").textContent = compact(t.input_tokens);
    $("t-input").title = exact.format(t.input_tokens);
    $("t-cached").textContent = compact(t.cached_input_tokens) + " cached";
    $("t-output").textContent = compact(t.output_tokens);
    $("t-output").title = exact.format(t.output_tokens);
    $("t-reasoning").textContent = compact(t.reasoning_tokens) + " reasoning";
    $("t-ratio").textContent = pct(t.cache_hit_ratio);
  }

  function niceMax(value) {
    if (value <= 0) return 1;
    const power = Math.pow(10, Math.floor(Math.log10(value)));
    for (const step of [1, 2, 2.5, 5, 10]) if (step * power >= value) return step * power;
    return 10 * power;
  }

  function frame(container, yMax, yFormat) {
    container.textContent = "";
    const width = Math.max(container.clientWidth, 200);
    const height = Math.max(container.clientHeight, 100);
    const m = { left: 46, right: 8, top: 8, bottom: 22 };
    const root = svg("svg", { viewBox: `0 0 ${width} ${height}`, role: "img" });
    const plot = { x: m.left, y: m.top, w: width - m.left - m.right, h: height - m.top - m.bottom };
    for (let i = 0; i <= 4; i++) {
      const y = plot.y + plot.h - (plot.h * i) / 4;
      root.append(svg("line", { class: "grid", x1: plot.x, x2: plot.x + plot.w, y1: y, y2: y }));
      const label = svg("text", { x: plot.x - 6, y: y + 4, "text-anchor": "end" });
      label.textContent = yFormat((yMax * i) / 4);
      root.append(label);
    }
    container.append(root);
    return { root, plot };
  }

  function xLabels(root, plot, buckets, bucket) {
    const n = buckets.length;
    const every = Math.max(1, Math.ceil(n / Math.max(2, Math.floor(plot.w / 70))));
    buckets.forEach((b, i) => {
      if (i % every) return;
      const x = plot.x + (plot.w * (i + 0.5)) / n;
      const t = svg("text", { x, y: plot.y + plot.h + 15, "text-anchor": "middle" });
      t.textContent = bucketLabel(b.start, bucket);
      root.append(t);
    });
  }

  const LAYERS = [
    ["cached", "cached input", (u) => u.cached_input_tokens],
    ["input", "uncached input", (u) => Math.max(0, u.input_tokens - u.cached_input_tokens)],
    ["output", "output", (u) => Math.max(0, u.output_tokens - u.reasoning_tokens)],
    ["reasoning", "reasoning", (u) => u.reasoning_tokens],
  ];

  function renderTokensChart() {
    const legend = $("tokens-legend");
    legend.textContent = "";
    for (const [key, name] of LAYERS) legend.append(el("span", {}, el("i", { class: "i-" + key }), name));
    const { buckets, bucket } = state.usage;
    const top = Math.max(0, ...buckets.map((b) => LAYERS.reduce((s, l) => s + l[2](b.usage), 0)));
    const yMax = niceMax(top);
    const { root, plot } = frame($("tokens-chart"), yMax, compact);
    const n = buckets.length || 1;
    const slot = plot.w / n;
    const barW = Math.max(1, slot * 0.72);
    buckets.forEach((b, i) => {
      const u = b.usage;
      const g = svg("g", { class: "bucket", "data-start": b.start, "data-total": u.total_tokens });
      const title = svg("title", {});
      title.textContent = `${bucketLabel(b.start, bucket)}: ${exact.format(u.total_tokens)} tokens` +
        ` (input ${exact.format(u.input_tokens)}, cached ${exact.format(u.cached_input_tokens)},` +
        ` output ${exact.format(u.output_tokens)}, reasoning ${exact.format(u.reasoning_tokens)};` +
        ` ${exact.format(u.requests)} calls)`;
      g.append(title);
      let y = plot.y + plot.h;
      for (const [key, , value] of LAYERS) {
        const h = (plot.h * value(u)) / yMax;
        if (h <= 0) continue;
        y -= h;
        g.append(svg("rect", { class: "s-" + key, x: plot.x + slot * i + (slot - barW) / 2, y, width: barW, height: h }));
      }
      // an invisible full-height target so thin bars still show their numbers
      g.append(svg("rect", { x: plot.x + slot * i, y: plot.y, width: slot, height: plot.h, fill: "transparent" }));
      root.append(g);
    });
    xLabels(root, plot, buckets, bucket);
    if (!state.usage.totals.requests) {
      const t = svg("text", { class: "empty", x: plot.x + plot.w / 2, y: plot.y + plot.h / 2, "text-anchor": "middle" });
      t.textContent = "No model calls in this range yet";
      root.append(t);
    }
  }

  function renderCacheChart() {
    const { buckets, bucket } = state.usage;
    const { root, plot } = frame($("cache-chart"), 1, (v) => Math.round(v * 100) + "%");
    const n = buckets.length || 1;
    const segments = [[]];
    let drawn = 0;
    buckets.forEach((b, i) => {
      const ratio = b.usage.cache_hit_ratio;
      if (ratio === null) { segments.push([]); return; }
      const x = plot.x + (plot.w * (i + 0.5)) / n;
      const y = plot.y + plot.h - plot.h * ratio;
      segments[segments.length - 1].push(x.toFixed(1) + "," + y.toFixed(1));
      const dot = svg("circle", { class: "point", cx: x, cy: y, r: 2.5, "data-ratio": ratio });
      const title = svg("title", {});
      title.textContent = `${bucketLabel(b.start, bucket)}: ${pct(ratio)} of input from cache`;
      dot.append(title);
      root.append(dot);
      drawn++;
    });
    const d = segments.filter((s) => s.length).map((s) => "M" + s.join("L")).join("");
    if (d) root.insertBefore(svg("path", { class: "line", d }), root.querySelector("circle"));
    xLabels(root, plot, buckets, bucket);
    if (!drawn) {
      const t = svg("text", { class: "empty", x: plot.x + plot.w / 2, y: plot.y + plot.h / 2, "text-anchor": "middle" });
      t.textContent = "No input tokens in this range yet";
      root.append(t);
    }
  }

  // -- sortable tables -----------------------------------------------------------

  const sorts = {};

  function sortedRows(tableId, rows, accessor) {
    const table = $(tableId);
    const th = table.querySelector("th[aria-sort]");
    const key = th ? th.dataset.key : null;
    if (!key) return rows;
    const dir = th.getAttribute("aria-sort") === "ascending" ? 1 : -1;
    const text = th.dataset.type === "text";
    return rows.slice().sort((a, b) => {
      let x = accessor(a, key), y = accessor(b, key);
      if (x === null || x === undefined) return 1;
      if (y === null || y === undefined) return -1;
      if (text) { x = String(x).toLowerCase(); y = String(y).toLowerCase(); }
      return x < y ? -dir : x > y ? dir : 0;
    });
  }

  function makeSortable(tableId, rerender) {
    sorts[tableId] = rerender;
    for (const th of $(tableId).querySelectorAll("th[data-key]")) {
      th.tabIndex = 0;
      const choose = () => {
        const was = th.getAttribute("aria-sort");
        for (const other of $(tableId).querySelectorAll("th")) other.removeAttribute("aria-sort");
        const text = th.dataset.type === "text";
        th.setAttribute("aria-sort", was === "descending" ? "ascending" : was === "ascending" ? "descending" : text ? "ascending" : "descending");
        rerender();
      };
      th.addEventListener("click", choose);
      th.addEventListener("keydown", (e) => { if (e.key === "Enter" || e.key === " ") { e.preventDefault(); choose(); } });
    }
  }

  function fillBody(tableId, rows, makeRow, empty) {
    const body = $(tableId).tBodies[0];
    body.textContent = "";
    if (!rows.length) {
      const cols = $(tableId).tHead.rows[0].cells.length;
      body.append(el("tr", {}, el("td", { class: "empty", colspan: cols, text: empty })));
      return;
    }
    for (const row of rows) body.append(makeRow(row));
  }

  // -- breakdown -------------------------------------------------------------------

  function renderBreakdown() {
    const group = state.usage.by[state.by] || { rows: [], more: 0 };
    const rows = group.rows;
    const bars = $("breakdown-bars");
    bars.textContent = "";
    const top = Math.max(1, ...rows.map((r) => r.usage.total_tokens));
    for (const r of rows.slice(0, 8)) {
      const name = r.key === null ? "(none)" : r.key;
      const fill = el("div", { class: "fill" });
      fill.style.width = ((100 * r.usage.total_tokens) / top).toFixed(1) + "%";
      bars.append(el("div", { class: "barrow", title: `${name}: ${exact.format(r.usage.total_tokens)} tokens` },
        el("span", { class: "name", text: name }),
        el("span", { class: "val", text: compact(r.usage.total_tokens) }),
        el("div", { class: "track" }, fill)));
    }
    if (!rows.length) bars.append(el("p", { class: "note", text: "Nothing in this range yet." }));
    const accessor = (r, key) => (key === "key" ? r.key : r.usage[key]);
    fillBody("breakdown-table", sortedRows("breakdown-table", rows, accessor), (r) => {
      const u = r.usage;
      return el("tr", {},
        el("td", { class: "id", title: r.key || "", text: r.key === null ? "(none)" : r.key }),
        el("td", { class: "num", text: exact.format(u.requests) }),
        el("td", { class: "num", text: exact.format(u.input_tokens) }),
        el("td", { class: "num", text: exact.format(u.cached_input_tokens) }),
        el("td", { class: "num", text: exact.format(u.output_tokens) }),
        el("td", { class: "num", text: exact.format(u.reasoning_tokens) }),
        el("td", { class: "num", text: exact.format(u.total_tokens) }),
        el("td", { class: "num", text: pct(u.cache_hit_ratio) }));
    }, "No model calls in this range yet");
  }

  // -- accounts ----------------------------------------------------------------------

  function windowName(w) {
    if (w.window_minutes === 300) return "5-hour";
    if (w.window_minutes === 10080) return "Weekly";
    if (w.window_minutes) return w.window_minutes % 1440 === 0 ? `${w.window_minutes / 1440}-day` : `${Math.round(w.window_minutes / 60)}-hour`;
    return w.name;
  }

  function forecastText(w) {
    // /_subrouter/accounts gives, per window, a forecast from the recent burn
    // rate: hours_left and empties_at, or a reason it cannot say
    const f = w.forecast;
    if (!f) return "forecast: not enough data yet";
    const rate = f.percent_per_hour !== undefined && f.percent_per_hour !== null
      ? ` (${f.percent_per_hour.toFixed(1)}%/h)` : "";
    let left = f.hours_left !== undefined && f.hours_left !== null ? f.hours_left * 3600 : null;
    if (left === null && f.empties_at) {
      const at = typeof f.empties_at === "number" ? f.empties_at * 1000 : Date.parse(f.empties_at);
      if (!Number.isNaN(at)) left = (at - Date.now()) / 1000;
    }
    if (left !== null) {
      if (f.resets_first || (f.resets_first === undefined && w.resets_in && left > w.resets_in)) {
        return "at the recent rate it lasts until the reset" + rate;
      }
      return `at the recent rate empty in ~${span(left)}` + rate;
    }
    if (f.reason) return "forecast: " + f.reason;
    return "forecast: not enough data yet";
  }

  function renderAccounts() {
    const box = $("accounts");
    box.textContent = "";
    const listing = state.accounts || { accounts: [] };
    const note = $("accounts-note");
    const skipped = listing.skipped_files || [];
    note.hidden = !skipped.length && listing.accounts.length > 0;
    note.textContent = listing.accounts.length
      ? skipped.map((s) => `skipped ${s.file}: ${s.error}`).join("; ")
      : "No accounts yet: add one with `cx add` (a ChatGPT login) or `cx add-key`.";
    for (const a of listing.accounts) {
      const usable = a.usable_for_new_sessions;
      // usable but low: it keeps its conversations, new ones go elsewhere first
      const low = !usable && a.usable && !a.exhausted_until;
      const badge = usable ? ["ok", "usable"] : low ? ["warn", "low headroom"]
        : a.exhausted_until ? ["warn", "exhausted"] : ["bad", "not usable"];
      const head = el("div", { class: "head" },
        el("strong", { text: a.email || a.id }),
        el("span", { class: "badge", text: a.kind === "oauth" ? "ChatGPT login" : "API key" }),
        a.plan ? el("span", { class: "badge", text: a.plan }) : null,
        el("span", { class: "badge " + badge[0], text: badge[1] }));
      const card = el("div", { class: "account", "data-account": a.id }, head);
      for (const w of a.windows || []) {
        const used = Math.max(0, Math.min(100, w.used_percent || 0));
        const fill = el("div", { class: "fill" + (used >= 90 ? " bad" : used >= 70 ? " warn" : "") });
        fill.style.width = used.toFixed(1) + "%";
        card.append(el("div", { class: "window", "data-window": w.name },
          el("span", { text: windowName(w) }),
          el("div", { class: "track", title: `${used.toFixed(1)}% used` }, fill),
          el("span", { class: "pct", text: Math.round(used) + "%" }),
          el("span", { class: "meta", text: (w.resets_in ? `resets in ${span(w.resets_in)}` : "reset time unknown") + " · " + forecastText(w) })));
      }
      if (a.kind === "oauth" && !(a.windows || []).length) {
        card.append(el("p", { class: "auth", text: "No usage known yet (the first poll or answer brings it)." }));
      }
      card.append(el("div", { class: "facts" },
        el("span", {}, "headroom ", el("b", { text: a.kind === "oauth" ? pct(a.headroom, 0) : "pay per token" })),
        el("span", {}, "live conversations ", el("b", { text: String(a.live_sessions || 0) })),
        a.usage_age !== null && a.usage_age !== undefined ? el("span", {}, "usage seen ", el("b", { text: span(a.usage_age) + " ago" })) : null));
      if (a.exhausted_until) {
        card.append(el("p", { class: "why", text: `exhausted until ${when(a.exhausted_until)}` + (a.exhausted_reason ? ` (${a.exhausted_reason})` : "") }));
      } else if (low) {
        card.append(el("p", { class: "auth", text: "Low headroom: it keeps its conversations; new ones go to other accounts first." }));
      } else if (!usable && (a.why_not || a.usage_error)) {
        card.append(el("p", { class: "why", text: a.why_not || a.usage_error }));
      }
      const auth = state.auth[a.id];
      if (auth) {
        const text = auth.auth_checked
          ? auth.auth_valid ? "sign-in valid" + (auth.refreshed ? " (token refreshed)" : "") : "sign-in failed: " + (auth.error || "unknown")
          : "API key (no sign-in to check)";
        card.append(el("p", { class: "auth", text }));
      }
      box.append(card);
    }
  }

  async function accountStatus(method, button) {
    if (method === "POST" && !window.confirm("Refresh the access token of every ChatGPT login now?")) return;
    button.disabled = true;
    try {
      const result = await getJSON("account-status", method);
      state.auth = {};
      for (const row of result.accounts) state.auth[row.id] = row;
      state.accounts = await getJSON("accounts");
      renderAccounts();
    } catch (e) {
      if (!(e instanceof AuthNeeded)) setStatus(false, "checking the accounts failed: " + e.message);
    } finally {
      button.disabled = false;
    }
  }

  // -- conversations -------------------------------------------------------------------

  function renderConversations() {
    const data = state.conversations || { conversations: [], recording: false };
    $("recording-note").hidden = Boolean(data.recording);
    const accessor = (c, key) => {
      if (key === "requests") return c.usage ? c.usage.requests : c.placed_requests;
      if (key === "total_tokens" || key === "cache_hit_ratio") return c.usage ? c.usage[key] : null;
      return c[key];
    };
    fillBody("conversations-table", sortedRows("conversations-table", data.conversations, accessor), (c) => {
      const links = el("td", {});
      if (c.transcript) {
        links.append(el("a", { href: c.transcript.events, target: "_blank", "data-fetch": "", text: "events" }), " · ",
          el("a", { href: c.transcript.raw, target: "_blank", "data-fetch": "", text: "raw" }));
      } else {
        links.textContent = "–";
      }
      const id = el("td", { class: "id", title: c.session });
      if (c.live) id.append(el("span", { class: "live", title: "live" }));
      id.append(c.session);
      return el("tr", { "data-session": c.session },
        el("td", { text: c.agent }),
        id,
        el("td", { class: "id", title: (c.accounts || []).join(", "), text: c.account || "–" }),
        el("td", { class: "id", text: c.user || "–" }),
        el("td", { text: when(c.first_seen) }),
        el("td", { text: when(c.last_seen) }),
        el("td", { class: "num", text: exact.format(accessor(c, "requests") || 0) }),
        el("td", { class: "num", text: c.usage ? exact.format(c.usage.total_tokens) : "–" }),
        el("td", { class: "num", text: c.usage ? pct(c.usage.cache_hit_ratio) : "–" }),
        links);
    }, "No conversations in this range yet");
  }

  // -- wiring ----------------------------------------------------------------------------

  function pressed(group, button) {
    for (const b of group.querySelectorAll("button")) b.setAttribute("aria-pressed", String(b === button));
  }

  function start() {
    $("zone").textContent = zone;
    const ranges = document.querySelector(".ranges");
    ranges.addEventListener("click", (e) => {
      const button = e.target.closest("button[data-range]");
      if (!button || button.dataset.range === state.range) return;
      state.range = button.dataset.range;
      pressed(ranges, button);
      load();
    });
    const tabs = document.querySelector(".tabs");
    tabs.addEventListener("click", (e) => {
      const button = e.target.closest("button[data-by]");
      if (!button) return;
      state.by = button.dataset.by;
      pressed(tabs, button);
      if (state.usage) renderBreakdown();
    });
    makeSortable("breakdown-table", () => state.usage && renderBreakdown());
    makeSortable("conversations-table", () => state.conversations && renderConversations());
    $("check-auth").addEventListener("click", (e) => accountStatus("GET", e.currentTarget));
    $("refresh-all").addEventListener("click", (e) => accountStatus("POST", e.currentTarget));
    $("token-gate").addEventListener("submit", (e) => {
      e.preventDefault();
      const value = $("token-input").value.trim();
      if (!value) return;
      sessionStorage.setItem(TOKEN_KEY, value);
      $("token-input").value = "";
      load();
    });
    // JSON and transcript links: on a shared server the endpoint needs the
    // token, which a plain link cannot send; fetch it with the header and
    // show the answer in the new tab instead (the token stays out of the URL)
    document.addEventListener("click", (e) => {
      const link = e.target.closest("a[data-fetch]");
      const token = sessionStorage.getItem(TOKEN_KEY);
      if (!link || !token) return;
      e.preventDefault();
      const tab = window.open("", "_blank");
      fetch(link.href, { headers: { "X-Subrouter-Token": token }, cache: "no-store" })
        .then((r) => r.blob())
        .then((body) => {
          const url = URL.createObjectURL(new Blob([body], { type: "application/json" }));
          if (tab) tab.location.href = url; else window.location.href = url;
        })
        .catch((err) => {
          if (tab) tab.close();
          setStatus(false, "opening " + link.textContent + " failed: " + err.message);
        });
    });
    let resizing = null;
    window.addEventListener("resize", () => {
      clearTimeout(resizing);
      resizing = setTimeout(() => { if (state.usage) { renderTokensChart(); renderCacheChart(); } }, 150);
    });
    document.addEventListener("visibilitychange", () => { if (!document.hidden) load(); });
    state.timer = setInterval(() => { if (!document.hidden) load(); }, REFRESH_MS);
    load();
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
