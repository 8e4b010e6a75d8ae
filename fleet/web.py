"""Server-rendered dashboard pages. Plain HTML + one small vanilla script (static/app.js), no build
step and nothing from a CDN. Every value from the database goes through `esc`: unit ids, sites and
details come from devices and are untrusted."""

from __future__ import annotations

import datetime as dt
import html
import json
import time
from collections.abc import Iterable, Mapping
from typing import Any

from fleet.alerts import ALERT_STATUSES, ALERT_TYPES, VERDICT_LABELS
from fleet.auth import Principal
from fleet.config import zone_for

esc = html.escape

_CSS = """
body{font-family:system-ui,sans-serif;margin:0;background:#f4f5f7;color:#1d2330}
header{background:#1d2330;color:#fff;padding:.6rem 1rem;display:flex;gap:1rem;align-items:center}
header a{color:#cfe0ff} header .who{margin-left:auto} header form{display:inline}
main{padding:1rem;display:grid;grid-template-columns:minmax(0,2fr) minmax(18rem,1fr);gap:1rem}
section{background:#fff;border-radius:6px;padding:.8rem;box-shadow:0 1px 2px #0002}
table{border-collapse:collapse;width:100%;font-size:.9rem} td,th{padding:.25rem .4rem;text-align:left;
border-bottom:1px solid #e3e5ea} h2{margin:.2rem 0 .6rem} h3{margin:.8rem 0 .3rem;font-size:1rem}
.badge{padding:.05rem .4rem;border-radius:3px;font-size:.8rem;color:#fff;background:#888}
.online{background:#1a7f37}.offline,.silent,.frozen{background:#c62828}.stopped,.starting{background:#9a6700}
.alert{border:1px solid #e3e5ea;border-radius:6px;padding:.4rem;margin-bottom:.6rem}
.alert img{max-width:100%;display:block;margin-bottom:.3rem;background:#eee;min-height:3rem}
.error{color:#c62828} form.filters{display:flex;gap:.4rem;flex-wrap:wrap;margin-bottom:.5rem}
.full{grid-column:1/-1} .muted{color:#667} button{cursor:pointer}
.login{max-width:22rem;margin:4rem auto;display:block}
.login input{display:block;width:100%;margin:.2rem 0 .6rem;padding:.3rem}
"""


def _page(title: str, body: str, who: Principal | None = None, script: bool = True, zone: str = "UTC") -> str:
    # app.js shows live alert times in the site's zone (`zone`), not the browser's.
    # The verdicts (value -> button label) come from fleet.alerts, the one place that defines them.
    meta = (f'<meta name="csrf-token" content="{esc(who.csrf_token)}"><meta name="time-zone" content="{esc(zone)}">'
            f'<meta name="verdicts" content="{esc(json.dumps(VERDICT_LABELS))}">' if who else "")
    header = ""
    if who:
        header = (f'<header><strong>LiftGuard fleet</strong><a href="/">Units</a><a href="/alerts">Alert history</a>'
                  f'<span class="who">{esc(who.username)} ({esc(who.role)})</span>'
                  f'<form method="post" action="/logout"><input type="hidden" name="csrf" '
                  f'value="{esc(who.csrf_token)}"><button id="logout">Log out</button></form></header>')
    js = '<script src="/static/app.js" defer></script>' if who and script else ""
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>'
            f'<meta name="viewport" content="width=device-width,initial-scale=1">{meta}'
            f"<style>{_CSS}</style>{js}</head><body data-role=\"{esc(who.role) if who else ''}\">"
            f"{header}{body}</body></html>")


def login_page(csrf: str, error: str = "") -> str:
    err = f'<p class="error" id="login-error">{esc(error)}</p>' if error else ""
    body = (f'<section class="login"><h2>LiftGuard fleet</h2>{err}'
            f'<form method="post" action="/login"><input type="hidden" name="csrf" value="{esc(csrf)}">'
            '<label>Username<input name="username" autocomplete="username" required></label>'
            '<label>Password<input name="password" type="password" autocomplete="current-password" required>'
            '</label><button type="submit">Log in</button></form></section>')
    return _page("Log in · LiftGuard", body)


def _ago(ts: float | None, now: float) -> str:
    if ts is None:
        return "never"
    seconds = max(0, int(now - ts))
    if seconds < 120:
        return f"{seconds} s ago"
    if seconds < 7200:
        return f"{seconds // 60} min ago"
    return f"{seconds // 3600} h ago"


def _local(ts: float | None, zone: str, with_zone: bool = True, fmt: str = "%Y-%m-%d %H:%M:%S") -> str:
    """`ts` as wall-clock time in the site's zone (the `timezone` setting), e.g. 2026-11-30 04:30:00 Asia/Shanghai."""
    if ts is None:
        return ""
    text = dt.datetime.fromtimestamp(float(ts), zone_for(zone)).strftime(fmt)
    return f"{text} {zone}" if with_zone else text


def _options(values: Iterable[str], selected: str, blank: str) -> str:
    out = [f'<option value="">{esc(blank)}</option>']
    for v in sorted(set(values)):
        out.append(f'<option value="{esc(v)}"{" selected" if v == selected else ""}>{esc(v)}</option>')
    return "".join(out)


def _config_text(report: Mapping[str, Any] | None, zone: str) -> str:
    """The unit's answer to the pushed config, e.g. `config v7 applied 12:03` or `config v8 refused: <reason>`."""
    if not report:
        return ""
    version = "" if report["version"] is None else f" v{report['version']}"
    if report["applied"]:
        return f"config{version} applied {_local(report['received_at'], zone, with_zone=False, fmt='%H:%M')}"
    return f"config{version} refused: {report['detail']}"


def _unit_row(u: Mapping[str, Any], who: Principal, now: float, zone: str) -> str:
    uid = esc(u["unit_id"])
    camera = u.get("camera") or "unknown"
    blocking = {True: "enabled", False: "disabled", None: "?"}[u.get("blocking_enabled")]
    report = u.get("config_report")
    report_at = report["received_at"] if report else None
    actions = f'<button class="cmd" data-cmd="release" data-unit="{uid}">Release</button>'
    if who.role == "admin":
        actions += (f' <button class="cmd" data-cmd="disable" data-unit="{uid}">Disable</button>'
                    f' <button class="cmd" data-cmd="enable" data-unit="{uid}">Enable</button>')
    return (f'<tr class="unit" data-unit-id="{uid}"><td>{uid}</td><td>{esc(u.get("elevator") or "")}</td>'
            f'<td class="state"><span class="badge state {esc(u["status"])}">{esc(u["status"])}</span></td>'
            f'<td class="heartbeat" title="{esc(_local(u.get("last_heartbeat"), zone))}">'
            f'{esc(_ago(u.get("last_heartbeat"), now))}</td>'
            f'<td>{esc(u.get("software") or "")}</td><td>{esc(u.get("model_id") or "")}</td>'
            f'<td class="camera"><span class="badge {esc(camera)}">{esc(camera)}</span>'
            f' <span class="muted fps">{u.get("fps") or 0:.0f} fps</span></td>'
            f'<td class="relay">{esc(u.get("relay") or "")}</td><td class="blocking">{blocking}</td>'
            f'<td class="config" title="{esc(_local(report_at, zone))}">{esc(_config_text(report, zone))}</td>'
            f'<td>{actions} <span class="cmd-status"></span></td></tr>')


# A page with 12k table rows is megabytes of HTML nobody scrolls; the filters narrow it down.
MAX_UNITS_ON_PAGE = 500


def dashboard_page(who: Principal, matches: list[dict[str, Any]], places: list[tuple[str, str]],
                   filters: Mapping[str, str], zone: str) -> str:
    now = time.time()
    online = sum(1 for u in matches if u["online"])
    units = matches[:MAX_UNITS_ON_PAGE]
    sites = _options((site for site, _ in places), filters["site"], "All sites")
    building_opts = _options((building for _, building in places), filters["building"], "All buildings")
    states = _options(("online", "offline", "silent", "stopped"), filters["status"], "Any state")
    form = (f'<form class="filters" method="get" action="/">'
            f'<input name="q" placeholder="Search unit, site, building" value="{esc(filters["q"])}">'
            f'<select name="site">{sites}</select><select name="building">{building_opts}</select>'
            f'<select name="status">{states}</select><button type="submit">Filter</button></form>')
    groups: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for u in units:
        groups.setdefault(u["site"], {}).setdefault(u["building"], []).append(u)
    head = ("<tr><th>Unit</th><th>Elevator</th><th>State</th><th>Last heartbeat</th><th>Software</th>"
            "<th>Model</th><th>Camera</th><th>Relay</th><th>Blocking</th><th>Config</th><th>Actions</th></tr>")
    parts = []
    for site, buildings in sorted(groups.items()):
        parts.append(f'<div class="site" data-site="{esc(site)}"><h3>{esc(site)}</h3>')
        for building, rows in sorted(buildings.items()):
            n_on = sum(1 for r in rows if r["online"])
            parts.append(f'<h4 class="building">{esc(building)} <span class="muted n-online">{n_on}/{len(rows)} online'
                         f'</span></h4><table>{head}{"".join(_unit_row(r, who, now, zone) for r in rows)}</table>')
        parts.append("</div>")
    units_html = "".join(parts) or '<p class="muted">No units match.</p>'
    if len(matches) > len(units):
        units_html += (f'<p class="muted" id="truncated">Showing {len(units)} of {len(matches)} units: '
                       "narrow the list with the filters above.</p>")
    body = (f'<main><section id="units"><h2>Units <span class="muted" id="unit-summary">{online}/{len(matches)}'
            f' online</span></h2>{form}{units_html}</section>'
            '<section id="alerts"><h2>Live alerts <span class="muted" id="alert-count"></span></h2>'
            '<div id="alert-queue"></div></section>'
            f'<section class="full"><h2>E-bike alerts per day and building <span id="chart-zone">({esc(zone)})'
            '</span></h2><div id="daily-chart"></div></section></main>')
    return _page("Units · LiftGuard", body, who, zone=zone)


def alerts_page(who: Principal, rows: list[dict[str, Any]], filters: Mapping[str, str], zone: str) -> str:
    statuses = ("all", *(s for s in ALERT_STATUSES if s != "all"))
    status_opts = "".join(f'<option value="{s}"{" selected" if s == filters["status"] else ""}>{s}</option>'
                          for s in statuses)
    form = (f'<form class="filters" method="get" action="/alerts">'
            f'<input name="q" placeholder="Search unit, building, class" value="{esc(filters["q"])}">'
            f'<select name="status">{status_opts}</select>'
            f'<input name="building" placeholder="Building" value="{esc(filters["building"])}">'
            f'<select name="type">{_options(ALERT_TYPES, filters["type"], "Any type")}</select>'
            f'<input name="day" type="date" value="{esc(filters["day"])}" title="a day in {esc(zone)}">'
            '<button type="submit">Search</button>'
            + ('<a href="/api/export/dataset.zip" id="export">Export labelled dataset</a>'
               if who.role == "admin" else "") + "</form>")
    trs = []
    for r in rows:
        conf = f'{r["confidence"]:.2f}' if r.get("confidence") is not None else ""
        snap = (f'<a href="{esc(r["snapshot_url"])}" target="_blank">image</a>'
                if r.get("snapshot_url") and r.get("has_snapshot") else "")
        when = _local(r["ts"], zone, with_zone=False)
        trs.append(f'<tr class="alert-row" data-event-id="{esc(r["event_id"])}"><td class="time">{esc(when)}</td>'
                   f'<td>{esc(r["unit_id"])}</td><td>{esc(r.get("building") or "")}</td><td>{esc(r["type"])}</td>'
                   f'<td>{esc(r.get("cls") or "")} {conf}</td><td>{snap}</td>'
                   f'<td class="verdict">{esc(r.get("verdict") or "open")}</td>'
                   f'<td>{esc(r.get("labelled_by") or "")}</td></tr>')
    head = (f"<tr><th>Time ({esc(zone)})</th><th>Unit</th><th>Building</th><th>Type</th><th>Class</th>"
            "<th>Snapshot</th><th>Verdict</th><th>By</th></tr>")
    table = f"<table>{head}{''.join(trs)}</table>" if trs else '<p class="muted">No alerts.</p>'
    body = f'<main><section class="full"><h2>Alert history ({len(rows)})</h2>{form}{table}</section></main>'
    return _page("Alerts · LiftGuard", body, who, script=False, zone=zone)
