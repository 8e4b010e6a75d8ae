"""Alerts: the list, the live stream, one alert, its snapshot, its clip, its verdict and per-object corrections."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, HTTPException, Path, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from contract.clips import MAX_CLIP_FRAMES, ClipManifest
from fleet.alerts import AlertStatus, ObjectClass, Verdict
from fleet.api.context import Changer, Ctx, Filter, User, alert_view
from fleet.errors import StoreError
from fleet.store.clips import OBJECT_CLASSES

router = APIRouter()


class VerdictIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    verdict: Verdict


class ObjectsIn(BaseModel):
    """Class corrections on one frame of the alert's clip: object index (in that frame's detections) -> class."""

    model_config = ConfigDict(extra="forbid")
    frame: Annotated[int, Field(ge=0, le=MAX_CLIP_FRAMES)]
    corrections: Annotated[dict[Annotated[int, Field(ge=0, le=100)], ObjectClass], Field(min_length=1, max_length=100)]


def clip_view(event_id: str, clip: dict[str, Any], labels: list[dict[str, Any]]) -> dict[str, Any]:
    """The alert's clip for the player: each frame's URL, time and detections, the key frame (the decision),
    and the per-object corrections made so far."""
    base = f"/api/alerts/{quote(event_id, safe='')}/clip"
    manifest = ClipManifest.model_validate(clip["manifest"])
    return {"clip_id": clip["clip_id"], "reason": clip["reason"], "received_at": clip["received_at"],
            "size_bytes": clip["size_bytes"], "key_frame": manifest.key_frame(), "classes": list(OBJECT_CLASSES),
            "frames": [{"url": f"{base}/{i}.jpg", "t": f.t, "detections": [d.model_dump() for d in f.detections]}
                       for i, f in enumerate(manifest.frames)],
            "objects": labels}


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


@router.get("/api/alerts/{event_id}/clip")
def alert_clip(event_id: str, ctx: Ctx, who: User) -> dict[str, Any]:
    """The clip the unit recorded around the hold (faces blurred on the unit), frame by frame."""
    clip = ctx.store.clip_of_alert(event_id)
    if clip is None:
        raise HTTPException(404, "no clip for this alert")
    return clip_view(event_id, clip, ctx.store.object_labels(event_id))


@router.get("/api/alerts/{event_id}/clip/{index}.jpg", response_class=Response,
            responses={200: {"content": {"image/jpeg": {}}}})
def alert_clip_frame(event_id: str, index: Annotated[int, Path(ge=0, le=MAX_CLIP_FRAMES)], ctx: Ctx,
                     who: User) -> Response:
    clip = ctx.store.clip_of_alert(event_id)
    data = ctx.store.clip_frame(clip["unit_id"], clip["clip_id"], index) if clip else None
    if data is None:
        raise HTTPException(404, "no such clip frame")
    return Response(data, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=3600"})


@router.post("/api/alerts/{event_id}/objects")
def correct_objects(event_id: str, body: ObjectsIn, ctx: Ctx, who: Changer) -> dict[str, Any]:
    """Per-object verdicts: "object 0 of the key frame is a stroller" (`none`: not an object). They become the
    class of that box in the YOLO labels of `liftguard-fleet dataset export`."""
    if not ctx.store.get_alert(event_id):
        raise HTTPException(404, "no such alert")
    try:
        fixes = {index: str(cls) for index, cls in body.corrections.items()}
        labels = ctx.store.set_object_labels(event_id, body.frame, fixes, who.username, ctx.clock())
    except StoreError as exc:
        raise HTTPException(422, str(exc)) from None
    return {"objects": labels}


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
