"""The server-rendered dashboard pages and their script."""

from __future__ import annotations

import datetime as dt
import time
from importlib import resources

from fastapi import APIRouter, HTTPException
from fastapi.responses import HTMLResponse, Response

from fleet import web
from fleet.alerts import ALERT_STATUSES
from fleet.api.alerts import clip_view
from fleet.api.context import Ctx, Filter, User, alert_view, unit_view, units_matching
from fleet.store import day_bounds

router = APIRouter(include_in_schema=False)


@router.get("/", response_class=HTMLResponse)
def dashboard(ctx: Ctx, who: User, q: Filter = "", site: Filter = "", building: Filter = "",
              status: Filter = "") -> HTMLResponse:
    matches = units_matching(ctx, q, site, building, status)
    return HTMLResponse(web.dashboard_page(who, matches, ctx.store.sites_and_buildings(),
                                           {"q": q, "site": site, "building": building, "status": status},
                                           ctx.settings.timezone, ctx.store.alert_counts()))


@router.get("/alerts", response_class=HTMLResponse)
def alerts_page(ctx: Ctx, who: User, status: Filter = "all", q: Filter = "", building: Filter = "",
                type: Filter = "", day: Filter = "", site: Filter = "") -> HTMLResponse:
    since = until = None
    if day:  # a day of the site's time zone, like the daily counts
        try:
            since, until = day_bounds(dt.date.fromisoformat(day), ctx.settings.tz)
        except (ValueError, OverflowError):
            raise HTTPException(422, "day must be YYYY-MM-DD") from None
    if status not in ALERT_STATUSES:
        status = "all"
    rows = [alert_view(r) for r in ctx.store.list_alerts(status, q, "", building, type, since, until, limit=500,
                                                         site=site)]
    sites = {s for s, _ in ctx.store.sites_and_buildings()}
    return HTMLResponse(web.alerts_page(who, rows, {"status": status, "q": q, "building": building, "type": type,
                                                   "day": day, "site": site}, ctx.settings.timezone, sites,
                                        ctx.store.alert_counts()))


@router.get("/alerts/{event_id}", response_class=HTMLResponse)
def alert_page(event_id: str, ctx: Ctx, who: User) -> HTMLResponse:
    """One alert with its clip (played frame by frame, the unit's boxes drawn over it) and the form that
    corrects the class of each object on the decision frame."""
    row = ctx.store.get_alert(event_id)
    if not row:
        raise HTTPException(404, "no such alert")
    stored = ctx.store.clip_of_alert(event_id)
    labels = ctx.store.object_labels(event_id)
    clip = clip_view(event_id, stored, labels) if stored else None
    key = clip["key_frame"] if clip else -1
    corrections = {int(r["object_idx"]): str(r["cls"]) for r in labels if r["frame_idx"] == key}
    return HTMLResponse(web.alert_page(who, alert_view(row), clip, corrections, ctx.settings.timezone,
                                       ctx.store.alert_counts()))


@router.get("/models", response_class=HTMLResponse)
def models_page(ctx: Ctx, who: User) -> HTMLResponse:
    """Models per unit (active + shadow, from the heartbeats), each rollout's progress, and what each shadow
    model would have done, per unit and per model, against the active model and the managers' verdicts."""
    return HTMLResponse(web.models_page(who, ctx.store.model_overview(), ctx.settings.timezone,
                                        ctx.store.alert_counts()))


# The health table covers this many hours of heartbeat roll-ups.
UNIT_PAGE_HOURS = 48


@router.get("/units/{unit_id}", response_class=HTMLResponse)
def unit_page(unit_id: str, ctx: Ctx, who: User) -> HTMLResponse:
    """One unit: its state, health over time (hourly heartbeat roll-ups), its alerts, config and command log."""
    row = ctx.store.get_unit(unit_id)
    if not row:
        raise HTTPException(404, "no such unit")
    now = time.time()
    unit = unit_view(row, now, ctx.settings.silence_s)
    alerts = [alert_view(r) for r in ctx.store.list_alerts("all", unit_id=unit_id, limit=100)]
    health = ctx.store.unit_health(unit_id, now - UNIT_PAGE_HOURS * 3600)
    return HTMLResponse(web.unit_page(who, unit, alerts, health, ctx.store.unit_commands(unit_id),
                                      ctx.settings.timezone, UNIT_PAGE_HOURS, ctx.store.alert_counts()))


@router.get("/static/app.js")
def app_js(who: User) -> Response:
    script = resources.files("fleet.static").joinpath("app.js").read_text()
    return Response(script, media_type="text/javascript")
