"""Public routes (health, login) and the session's own (logout, who am I, the OpenAPI schema)."""

from __future__ import annotations

import hmac
import ipaddress
import secrets
from collections.abc import Sequence
from typing import Any
from urllib.parse import parse_qs

from fastapi import APIRouter, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from pydantic import BaseModel, Field

from fleet import web
from fleet.api.context import LOGIN_CSRF_COOKIE, SESSION_COOKIE, Ctx, FleetContext, User, set_session_cookie
from fleet.auth import Throttled
from fleet.errors import AuthError

router = APIRouter()


class LoginIn(BaseModel):
    username: str = Field(min_length=1, max_length=64)
    password: str = Field(min_length=1, max_length=1024)


def _client(request: Request) -> str:
    ctx: FleetContext = request.app.state.ctx
    return client_address(request, ctx.settings.proxy_networks)


def client_address(request: Request, proxies: Sequence[ipaddress.IPv4Network | ipaddress.IPv6Network]) -> str:
    """The caller's address: the TCP peer, unless that is a configured proxy, in which case the last
    X-Forwarded-For hop that is not one of our proxies (the ones before it can be forged by the client)."""
    peer = request.client.host if request.client else "?"

    def trusted(address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in net for net in proxies)

    if not proxies or not trusted(peer):
        return peer
    hops = [h.strip() for value in request.headers.getlist("x-forwarded-for") for h in value.split(",") if h.strip()]
    for hop in reversed(hops):
        if not trusted(hop):
            try:
                return str(ipaddress.ip_address(hop))
            except ValueError:
                return peer  # garbage in the header: the proxy itself is what we know
    return peer


@router.get("/healthz", tags=["public"])
def health(ctx: Ctx) -> JSONResponse:
    """`ok` (200) or `degraded` (503) with the `problems`: the database does not answer, the broker is
    unreachable, store writes fail, or ingest lags more than `max_ingest_lag_s`."""
    problems: list[str] = []
    try:
        ctx.store.query("SELECT 1 AS ok")
        db_ok = True
    except Exception as exc:  # health must answer, whatever the failure
        db_ok = False
        problems.append(f"database: {type(exc).__name__}")
    ingest = ctx.ingestor.health() if ctx.ingestor else None
    if ingest:
        problems += ingest["problems"]
    mqtt_ok = bool(ctx.ingestor and ctx.ingestor.connected.is_set())
    body: dict[str, Any] = {"status": "degraded" if problems else "ok", "db": db_ok, "mqtt": mqtt_ok,
                            "problems": problems}
    if ingest:
        body["ingest"] = {k: v for k, v in ingest.items() if k != "problems"}
    return JSONResponse(body, status_code=503 if problems else 200)


@router.get("/login", response_class=HTMLResponse, tags=["public"])
def login_form(ctx: Ctx) -> HTMLResponse:
    token = secrets.token_urlsafe(16)
    response = HTMLResponse(web.login_page(csrf=token))
    response.set_cookie(LOGIN_CSRF_COOKIE, token, httponly=True, samesite="strict",
                        secure=ctx.settings.cookie_secure)
    return response


@router.post("/login", tags=["public"])
async def login_submit(request: Request, ctx: Ctx) -> Response:
    form = {k: v[0] for k, v in parse_qs((await request.body()).decode(errors="replace")).items()}
    expected = request.cookies.get(LOGIN_CSRF_COOKIE, "")
    if not expected or not hmac.compare_digest(form.get("csrf", "").encode(), expected.encode()):
        return HTMLResponse(web.login_page(csrf=expected, error="Session expired, please retry."), 400)
    try:
        token, _ = await run_in_threadpool(ctx.auth.login, form.get("username", ""),
                                           form.get("password", ""), _client(request))
    except Throttled as exc:
        return HTMLResponse(web.login_page(csrf=expected, error=str(exc)), 429,
                            headers={"Retry-After": str(int(exc.retry_after) + 1)})
    except AuthError as exc:
        return HTMLResponse(web.login_page(csrf=expected, error=str(exc)), 401)
    response = RedirectResponse("/", status_code=303)
    set_session_cookie(ctx, response, token)
    response.delete_cookie(LOGIN_CSRF_COOKIE)
    return response


@router.post("/api/login", tags=["public"])
async def api_login(body: LoginIn, request: Request, ctx: Ctx) -> JSONResponse:
    """JSON login for scripts; the browser form posts to /login."""
    token, who = await run_in_threadpool(ctx.auth.login, body.username, body.password, _client(request))
    response = JSONResponse({"username": who.username, "role": who.role, "csrf_token": who.csrf_token})
    set_session_cookie(ctx, response, token)
    return response


@router.post("/logout")
async def logout_form(request: Request, ctx: Ctx) -> Response:
    token = request.cookies.get(SESSION_COOKIE)
    who = await run_in_threadpool(ctx.auth.resolve, token)
    form = {k: v[0] for k, v in parse_qs((await request.body()).decode(errors="replace")).items()}
    if not hmac.compare_digest(form.get("csrf", "").encode(), who.csrf_token.encode()):
        raise HTTPException(403, "missing or wrong CSRF token")
    await run_in_threadpool(ctx.auth.logout, token or "")
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE)
    return response


@router.get("/api/me")
def me(who: User) -> dict[str, str]:
    return {"username": who.username, "role": who.role}


@router.get("/openapi.json", include_in_schema=False)
def openapi(request: Request, who: User) -> JSONResponse:
    return JSONResponse(request.app.openapi())
