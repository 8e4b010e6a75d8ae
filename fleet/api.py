"""HTTP API (JSON, OpenAPI at /openapi.json) and the routes of the dashboard pages.

Everything except /healthz and the login routes requires a session cookie; state-changing
requests also need the session's CSRF token in `X-CSRF-Token` (forms: a `csrf` field).
Store calls are blocking, so the endpoints that make them are plain `def` (FastAPI runs those in
its thread pool) and the async ones hand blocking work to `run_in_threadpool`.
"""

from __future__ import annotations

import asyncio
import csv
import datetime as dt
import hmac
import io
import json
import logging
import secrets
import tempfile
import threading
import time
import uuid
import zipfile
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from importlib import resources
from typing import Annotated, Any, Literal
from urllib.parse import parse_qs

import uvicorn
from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from contract.mqtt import EventPayload
from fleet import web
from fleet.auth import Authenticator, LoginLimiter, Principal, Throttled
from fleet.config import FleetSettings
from fleet.errors import AuthError
from fleet.ingest import Ingestor
from fleet.store import ALERT_TYPES, IngestBatch, Row, Store, day_bounds

log = logging.getLogger(__name__)

SESSION_COOKIE = "lg_session"
LOGIN_CSRF_COOKIE = "lg_login_csrf"
# Self-contained pages: no CDN (the site may have no internet), no inline script.
CSP = ("default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; script-src 'self'; "
       "connect-src 'self'; frame-ancestors 'none'; form-action 'self'")


class AlertNotifier:
    """Wakes the SSE streams (asyncio) when the ingest writer (a thread) committed something new."""

    def __init__(self) -> None:
        self._waiters: set[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = set()
        self._lock = threading.Lock()

    def on_commit(self, new_events: list[EventPayload], batch: IngestBatch) -> None:
        if any(e.type in ALERT_TYPES for e in new_events) or batch.snapshots or batch.cmd_results:
            self.wake()

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
    # What time it is: decides which day is "today" for the daily counts (tests pass a fixed one).
    clock: Callable[[], float] = time.time
    # Set when the server shuts down: SSE streams end instead of holding the graceful shutdown open.
    closing: threading.Event = field(default_factory=threading.Event)


# -- response helpers -----------------------------------------------------------------------------
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
    view = dict(row)
    view["has_snapshot"] = bool(row.get("has_snapshot"))
    view["snapshot_url"] = f"/api/alerts/{row['event_id']}/snapshot" if row.get("snapshot_id") else None
    return view


class VerdictIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    verdict: Literal["acknowledged", "false_alarm", "confirmed"]


class CommandIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: Literal["release", "disable", "enable"]


class LoginIn(BaseModel):
    username: str = Field(min_length=1, max_length=64)
    password: str = Field(min_length=1, max_length=1024)


def _principal(request: Request) -> Principal:
    ctx: FleetContext = request.app.state.ctx
    return ctx.auth.resolve(request.cookies.get(SESSION_COOKIE))


def _csrf_principal(request: Request, who: Annotated[Principal, Depends(_principal)]) -> Principal:
    sent = request.headers.get("X-CSRF-Token", "")
    if not hmac.compare_digest(sent.encode(), who.csrf_token.encode()):
        raise HTTPException(403, "missing or wrong CSRF token")
    return who


# Module level, not inside create_app: FastAPI resolves these (string) annotations in module globals.
User = Annotated[Principal, Depends(_principal)]
Changer = Annotated[Principal, Depends(_csrf_principal)]


def create_app(ctx: FleetContext) -> FastAPI:
    # The generated docs UI would pull Swagger from a CDN and be public; the schema is served below.
    app = FastAPI(title="LiftGuard fleet", version="1", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.ctx = ctx

    @app.middleware("http")
    async def security_headers(request: Request, call_next: Any) -> Response:
        response: Response = await call_next(request)
        response.headers.setdefault("Content-Security-Policy", CSP)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "same-origin")
        response.headers.setdefault("Cache-Control", "no-store")
        return response

    @app.exception_handler(AuthError)
    async def auth_error(request: Request, exc: AuthError) -> Response:
        if isinstance(exc, Throttled):
            return JSONResponse({"detail": str(exc)}, status_code=429,
                                headers={"Retry-After": str(int(exc.retry_after) + 1)})
        if request.url.path.startswith("/api/") or request.method != "GET":
            return JSONResponse({"detail": str(exc)}, status_code=403 if "role" in str(exc) else 401)
        return RedirectResponse("/login", status_code=303)

    def set_session_cookie(response: Response, token: str) -> None:
        response.set_cookie(SESSION_COOKIE, token, max_age=int(ctx.settings.session_ttl_s), httponly=True,
                            samesite="strict", secure=ctx.settings.cookie_secure, path="/")

    # -- public -------------------------------------------------------------------------------
    @app.get("/healthz", tags=["public"])
    def health() -> JSONResponse:
        try:
            ctx.store.query("SELECT 1 AS ok")
            db_ok = True
        except Exception:  # health must answer, whatever the failure
            db_ok = False
        mqtt_ok = bool(ctx.ingestor and ctx.ingestor.connected.is_set())
        body = {"status": "ok" if db_ok else "degraded", "db": db_ok, "mqtt": mqtt_ok}
        return JSONResponse(body, status_code=200 if db_ok else 503)

    @app.get("/login", response_class=HTMLResponse, tags=["public"])
    def login_form() -> HTMLResponse:
        token = secrets.token_urlsafe(16)
        response = HTMLResponse(web.login_page(csrf=token))
        response.set_cookie(LOGIN_CSRF_COOKIE, token, httponly=True, samesite="strict",
                            secure=ctx.settings.cookie_secure)
        return response

    @app.post("/login", tags=["public"])
    async def login_submit(request: Request) -> Response:
        form = {k: v[0] for k, v in parse_qs((await request.body()).decode(errors="replace")).items()}
        expected = request.cookies.get(LOGIN_CSRF_COOKIE, "")
        if not expected or not hmac.compare_digest(form.get("csrf", "").encode(), expected.encode()):
            return HTMLResponse(web.login_page(csrf=expected, error="Session expired, please retry."), 400)
        client = request.client.host if request.client else "?"
        try:
            token, _ = await run_in_threadpool(ctx.auth.login, form.get("username", ""),
                                               form.get("password", ""), client)
        except Throttled as exc:
            return HTMLResponse(web.login_page(csrf=expected, error=str(exc)), 429,
                                headers={"Retry-After": str(int(exc.retry_after) + 1)})
        except AuthError as exc:
            return HTMLResponse(web.login_page(csrf=expected, error=str(exc)), 401)
        response = RedirectResponse("/", status_code=303)
        set_session_cookie(response, token)
        response.delete_cookie(LOGIN_CSRF_COOKIE)
        return response

    @app.post("/api/login", tags=["public"])
    async def api_login(body: LoginIn, request: Request) -> JSONResponse:
        """JSON login for scripts; the browser form posts to /login."""
        client = request.client.host if request.client else "?"
        token, who = await run_in_threadpool(ctx.auth.login, body.username, body.password, client)
        response = JSONResponse({"username": who.username, "role": who.role, "csrf_token": who.csrf_token})
        set_session_cookie(response, token)
        return response

    # -- session ------------------------------------------------------------------------------
    @app.post("/logout")
    async def logout_form(request: Request) -> Response:
        token = request.cookies.get(SESSION_COOKIE)
        who = await run_in_threadpool(ctx.auth.resolve, token)
        form = {k: v[0] for k, v in parse_qs((await request.body()).decode(errors="replace")).items()}
        if not hmac.compare_digest(form.get("csrf", "").encode(), who.csrf_token.encode()):
            raise HTTPException(403, "missing or wrong CSRF token")
        await run_in_threadpool(ctx.auth.logout, token or "")
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(SESSION_COOKIE)
        return response

    @app.get("/api/me")
    def me(who: User) -> dict[str, str]:
        return {"username": who.username, "role": who.role}

    @app.get("/openapi.json", include_in_schema=False)
    def openapi(who: User) -> JSONResponse:
        return JSONResponse(app.openapi())

    # -- units --------------------------------------------------------------------------------
    def units(q: str, site: str, building: str, status: str) -> list[dict[str, Any]]:
        now = time.time()
        rows = [unit_view(r, now, ctx.settings.silence_s) for r in ctx.store.list_units(q, site, building)]
        return [r for r in rows if not status or r["status"] == status
                or (status == "offline" and r["status"] in ("offline", "silent", "stopped"))]

    @app.get("/api/units")
    def list_units(who: User, q: str = "", site: str = "", building: str = "",
                   status: Annotated[str, Query(pattern="^(|online|offline|silent|stopped|unknown)$")] = "",
                   limit: Annotated[int, Query(ge=1, le=50_000)] = 1000,
                   offset: Annotated[int, Query(ge=0)] = 0) -> dict[str, Any]:
        """Units matching the filters (`total`, `online` count all matches; `units` is one page). `now` is the
        server's clock, which the dashboard's "N s ago" counts from (not the browser's)."""
        rows = units(q, site, building, status)
        return {"units": rows[offset:offset + limit], "total": len(rows),
                "online": sum(1 for r in rows if r["online"]), "now": time.time()}

    @app.get("/api/units/{unit_id}")
    def get_unit(unit_id: str, who: User) -> dict[str, Any]:
        row = ctx.store.get_unit(unit_id)
        if not row:
            raise HTTPException(404, "no such unit")
        return unit_view(row, time.time(), ctx.settings.silence_s)

    @app.post("/api/units/{unit_id}/commands", status_code=202)
    def send_command(unit_id: str, body: CommandIn, who: Changer) -> dict[str, Any]:
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

    @app.get("/api/commands/{command_id}")
    def get_command(command_id: str, who: User) -> dict[str, Any]:
        row = ctx.store.get_command(command_id)
        if not row:
            raise HTTPException(404, "no such command")
        ok = row["result_ok"]
        status = "pending" if ok is None else ("ok" if ok else "failed")
        return {**row, "result_ok": None if ok is None else bool(ok), "status": status}

    # -- alerts -------------------------------------------------------------------------------
    @app.get("/api/alerts")
    def list_alerts(who: User, status: Annotated[str, Query(
                        pattern="^(open|all|acknowledged|false_alarm|confirmed)$")] = "open",
                    q: str = "", unit: str = "", building: str = "", type: str = "",
                    since: float | None = None, until: float | None = None,
                    limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> dict[str, Any]:
        rows = ctx.store.list_alerts(status, q, unit, building, type, since, until, limit=limit)
        return {"alerts": [alert_view(r) for r in rows]}

    @app.get("/api/alerts/stream")
    async def alert_stream(request: Request, who: User) -> StreamingResponse:
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

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"X-Accel-Buffering": "no"})

    @app.get("/api/alerts/{event_id}")
    def get_alert(event_id: str, who: User) -> dict[str, Any]:
        row = ctx.store.get_alert(event_id)
        if not row:
            raise HTTPException(404, "no such alert")
        return alert_view(row)

    @app.get("/api/alerts/{event_id}/snapshot", response_class=Response,
             responses={200: {"content": {"image/jpeg": {}}}})
    def alert_snapshot(event_id: str, who: User) -> Response:
        row = ctx.store.get_alert(event_id)
        data = ctx.store.get_snapshot(row["unit_id"], row["snapshot_id"]) if row and row["snapshot_id"] else None
        if data is None:
            raise HTTPException(404, "no snapshot (yet)")
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=3600"})

    @app.post("/api/alerts/{event_id}/verdict")
    def set_verdict(event_id: str, body: VerdictIn, who: Changer) -> dict[str, Any]:
        """acknowledged / false_alarm / confirmed: closes the alert and labels it for retraining."""
        if not ctx.store.get_alert(event_id):
            raise HTTPException(404, "no such alert")
        ctx.store.set_label(event_id, body.verdict, who.username)
        return alert_view(ctx.store.get_alert(event_id) or {})

    # -- statistics and export ----------------------------------------------------------------
    @app.get("/api/stats/daily")
    def daily(who: User, days: Annotated[int, Query(ge=1, le=366)] = 14,
              top: Annotated[int, Query(ge=1, le=50)] = 8) -> dict[str, Any]:
        """E-bike alerts per building and day, oldest day first; days are those of the `timezone` setting
        (the site's), so the last one is today there."""
        tz = ctx.settings.tz
        today = dt.datetime.fromtimestamp(ctx.clock(), tz).date()
        day_list = [(today - dt.timedelta(days=days - 1 - i)).isoformat() for i in range(days)]
        series: dict[str, list[int]] = {}
        for row in ctx.store.daily_counts(day_list[0], day_list[-1]):
            series.setdefault(row["building"], [0] * days)[day_list.index(row["day"])] = int(row["n"])
        # A chart with a thousand buildings says nothing: keep the busiest, sum the rest.
        ranked = sorted(series, key=lambda b: (-sum(series[b]), b))
        shown = sorted(ranked[:top])
        out = [{"building": b, "counts": series[b]} for b in shown]
        if len(ranked) > top:
            rest = [sum(series[b][i] for b in ranked[top:]) for i in range(days)]
            out.append({"building": f"{len(ranked) - top} other buildings", "counts": rest})
        return {"days": day_list, "timezone": ctx.settings.timezone, "series": out}

    @app.get("/api/export/dataset.zip", response_class=Response,
             responses={200: {"content": {"application/zip": {}}}})
    def export_dataset(who: User) -> StreamingResponse:
        """Labelled alerts for retraining: labels.csv + snapshots/{event_id}.jpg (admins)."""
        who.require("admin")
        # Closed by chunks() once streamed; a `with` here would close it before the response is sent.
        spool = tempfile.SpooledTemporaryFile(max_size=32 * 1024 * 1024)  # noqa: SIM115
        write_dataset_zip(ctx.store, spool)
        spool.seek(0)

        def chunks() -> Iterator[bytes]:
            with spool:
                while block := spool.read(256 * 1024):
                    yield block

        stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
        return StreamingResponse(chunks(), media_type="application/zip", headers={
            "Content-Disposition": f'attachment; filename="liftguard-labels-{stamp}.zip"'})

    @app.get("/api/metrics")
    def metrics(who: User) -> dict[str, Any]:
        ingest = ctx.ingestor.stats.snapshot() if ctx.ingestor else {}
        return {"ingest": ingest, "mqtt_connected": bool(ctx.ingestor and ctx.ingestor.connected.is_set()),
                "events_stored": ctx.store.count_events()}

    # -- pages --------------------------------------------------------------------------------
    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def dashboard(who: User, q: str = "", site: str = "", building: str = "", status: str = "") -> HTMLResponse:
        matches = units(q, site, building, status)
        return HTMLResponse(web.dashboard_page(who, matches, ctx.store.sites_and_buildings(),
                                               {"q": q, "site": site, "building": building, "status": status},
                                               ctx.settings.timezone))

    @app.get("/alerts", response_class=HTMLResponse, include_in_schema=False)
    def alerts_page(who: User, status: str = "all", q: str = "", building: str = "", type: str = "",
                    day: str = "") -> HTMLResponse:
        since = until = None
        if day:  # a day of the site's time zone, like the daily counts
            try:
                since, until = day_bounds(dt.date.fromisoformat(day), ctx.settings.tz)
            except (ValueError, OverflowError):
                raise HTTPException(422, "day must be YYYY-MM-DD") from None
        if status not in ("open", "all", "acknowledged", "false_alarm", "confirmed"):
            status = "all"
        rows = [alert_view(r) for r in ctx.store.list_alerts(status, q, "", building, type, since, until,
                                                             limit=500)]
        return HTMLResponse(web.alerts_page(who, rows, {"status": status, "q": q, "building": building,
                                                       "type": type, "day": day}, ctx.settings.timezone))

    @app.get("/static/app.js", include_in_schema=False)
    def app_js(who: User) -> Response:
        script = resources.files("fleet.static").joinpath("app.js").read_text()
        return Response(script, media_type="text/javascript")

    return app


def write_dataset_zip(store: Store, target: Any) -> int:
    """Write labels.csv + snapshots into a zip file object; returns the number of labelled alerts."""
    rows = store.labelled_dataset()
    labels = io.StringIO()
    writer = csv.writer(labels)
    writer.writerow(["event_id", "unit_id", "site", "building", "type", "ts", "cls", "confidence",
                     "verdict", "labelled_by", "labelled_at", "snapshot"])
    with zipfile.ZipFile(target, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for row in rows:
            snapshot = f"snapshots/{row['event_id']}.jpg" if row["data"] is not None else ""
            if snapshot:
                # JPEG is already compressed: store, don't deflate.
                zf.writestr(snapshot, bytes(row["data"]), compress_type=zipfile.ZIP_STORED)
            writer.writerow([row["event_id"], row["unit_id"], row["site"] or "", row["building"] or "", row["type"],
                             row["ts"], row["cls"] or "", row["confidence"] if row["confidence"] is not None else "",
                             row["verdict"], row["labelled_by"], row["labelled_at"], snapshot])
        zf.writestr("labels.csv", labels.getvalue())
    return len(rows)


class FleetServer(uvicorn.Server):
    """uvicorn, plus telling the SSE streams to finish as soon as shutdown begins."""

    def __init__(self, config: uvicorn.Config, ctx: FleetContext) -> None:
        super().__init__(config)
        self.ctx = ctx

    def handle_exit(self, sig: int, frame: Any) -> None:
        self.ctx.closing.set()
        super().handle_exit(sig, frame)


def build_context(settings: FleetSettings, store: Store, clock: Callable[[], float] = time.time) -> FleetContext:
    limiter = LoginLimiter(settings.login_max_failures, settings.login_window_s)
    return FleetContext(settings=settings, store=store,
                        auth=Authenticator(store, settings.session_ttl_s, limiter), notifier=AlertNotifier(),
                        clock=clock)
