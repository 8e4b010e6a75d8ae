"""Server-rendered dashboard pages: Jinja2 templates (fleet/templates/) with autoescape on, so every value
from the database — unit ids, sites, details: untrusted, they come from devices — is text, never markup.
Plus one small vanilla script (static/app.js); no build step and nothing from a CDN."""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import Iterable, Mapping
from typing import Any

import jinja2

from fleet.alerts import ALERT_LABELS, ALERT_STATUSES, ALERT_TYPES, VERDICT_LABELS
from fleet.auth import Principal
from fleet.config import zone_for


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


def _config_text(report: Mapping[str, Any] | None, zone: str) -> str:
    """The unit's answer to the pushed config, e.g. `config v7 applied 12:03` or `config v8 refused: <reason>`."""
    if not report:
        return ""
    version = "" if report["version"] is None else f" v{report['version']}"
    if report["applied"]:
        return f"config{version} applied {_local(report['received_at'], zone, with_zone=False, fmt='%H:%M')}"
    return f"config{version} refused: {report['detail']}"


def _camera_live(u: Mapping[str, Any]) -> bool:
    # A stopped, offline or silent unit's last camera report is history: it must not read as a green "online".
    return bool(u.get("online")) and bool(u.get("camera"))


def _camera_text(u: Mapping[str, Any]) -> str:
    return str(u["camera"]) if _camera_live(u) else "unknown"


def _camera_class(u: Mapping[str, Any]) -> str:
    return str(u["camera"]) if _camera_live(u) else "stale"


def _camera_title(u: Mapping[str, Any]) -> str:
    return "" if _camera_live(u) or not u.get("camera") else f"last reported: {u['camera']}"


def _fps_text(u: Mapping[str, Any]) -> str:
    return f"{u.get('fps') or 0:.0f} fps" if _camera_live(u) else ""


def _blocking_text(value: bool | None) -> str:
    return {True: "enabled", False: "disabled", None: "?"}[value]


_env = jinja2.Environment(loader=jinja2.PackageLoader("fleet", "templates"), autoescape=True,
                          undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
_env.filters.update(local=_local, ago=_ago, config_text=_config_text, camera_text=_camera_text,
                    camera_class=_camera_class, camera_title=_camera_title, fps_text=_fps_text,
                    blocking_text=_blocking_text, alert_label=lambda t: ALERT_LABELS.get(t, t),
                    pretty=lambda v: json.dumps(v, indent=2, sort_keys=True))


def render(template: str, title: str, who: Principal | None, *, zone: str = "UTC", script: bool = True,
           counts: Mapping[str, int] | None = None, page: str = "", **values: Any) -> str:
    # app.js shows live alert times in the site's zone (`zone`), not the browser's.
    # The verdicts (value -> button label) come from fleet.alerts, the one place that defines them.
    return _env.get_template(template).render(
        title=title, who=who, zone=zone, script=script, counts=counts, page=page,
        verdicts_json=json.dumps(VERDICT_LABELS), verdicts=VERDICT_LABELS, alert_labels_json=json.dumps(ALERT_LABELS),
        **values)


def login_page(csrf: str, error: str = "") -> str:
    return render("login.html", "Log in · LiftGuard", None, csrf=csrf, error=error)


# A page with 12k table rows is megabytes of HTML nobody scrolls; the filters narrow it down.
MAX_UNITS_ON_PAGE = 500


def dashboard_page(who: Principal, matches: list[dict[str, Any]], places: list[tuple[str, str]],
                   filters: Mapping[str, str], zone: str, counts: Mapping[str, int] | None = None) -> str:
    """`matches` in display order (site, building, elevator — natural order, Lift 2 before Lift 10)."""
    units = matches[:MAX_UNITS_ON_PAGE]
    groups: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for u in units:
        groups.setdefault(u["site"], {}).setdefault(u["building"], []).append(u)
    return render("dashboard.html", "Units · LiftGuard", who, zone=zone, counts=counts, page="dashboard",
                  now=time.time(), filters=filters, online=sum(1 for u in matches if u["online"]),
                  total=len(matches), shown=len(units),
                  groups=[(site, list(buildings.items())) for site, buildings in groups.items()],
                  sites=_distinct(site for site, _ in places), buildings=_distinct(b for _, b in places),
                  states=("online", "offline", "silent", "stopped"))


def _distinct(values: Iterable[str]) -> list[str]:
    return sorted(set(values))


def alerts_page(who: Principal, rows: list[dict[str, Any]], filters: Mapping[str, str], zone: str,
                sites: Iterable[str] = (), counts: Mapping[str, int] | None = None) -> str:
    statuses = ("all", *(s for s in ALERT_STATUSES if s != "all"))
    return render("alerts.html", "Alerts · LiftGuard", who, zone=zone, counts=counts, page="alerts",
                  rows=rows, filters={"site": "", **filters}, statuses=statuses, types=sorted(ALERT_TYPES),
                  sites=_distinct(sites))


def unit_page(who: Principal, unit: Mapping[str, Any], alerts: list[dict[str, Any]], health: list[dict[str, Any]],
              commands: list[dict[str, Any]], zone: str, hours: int,
              counts: Mapping[str, int] | None = None) -> str:
    return render("unit.html", f"{unit['unit_id']} · LiftGuard", who, zone=zone, counts=counts, page="unit",
                  now=time.time(), u=unit, alerts=alerts, health=health, commands=commands, hours=hours)


def alert_page(who: Principal, alert: Mapping[str, Any], clip: Mapping[str, Any] | None,
               corrections: Mapping[int, str], zone: str, counts: Mapping[str, int] | None = None) -> str:
    """One alert: its facts and verdict, the clip player (frames and detections from the unit) and the
    per-object corrections of the decision frame."""
    return render("alert.html", f"{ALERT_LABELS.get(alert['type'], alert['type'])} · LiftGuard", who, zone=zone,
                  counts=counts, page="alert", a=alert, clip=clip, corrections=corrections)


def models_page(who: Principal, overview: Mapping[str, Any], zone: str, counts: Mapping[str, int] | None = None) -> str:
    """The model lifecycle: registry, rollouts and their progress, models per unit, shadow agreement."""
    return render("models.html", "Models · LiftGuard", who, zone=zone, counts=counts, page="models", o=overview)
