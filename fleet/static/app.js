// LiftGuard dashboard: live alert queue (SSE), verdicts, unit commands, unit rows (state, heartbeat,
// camera, relay, blocking, config), daily chart.
// No framework: the page is rendered by the server; this script only adds the live parts.
"use strict";

const csrf = document.querySelector('meta[name="csrf-token"]').content;
// The site's time zone (fleet setting `timezone`): alert times read as the property manager's day,
// the same as on the server-rendered pages, wherever the browser happens to be.
const zone = document.querySelector('meta[name="time-zone"]')?.content || "UTC";

function siteParts(ts) {
  // The wall-clock fields of `ts` in the site's zone; null for a zone this browser does not know.
  const opts = { year: "numeric", month: "2-digit", day: "2-digit", hour: "2-digit", minute: "2-digit",
                 second: "2-digit", hourCycle: "h23" };
  try {
    const parts = new Intl.DateTimeFormat("en-US", { ...opts, timeZone: zone }).formatToParts(new Date(ts * 1000));
    return Object.fromEntries(parts.map((x) => [x.type, x.value]));
  } catch (e) {
    return null;
  }
}

function siteTime(ts) {
  // "2026-11-30 04:30:00 Asia/Shanghai", like the server's pages.
  const p = siteParts(ts);
  // An unknown zone: the browser's own zone, named, rather than nothing.
  if (!p) return new Date(ts * 1000).toLocaleString(undefined, { timeZoneName: "short" });
  return `${p.year}-${p.month}-${p.day} ${p.hour}:${p.minute}:${p.second} ${zone}`;
}

function siteClock(ts) {
  // "04:30", like the server's `_local(ts, zone, with_zone=False, fmt="%H:%M")`.
  const p = siteParts(ts);
  if (!p) return new Date(ts * 1000).toLocaleTimeString(undefined, { hour: "2-digit", minute: "2-digit",
                                                                      timeZoneName: "short" });
  return `${p.hour}:${p.minute}`;
}

async function api(method, url, body) {
  const res = await fetch(url, {
    method,
    credentials: "same-origin",
    headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (res.status === 401) { window.location = "/login"; throw new Error("logged out"); }
  const data = await res.json().catch(() => ({}));
  if (!res.ok) throw new Error(data.detail || res.statusText);
  return data;
}

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  for (const c of children) node.append(c);  // text is appended as text: device strings stay inert
  return node;
}

// ---- live alert queue -------------------------------------------------------------------------
const queue = document.getElementById("alert-queue");
// [value, button label] of each verdict, as the server defines them (fleet/alerts.py).
const VERDICTS = Object.entries(JSON.parse(document.querySelector('meta[name="verdicts"]').content));

function updateCount() {
  const n = queue.querySelectorAll(".alert").length;
  document.getElementById("alert-count").textContent = n ? `(${n} open)` : "(none open)";
}

function loadSnapshot(img, url, tries) {
  // The JPEG travels on its own topic and may land a moment after the event: retry briefly.
  img.onerror = () => { if (tries > 0) setTimeout(() => loadSnapshot(img, url, tries - 1), 1000); };
  img.src = `${url}?t=${Date.now()}`;
}

function showAlert(a) {
  const existing = queue.querySelector(`[data-event-id="${CSS.escape(a.event_id)}"]`);
  if (a.verdict) { if (existing) existing.remove(); updateCount(); return; }
  if (existing) {
    const img = existing.querySelector("img");
    if (img && a.has_snapshot && !img.complete) loadSnapshot(img, a.snapshot_url, 3);
    return;
  }
  const when = siteTime(a.ts);
  const card = el("div", { class: "alert", "data-event-id": a.event_id });
  if (a.snapshot_url) {
    const img = el("img", { class: "snapshot", alt: `snapshot of ${a.unit_id}` });
    loadSnapshot(img, a.snapshot_url, 10);
    card.append(img);
  }
  const conf = a.confidence == null ? "" : ` ${(a.confidence * 100).toFixed(0)}%`;
  card.append(el("div", {}, el("strong", {}, a.type.replace("_", " ")), ` · ${a.unit_id}`),
              el("div", { class: "muted" }, `${a.building || ""} ${a.elevator || ""} · ${when} · ${a.cls || ""}${conf}`));
  const buttons = el("div", {});
  for (const [verdict, label] of VERDICTS) {
    const b = el("button", { class: "verdict", "data-verdict": verdict }, label);
    b.addEventListener("click", async () => {
      b.disabled = true;
      try { await api("POST", `/api/alerts/${encodeURIComponent(a.event_id)}/verdict`, { verdict }); card.remove(); }
      catch (e) { b.disabled = false; card.append(el("div", { class: "error" }, e.message)); }
      updateCount();
    });
    buttons.append(b, " ");
  }
  card.append(buttons);
  queue.prepend(card);
  updateCount();
}

async function startAlerts() {
  const data = await api("GET", "/api/alerts?status=open&limit=50");
  for (const a of data.alerts.reverse()) showAlert(a);
  updateCount();
  const source = new EventSource("/api/alerts/stream");
  source.addEventListener("alert", (ev) => showAlert(JSON.parse(ev.data)));
}

// ---- unit commands ----------------------------------------------------------------------------
async function sendCommand(button) {
  const row = button.closest("tr");
  const status = row.querySelector(".cmd-status");
  const { unit, cmd } = button.dataset;
  if (cmd !== "release" && !confirm(`${cmd} blocking on ${unit}?`)) return;
  status.textContent = `${cmd}: sending…`;
  try {
    const sent = await api("POST", `/api/units/${encodeURIComponent(unit)}/commands`, { name: cmd });
    for (let i = 0; i < 30; i++) {
      const c = await api("GET", `/api/commands/${sent.command_id}`);
      if (c.status !== "pending") { status.textContent = `${cmd}: ${c.status} ${c.result_detail || ""}`; return; }
      status.textContent = `${cmd}: waiting for the unit…`;
      await new Promise((r) => setTimeout(r, 1000));
    }
    status.textContent = `${cmd}: no answer from the unit`;
  } catch (e) { status.textContent = `${cmd}: ${e.message}`; }
}

document.addEventListener("click", (ev) => {
  const b = ev.target.closest("button.cmd");
  if (b) sendCommand(b);
});

// ---- unit rows: state, heartbeat, camera, relay, blocking, config; polled (rows many, changes rare) ----
const UNIT_REFRESH_MS = 10000;

function configText(report) {
  // The same words as the server's `web._config_text`: "config v7 applied 12:03", "config v8 refused: …".
  if (!report) return "";
  const version = report.version == null ? "" : ` v${report.version}`;
  return report.applied ? `config${version} applied ${siteClock(report.received_at)}`
                        : `config${version} refused: ${report.detail}`;
}

function ago(ts, now) {
  // The same words as the server's `web._ago`, against the server's clock (`now` of /api/units).
  if (ts == null) return "never";
  const seconds = Math.max(0, Math.floor(now - ts));
  if (seconds < 120) return `${seconds} s ago`;
  if (seconds < 7200) return `${Math.floor(seconds / 60)} min ago`;
  return `${Math.floor(seconds / 3600)} h ago`;
}

function wholeFps(fps) {
  // Python's `f"{fps:.0f}"` rounds a half to even (12.5 -> "12"), where toFixed would say "13".
  const x = fps || 0, n = Math.round(x);
  return String(n - x === 0.5 && n % 2 ? n - 1 : n);
}

const BLOCKING = new Map([[true, "enabled"], [false, "disabled"]]);

function refreshRow(row, u, now) {
  // textContent and class names only, never HTML: camera, relay and the config reason come from the device.
  const cell = (name) => row.querySelector(`td.${name}`);
  const badge = cell("state")?.querySelector(".badge");
  if (badge) { badge.className = `badge state ${u.status}`; badge.textContent = u.status; }
  const heartbeat = cell("heartbeat");
  if (heartbeat) {
    heartbeat.textContent = ago(u.last_heartbeat, now);
    heartbeat.title = u.last_heartbeat == null ? "" : siteTime(u.last_heartbeat);
  }
  const camera = u.camera || "unknown";
  const cameraBadge = cell("camera")?.querySelector(".badge");
  if (cameraBadge) { cameraBadge.className = `badge ${camera}`; cameraBadge.textContent = camera; }
  const fps = cell("camera")?.querySelector(".fps");
  if (fps) fps.textContent = `${wholeFps(u.fps)} fps`;
  if (cell("relay")) cell("relay").textContent = u.relay || "";
  if (cell("blocking")) cell("blocking").textContent = BLOCKING.get(u.blocking_enabled) || "?";
  const config = cell("config");
  if (config) {
    config.textContent = configText(u.config_report);
    config.title = u.config_report ? siteTime(u.config_report.received_at) : "";
  }
}

async function refreshUnits() {
  const rows = document.querySelectorAll("tr.unit");
  if (!rows.length) return;
  // The page's own filters and row count: the API lists the same units in the same order.
  const filters = new URLSearchParams(window.location.search);
  // One more than the page shows: a shorter answer holds every match, so a row missing from it has stopped
  // matching the filters (a unit shown under "offline" that came back) and leaves the page.
  const query = new URLSearchParams({ limit: String(rows.length + 1) });
  for (const name of ["q", "site", "building", "status"]) {
    if (filters.get(name)) query.set(name, filters.get(name));
  }
  const data = await api("GET", `/api/units?${query}`);
  const now = data.now ?? Date.now() / 1000;
  const units = new Map(data.units.map((u) => [u.unit_id, u]));
  const complete = data.units.length <= rows.length;
  for (const row of rows) {
    const u = units.get(row.dataset.unitId);
    if (u) refreshRow(row, u, now);
    else if (complete) row.remove();
  }
  // The counts: the page's (every match, like the API's) and each building's (its rows on the page).
  const summary = document.getElementById("unit-summary");
  if (summary) summary.textContent = `${data.online}/${data.total} online`;
  for (const count of document.querySelectorAll("h4.building .n-online")) {
    const table = count.closest("h4").nextElementSibling;
    if (!table) continue;
    const shown = table.querySelectorAll("tr.unit");
    const online = table.querySelectorAll("tr.unit td.state .badge.online");
    count.textContent = `${online.length}/${shown.length} online`;
  }
}

// ---- daily chart (inline SVG) -----------------------------------------------------------------
const COLORS = ["#3566c5", "#d9822b", "#1a7f37", "#c62828", "#7b3fb0", "#0f8b8d", "#9a6700", "#5a6270"];

function svg(tag, attrs, text) {
  const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  return node;
}

async function drawChart() {
  const box = document.getElementById("daily-chart");
  const data = await api("GET", "/api/stats/daily?days=14");
  const W = 900, H = 220, L = 40, B = 30, T = 10;
  const totals = data.days.map((_, i) => data.series.reduce((s, x) => s + x.counts[i], 0));
  const max = Math.max(1, ...totals);
  const chart = svg("svg", { viewBox: `0 0 ${W} ${H + 20 * Math.ceil(data.series.length / 4)}`, width: "100%", role: "img",
                             "aria-label": "e-bike alerts per day" });
  const bw = (W - L) / data.days.length;
  chart.append(svg("text", { x: 0, y: T + 10, "font-size": 11 }, String(max)));
  chart.append(svg("line", { x1: L, y1: H - B, x2: W, y2: H - B, stroke: "#999" }));
  data.days.forEach((day, i) => {
    let y = H - B;
    data.series.forEach((s, k) => {
      const h = (s.counts[i] / max) * (H - B - T);
      if (h > 0) {
        const r = svg("rect", { x: L + i * bw + 2, y: y - h, width: bw - 4, height: h, fill: COLORS[k % COLORS.length] });
        r.append(svg("title", {}, `${s.building} ${day}: ${s.counts[i]}`));
        chart.append(r);
        y -= h;
      }
    });
    chart.append(svg("text", { x: L + i * bw + bw / 2, y: H - B + 14, "font-size": 10, "text-anchor": "middle" }, day.slice(5)));
  });
  data.series.forEach((s, k) => {
    const x = L + (k % 4) * 220, y = H + 10 + 20 * Math.floor(k / 4);
    chart.append(svg("rect", { x, y: y - 9, width: 10, height: 10, fill: COLORS[k % COLORS.length] }));
    chart.append(svg("text", { x: x + 14, y, "font-size": 11 }, s.building));
  });
  box.replaceChildren(chart);
}

if (queue) {
  startAlerts().catch((e) => console.error(e));
  drawChart().catch((e) => console.error(e));
  setInterval(() => drawChart().catch(() => {}), 60000);
  setInterval(() => refreshUnits().catch(() => {}), UNIT_REFRESH_MS);
}
