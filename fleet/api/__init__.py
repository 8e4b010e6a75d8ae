"""HTTP API (JSON, OpenAPI at /openapi.json) and the routes of the dashboard pages, one router per area:
`session` (health, login, logout), `units` (units and commands), `alerts`, `reports` (statistics, export,
metrics) and `pages` (HTML).

Everything except /healthz and the login routes requires a session cookie; state-changing
requests also need the session's CSRF token in `X-CSRF-Token` (forms: a `csrf` field).
Store calls are blocking, so the endpoints that make them are plain `def` (FastAPI runs those in
its thread pool) and the async ones hand blocking work to `run_in_threadpool`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response

from fleet.api import alerts, pages, reports, session, units
from fleet.api.context import AlertNotifier, FleetContext, alert_view, config_report_view, unit_view
from fleet.api.reports import write_dataset_zip
from fleet.auth import Authenticator, LoginThrottle, Throttled
from fleet.config import FleetSettings
from fleet.errors import AuthError, Forbidden
from fleet.store import Store

__all__ = ["AlertNotifier", "FleetContext", "FleetServer", "alert_view", "build_context", "config_report_view",
           "create_app", "unit_view", "write_dataset_zip"]

# Self-contained pages: no CDN (the site may have no internet), no inline script.
CSP = ("default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; script-src 'self'; "
       "connect-src 'self'; frame-ancestors 'none'; form-action 'self'")


async def _security_headers(request: Request, call_next: Any) -> Response:
    response: Response = await call_next(request)
    response.headers.setdefault("Content-Security-Policy", CSP)
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("Referrer-Policy", "same-origin")
    response.headers.setdefault("Cache-Control", "no-store")
    return response


async def _auth_error(request: Request, exc: Exception) -> Response:
    """401 for an unknown caller, 403 for a known one without the role, 429 for a throttled login."""
    if isinstance(exc, Throttled):
        return JSONResponse({"detail": str(exc)}, status_code=429,
                            headers={"Retry-After": str(int(exc.retry_after) + 1)})
    if isinstance(exc, Forbidden):
        return JSONResponse({"detail": str(exc)}, status_code=403)
    if request.url.path.startswith("/api/") or request.method != "GET":
        return JSONResponse({"detail": str(exc)}, status_code=401)
    return RedirectResponse("/login", status_code=303)


def create_app(ctx: FleetContext) -> FastAPI:
    # The generated docs UI would pull Swagger from a CDN and be public; the schema is served by `session`.
    app = FastAPI(title="LiftGuard fleet", version="1", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.ctx = ctx
    app.middleware("http")(_security_headers)
    app.add_exception_handler(AuthError, _auth_error)
    for area in (session, units, alerts, reports, pages):
        app.include_router(area.router)
    return app


class FleetServer(uvicorn.Server):
    """uvicorn, plus telling the SSE streams to finish as soon as shutdown begins."""

    def __init__(self, config: uvicorn.Config, ctx: FleetContext) -> None:
        super().__init__(config)
        self.ctx = ctx

    def handle_exit(self, sig: int, frame: Any) -> None:
        self.ctx.closing.set()
        super().handle_exit(sig, frame)


def build_context(settings: FleetSettings, store: Store, clock: Callable[[], float] = time.time) -> FleetContext:
    limiter = LoginThrottle(free_failures=settings.login_max_failures, max_delay_s=settings.login_max_delay_s,
                            forget_after_s=settings.login_window_s)
    return FleetContext(settings=settings, store=store,
                        auth=Authenticator(store, settings.session_ttl_s, limiter), notifier=AlertNotifier(),
                        clock=clock)
