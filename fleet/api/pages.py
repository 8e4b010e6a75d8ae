"""The server-rendered dashboard pages and their script."""

from __future__ import annotations

import datetime as dt
from importlib import resources

from fastapi import APIRouter, HTTPException
from fastapi.responses import HTMLResponse, Response

from fleet import web
from fleet.alerts import ALERT_STATUSES
from fleet.api.context import Ctx, Filter, User, alert_view, units_matching
from fleet.store import day_bounds

router = APIRouter(include_in_schema=False)


@router.get("/", response_class=HTMLResponse)
def dashboard(ctx: Ctx, who: User, q: Filter = "", site: Filter = "", building: Filter = "",
              status: Filter = "") -> HTMLResponse:
    matches = units_matching(ctx, q, site, building, status)
    return HTMLResponse(web.dashboard_page(who, matches, ctx.store.sites_and_buildings(),
                                           {"q": q, "site": site, "building": building, "status": status},
                                           ctx.settings.timezone))


@router.get("/alerts", response_class=HTMLResponse)
def alerts_page(ctx: Ctx, who: User, status: Filter = "all", q: Filter = "", building: Filter = "",
                type: Filter = "", day: Filter = "") -> HTMLResponse:
    since = until = None
    if day:  # a day of the site's time zone, like the daily counts
        try:
            since, until = day_bounds(dt.date.fromisoformat(day), ctx.settings.tz)
        except (ValueError, OverflowError):
            raise HTTPException(422, "day must be YYYY-MM-DD") from None
    if status not in ALERT_STATUSES:
        status = "all"
    rows = [alert_view(r) for r in ctx.store.list_alerts(status, q, "", building, type, since, until, limit=500)]
    return HTMLResponse(web.alerts_page(who, rows, {"status": status, "q": q, "building": building,
                                                   "type": type, "day": day}, ctx.settings.timezone))


@router.get("/static/app.js")
def app_js(who: User) -> Response:
    script = resources.files("fleet.static").joinpath("app.js").read_text()
    return Response(script, media_type="text/javascript")
