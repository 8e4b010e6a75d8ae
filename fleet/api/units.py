"""Units and the commands sent to them."""

from __future__ import annotations

import logging
import time
import uuid
from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Query
from pydantic import BaseModel, ConfigDict

from fleet.api.context import Changer, Ctx, Filter, User, unit_view, units_matching

log = logging.getLogger(__name__)
router = APIRouter()


class CommandIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: Literal["release", "disable", "enable"]


@router.get("/api/units")
def list_units(ctx: Ctx, who: User, q: Filter = "", site: Filter = "", building: Filter = "",
               status: Annotated[str, Query(pattern="^(|online|offline|silent|stopped|unknown)$")] = "",
               limit: Annotated[int, Query(ge=1, le=50_000)] = 1000,
               offset: Annotated[int, Query(ge=0)] = 0) -> dict[str, Any]:
    """Units matching the filters (`total`, `online` count all matches; `units` is one page). `now` is the
    server's clock, which the dashboard's "N s ago" counts from (not the browser's)."""
    rows = units_matching(ctx, q, site, building, status)
    return {"units": rows[offset:offset + limit], "total": len(rows),
            "online": sum(1 for r in rows if r["online"]), "now": time.time()}


@router.get("/api/units/{unit_id}")
def get_unit(unit_id: str, ctx: Ctx, who: User) -> dict[str, Any]:
    row = ctx.store.get_unit(unit_id)
    if not row:
        raise HTTPException(404, "no such unit")
    return unit_view(row, time.time(), ctx.settings.silence_s)


@router.get("/api/units/{unit_id}/commands")
def unit_commands(unit_id: str, ctx: Ctx, who: User,
                  limit: Annotated[int, Query(ge=1, le=1000)] = 50) -> dict[str, Any]:
    """The unit's command log, newest first: what was sent, by whom, and the unit's answer."""
    if not ctx.store.get_unit(unit_id):
        raise HTTPException(404, "no such unit")
    return {"commands": ctx.store.unit_commands(unit_id, limit)}


@router.get("/api/units/{unit_id}/health")
def unit_health(unit_id: str, ctx: Ctx, who: User,
                hours: Annotated[int, Query(ge=1, le=24 * 366)] = 48) -> dict[str, Any]:
    """Hourly heartbeat roll-ups (oldest first): heartbeats, mean fps, worst inference p95, beats whose
    camera was not online."""
    if not ctx.store.get_unit(unit_id):
        raise HTTPException(404, "no such unit")
    rows = ctx.store.unit_health(unit_id, time.time() - hours * 3600)
    return {"hours": [{"hour_start": r["hour"] * 3600, "beats": r["beats"],
                       "fps_mean": r["fps_sum"] / r["beats"] if r["beats"] else 0.0,
                       "inference_p95_max_ms": r["inference_p95_max"], "camera_bad": r["camera_bad"]}
                      for r in rows]}


@router.post("/api/units/{unit_id}/commands", status_code=202)
def send_command(unit_id: str, body: CommandIn, ctx: Ctx, who: Changer) -> dict[str, Any]:
    """Publishes `cmd/{name}` to the unit; its answer lands on GET /api/commands/{command_id}."""
    if body.name in ("disable", "enable"):
        who.require("admin")  # switching blocking off changes what the device does; admins only
    if not ctx.store.get_unit(unit_id):
        raise HTTPException(404, "no such unit")
    if not ctx.ingestor or not ctx.ingestor.connected.is_set():
        raise HTTPException(503, "not connected to the MQTT broker")
    command_id = str(uuid.uuid4())
    ctx.store.create_command(command_id, unit_id, body.name, who.username)
    try:
        ctx.ingestor.publish_command(unit_id, body.name, command_id)
    except ConnectionError as exc:
        raise HTTPException(503, str(exc)) from None
    log.info("%s sent %s to %s (%s)", who.username, body.name, unit_id, command_id)
    return {"command_id": command_id, "unit_id": unit_id, "name": body.name, "status": "sent"}


@router.get("/api/commands/{command_id}")
def get_command(command_id: str, ctx: Ctx, who: User) -> dict[str, Any]:
    row = ctx.store.get_command(command_id)
    if not row:
        raise HTTPException(404, "no such command")
    ok = row["result_ok"]
    status = "pending" if ok is None else ("ok" if ok else "failed")
    return {**row, "result_ok": None if ok is None else bool(ok), "status": status}
