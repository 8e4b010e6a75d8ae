"""The fleet server's layout: the store split by job, one router per area, 401/403 by exception type,
alert types and verdicts defined once."""

from __future__ import annotations

import html
import json
import re
import typing
from importlib import resources
from pathlib import Path

import httpx
import pytest
from fastapi import APIRouter

from contract.mqtt import EventType
from fleet import web
from fleet.alerts import ALERT_TYPES, VERDICT_LABELS, VERDICTS
from fleet.api import create_app
from fleet.auth import Principal
from fleet.errors import Forbidden, NotAuthenticated
from fleet.store import DashboardQueries, IngestWrites, SqliteStore, Store, UsersAndSessions
from fleet.store.engine import SqliteEngine


class UsersOnly(SqliteEngine, UsersAndSessions):
    """A database that knows users and sessions and nothing else."""


def test_each_store_job_works_on_its_own_engine(tmp_path: Path) -> None:
    users = UsersOnly(tmp_path / "fleet.db")
    users.migrate()
    users.add_user("ana", "manager", "scrypt$x")
    assert users.get_user("ana")["role"] == "manager"  # type: ignore[index]
    assert not hasattr(users, "write_batch") and not hasattr(users, "list_alerts")
    users.close()


def test_the_full_store_is_the_jobs_together() -> None:
    assert issubclass(SqliteStore, Store)
    for job in (IngestWrites, DashboardQueries, UsersAndSessions):
        assert issubclass(Store, job)
        assert job.__module__ != Store.__module__  # each job lives in its own module


@pytest.mark.parametrize(("exc", "status"), [
    (Forbidden("managers may not do this"), 403),  # no word "role" in it: still 403
    (NotAuthenticated("your role session expired"), 401),  # the word "role" in it: still 401
])
def test_401_or_403_follows_the_exception_type_not_its_message(exc: Exception, status: int) -> None:
    import anyio

    async def call() -> int:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=_app_for(exc)),
                                     base_url="http://test") as client:
            return (await client.get("/api/probe")).status_code

    assert anyio.run(call) == status


def _app_for(exc: Exception) -> typing.Any:
    app = create_app(None)  # type: ignore[arg-type]  # the probe route needs no context
    probe = APIRouter()

    @probe.get("/api/probe")
    def raise_it() -> None:
        raise exc

    app.include_router(probe)
    return app


def test_admin_only_actions_raise_forbidden() -> None:
    with pytest.raises(Forbidden):
        Principal("ana", "manager", "csrf").require("admin")


def test_alert_types_are_event_types_and_defined_once() -> None:
    assert set(ALERT_TYPES) <= set(typing.get_args(EventType))
    page = web.alerts_page(Principal("ana", "admin", "c"), [], {"status": "all", "q": "", "building": "",
                                                                "type": "", "day": ""}, "UTC")
    options = re.findall(r'<option value="([a-z_]+)"', page.split('name="type"')[1].split("</select>")[0])
    assert tuple(options) == tuple(sorted(ALERT_TYPES))


def test_the_dashboard_script_takes_the_verdicts_from_the_page() -> None:
    script = resources.files("fleet.static").joinpath("app.js").read_text()
    assert not any(f'"{v}"' in script for v in VERDICTS)  # no second list in the script
    page = web.dashboard_page(Principal("ana", "admin", "c"), [], [], {"q": "", "site": "", "building": "",
                                                                       "status": ""}, "UTC")
    content = re.search(r'<meta name="verdicts" content="([^"]*)"', page)
    assert content is not None
    assert json.loads(html.unescape(content.group(1))) == VERDICT_LABELS
