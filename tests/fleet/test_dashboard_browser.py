"""The dashboard in headless Chromium: log in, see the units, get a live alert with its snapshot,
acknowledge it, see units answer a pushed config — the property manager's whole loop, through the
real server and broker."""

from __future__ import annotations

import datetime as dt
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from tests.fleet.conftest import PASSWORD, FakeUnit, RunningFleet, start_fleet, wait_until
from tests.fleet.test_config_reported import answer, config_of
from tests.support.mosquitto import MosquittoBroker

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]

sync_api = pytest.importorskip("playwright.sync_api")


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    if not Path(CHROMIUM).exists() and not shutil.which("chromium"):
        pytest.fail("chromium is not installed: run `make test`, which installs it from the OS packages")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield b
        b.close()


def test_manager_logs_in_sees_units_gets_a_live_alert_and_acknowledges_it(
        browser: object, fleet: RunningFleet, make_unit: Callable[..., FakeUnit]) -> None:
    north = make_unit("lift-n1", site="Harbour View", building="North")
    make_unit("lift-s1", site="Harbour View", building="South").heartbeat()
    north.heartbeat()
    wait_until(lambda: len(fleet.store.list_units()) == 2)
    fleet.add_user("manny", "manager")

    page = browser.new_page()  # type: ignore[attr-defined]
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(fleet.url + "/")
    assert page.url.endswith("/login")  # no session: sent to the login form
    page.fill("input[name=username]", "manny")
    page.fill("input[name=password]", "wrong password!")
    page.click("button[type=submit]")
    assert "wrong username or password" in page.text_content("#login-error")  # type: ignore[operator]
    page.fill("input[name=username]", "manny")
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")

    page.wait_for_selector("tr.unit[data-unit-id=lift-n1]")
    assert page.text_content("tr.unit[data-unit-id=lift-n1] .state") == "online"
    assert page.locator("h4.building").all_text_contents() == ["North 1/1 online", "South 1/1 online"]
    assert page.locator("button.cmd[data-cmd=disable]").count() == 0  # a manager cannot disable blocking
    page.wait_for_selector("#daily-chart svg")

    event = north.alert()  # arrives through the broker, the ingest writer and the SSE stream
    card = page.wait_for_selector(f'.alert[data-event-id="{event.event_id}"]', timeout=15000)
    assert card is not None and "lift-n1" in (card.text_content() or "")
    # Polled from Python: the page's CSP (rightly) forbids the eval that wait_for_function needs.
    wait_until(lambda: page.evaluate(
        f'document.querySelector(\'.alert[data-event-id="{event.event_id}"] img\').naturalWidth') > 0, timeout=15)

    if shot := os.environ.get("LIFTGUARD_SCREENSHOT"):  # docs: `LIFTGUARD_SCREENSHOT=docs/img/dashboard.png`
        page.set_viewport_size({"width": 1280, "height": 860})
        page.screenshot(path=shot, full_page=False)
    card.query_selector("button[data-verdict=acknowledged]").click()  # type: ignore[union-attr]
    page.wait_for_selector(f'.alert[data-event-id="{event.event_id}"]', state="detached", timeout=10000)
    labelled = fleet.store.get_alert(event.event_id)
    assert labelled is not None and (labelled["verdict"], labelled["labelled_by"]) == ("acknowledged", "manny")

    page.click("button.cmd[data-cmd=release][data-unit=lift-n1]")
    wait_until(lambda: "release: ok" in (page.text_content("tr[data-unit-id=lift-n1] .cmd-status") or ""),
               timeout=15)
    assert errors == []
    page.close()


def test_live_alerts_and_config_answers_show_the_sites_time_whatever_the_browsers_zone(
        browser: object, mosquitto: MosquittoBroker, tmp_path: Path, make_unit: Callable[..., FakeUnit]) -> None:
    fleet = start_fleet(mosquitto, f"sqlite:///{tmp_path / 'fleet.db'}", timezone="Asia/Shanghai")
    try:
        applying, refusing = make_unit("lift-sh1"), make_unit("lift-sh2")
        wait_until(lambda: len(fleet.store.list_units()) == 2)
        context = browser.new_context(timezone_id="Europe/London")  # type: ignore[attr-defined]
        page = context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(fleet.url + "/login")
        page.fill("input[name=username]", "admin")
        page.fill("input[name=password]", PASSWORD)
        page.click("button[type=submit]")
        page.wait_for_selector("#daily-chart svg")
        assert page.text_content("#chart-zone") == "(Asia/Shanghai)"
        cells = {unit: f"tr.unit[data-unit-id={unit}] td.config" for unit in ("lift-sh1", "lift-sh2")}
        assert [page.text_content(cell) for cell in cells.values()] == ["", ""]  # no answer yet
        reloads: list[str] = []
        page.on("load", lambda p: reloads.append(p.url))

        evening_in_london = dt.datetime(2026, 11, 29, 20, 30, tzinfo=dt.UTC).timestamp()
        event = applying.alert(with_snapshot=False, ts=evening_in_london)
        card = page.wait_for_selector(f'.alert[data-event-id="{event.event_id}"]', timeout=15000)
        assert card is not None and "2026-11-30 04:30:00 Asia/Shanghai" in (card.text_content() or "")

        # A pushed config: one unit applies it, the other refuses it; the open page follows, no reload.
        applying.publish("config/reported", answer({"config": {"blocking_enabled": True}, "version": 7}),
                         retain=True)
        refusing.publish("config/reported", answer({"config": {"policy": {}}, "version": 7},
                                                   refuse="<b>fps</b> too high"), retain=True)
        reports = {u: wait_until(lambda u=u: config_of(fleet.store, u)) for u in cells}
        at = {u: dt.datetime.fromtimestamp(r["received_at"], ZoneInfo("Asia/Shanghai")) for u, r in reports.items()}
        expected = {"lift-sh1": f"config v7 applied {at['lift-sh1']:%H:%M}",
                    "lift-sh2": "config v7 refused: <b>fps</b> too high"}
        wait_until(lambda: {u: page.text_content(c) for u, c in cells.items()} == expected, timeout=20)
        titles = {u: page.get_attribute(c, "title") for u, c in cells.items()}
        assert titles == {u: f"{t:%Y-%m-%d %H:%M:%S} Asia/Shanghai" for u, t in at.items()}  # when it was received
        assert page.locator(f"{cells['lift-sh2']} b").count() == 0  # the device's reason stays text
        assert reloads == []

        page.reload()  # and the server's render of the same answers reads the same
        assert {u: page.text_content(c) for u, c in cells.items()} == expected
        assert {u: page.get_attribute(c, "title") for u, c in cells.items()} == titles
        assert errors == []
        context.close()
    finally:
        fleet.stop()
