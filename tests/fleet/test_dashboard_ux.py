"""The property manager's experience in headless Chromium (issue 16.7-16.12): being told about new alerts
(notification, sound, tab badge, server-side counts), a queue that holds still under the pointer, verdicts
with undo, the alert history and a unit's page, phone and desktop layouts, the chart by site and building,
one blocking command per row, a confirmed Release — and markup from units staying text everywhere."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from fleet.store import IngestBatch
from tests.fleet.conftest import PASSWORD, FakeUnit, RunningFleet, wait_until
from tests.fleet.test_store import alert, batch_of, heartbeat

# Records what the page tells the person: each system notification (the real API, granted) and each beep.
SPY = """
window.__told = { notes: [], beeps: 0 };
if (window.Notification) {
  window.Notification = new Proxy(window.Notification, { construct(target, args) {
    window.__told.notes.push({ title: args[0], body: (args[1] || {}).body });
    return Reflect.construct(target, args);
  } });
}
const realStart = OscillatorNode.prototype.start;
OscillatorNode.prototype.start = function (...args) { window.__told.beeps += 1; return realStart.apply(this, args); };
"""


def log_in(browser: Any, fleet: RunningFleet, user: str = "admin", width: int = 1280, height: int = 860,
           spy: bool = False) -> tuple[Any, list[str]]:
    context = browser.new_context(viewport={"width": width, "height": height})
    if spy:
        context.grant_permissions(["notifications"], origin=fleet.url)
        context.add_init_script(SPY)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(fleet.url + "/login")
    page.fill("input[name=username]", user)
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_selector("#alert-counts")
    return page, errors


def box(page: Any, selector: str) -> dict[str, float]:
    found = page.locator(selector).first.bounding_box()
    assert found is not None, selector
    return dict(found)


def overlap(a: dict[str, float], b: dict[str, float]) -> bool:
    return (a["x"] < b["x"] + b["width"] and b["x"] < a["x"] + a["width"]
            and a["y"] < b["y"] + b["height"] and b["y"] < a["y"] + a["height"])


def test_a_new_alert_is_announced_by_notification_sound_and_tab_badge(
        browser: Any, fleet: RunningFleet, make_unit: Callable[..., FakeUnit]) -> None:
    unit = make_unit("lift-1", site="Harbour View", building="Tower A")
    unit.heartbeat(elevator="Lift 3")
    wait_until(lambda: fleet.store.get_unit("lift-1"))
    page, errors = log_in(browser, fleet, spy=True)
    assert page.title() == "Units · LiftGuard" and page.text_content("#open-count") == "0"
    page.click("#notify-toggle")  # the person's click: permission asked, sound unlocked
    assert page.text_content("#notify-toggle") == "Alert sound & notifications on"

    event = unit.alert(with_snapshot=False)
    wait_until(lambda: page.evaluate("window.__told.notes.length") == 1, timeout=45)
    note = page.evaluate("window.__told.notes[0]")
    assert note["title"] == "E-bike blocked: Harbour View / Tower A / Lift 3" and "lift-1" in note["body"]
    assert page.evaluate("window.__told.beeps") == 1
    wait_until(lambda: page.title() == "(1) Units · LiftGuard", timeout=45)
    assert page.text_content("#open-count") == "1" and page.text_content("#alert-count") == "(1 open)"

    page.click(f'.alert[data-event-id="{event.event_id}"] button[data-verdict=acknowledged]')
    wait_until(lambda: page.title() == "Units · LiftGuard", timeout=45)
    # One alert, one notification, one beep.
    assert (page.evaluate("window.__told.notes.length"), page.evaluate("window.__told.beeps")) == (1, 1)
    assert errors == []
    page.context.close()


def test_the_header_counts_every_open_alert_not_the_cards_loaded(browser: Any, fleet: RunningFleet) -> None:
    beats = IngestBatch()
    beats.add_heartbeat(heartbeat("lift-1"), time.time())
    fleet.store.write_batch(beats)
    fleet.store.write_batch(batch_of(*[alert("lift-1") for _ in range(179)], snapshots=False))
    page, errors = log_in(browser, fleet)
    wait_until(lambda: page.locator("#alert-queue .alert").count() == 50, timeout=45)  # the page loads 50 cards
    assert page.text_content("#open-count") == "179" and page.text_content("#alert-count") == "(179 open)"
    assert page.title() == "(179) Units · LiftGuard"
    assert errors == []
    page.context.close()


def test_the_queue_holds_still_under_the_pointer_and_a_verdict_can_be_undone(
        browser: Any, fleet: RunningFleet, make_unit: Callable[..., FakeUnit]) -> None:
    unit = make_unit("lift-1")
    older, newer = unit.alert(with_snapshot=False), unit.alert(with_snapshot=False)
    wait_until(lambda: fleet.store.get_alert(newer.event_id))
    page, errors = log_in(browser, fleet)
    target = f'.alert[data-event-id="{older.event_id}"] button[data-verdict=false_alarm]'
    page.wait_for_selector(target)
    page.hover(target)  # about to click
    before = box(page, target)

    arriving = unit.alert(with_snapshot=False)
    page.wait_for_selector("#new-alerts:not([hidden])", timeout=15000)
    assert page.text_content("#new-alerts") == "1 new alert — show"
    assert box(page, target) == before  # nothing moved under the pointer
    assert page.locator(f'.alert[data-event-id="{arriving.event_id}"]').count() == 0

    page.click(target)  # lands on the card it was meant for
    page.wait_for_selector(f'.alert-done[data-event-id="{older.event_id}"] button.undo')
    assert (fleet.store.get_alert(older.event_id) or {})["verdict"] == "false_alarm"
    assert (fleet.store.get_alert(newer.event_id) or {})["verdict"] is None
    page.click(f'.alert-done[data-event-id="{older.event_id}"] button.undo')
    page.wait_for_selector(f'.alert[data-event-id="{older.event_id}"] button[data-verdict=false_alarm]')
    assert (fleet.store.get_alert(older.event_id) or {})["verdict"] is None  # undone: open again
    assert (fleet.store.get_alert(older.event_id) or {})["acknowledged_at"] is None

    page.click("#new-alerts")  # the person asks for the new ones
    page.wait_for_selector(f'.alert[data-event-id="{arriving.event_id}"]')
    assert page.is_hidden("#new-alerts")
    order = page.eval_on_selector_all("#alert-queue .alert", "cards => cards.map(c => c.dataset.eventId)")
    assert order == [arriving.event_id, newer.event_id, older.event_id]

    page.mouse.move(5, 5)  # pointer away from the queue: new alerts go straight in
    straight = unit.alert(with_snapshot=False)
    page.wait_for_selector(f'.alert[data-event-id="{straight.event_id}"]', timeout=15000)
    assert page.is_hidden("#new-alerts")
    assert errors == []
    page.context.close()


@pytest.mark.parametrize(("width", "height"), [(390, 844), (1280, 860)])
def test_phone_and_desktop_layouts_keep_alerts_units_and_chart_apart(
        browser: Any, fleet: RunningFleet, width: int, height: int) -> None:
    beats = IngestBatch()
    for i in range(6):
        beats.add_heartbeat(heartbeat(f"lift-{i}", site="Harbour View", building="Tower A", elevator=f"Lift {i}",
                                      software="1.4.2-" + "x" * 40), time.time())
    fleet.store.write_batch(beats)
    fleet.store.write_batch(batch_of(*[alert(f"lift-{i}") for i in range(3)], snapshots=False))
    page, errors = log_in(browser, fleet, width=width, height=height)
    page.wait_for_selector("#alert-queue .alert")
    page.wait_for_selector("#daily-chart svg")
    units, alerts, chart = box(page, "#units"), box(page, "#alerts"), box(page, "#chart")
    assert not overlap(units, alerts)
    assert chart["y"] >= max(units["y"] + units["height"], alerts["y"] + alerts["height"])  # the chart comes last
    # Nothing sticks out of the page sideways: wide tables scroll inside their own box.
    assert page.evaluate("document.documentElement.scrollWidth") <= width
    table = box(page, "#units .table-wrap")
    assert table["x"] >= units["x"] and table["x"] + table["width"] <= units["x"] + units["width"] + 0.5
    if width < 900:
        assert alerts["y"] + alerts["height"] <= units["y"]  # phones: alerts first, full width
        assert alerts["width"] > width * 0.8
    else:
        assert alerts["x"] >= units["x"] + units["width"]  # desktop: side by side
    assert errors == []
    page.context.close()


def test_the_daily_chart_keeps_same_named_buildings_of_two_sites_apart(browser: Any, fleet: RunningFleet) -> None:
    beats = IngestBatch()
    beats.add_heartbeat(heartbeat("lift-h", site="Harbour View", building="North"), time.time())
    beats.add_heartbeat(heartbeat("lift-s", site="Hillside", building="North"), time.time())
    fleet.store.write_batch(beats)
    fleet.store.write_batch(batch_of(alert("lift-h"), alert("lift-h"), alert("lift-s"), snapshots=False))
    page, errors = log_in(browser, fleet)
    page.wait_for_selector("#daily-chart svg")
    assert page.locator("#daily-chart .legend li").all_text_contents() == ["Harbour View / North", "Hillside / North"]
    assert page.locator("#daily-chart .y-label").all_text_contents() == ["e-bike alerts"]  # one y-axis label
    assert page.locator("#daily-chart .y-tick").all_text_contents() == ["0", "2", "3"]  # busiest day: 3
    assert errors == []
    page.context.close()


def test_admins_see_the_one_blocking_command_that_applies_and_release_asks_first(
        browser: Any, fleet: RunningFleet, make_unit: Callable[..., FakeUnit]) -> None:
    on, off = make_unit("lift-on"), make_unit("lift-off")
    on.heartbeat(blocking_enabled=True)
    off.heartbeat(blocking_enabled=False)
    wait_until(lambda: len(fleet.store.list_units()) == 2 and all(
        u["blocking_enabled"] is not None for u in fleet.store.list_units()))
    page, errors = log_in(browser, fleet)
    page.wait_for_selector("tr.unit[data-unit-id=lift-on]")

    def commands(unit: str) -> list[str]:
        return list(page.locator(f"tr.unit[data-unit-id={unit}] button.cmd").all_text_contents())

    assert commands("lift-on") == ["Release", "Disable"] and commands("lift-off") == ["Release", "Enable"]
    dialogs: list[str] = []

    def dismiss(dialog: Any) -> None:
        dialogs.append(dialog.message)
        dialog.dismiss()

    page.on("dialog", dismiss)
    page.click("tr.unit[data-unit-id=lift-on] button.cmd[data-cmd=release]")
    wait_until(lambda: dialogs == ["Release the door held by lift-on?"], timeout=10)
    assert fleet.store.unit_commands("lift-on") == [] and on.commands == []  # said no: nothing sent

    off.heartbeat(blocking_enabled=True)  # someone enabled it elsewhere: the row follows on its next refresh
    wait_until(lambda: commands("lift-off") == ["Release", "Disable"], timeout=25)
    assert errors == []
    page.context.close()


MARKUP = '<b class="xss">bold</b><img class="xss" src="/nope" onerror="window.__pwned=1">'


def test_markup_from_a_unit_stays_text_on_every_page(
        browser: Any, fleet: RunningFleet, make_unit: Callable[..., FakeUnit]) -> None:
    unit = make_unit("lift-x", site="Site " + MARKUP, building="Block " + MARKUP)
    unit.heartbeat(elevator="Lift " + MARKUP, software="sw" + MARKUP[:50], model_id="m" + MARKUP)
    unit.publish("config/reported", json.dumps({"ok": False, "version": 3, "detail": "no " + MARKUP,
                                                "ts": time.time(), "config": {"note": MARKUP}}), retain=True)
    event = unit.alert(cls="ebike", detail=MARKUP)
    wait_until(lambda: fleet.store.get_alert(event.event_id) and (fleet.store.get_unit("lift-x") or {}).get(
        "config_received_at"), timeout=15)
    fleet.store.create_command("c-1", "lift-x", "release", "admin")
    page, errors = log_in(browser, fleet)
    for path, ready in (("/", f'.alert[data-event-id="{event.event_id}"]'), ("/alerts", "tr.alert-row"),
                        ("/units/lift-x", "#unit-commands")):
        page.goto(fleet.url + path)
        page.wait_for_selector(ready)
        if path == "/":
            page.wait_for_selector("#daily-chart svg")
        assert page.locator(".xss").count() == 0, path  # no element made from a unit's text
        assert page.evaluate("window.__pwned") is None
        assert "Block " + MARKUP in (page.text_content("main") or ""), path  # shown as the text it is
    assert MARKUP in (page.text_content("#unit-config") or "")
    assert errors == []
    page.context.close()


def test_the_alert_history_has_thumbnails_sites_a_verdict_filter_and_actions(
        browser: Any, fleet: RunningFleet, make_unit: Callable[..., FakeUnit]) -> None:
    harbour, hillside = make_unit("lift-h", site="Harbour View"), make_unit("lift-s", site="Hillside")
    first, second = harbour.alert(), hillside.alert()
    wait_until(lambda: all((fleet.store.get_alert(e.event_id) or {}).get("has_snapshot") for e in (first, second)),
               timeout=15)
    page, errors = log_in(browser, fleet, user="admin")
    page.goto(fleet.url + "/alerts")
    row = f'tr.alert-row[data-event-id="{first.event_id}"]'
    page.wait_for_selector(row)
    wait_until(lambda: page.evaluate(f"document.querySelector('{row} img.thumb').naturalWidth") > 0, timeout=10)
    assert page.text_content(f"{row} td.site") == "Harbour View"
    assert page.text_content(f"{row} td.state") == "active"

    page.click(f"{row} button[data-verdict=confirmed]")
    wait_until(lambda: page.text_content(f"{row} td.verdict") == "confirmed", timeout=10)
    assert page.text_content(f"{row} td.state") == "acknowledged" and "admin" in (page.text_content(f"{row} td.acked")
                                                                                  or "")
    assert (fleet.store.get_alert(first.event_id) or {})["verdict"] == "confirmed"
    page.click("#toasts button.undo")  # changed my mind
    wait_until(lambda: page.text_content(f"{row} td.verdict") == "open", timeout=10)
    assert (fleet.store.get_alert(first.event_id) or {})["verdict"] is None
    page.click(f"{row} button[data-verdict=false_alarm]")
    wait_until(lambda: (fleet.store.get_alert(first.event_id) or {}).get("verdict") == "false_alarm", timeout=10)

    page.select_option("select[name=status]", "false_alarm")
    page.click("form.filters button[type=submit]")
    page.wait_for_url("**/alerts?*status=false_alarm*")
    assert page.eval_on_selector_all("tr.alert-row", "rows => rows.map(r => r.dataset.eventId)") == [first.event_id]
    page.goto(fleet.url + "/alerts?site=Hillside")
    assert page.eval_on_selector_all("tr.alert-row", "rows => rows.map(r => r.dataset.eventId)") == [second.event_id]
    assert errors == []
    page.context.close()


def test_pages_are_rendered_from_templates() -> None:
    # Every page comes from a Jinja2 template with autoescape on; web.py holds no HTML of its own.
    import fleet.web

    source = Path(fleet.web.__file__).read_text()
    assert "<tr" not in source and "<table" not in source and "html.escape" not in source
    assert fleet.web._env.autoescape is True


def test_a_stopped_unit_does_not_show_its_last_camera_state_as_a_green_online(
        browser: Any, fleet: RunningFleet, make_unit: Callable[..., FakeUnit]) -> None:
    unit = make_unit("lift-1")
    unit.heartbeat(camera="online")
    wait_until(lambda: (fleet.store.get_unit("lift-1") or {}).get("camera") == "online")
    page, errors = log_in(browser, fleet)
    camera = "tr.unit[data-unit-id=lift-1] td.camera .badge"
    assert (page.text_content(camera), page.get_attribute(camera, "class")) == ("online", "badge online")

    unit.publish("status", json.dumps({"state": "stopped", "site": unit.site, "building": unit.building}),
                 retain=True)  # the installer stopped the service
    wait_until(lambda: page.text_content("tr.unit[data-unit-id=lift-1] td.state") == "stopped", timeout=25)
    assert (page.text_content(camera), page.get_attribute(camera, "class")) == ("unknown", "badge stale")
    assert page.get_attribute(camera, "title") == "last reported: online"
    assert page.text_content("tr.unit[data-unit-id=lift-1] td.camera .fps") == ""
    page.reload()  # the server's render says the same
    assert (page.text_content(camera), page.get_attribute(camera, "class")) == ("unknown", "badge stale")
    page.goto(fleet.url + "/units/lift-1")
    assert page.text_content("#unit-status dd .badge.stale") == "unknown"
    assert errors == []
    page.context.close()
