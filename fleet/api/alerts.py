"""Alerts: the list, the live stream, one alert, its snapshot and its verdict."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response, StreamingResponse
from pydantic import BaseModel, ConfigDict

from fleet.alerts import AlertStatus, Verdict
from fleet.api.context import Changer, Ctx, Filter, User, alert_view

router = APIRouter()


class VerdictIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    verdict: Verdict


@router.get("/api/alerts")
def list_alerts(ctx: Ctx, who: User, status: AlertStatus = "open", q: Filter = "", unit: Filter = "",
                building: Filter = "", type: Filter = "", site: Filter = "",
                since: float | None = None, until: float | None = None,
                limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> dict[str, Any]:
    """Alerts, newest first, each with its lifecycle (`state`: active, acknowledged or cleared; who and when)."""
    rows = ctx.store.list_alerts(status, q, unit, building, type, since, until, limit=limit, site=site)
    return {"alerts": [alert_view(r) for r in rows]}


@router.get("/api/alerts/counts")
def alert_counts(ctx: Ctx, who: User) -> dict[str, float]:
    """`open`: alerts without a verdict; `active`: alerts whose hold has not ended — over every alert stored.
    `now` is the server's clock (the page announces only alerts received after it loaded)."""
    return {**ctx.store.alert_counts(), "now": time.time()}


@router.get("/api/alerts/stream")
async def alert_stream(request: Request, ctx: Ctx, who: User) -> StreamingResponse:
    """Server-sent events: `alert` for each new alert (or one whose snapshot just arrived)."""

    async def events() -> AsyncIterator[str]:
        entry = ctx.notifier.register()
        cursor = time.time() - 2.0
        sent: dict[str, bool] = {}
        try:
            yield "retry: 2000\n\n"
            while not ctx.closing.is_set() and not await request.is_disconnected():
                # Re-reading the store (not trusting the in-process wake-up alone) also shows
                # alerts that another fleet server on the shared subscription ingested.
                rows = await run_in_threadpool(ctx.store.list_alerts, "all", received_after=cursor - 10,
                                               limit=200)
                for row in reversed(rows):
                    view = alert_view(row)
                    key = row["event_id"]
                    if sent.get(key) == view["has_snapshot"]:
                        continue
                    sent[key] = view["has_snapshot"]
                    cursor = max(cursor, float(row["received_at"]))
                    yield f"event: alert\ndata: {json.dumps(view)}\n\n"
                if len(sent) > 5000:
                    sent = dict(list(sent.items())[-1000:])
                entry[1].clear()
                try:
                    await asyncio.wait_for(entry[1].wait(), timeout=1.0)
                except TimeoutError:
                    yield ": keep-alive\n\n"
        finally:
            ctx.notifier.unregister(entry)

    return StreamingResponse(events(), media_type="text/event-stream", headers={"X-Accel-Buffering": "no"})


@router.get("/api/alerts/{event_id}")
def get_alert(event_id: str, ctx: Ctx, who: User) -> dict[str, Any]:
    row = ctx.store.get_alert(event_id)
    if not row:
        raise HTTPException(404, "no such alert")
    return alert_view(row)


@router.get("/api/alerts/{event_id}/snapshot", response_class=Response,
            responses={200: {"content": {"image/jpeg": {}}}})
def alert_snapshot(event_id: str, ctx: Ctx, who: User) -> Response:
    row = ctx.store.get_alert(event_id)
    data = ctx.store.get_snapshot(row["unit_id"], row["snapshot_id"]) if row and row["snapshot_id"] else None
    if data is None:
        raise HTTPException(404, "no snapshot (yet)")
    return Response(data, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=3600"})


@router.post("/api/alerts/{event_id}/verdict")
def set_verdict(event_id: str, body: VerdictIn, ctx: Ctx, who: Changer) -> dict[str, Any]:
    """acknowledged / false_alarm / confirmed: acknowledges the alert (the first time: who and when) and labels
    it for retraining. `previous_verdict` is what an undo puts back (null: DELETE the verdict)."""
    before = ctx.store.get_alert(event_id)
    if not before:
        raise HTTPException(404, "no such alert")
    ctx.store.set_label(event_id, body.verdict, who.username)
    return {**alert_view(ctx.store.get_alert(event_id) or {}), "previous_verdict": before["verdict"]}


@router.delete("/api/alerts/{event_id}/verdict")
def undo_verdict(event_id: str, ctx: Ctx, who: Changer) -> dict[str, Any]:
    """Undo: the alert has no verdict and is unacknowledged again (back in the live queue)."""
    if not ctx.store.get_alert(event_id):
        raise HTTPException(404, "no such alert")
    ctx.store.clear_label(event_id)
    return alert_view(ctx.store.get_alert(event_id) or {})


@router.post("/api/alerts/{event_id}/clear")
def clear_alert(event_id: str, ctx: Ctx, who: Changer) -> dict[str, Any]:
    """A person clears an alert whose hold has not ended (e.g. the unit went away mid-incident)."""
    row = ctx.store.get_alert(event_id)
    if not row:
        raise HTTPException(404, "no such alert")
    if alert_view(row)["state"] != "cleared":
        ctx.store.clear_alert(event_id, who.username)
    return alert_view(ctx.store.get_alert(event_id) or {})
