"""What every router shares: the server's context, the session dependencies and the JSON views."""

from __future__ import annotations

import asyncio
import hmac
import json
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import Depends, HTTPException, Query, Request, Response

from contract.mqtt import EventPayload
from fleet.alerts import ALERT_TYPES
from fleet.auth import Authenticator, Principal
from fleet.config import FleetSettings
from fleet.ingest import Ingestor
from fleet.notify import Notifier
from fleet.store import IngestBatch, Row, Store

SESSION_COOKIE = "lg_session"
LOGIN_CSRF_COOKIE = "lg_login_csrf"


class AlertNotifier:
    """Wakes the SSE streams (asyncio) when the ingest writer (a thread) committed something new."""

    def __init__(self) -> None:
        self._waiters: set[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = set()
        self._lock = threading.Lock()
        # Also woken after a commit with new events: the outbound notifier (e-mail, webhooks). Each must
        # return at once — this runs on the ingest writer's thread.
        self.listeners: list[Callable[[], None]] = []

    def on_commit(self, new_events: list[EventPayload], batch: IngestBatch) -> None:
        if any(e.type in ALERT_TYPES for e in new_events) or batch.snapshots or batch.cmd_results:
            self.wake()
        if new_events:
            for listener in self.listeners:
                listener()

    def wake(self) -> None:
        with self._lock:
            waiters = list(self._waiters)
        for loop, event in waiters:
            loop.call_soon_threadsafe(event.set)

    def register(self) -> tuple[asyncio.AbstractEventLoop, asyncio.Event]:
        entry = (asyncio.get_running_loop(), asyncio.Event())
        with self._lock:
            self._waiters.add(entry)
        return entry

    def unregister(self, entry: tuple[asyncio.AbstractEventLoop, asyncio.Event]) -> None:
        with self._lock:
            self._waiters.discard(entry)


@dataclass
class FleetContext:
    settings: FleetSettings
    store: Store
    auth: Authenticator
    notifier: AlertNotifier
    ingestor: Ingestor | None = None
    # E-mail / webhook notifications and escalation (started by `serve`; None where not wanted).
    outbound: Notifier | None = None
    # What time it is: decides which day is "today" for the daily counts (tests pass a fixed one).
    clock: Callable[[], float] = time.time
    # Set when the server shuts down: SSE streams end instead of holding the graceful shutdown open.
    closing: threading.Event = field(default_factory=threading.Event)


# -- dependencies ---------------------------------------------------------------------------------
def _context(request: Request) -> FleetContext:
    ctx: FleetContext = request.app.state.ctx
    return ctx


def _principal(request: Request) -> Principal:
    return _context(request).auth.resolve(request.cookies.get(SESSION_COOKIE))


def _csrf_principal(request: Request, who: Annotated[Principal, Depends(_principal)]) -> Principal:
    sent = request.headers.get("X-CSRF-Token", "")
    if not hmac.compare_digest(sent.encode(), who.csrf_token.encode()):
        raise HTTPException(403, "missing or wrong CSRF token")
    return who


# A search box or filter: long enough for any name, short enough that no engine chokes on the pattern.
MAX_FILTER_CHARS = 200
Filter = Annotated[str, Query(max_length=MAX_FILTER_CHARS)]

# Module level: FastAPI resolves these (string) annotations in the routers' module globals.
Ctx = Annotated[FleetContext, Depends(_context)]
User = Annotated[Principal, Depends(_principal)]
Changer = Annotated[Principal, Depends(_csrf_principal)]


def set_session_cookie(ctx: FleetContext, response: Response, token: str) -> None:
    response.set_cookie(SESSION_COOKIE, token, max_age=int(ctx.settings.session_ttl_s), httponly=True,
                        samesite="strict", secure=ctx.settings.cookie_secure, path="/")


# -- views ----------------------------------------------------------------------------------------
def unit_view(row: Row, now: float, silence_s: float) -> dict[str, Any]:
    """A unit as the dashboard sees it: `status` folds the last `status` message and heartbeat silence."""
    last_seen = row.get("last_seen")
    silent = last_seen is None or now - float(last_seen) > silence_s
    state = row.get("state") or "unknown"
    status = "silent" if state == "online" and silent else state
    view = dict(row)
    view["blocking_enabled"] = None if row.get("blocking_enabled") is None else bool(row["blocking_enabled"])
    view.update(status=status, online=status == "online", site=row.get("site") or "Unassigned",
                building=row.get("building") or "Unassigned", config_report=config_report_view(view))
    return view


_CONFIG_COLUMNS = ("config_applied", "config_version", "config_detail", "config_reported", "config_ts",
                   "config_received_at")


def config_report_view(view: dict[str, Any]) -> dict[str, Any] | None:
    """Pops the unit's `config_*` columns into its latest `config/reported`; None before the first report."""
    cols = {name: view.pop(name, None) for name in _CONFIG_COLUMNS}
    if cols["config_received_at"] is None:
        return None
    reported = cols["config_reported"]
    return {"applied": bool(cols["config_applied"]), "version": cols["config_version"],
            "detail": cols["config_detail"] or "", "config": json.loads(reported) if reported else None,
            "ts": cols["config_ts"], "received_at": cols["config_received_at"]}


def alert_view(row: Row) -> dict[str, Any]:
    """An alert with its lifecycle: `state` active -> acknowledged -> cleared; `cleared_by` is the person
    who cleared it, or "hold ended" when the unit's hold ended (its `end` event)."""
    view = dict(row)
    if row.get("cleared_at") is not None and not row.get("cleared_by"):
        view["cleared_by"] = "hold ended"  # set by the ingest writer from the incident's `end` event
    view["state"] = ("cleared" if row.get("cleared_at") is not None
                     else "acknowledged" if row.get("acknowledged_at") is not None else "active")
    view["has_snapshot"] = bool(row.get("has_snapshot"))
    view["snapshot_url"] = f"/api/alerts/{row['event_id']}/snapshot" if row.get("snapshot_id") else None
    view["has_clip"] = bool(row.get("clips"))
    ref = quote(str(row["event_id"]), safe="")  # event ids come from units: any character
    view["clip_url"] = f"/api/alerts/{ref}/clip" if view["has_clip"] else None
    view["page_url"] = f"/alerts/{ref}"
    view["objects_url"] = f"/api/alerts/{ref}/objects"
    return view


def natural_key(text: str | None) -> tuple[tuple[int, int | str], ...]:
    """Sort key that reads numbers as numbers: Lift 2 before Lift 10 (and "lift-9" before "lift-10")."""
    return tuple((0, int(part)) if part.isdigit() else (1, part.lower())
                 for part in re.split(r"(\d+)", text or "") if part)


def units_matching(ctx: FleetContext, q: str, site: str, building: str, status: str) -> list[dict[str, Any]]:
    now = time.time()
    rows = [unit_view(r, now, ctx.settings.silence_s) for r in ctx.store.list_units(q, site, building)]
    rows.sort(key=lambda r: (natural_key(r["site"]), natural_key(r["building"]), natural_key(r.get("elevator")),
                             natural_key(r["unit_id"])))
    return [r for r in rows if not status or r["status"] == status
            or (status == "offline" and r["status"] in ("offline", "silent", "stopped"))]
