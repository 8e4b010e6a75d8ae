"""The dashboard in headless Chromium: log in, see the units, get a live alert with its snapshot,
acknowledge it, see units answer a pushed config, go silent, drop off and come back — the property
manager's whole loop, through the real server and broker."""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from tests.fleet.conftest import PASSWORD, FakeUnit, RunningFleet, start_fleet, wait_until
from tests.fleet.test_config_reported import answer, config_of
from tests.support.mosquitto import MosquittoBroker


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

    wait_until(lambda: page.locator("#daily-chart rect").count() == 1, timeout=15)  # today's bar, no reload
    if shot := os.environ.get("LIFTGUARD_SCREENSHOT"):  # docs: `LIFTGUARD_SCREENSHOT=docs/img/dashboard.png`
        page.set_viewport_size({"width": 1280, "height": 860})
        page.screenshot(path=shot, full_page=False)
    card.query_selector("button[data-verdict=acknowledged]").click()  # type: ignore[union-attr]
    page.wait_for_selector(f'.alert[data-event-id="{event.event_id}"]', state="detached", timeout=10000)
    labelled = fleet.store.get_alert(event.event_id)
    assert labelled is not None and (labelled["verdict"], labelled["labelled_by"]) == ("acknowledged", "manny")

    dialogs: list[str] = []

    def accept(dialog: Any) -> None:
        dialogs.append(dialog.message)
        dialog.accept()

    page.on("dialog", accept)
    page.click("button.cmd[data-cmd=release][data-unit=lift-n1]")
    wait_until(lambda: "release: ok" in (page.text_content("tr[data-unit-id=lift-n1] .cmd-status") or ""),
               timeout=15)
    assert dialogs == ["Release the door held by lift-n1?"]  # asked first
    assert errors == []
    page.close()


def log_in_from_london(browser: object, fleet: RunningFleet) -> tuple[Any, list[str]]:
    """The admin's dashboard in a browser set to Europe/London; the list collects the page's script errors."""
    page = browser.new_context(timezone_id="Europe/London").new_page()  # type: ignore[attr-defined]
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(fleet.url + "/login")
    page.fill("input[name=username]", "admin")
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    return page, errors


def test_live_alerts_and_config_answers_show_the_sites_time_whatever_the_browsers_zone(
        browser: object, mosquitto: MosquittoBroker, tmp_path: Path, make_unit: Callable[..., FakeUnit]) -> None:
    fleet = start_fleet(mosquitto, f"sqlite:///{tmp_path / 'fleet.db'}", timezone="Asia/Shanghai")
    try:
        applying, refusing = make_unit("lift-sh1"), make_unit("lift-sh2")
        wait_until(lambda: len(fleet.store.list_units()) == 2)
        page, errors = log_in_from_london(browser, fleet)
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
        page.context.close()
    finally:
        fleet.stop()


def test_unit_rows_follow_units_going_silent_offline_and_coming_back_without_a_reload(
        browser: object, mosquitto: MosquittoBroker, tmp_path: Path, make_unit: Callable[..., FakeUnit]) -> None:
    # silence_s=8: a quiet unit turns silent before the page's first 10-second refresh, not while the page loads.
    fleet = start_fleet(mosquitto, f"sqlite:///{tmp_path / 'fleet.db'}", silence_s=8, timezone="Asia/Shanghai")
    try:
        quiet, dropping, returning = make_unit("lift-q"), make_unit("lift-d"), make_unit("lift-r")
        quiet.heartbeat()
        dropping.heartbeat()
        # Stopped by its installer, never sent a heartbeat.
        returning.publish("status", json.dumps({"state": "stopped", "site": returning.site,
                                                "building": returning.building}), retain=True)
        wait_until(lambda: {u["unit_id"]: (u["state"], u["last_heartbeat"] is not None)
                            for u in fleet.store.list_units()}
                   == {"lift-q": ("online", True), "lift-d": ("online", True), "lift-r": ("stopped", False)})
        page, errors = log_in_from_london(browser, fleet)
        page.wait_for_selector("tr.unit[data-unit-id=lift-r]")

        def cells(name: str) -> dict[str, str | None]:
            return {u: page.text_content(f"tr.unit[data-unit-id={u}] td.{name}") for u in ("lift-q", "lift-d",
                                                                                          "lift-r")}

        def badge_class(unit: str, name: str) -> str | None:
            return page.get_attribute(f"tr.unit[data-unit-id={unit}] td.{name} .badge", "class")

        def seconds_ago(text: str | None) -> int:
            match = re.fullmatch(r"(\d+) s ago", text or "")
            assert match, text
            return int(match[1])

        assert cells("state") == {"lift-q": "online", "lift-d": "online", "lift-r": "stopped"}
        before = cells("heartbeat")
        assert before["lift-r"] == "never" and page.get_attribute("tr.unit[data-unit-id=lift-r] td.heartbeat",
                                                                 "title") == ""
        assert (cells("camera")["lift-r"], cells("relay")["lift-r"], cells("blocking")["lift-r"]) == (
            "unknown ", "", "?")  # stopped: no live camera state, no fps
        assert (page.text_content("#unit-summary"), page.text_content("h4.building")) == (
            "2/3 online", "Tower A 2/3 online")
        reloads: list[str] = []
        page.on("load", lambda p: reloads.append(p.url))

        # lift-q says nothing more, lift-d vanishes (the broker publishes its LWT), lift-r comes back unwell
        # and keeps beating, as a unit does every heartbeat_s.
        dropping.drop()
        beats: list[float] = []
        states = {"lift-q": "silent", "lift-d": "offline", "lift-r": "online"}

        def settled() -> bool:
            if not beats or time.monotonic() - beats[-1] > 1:
                returning.heartbeat(camera="frozen", relay="held", blocking_enabled=False, fps=12.5)
                beats.append(time.monotonic())
            return cells("state") == states

        wait_until(settled, timeout=30)
        assert {u: badge_class(u, "state") for u in states} == {u: f"badge state {s}" for u, s in states.items()}
        after = cells("heartbeat")
        assert after["lift-r"] != "never" and all(re.fullmatch(r"\d+ s ago", t or "") for t in after.values()), after
        assert seconds_ago(before["lift-q"]) < 8 <= seconds_ago(after["lift-q"])  # its heartbeat cell counts on
        titles = {u: page.get_attribute(f"tr.unit[data-unit-id={u}] td.heartbeat", "title") for u in states}
        quiet_at = dt.datetime.fromtimestamp(fleet.store.get_unit("lift-q")["last_heartbeat"],  # type: ignore[index]
                                             ZoneInfo("Asia/Shanghai"))
        assert titles["lift-q"] == f"{quiet_at:%Y-%m-%d %H:%M:%S} Asia/Shanghai"  # the site's time, not London's
        returned_at = dt.datetime.strptime(titles["lift-r"] or "", "%Y-%m-%d %H:%M:%S Asia/Shanghai")
        assert abs(returned_at.replace(tzinfo=ZoneInfo("Asia/Shanghai")).timestamp() - time.time()) < 15
        live = {name: cells(name)["lift-r"] for name in ("camera", "relay", "blocking")}
        assert live == {"camera": "frozen 12 fps", "relay": "held", "blocking": "disabled"}  # 12.5 rounds like Python
        assert badge_class("lift-r", "camera") == "badge frozen"
        assert (page.text_content("#unit-summary"), page.text_content("h4.building")) == (
            "1/3 online", "Tower A 1/3 online")
        assert reloads == []

        page.reload()  # the server's render of the same units reads the same
        assert cells("state") == states
        assert {name: cells(name)["lift-r"] for name in ("camera", "relay", "blocking")} == live
        assert page.get_attribute("tr.unit[data-unit-id=lift-q] td.heartbeat", "title") == titles["lift-q"]
        assert (page.text_content("#unit-summary"), page.text_content("h4.building")) == (
            "1/3 online", "Tower A 1/3 online")
        assert errors == []
        page.context.close()
    finally:
        fleet.stop()


def test_a_unit_that_stops_matching_the_pages_filter_leaves_it_without_a_reload(
        browser: object, mosquitto: MosquittoBroker, tmp_path: Path, make_unit: Callable[..., FakeUnit]) -> None:
    fleet = start_fleet(mosquitto, f"sqlite:///{tmp_path / 'fleet.db'}")
    try:
        down, up = make_unit("lift-down"), make_unit("lift-up")
        up.heartbeat()
        down.publish("status", json.dumps({"state": "stopped", "site": down.site, "building": down.building}),
                     retain=True)
        wait_until(lambda: {u["unit_id"]: u["state"] for u in fleet.store.list_units()}
                   == {"lift-down": "stopped", "lift-up": "online"})
        page, errors = log_in_from_london(browser, fleet)
        page.goto(fleet.url + "/?status=offline")  # the manager's "what is down" view
        page.wait_for_selector("tr.unit[data-unit-id=lift-down]")
        assert page.query_selector("tr.unit[data-unit-id=lift-up]") is None
        assert page.text_content("#unit-summary") == "0/1 online"
        reloads: list[str] = []
        page.on("load", lambda p: reloads.append(p.url))

        down.heartbeat()  # back in service: no longer "offline", so its row must not linger there as "online"
        wait_until(lambda: page.query_selector("tr.unit[data-unit-id=lift-down]") is None, timeout=30)
        assert page.text_content("#unit-summary") == "0/0 online"
        assert page.query_selector("tr.unit[data-unit-id=lift-up]") is None  # new matches come with a reload
        assert reloads == [] and errors == []
        page.context.close()
    finally:
        fleet.stop()
