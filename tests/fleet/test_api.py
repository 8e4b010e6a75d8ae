"""The HTTP API as a property manager's browser and scripts use it."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import io
import json
import time
import zipfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.routing import APIRoute
from starlette.routing import BaseRoute

from fleet import web
from fleet.auth import hash_password, needs_rehash, verify_password
from fleet.store import IngestBatch
from tests.fleet.conftest import PASSWORD, FakeUnit, RunningFleet, start_fleet, wait_until
from tests.support.mosquitto import MosquittoBroker

PUBLIC = {"/healthz", "/login", "/api/login"}


def api_routes(routes: Iterable[BaseRoute]) -> Iterator[APIRoute]:
    """Every endpoint of the app, also those of included routers (FastAPI keeps those nested)."""
    for route in routes:
        if isinstance(route, APIRoute):
            yield route
        nested = getattr(route, "original_router", None)
        if nested is not None:
            yield from api_routes(nested.routes)


def test_only_health_and_login_answer_without_a_session(fleet: RunningFleet) -> None:
    anonymous = httpx.Client(base_url=fleet.url)
    health = anonymous.get("/healthz").json()
    assert (health["status"], health["db"], health["mqtt"], health["problems"]) == ("ok", True, True, [])
    checked = 0
    for route in api_routes(fleet.app.routes):
        if route.path in PUBLIC:
            continue
        path = route.path.replace("{unit_id}", "u1").replace("{event_id}", "e1").replace("{command_id}", "c1")
        for method in (route.methods or set()) - {"HEAD"}:
            response = anonymous.request(method, path, json={})
            assert response.status_code in (401, 303), f"{method} {path} answered {response.status_code}"
            if response.status_code == 303:
                assert response.headers["location"] == "/login"
            checked += 1
    assert checked >= 18  # every API route and page, not a vacuous loop


def test_pages_forbid_foreign_scripts_and_framing(fleet: RunningFleet) -> None:
    client, _ = fleet.login()
    csp = client.get("/").headers["content-security-policy"]
    assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
    cookie = fleet.login()[0].cookies.jar
    session = next(c for c in cookie if c.name == "lg_session")
    assert session.has_nonstandard_attr("HttpOnly")


def test_openapi_schema_is_served_to_logged_in_users(fleet: RunningFleet) -> None:
    client, _ = fleet.login()
    paths = client.get("/openapi.json").json()["paths"]
    expected = {"/api/units", "/api/alerts", "/api/alerts/{event_id}/verdict", "/api/units/{unit_id}/commands"}
    assert expected <= set(paths)


def test_passwords_are_argon2id_hashed_with_their_parameters() -> None:
    encoded = hash_password("s3cret-passphrase")
    assert encoded.startswith("$argon2id$v=19$m=65536,t=3,p=4$") and "s3cret" not in encoded
    assert verify_password("s3cret-passphrase", encoded)
    assert not verify_password("s3cret-passphrasE", encoded)
    assert not verify_password("anything", "md5$garbage")
    assert not needs_rehash(encoded)


def _legacy_scrypt(password: str) -> str:
    """A hash as the fleet wrote them before argon2 (hashlib.scrypt, n=2**14, r=8, p=1)."""
    salt = b"0123456789abcdef"
    digest = hashlib.scrypt(password.encode(), salt=salt, n=2**14, r=8, p=1, dklen=32)
    return f"scrypt$16384$8$1${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def test_an_old_scrypt_hash_logs_in_and_is_replaced_by_argon2id(fleet: RunningFleet) -> None:
    fleet.store.add_user("old-timer", "manager", _legacy_scrypt(PASSWORD))
    assert verify_password(PASSWORD, _legacy_scrypt(PASSWORD)) and needs_rehash(_legacy_scrypt(PASSWORD))
    wrong = httpx.post(f"{fleet.url}/api/login", json={"username": "old-timer", "password": "nope-nope-nope"})
    assert wrong.status_code == 401
    assert fleet.store.get_user("old-timer")["password_hash"].startswith("scrypt$")  # type: ignore[index]
    fleet.login("old-timer")
    stored = fleet.store.get_user("old-timer")["password_hash"]  # type: ignore[index]
    assert stored.startswith("$argon2id$") and verify_password(PASSWORD, stored)
    fleet.login("old-timer")  # and the new hash works


def test_state_changes_need_the_sessions_csrf_token(fleet: RunningFleet,
                                                    make_unit: Callable[..., FakeUnit]) -> None:
    make_unit("lift-1").heartbeat()
    wait_until(lambda: fleet.store.get_unit("lift-1"))
    client, csrf = fleet.login()
    assert client.post("/api/units/lift-1/commands", json={"name": "release"}).status_code == 403
    assert client.post("/api/units/lift-1/commands", json={"name": "release"},
                       headers={"X-CSRF-Token": "forged"}).status_code == 403
    assert client.post("/api/units/lift-1/commands", json={"name": "release"},
                       headers={"X-CSRF-Token": csrf}).status_code == 202


def test_managers_may_release_but_only_admins_may_disable(fleet: RunningFleet,
                                                          make_unit: Callable[..., FakeUnit]) -> None:
    unit = make_unit("lift-2")
    unit.heartbeat()
    wait_until(lambda: fleet.store.get_unit("lift-2"))
    fleet.add_user("manny", "manager")
    manager, csrf = fleet.login("manny")
    h = {"X-CSRF-Token": csrf}
    assert manager.post("/api/units/lift-2/commands", json={"name": "disable"}, headers=h).status_code == 403
    sent = manager.post("/api/units/lift-2/commands", json={"name": "release"}, headers=h).json()
    result = wait_until(lambda: (r := manager.get(f"/api/commands/{sent['command_id']}").json())["status"] != "pending"
                        and r)
    assert (result["status"], result["result_detail"], result["requested_by"]) == ("ok", "release done", "manny")
    assert [(name, cmd.command_id) for name, cmd in unit.commands] == [("release", sent["command_id"])]
    assert manager.get("/api/export/dataset.zip").status_code == 403


def test_units_are_listed_with_state_versions_and_camera_health(fleet: RunningFleet,
                                                                make_unit: Callable[..., FakeUnit]) -> None:
    make_unit("lift-n1", building="North").heartbeat(camera="frozen")
    make_unit("lift-s1", building="South").heartbeat()
    wait_until(lambda: len(fleet.store.list_units()) == 2 and all(u["camera"] for u in fleet.store.list_units()))
    client, _ = fleet.login()
    body = client.get("/api/units").json()
    assert (body["total"], body["online"]) == (2, 2)
    north = client.get("/api/units", params={"building": "North"}).json()["units"]
    assert [(u["unit_id"], u["status"], u["camera"], u["software"], u["model_id"]) for u in north] == [
        ("lift-n1", "online", "frozen", "1.4.2", "ebike-v3")]
    assert [u["unit_id"] for u in client.get("/api/units", params={"q": "S1"}).json()["units"]] == ["lift-s1"]
    page = client.get("/", params={"building": "South"}).text
    assert "lift-s1" in page and "lift-n1" not in page


def test_alert_verdicts_become_a_labelled_dataset(fleet: RunningFleet, make_unit: Callable[..., FakeUnit]) -> None:
    unit = make_unit("lift-3")
    first, second = unit.alert(), unit.alert()
    wait_until(lambda: all((fleet.store.get_alert(e.event_id) or {}).get("has_snapshot") for e in (first, second)))
    client, csrf = fleet.login()
    assert {a["event_id"] for a in client.get("/api/alerts").json()["alerts"]} == {first.event_id, second.event_id}
    snap = client.get(f"/api/alerts/{first.event_id}/snapshot")
    assert snap.headers["content-type"] == "image/jpeg" and snap.content.startswith(b"\xff\xd8")
    r = client.post(f"/api/alerts/{first.event_id}/verdict", json={"verdict": "false_alarm"},
                    headers={"X-CSRF-Token": csrf})
    assert r.json()["verdict"] == "false_alarm"
    assert client.post(f"/api/alerts/{first.event_id}/verdict", json={"verdict": "meh"},
                       headers={"X-CSRF-Token": csrf}).status_code == 422
    assert [a["event_id"] for a in client.get("/api/alerts").json()["alerts"]] == [second.event_id]
    with zipfile.ZipFile(io.BytesIO(client.get("/api/export/dataset.zip").content)) as zf:
        assert set(zf.namelist()) == {"labels.csv", f"snapshots/{first.event_id}.jpg"}
        assert "false_alarm" in zf.read("labels.csv").decode()
    daily = client.get("/api/stats/daily", params={"days": 3}).json()
    assert daily["series"] == [{"site": "Harbour View", "building": "Tower A", "label": "Harbour View / Tower A",
                                "counts": [0, 0, 2]}]


def test_the_alert_stream_pushes_new_alerts(fleet: RunningFleet, make_unit: Callable[..., FakeUnit]) -> None:
    unit = make_unit("lift-4")
    client, _ = fleet.login()
    with client.stream("GET", "/api/alerts/stream", timeout=15) as stream:
        event = unit.alert(with_snapshot=False)
        for line in stream.iter_lines():
            if line.startswith("data: "):
                pushed = json.loads(line.removeprefix("data: "))
                break
    assert (pushed["event_id"], pushed["unit_id"], pushed["type"]) == (event.event_id, "lift-4", "ebike_blocked")


@pytest.mark.parametrize("bad", [{"name": "self_destruct"}, {"name": "release", "extra": 1}])
def test_unknown_commands_are_refused(fleet: RunningFleet, bad: dict[str, object]) -> None:
    client, csrf = fleet.login()
    response = client.post("/api/units/lift-x/commands", json=bad, headers={"X-CSRF-Token": csrf})
    assert response.status_code == 422


def _seed_units(fleet: RunningFleet, n: int, buildings: int) -> None:
    from tests.fleet.test_store import alert, batch_of, heartbeat

    beats = IngestBatch()
    for i in range(n):
        beats.add_heartbeat(heartbeat(f"u{i:03d}", building=f"B{i % buildings:02d}"), time.time())
    fleet.store.write_batch(beats)
    # building B00 gets the most alerts, B01 the next most, ...
    fleet.store.write_batch(batch_of(*[alert(f"u{i:03d}") for i in range(n) for _ in range(buildings - i % buildings)],
                                     snapshots=False))


def test_the_daily_chart_keeps_the_busiest_buildings_and_sums_the_rest(fleet: RunningFleet) -> None:
    _seed_units(fleet, n=10, buildings=10)
    client, _ = fleet.login()
    series = client.get("/api/stats/daily", params={"days": 1, "top": 3}).json()["series"]
    assert [(s["label"], s["counts"]) for s in series] == [
        ("S / B00", [10]), ("S / B01", [9]), ("S / B02", [8]), ("7 other buildings", [28])]


def test_large_fleets_are_paged_in_the_api_and_truncated_on_the_page(fleet: RunningFleet,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    _seed_units(fleet, n=30, buildings=3)
    client, _ = fleet.login()
    everything = [u["unit_id"] for u in client.get("/api/units").json()["units"]]
    page = client.get("/api/units", params={"limit": 10, "offset": 25}).json()
    assert (page["total"], page["online"]) == (30, 30)  # counts cover every match, not just the page
    assert [u["unit_id"] for u in page["units"]] == everything[25:30]
    assert everything[:10] == [f"u{i:03d}" for i in range(0, 30, 3)]  # grouped by building B00 first
    monkeypatch.setattr(web, "MAX_UNITS_ON_PAGE", 12)
    html = client.get("/").text
    assert html.count('<tr class="unit"') == 12
    assert "Showing 12 of 30 units" in html


# 20:30 UTC on 29 November: still the 29th in UTC, already 04:30 on the 30th in Shanghai.
NOW = dt.datetime(2026, 11, 29, 20, 30, tzinfo=dt.UTC).timestamp()
LATE_ON_THE_29TH_IN_SHANGHAI = NOW - 5 * 3600  # 15:30 UTC = 23:30 in Shanghai


@pytest.mark.parametrize(("zone", "days", "counts"), [
    ("UTC", ["2026-11-28", "2026-11-29"], [0, 1]),
    ("Asia/Shanghai", ["2026-11-29", "2026-11-30"], [1, 0]),
])
def test_the_daily_counts_end_today_in_the_sites_time_zone(
        mosquitto: MosquittoBroker, tmp_path: Path, make_unit: Callable[..., FakeUnit],
        zone: str, days: list[str], counts: list[int]) -> None:
    fleet = start_fleet(mosquitto, f"sqlite:///{tmp_path / 'fleet.db'}", clock=lambda: NOW, timezone=zone)
    try:
        event = make_unit("lift-sh1").alert(with_snapshot=False, ts=LATE_ON_THE_29TH_IN_SHANGHAI)
        wait_until(lambda: fleet.store.get_alert(event.event_id))  # through the broker and the ingest writer
        client, _ = fleet.login()
        daily = client.get("/api/stats/daily", params={"days": 2}).json()
        assert (daily["days"], daily["timezone"]) == (days, zone)
        assert [(s["site"], s["building"], s["counts"]) for s in daily["series"]] == [
            ("Harbour View", "Tower A", counts)]
    finally:
        fleet.stop()


def test_pages_show_times_and_days_of_the_sites_time_zone(mosquitto: MosquittoBroker, tmp_path: Path) -> None:
    from tests.fleet.test_store import alert, batch_of

    fleet = start_fleet(mosquitto, f"sqlite:///{tmp_path / 'fleet.db'}", timezone="Asia/Shanghai")
    try:
        late, early = alert("lift-sh1", ts=LATE_ON_THE_29TH_IN_SHANGHAI), alert("lift-sh1", ts=NOW)
        fleet.store.write_batch(batch_of(late, early, snapshots=False))
        client, _ = fleet.login()
        page = client.get("/alerts", params={"day": "2026-11-30"}).text  # a Shanghai day: 16:00 to 16:00 UTC
        assert early.event_id in page and late.event_id not in page
        assert "<th>Time (Asia/Shanghai)</th>" in page and '<td class="time">2026-11-30 04:30:00</td>' in page
        assert late.event_id in client.get("/alerts", params={"day": "2026-11-29"}).text
        assert client.get("/alerts", params={"day": "30/11/2026"}).status_code == 422
        dashboard = client.get("/").text
        assert "E-bike alerts per day by site and building <span id=\"chart-zone\">(Asia/Shanghai)</span>" in dashboard
        assert '<meta name="time-zone" content="Asia/Shanghai">' in dashboard  # app.js formats live alerts with it
        assert "UTC" not in dashboard
    finally:
        fleet.stop()
