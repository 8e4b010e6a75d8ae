// LiftGuard dashboard: header counts and tab badge, browser notification + sound for new alerts, live
// alert queue (SSE; held back under the pointer), verdicts with undo, unit commands (each confirmed), unit
// rows (state, heartbeat, camera, relay, blocking, config), daily chart; verdicts in the alert history.
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

// ---- header: server-side counts and the tab title's badge --------------------------------------
const baseTitle = document.title;
let serverStart = null;  // the server's clock when this page loaded: only later alerts are announced

async function refreshCounts() {
  // The server counts every alert (not the cards this page happens to hold).
  const c = await api("GET", "/api/alerts/counts");
  if (serverStart === null) serverStart = c.now;
  const set = (id, text) => { const node = document.getElementById(id); if (node) node.textContent = text; };
  set("open-count", String(c.open));
  set("active-count", String(c.active));
  set("alert-count", c.open ? `(${c.open} open)` : "(none open)");
  document.title = c.open ? `(${c.open}) ${baseTitle}` : baseTitle;
  return c;
}

let countsTimer = null;
function countsSoon() {
  // Several alerts in one burst: one request.
  if (countsTimer) return;
  countsTimer = setTimeout(() => { countsTimer = null; refreshCounts().catch(() => {}); }, 300);
}

// ---- telling the person at the screen: browser notification + sound ---------------------------
const notifyButton = document.getElementById("notify-toggle");
let audio = null;

function notifyWanted() { return localStorage.getItem("liftguard-notify") === "on"; }

function showNotifyState() {
  if (!notifyButton) return;
  const permission = "Notification" in window ? Notification.permission : "unsupported";
  notifyButton.textContent = notifyWanted()
    ? (permission === "denied" ? "Sound on (notifications blocked by the browser)" : "Alert sound & notifications on")
    : "Turn on alert sound & notifications";
  notifyButton.setAttribute("aria-pressed", String(notifyWanted()));
}

function unlockAudio() {
  // Browsers start sound only after a click on the page: this button's click is that click.
  if (!audio && window.AudioContext) audio = new AudioContext();
  if (audio && audio.state === "suspended") audio.resume().catch(() => {});
}

function beep() {
  if (!audio) unlockAudio();
  if (!audio) return;
  const osc = audio.createOscillator(), gain = audio.createGain();
  osc.type = "square";
  osc.frequency.value = 880;
  gain.gain.value = 0.08;
  osc.connect(gain).connect(audio.destination);
  const t = audio.currentTime;
  osc.start(t);
  osc.stop(t + 0.35);
}

if (notifyButton) {
  notifyButton.addEventListener("click", async () => {
    if (notifyWanted()) { localStorage.setItem("liftguard-notify", "off"); showNotifyState(); return; }
    localStorage.setItem("liftguard-notify", "on");
    unlockAudio();
    if ("Notification" in window && Notification.permission === "default") {
      await Notification.requestPermission().catch(() => {});
    }
    showNotifyState();
  });
  if (notifyWanted()) document.addEventListener("click", unlockAudio, { once: true });
  showNotifyState();
}

// How each alert type is named, as the server defines it (fleet/alerts.py).
const ALERT_WORDS = JSON.parse(document.querySelector('meta[name="alert-types"]').content);

function announce(a) {
  // A new alert while this page is open: sound and a system notification, if the person turned them on.
  if (!notifyWanted()) return;
  beep();
  if ("Notification" in window && Notification.permission === "granted") {
    const where = [a.site, a.building, a.elevator].filter(Boolean).join(" / ") || a.unit_id;
    const n = new Notification(`${ALERT_WORDS[a.type] || a.type}: ${where}`,
                               { body: `${a.unit_id} · ${siteTime(a.ts)}`, tag: a.event_id });
    n.onclick = () => { window.focus(); n.close(); };
  }
}

// ---- live alert queue -------------------------------------------------------------------------
const queue = document.getElementById("alert-queue");
const panel = document.getElementById("alerts");
const newBar = document.getElementById("new-alerts");
// [value, button label] of each verdict, as the server defines them (fleet/alerts.py).
const VERDICTS = Object.entries(JSON.parse(document.querySelector('meta[name="verdicts"]').content));
const VERDICT_WORDS = Object.fromEntries(VERDICTS);
const UNDO_MS = 8000;
const pending = new Map();   // new alerts held back while the pointer is over the queue
const labelled = new Set();  // verdicts given on this page (an undo takes them out again)
const announced = new Set();  // alerts already sounded: the stream re-sends one when its snapshot lands

function loadSnapshot(img, url, tries) {
  // The JPEG travels on its own topic and may land a moment after the event: retry briefly.
  img.onerror = () => { if (tries > 0) setTimeout(() => loadSnapshot(img, url, tries - 1), 1000); };
  img.src = `${url}?t=${Date.now()}`;
}

function pointerOnQueue() {
  // The person is aiming at the queue: nothing in it may move.
  return panel.matches(":hover") || panel.contains(document.activeElement);
}

function showPendingBar() {
  const n = pending.size;
  newBar.hidden = n === 0;
  newBar.textContent = n === 1 ? "1 new alert — show" : `${n} new alerts — show`;
}

function flushPending() {
  for (const a of [...pending.values()].sort((x, y) => x.received_at - y.received_at)) insertCard(a);
  pending.clear();
  showPendingBar();
}

async function undo(a, previous, placeholder) {
  try {
    const restored = previous
      ? await api("POST", `/api/alerts/${encodeURIComponent(a.event_id)}/verdict`, { verdict: previous })
      : await api("DELETE", `/api/alerts/${encodeURIComponent(a.event_id)}/verdict`);
    labelled.delete(a.event_id);
    if (!restored.verdict) placeholder.replaceWith(makeCard(restored));
    else placeholder.remove();
  } catch (e) { placeholder.append(el("div", { class: "error" }, e.message)); }
  countsSoon();
}

function tidyPlaceholders() {
  // Done cards keep their place (the card under the pointer must not jump) until the pointer leaves.
  if (pointerOnQueue()) return;
  for (const done of queue.querySelectorAll(".alert-done.expired")) done.remove();
}

function makeCard(a) {
  const when = siteTime(a.ts);
  const card = el("div", { class: "alert", "data-event-id": a.event_id });
  if (a.snapshot_url) {
    const img = el("img", { class: "snapshot", alt: `snapshot of ${a.unit_id}` });
    loadSnapshot(img, a.snapshot_url, 10);
    card.append(img);
  }
  const conf = a.confidence == null ? "" : ` ${(a.confidence * 100).toFixed(0)}%`;
  const place = [a.site, a.building, a.elevator].filter(Boolean).join(" · ");
  card.append(el("div", {}, el("strong", {}, ALERT_WORDS[a.type] || a.type), " · ",
                 el("a", { href: `/units/${encodeURIComponent(a.unit_id)}` }, a.unit_id)),
              el("div", { class: "muted" }, `${place} · ${when} · ${a.cls || ""}${conf} · `,
                 el("a", { href: a.page_url, class: "details" }, "clip & details")));
  const buttons = el("div", {});
  for (const [verdict, label] of VERDICTS) {
    const b = el("button", { class: "verdict", "data-verdict": verdict }, label);
    b.addEventListener("click", async () => {
      for (const x of buttons.querySelectorAll("button")) x.disabled = true;
      try {
        const done = await api("POST", `/api/alerts/${encodeURIComponent(a.event_id)}/verdict`, { verdict });
        labelled.add(a.event_id);
        // The card becomes a "done" line in the same place, with an undo for a few seconds.
        const undoButton = el("button", { class: "undo" }, "Undo");
        const placeholder = el("div", { class: "alert-done", "data-event-id": a.event_id },
                               `${label} · ${a.unit_id} `, undoButton);
        placeholder.style.minHeight = `${Math.min(card.offsetHeight, 60)}px`;
        undoButton.addEventListener("click", () => { undoButton.disabled = true; undo(a, done.previous_verdict, placeholder); });
        card.replaceWith(placeholder);
        setTimeout(() => { undoButton.remove(); placeholder.classList.add("expired"); tidyPlaceholders(); }, UNDO_MS);
      } catch (e) {
        for (const x of buttons.querySelectorAll("button")) x.disabled = false;
        card.append(el("div", { class: "error" }, e.message));
      }
      countsSoon();
    });
    buttons.append(b, " ");
  }
  card.append(buttons);
  return card;
}

function insertCard(a) {
  if (queue.querySelector(`.alert[data-event-id="${CSS.escape(a.event_id)}"]`)) return;
  queue.prepend(makeCard(a));
}

function showAlert(a, live) {
  const selector = `.alert[data-event-id="${CSS.escape(a.event_id)}"]`;
  const existing = queue ? queue.querySelector(selector) : null;
  if (a.verdict || labelled.has(a.event_id)) {
    pending.delete(a.event_id);
    if (existing && a.verdict) existing.remove();
    if (newBar) showPendingBar();
    return;
  }
  const known = existing || pending.has(a.event_id);
  if (live && !known && !announced.has(a.event_id) && serverStart !== null && a.received_at >= serverStart - 1) {
    announced.add(a.event_id);
    announce(a);
  }
  if (!queue) return;
  if (existing) {
    const img = existing.querySelector("img");
    if (img && a.has_snapshot && !img.complete) loadSnapshot(img, a.snapshot_url, 3);
    return;
  }
  if (pending.has(a.event_id)) { pending.set(a.event_id, a); return; }
  if (live && pointerOnQueue() && queue.children.length) {
    pending.set(a.event_id, a);  // don't move the card being clicked: "N new alerts" instead
    showPendingBar();
  } else {
    insertCard(a);
  }
}

if (newBar) newBar.addEventListener("click", flushPending);
if (panel) panel.addEventListener("mouseleave", () => setTimeout(tidyPlaceholders, 0));

async function startAlerts() {
  await refreshCounts();
  if (queue) {
    const data = await api("GET", "/api/alerts?status=open&limit=50");
    for (const a of data.alerts.reverse()) showAlert(a, false);
  }
  const source = new EventSource("/api/alerts/stream");
  source.addEventListener("alert", (ev) => { showAlert(JSON.parse(ev.data), true); countsSoon(); chartSoon(); });
  setInterval(() => refreshCounts().catch(() => {}), 10000);  // verdicts given elsewhere
}

// ---- verdicts in the alert history and on a unit's page ---------------------------------------
function toast(text, undoAction) {
  const box = document.getElementById("toasts") || document.body.appendChild(el("div", { id: "toasts" }));
  const t = el("div", { class: "toast" }, text);
  if (undoAction) {
    const b = el("button", { class: "undo" }, "Undo");
    b.addEventListener("click", () => { t.remove(); undoAction(); });
    t.append(b);
  }
  box.append(t);
  setTimeout(() => t.remove(), UNDO_MS);
}

function showRowVerdict(row, a) {
  row.querySelector("td.verdict").textContent = a.verdict || "open";
  const badge = row.querySelector("td.state .badge");
  if (badge) { badge.className = `badge life ${a.state}`; badge.textContent = a.state; }
  const acked = row.querySelector("td.acked");
  if (acked) {
    acked.replaceChildren();
    if (a.acknowledged_at) acked.append(a.acknowledged_by, el("br"), el("span", { class: "muted" }, siteTime(a.acknowledged_at)));
  }
  for (const b of row.querySelectorAll("button.verdict-action")) b.disabled = b.dataset.verdict === a.verdict;
}

async function rowVerdict(button) {
  const row = button.closest("tr");
  const { eventId, verdict } = button.dataset;
  const url = `/api/alerts/${encodeURIComponent(eventId)}/verdict`;
  try {
    const done = await api("POST", url, { verdict });
    showRowVerdict(row, done);
    toast(`${VERDICT_WORDS[verdict]} · ${done.unit_id}`, async () => {
      const back = done.previous_verdict ? await api("POST", url, { verdict: done.previous_verdict })
                                         : await api("DELETE", url);
      showRowVerdict(row, back);
      countsSoon();
    });
  } catch (e) { toast(`${verdict}: ${e.message}`); }
  countsSoon();
}

// ---- unit commands ----------------------------------------------------------------------------
async function sendCommand(button) {
  const row = button.closest("tr");
  const status = row.querySelector(".cmd-status");
  const { unit, cmd } = button.dataset;
  const question = cmd === "release" ? `Release the door held by ${unit}?` : `${cmd} blocking on ${unit}?`;
  if (!confirm(question)) return;
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
  const v = ev.target.closest("button.verdict-action");
  if (v) rowVerdict(v);
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
  // The same rule as the server's `web._camera_live`: a unit that is not online has no live camera state.
  const live = u.online && u.camera;
  const cameraBadge = cell("camera")?.querySelector(".badge");
  if (cameraBadge) {
    cameraBadge.className = `badge ${live ? u.camera : "stale"}`;
    cameraBadge.textContent = live ? u.camera : "unknown";
    cameraBadge.title = live || !u.camera ? "" : `last reported: ${u.camera}`;
  }
  const fps = cell("camera")?.querySelector(".fps");
  if (fps) fps.textContent = live ? `${wholeFps(u.fps)} fps` : "";
  // Admins see the one blocking command that applies: Enable when disabled, else Disable.
  const toggle = row.querySelector("button.cmd.toggle");
  if (toggle) {
    const cmd = u.blocking_enabled === false ? "enable" : "disable";
    toggle.dataset.cmd = cmd;
    toggle.textContent = cmd === "enable" ? "Enable" : "Disable";
  }
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
  const W = 900, H = 220, L = 56, B = 30, T = 10;
  const totals = data.days.map((_, i) => data.series.reduce((s, x) => s + x.counts[i], 0));
  const max = Math.max(1, ...totals);
  const chart = svg("svg", { viewBox: `0 0 ${W} ${H}`, width: "100%", role: "img",
                             "aria-label": "e-bike alerts per day, by site and building" });
  const bw = (W - L) / data.days.length;
  const yOf = (v) => H - B - (v / max) * (H - B - T);
  // The y axis: one label, and ticks at 0, half and the busiest day's total.
  chart.append(svg("text", { class: "y-label", x: -(H - B + T) / 2, y: 12, transform: "rotate(-90)",
                             "font-size": 11, "text-anchor": "middle" }, "e-bike alerts"));
  for (const v of [...new Set([0, Math.round(max / 2), max])]) {
    chart.append(svg("text", { class: "y-tick", x: L - 6, y: yOf(v) + 4, "font-size": 10, "text-anchor": "end" }, String(v)));
    chart.append(svg("line", { x1: L, y1: yOf(v), x2: W, y2: yOf(v), stroke: v ? "#e3e5ea" : "#999" }));
  }
  data.days.forEach((day, i) => {
    let y = H - B;
    data.series.forEach((s, k) => {
      const h = (s.counts[i] / max) * (H - B - T);
      if (h > 0) {
        const r = svg("rect", { x: L + i * bw + 2, y: y - h, width: bw - 4, height: h, fill: COLORS[k % COLORS.length] });
        r.append(svg("title", {}, `${s.label} ${day}: ${s.counts[i]}`));
        chart.append(r);
        y -= h;
      }
    });
    chart.append(svg("text", { x: L + i * bw + bw / 2, y: H - B + 14, "font-size": 10, "text-anchor": "middle" }, day.slice(5)));
  });
  // The legend as HTML: long site and building names wrap instead of running into each other.
  const legend = el("ul", { class: "legend" });
  data.series.forEach((s, k) => {
    const swatch = el("span", { class: "swatch" });
    swatch.style.background = COLORS[k % COLORS.length];
    legend.append(el("li", {}, swatch, s.label));
  });
  box.replaceChildren(chart, legend);
}

let chartTimer = null;
function chartSoon() {
  // A new alert: today's bar grows (one redraw per burst).
  if (chartTimer || !document.getElementById("daily-chart")) return;
  chartTimer = setTimeout(() => { chartTimer = null; drawChart().catch(() => {}); }, 1000);
}

startAlerts().catch((e) => console.error(e));

if (queue) {
  drawChart().catch((e) => console.error(e));
  setInterval(() => drawChart().catch(() => {}), 60000);
  setInterval(() => refreshUnits().catch(() => {}), UNIT_REFRESH_MS);
}

// ---- one alert's page: the clip player and the per-object corrections --------------------------
async function startClipPlayer(box) {
  // Frames are plain JPEGs behind the login (no video codec, nothing inline); the unit's boxes are drawn
  // over each one as positioned elements, their labels as text.
  const clip = await api("GET", box.dataset.clipUrl);
  const img = document.getElementById("clip-frame");
  const boxes = document.getElementById("clip-boxes");
  const seek = document.getElementById("clip-seek");
  const time = document.getElementById("clip-time");
  const play = document.getElementById("clip-play");
  const frames = clip.frames;
  for (const f of frames) { const pre = new Image(); pre.src = f.url; }  // cached before playing
  let index = clip.key_frame, timer = null;

  function drawBoxes() {
    boxes.replaceChildren();
    const w = img.naturalWidth, h = img.naturalHeight;
    if (!w || !h) return;
    for (const d of frames[Number(img.dataset.index)].detections) {  // the frame shown, not the one asked for
      const [x1, y1, x2, y2] = d.box;
      const b = el("div", { class: "clip-box" }, el("span", {}, `${d.cls} ${d.score.toFixed(2)}`));
      Object.assign(b.style, { left: `${(100 * x1) / w}%`, top: `${(100 * y1) / h}%`,
                               width: `${(100 * (x2 - x1)) / w}%`, height: `${(100 * (y2 - y1)) / h}%` });
      boxes.append(b);
    }
  }
  function show(i) {
    index = Math.max(0, Math.min(frames.length - 1, i));
    img.dataset.index = String(index);
    img.src = frames[index].url;
    seek.value = String(index);
    const t = frames[index].t;
    time.textContent = `${t >= 0 ? "+" : ""}${t.toFixed(1)} s`;
  }
  function stop() {
    clearTimeout(timer); timer = null;
    play.textContent = "Play"; box.dataset.playing = "false";
  }
  function step() {
    if (index >= frames.length - 1) { stop(); return; }
    const gap = Math.max(0.02, frames[index + 1].t - frames[index].t);  // the unit's own frame times
    show(index + 1);
    timer = setTimeout(step, gap * 1000);
  }
  img.addEventListener("load", drawBoxes);
  play.addEventListener("click", () => {
    if (timer) { stop(); return; }
    if (index >= frames.length - 1) show(0);
    play.textContent = "Pause"; box.dataset.playing = "true";
    timer = setTimeout(step, 0);
  });
  seek.addEventListener("input", () => { stop(); show(Number(seek.value)); });
  show(index);
  if (img.complete && img.naturalWidth) drawBoxes();  // already loaded before this script ran
  box.dataset.ready = "true";
}

async function saveObjects(form) {
  const status = document.getElementById("object-status");
  const corrections = {};
  for (const s of form.querySelectorAll("select.object-class")) if (s.value) corrections[s.name] = s.value;
  if (!Object.keys(corrections).length) { status.textContent = "Nothing to save: pick a class first."; return; }
  try {
    const done = await api("POST", form.dataset.url, { frame: Number(form.dataset.frame), corrections });
    status.textContent = `Saved (${done.objects.length} corrected).`;
  } catch (e) { status.textContent = `Not saved: ${e.message}`; }
}

const clipBox = document.getElementById("clip-player");
if (clipBox) startClipPlayer(clipBox).catch((e) => console.error(e));
const objectForm = document.getElementById("object-form");
if (objectForm) objectForm.addEventListener("submit", (ev) => { ev.preventDefault(); saveObjects(objectForm); });
