"""`simulate`: units that behave like devices — status + LWT, heartbeats, alerts with snapshots,
command replies — checked through a running fleet server on both database engines."""

from __future__ import annotations

import threading
from pathlib import Path

from fleet.simulate import SimConfig, Simulator
from tests.fleet.conftest import start_fleet, wait_until
from tests.support.mosquitto import MosquittoBroker


def test_simulated_units_report_in_alert_answer_commands_and_fire_their_lwt(
        mosquitto: MosquittoBroker, db_url: str, tmp_path: Path) -> None:
    # Heartbeats are written every heartbeat_flush_s (coalesced): short here. The simulated units run for 6 s,
    # long enough to answer the command sent after a login on a busy machine.
    fleet = start_fleet(mosquitto, db_url, heartbeat_flush_s=0.3)
    sim = Simulator(SimConfig(port=mosquitto.port, units=6, heartbeat_s=0.5, alert_rate=4, duration_s=6,
                              prefix="simt"))
    runner = threading.Thread(target=sim.run)
    try:
        runner.start()
        wait_until(lambda: len(fleet.store.list_units()) == 6 and all(
            u["last_heartbeat"] for u in fleet.store.list_units()))
        client, csrf = fleet.login()
        sent = client.post("/api/units/simt-00003/commands", json={"name": "disable"},
                           headers={"X-CSRF-Token": csrf}).json()
        runner.join(30)
        report = sim.report
        assert report.counters["connected"] == 6 and report.counters["unacked_at_end"] == 0
        wait_until(lambda: all(fleet.store.get_alert(e) for e in report.event_ids))
        assert len(report.event_ids) >= 5
        assert all(fleet.store.get_alert(e)["has_snapshot"] for e in report.event_ids)  # type: ignore[index]
        wait_until(lambda: client.get(f"/api/commands/{sent['command_id']}").json()["status"] == "ok")
        units = client.get("/api/units").json()
        assert (units["total"], units["online"]) == (6, 6)
        assert {u["site"] for u in units["units"]} == {"Site 000"}

        sim.stop(graceful=False)  # sockets vanish: the broker publishes every unit's LWT
        wait_until(lambda: client.get("/api/units").json()["online"] == 0, timeout=20)
        assert {u["status"] for u in client.get("/api/units").json()["units"]} == {"offline"}
    finally:
        runner.join(5)
        fleet.stop()
