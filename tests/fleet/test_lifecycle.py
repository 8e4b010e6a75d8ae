"""Alarm lifecycle (issue 16.9): active -> acknowledged -> cleared, with who and when; server-side counts;
verdicts with undo; a page per unit; units in natural order (16.12)."""

from __future__ import annotations

import time
from typing import Any

from fleet.api.context import alert_view, natural_key
from fleet.store import IngestBatch, Store
from tests.fleet.conftest import RunningFleet
from tests.fleet.test_store import alert, batch_of, heartbeat


def seed(fleet: RunningFleet, *events: Any) -> None:
    beats = IngestBatch()
    beats.add_heartbeat(heartbeat("lift-7", site="Harbour View", building="Tower A", elevator="Lift 2"), time.time())
    fleet.store.write_batch(beats)
    fleet.store.write_batch(batch_of(*events, snapshots=False))


def test_an_alert_goes_active_acknowledged_cleared_with_who_and_when(fleet: RunningFleet) -> None:
    start = alert("lift-7")
    seed(fleet, start)
    client, csrf = fleet.login()
    fleet.add_user("manny")
    manny, manny_csrf = fleet.login("manny")

    def view() -> dict[str, Any]:
        response = client.get(f"/api/alerts/{start.event_id}")
        assert response.status_code == 200
        return dict(response.json())

    assert (view()["state"], view()["acknowledged_by"], view()["cleared_at"]) == ("active", None, None)
    before = time.time()
    r = manny.post(f"/api/alerts/{start.event_id}/verdict", json={"verdict": "confirmed"},
                   headers={"X-CSRF-Token": manny_csrf})
    assert r.status_code == 200 and r.json()["previous_verdict"] is None
    acked = view()
    assert (acked["state"], acked["acknowledged_by"], acked["verdict"]) == ("acknowledged", "manny", "confirmed")
    assert before <= acked["acknowledged_at"] <= time.time()
    # A later change of verdict by someone else keeps who acknowledged first.
    client.post(f"/api/alerts/{start.event_id}/verdict", json={"verdict": "false_alarm"},
                headers={"X-CSRF-Token": csrf})
    assert (view()["acknowledged_by"], view()["labelled_by"]) == ("manny", "admin")

    end = alert("lift-7", phase="end", incident_id=start.incident_id, ts=start.ts + 42)
    fleet.store.write_batch(batch_of(end, snapshots=False))  # the unit's hold ended
    cleared = view()
    assert (cleared["state"], cleared["cleared_by"], cleared["cleared_at"]) == ("cleared", "hold ended", start.ts + 42)


def test_a_person_clears_an_alert_whose_hold_never_ended(fleet: RunningFleet) -> None:
    start = alert("lift-7")
    seed(fleet, start)
    client, csrf = fleet.login()
    assert client.post(f"/api/alerts/{start.event_id}/clear").status_code == 403  # CSRF
    r = client.post(f"/api/alerts/{start.event_id}/clear", headers={"X-CSRF-Token": csrf}).json()
    assert (r["state"], r["cleared_by"]) == ("cleared", "admin")
    assert r["acknowledged_at"] is None  # cleared is not acknowledged: still open for a verdict
    assert [a["event_id"] for a in client.get("/api/alerts").json()["alerts"]] == [start.event_id]


def test_header_counts_are_the_servers_not_the_loaded_cards(fleet: RunningFleet) -> None:
    events = [alert("lift-7") for _ in range(179)]
    ended = alert("lift-7", phase="end", incident_id=events[0].incident_id)
    seed(fleet, *events, ended)
    client, csrf = fleet.login()
    for e in events[:4]:
        client.post(f"/api/alerts/{e.event_id}/verdict", json={"verdict": "acknowledged"},
                    headers={"X-CSRF-Token": csrf})
    counts = client.get("/api/alerts/counts").json()
    assert (counts["open"], counts["active"]) == (175, 178)
    page = client.get("/").text
    assert '<span id="open-count">175</span> open' in page and "(175 open)" in page
    assert '<span id="active-count">178</span> active' in page


def test_undo_puts_the_alert_back_open_and_unacknowledged(fleet: RunningFleet) -> None:
    start = alert("lift-7")
    seed(fleet, start)
    client, csrf = fleet.login()
    url = f"/api/alerts/{start.event_id}/verdict"
    client.post(url, json={"verdict": "false_alarm"}, headers={"X-CSRF-Token": csrf})
    assert client.get("/api/alerts").json()["alerts"] == []
    assert client.delete(url).status_code == 403  # CSRF
    undone = client.delete(url, headers={"X-CSRF-Token": csrf}).json()
    assert (undone["verdict"], undone["state"], undone["acknowledged_by"]) == (None, "active", None)
    assert [a["event_id"] for a in client.get("/api/alerts").json()["alerts"]] == [start.event_id]
    assert fleet.store.labelled_dataset() == []  # the undone label is not training data


def test_the_unit_page_shows_health_alerts_config_and_commands(fleet: RunningFleet) -> None:
    start = alert("lift-7", cls="ebike")
    seed(fleet, start)
    fleet.store.create_command("c-1", "lift-7", "release", "manny")
    client, _ = fleet.login()
    page = client.get("/units/lift-7").text
    assert "<h2>Health, last 48 hours (UTC)</h2>" in page and page.count('<tr class="health-hour">') == 1
    assert start.event_id in page and '<span class="badge life active">active</span>' in page
    assert "The unit has not reported a config." in page
    assert '<td>release</td><td>manny</td>' in page and "no answer" in page
    assert client.get("/units/nope").status_code == 404
    health = client.get("/api/units/lift-7/health").json()["hours"]
    assert [(h["beats"], h["fps_mean"]) for h in health] == [(1, 10.0)]
    assert [c["name"] for c in client.get("/api/units/lift-7/commands").json()["commands"]] == ["release"]


def test_elevators_sort_as_people_count() -> None:
    lifts = ["Lift 10", "Lift 2", "lift 1", "Lift 2A", "Service"]
    assert sorted(lifts, key=natural_key) == ["lift 1", "Lift 2", "Lift 2A", "Lift 10", "Service"]


def test_the_dashboard_lists_lift_2_before_lift_10(fleet: RunningFleet) -> None:
    beats = IngestBatch()
    for unit, lift in (("u-a", "Lift 10"), ("u-b", "Lift 2"), ("u-c", "Lift 1")):
        beats.add_heartbeat(heartbeat(unit, building="B1", elevator=lift), time.time())
    fleet.store.write_batch(beats)
    client, _ = fleet.login()
    assert [u["elevator"] for u in client.get("/api/units").json()["units"]] == ["Lift 1", "Lift 2", "Lift 10"]
    page = client.get("/").text
    assert page.index(">Lift 1<") < page.index(">Lift 2<") < page.index(">Lift 10<")


def test_an_end_that_arrives_before_its_start_still_clears_the_alert(fleet: RunningFleet) -> None:
    # An outbox replaying after an outage may deliver an incident's messages out of order.
    start = alert("lift-7")
    end = alert("lift-7", phase="end", incident_id=start.incident_id, ts=start.ts + 30)
    other_units_end = alert("lift-8", phase="end", incident_id=start.incident_id, ts=start.ts + 1)
    seed(fleet, end, other_units_end)
    fleet.store.write_batch(batch_of(start, snapshots=False))
    client, _ = fleet.login()
    view = client.get(f"/api/alerts/{start.event_id}").json()
    assert (view["state"], view["cleared_by"], view["cleared_at"]) == ("cleared", "hold ended", start.ts + 30)
    assert client.get("/api/alerts/counts").json()["active"] == 0


def test_the_lifecycle_queries_agree_on_both_engines(store: Store) -> None:
    first, second, third = alert("u1"), alert("u1"), alert("u2")
    end_of_second = alert("u1", phase="end", incident_id=second.incident_id, ts=second.ts + 5)
    store.write_batch(batch_of(first, end_of_second, snapshots=False))
    store.write_batch(batch_of(second, third, snapshots=False))  # the end came first
    store.set_label(first.event_id, "confirmed", "manny")
    assert store.alert_counts() == {"open": 2, "active": 2}
    assert {r["event_id"] for r in store.list_alerts("open")} == {second.event_id, third.event_id}
    assert [r["event_id"] for r in store.list_alerts("confirmed")] == [first.event_id]
    assert len(store.list_alerts("all", limit=2)) == 2
    assert store.clear_alert(third.event_id, "manny") and not store.clear_alert(third.event_id, "ana")
    store.clear_label(first.event_id)
    views = {r["event_id"]: alert_view(r) for r in store.list_alerts("all")}
    assert {e: (v["state"], v["cleared_by"]) for e, v in views.items()} == {
        first.event_id: ("active", None), second.event_id: ("cleared", "hold ended"),
        third.event_id: ("cleared", "manny")}
    assert store.alert_counts() == {"open": 3, "active": 1}
