"""Item 1 of issue 16: no message stops ingest, before or after a restart. Numbers outside the contract's
bounds are refused with a reason; a message the store still refuses is quarantined, the rest of its batch
stored; a device clock outside the window is quarantined; /healthz says so when writes fail or lag; `serve`
logs a lost broker connection. Real Mosquitto, real SQLite."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from contract.mqtt import HeartbeatPayload, encode
from fleet.ingest import Rejected, classify
from tests.fleet.conftest import FakeUnit, RunningFleet, start_fleet, wait_until
from tests.support.mosquitto import MosquittoBroker, free_port

T = "liftguard/v1/units/u-1/"
NOW = time.time()


def _event(**changes: Any) -> dict[str, Any]:
    return {"event_id": str(uuid.uuid4()), "incident_id": "incident-1", "unit_id": "u-1", "type": "ebike_blocked",
            "phase": "start", "ts": NOW, **changes}


def _heartbeat(**changes: Any) -> dict[str, Any]:
    hb = HeartbeatPayload(unit_id="u-1", ts=NOW, uptime_s=1, fps=10, inference_p50_ms=1, inference_p95_ms=2,
                          camera="online", relay="released", outbox_depth=0, model_id="m", software="s")
    return {**json.loads(encode(hb)), **changes}


def _raw(fields: dict[str, Any], **literal: str) -> bytes:
    """JSON with some values spelled literally (Infinity, 1e300, a 31-digit integer)."""
    text = json.dumps(fields)
    for name, spelled in literal.items():
        text = text.replace(f'"{name}": "@"', f'"{name}": {spelled}')
    return text.encode()


@pytest.mark.parametrize(("suffix", "payload", "reason"), [
    ("events", _raw(_event(ts="@"), ts="253402300800"), "EventPayload.ts: Input should be less than or equal"),
    ("events", _raw(_event(ts="@"), ts="1e300"), "EventPayload.ts: Input should be less than or equal"),
    ("events", _raw(_event(ts="@"), ts="Infinity"), "non-finite number Infinity refused"),
    ("events", _raw(_event(ts="@"), ts="NaN"), "non-finite number NaN refused"),
    ("events", _raw(_event(confidence="@"), confidence="-Infinity"), "non-finite number -Infinity refused"),
    ("events", _raw(_event(times={"capture": "@"}), capture="1e300"), "EventPayload.times.capture"),
    ("heartbeat", _raw(_heartbeat(outbox_depth="@"), outbox_depth=str(10**30)), "integer with 31 digits refused"),
    ("heartbeat", _raw(_heartbeat(outbox_depth="@"), outbox_depth=str(2**53 + 1)),
     "HeartbeatPayload.outbox_depth: Input should be less than or equal to 9007199254740992"),
    ("heartbeat", _raw(_heartbeat(uptime_s="@"), uptime_s="1e300"), "HeartbeatPayload.uptime_s"),
    ("heartbeat", _raw(_heartbeat(outbox_depth="@"), outbox_depth="1" * 5000), "integer with 5000 digits refused"),
    ("config/reported", _raw({"ok": True, "version": "@", "ts": NOW}, version=str(10**30)),
     "integer with 31 digits refused"),
    ("config/reported", _raw({"ok": True, "version": "@", "ts": NOW}, version=str(2**60)),
     "ConfigReportedPayload.version: Input should be less than or equal to 9007199254740992"),
    ("config/reported", _raw({"ok": True, "config": {"policy": {"hold_s": "@"}}, "ts": NOW}, hold_s="1e308"),
     None),  # a finite float inside a config is fine
    ("config/reported", _raw({"ok": True, "config": {"policy": {"n": "@"}}, "ts": NOW}, n=str(2**60)),
     "ConfigReportedPayload.config: Value error, integer 1.15e+18 is beyond ±2**53"),
    ("cmd_result", _raw({"command_id": "c1", "command": "release", "ok": True, "ts": "@"}, ts="1e300"),
     "CommandResultPayload.ts"),
    ("events", json.dumps(_event(detail="a\x00b")).encode(), "NUL character (\\u0000) refused"),
    ("events", json.dumps(_event(detail="@")).replace('"@"', '"\\ud800"').encode(),
     "EventPayload.detail: Input should be a valid string"),  # a lone surrogate: no database can store it
])
def test_every_number_is_bounded_and_refused_with_a_reason(suffix: str, payload: bytes, reason: str | None) -> None:
    if reason is None:
        assert classify(T + suffix, payload, NOW) is not None
        return
    with pytest.raises(Rejected) as refused:
        classify(T + suffix, payload, NOW)
    assert refused.value.reason == "bad_payload"
    assert reason in str(refused.value)


# -- the writer: one failing message is quarantined, the rest of the batch stored ------------------------------
REFUSE_POISON = ("CREATE TRIGGER refuse_poison BEFORE INSERT ON events WHEN NEW.detail = 'poison' "
                 "BEGIN SELECT RAISE(ABORT, 'this row breaks the store'); END")


def _install_poison_trigger(db: Path) -> None:
    """A store that refuses one particular row, as year 10000 or 10**30 did before the contract had bounds:
    the message is valid, the write fails while the database is fine."""
    with sqlite3.connect(db) as conn:
        conn.execute(REFUSE_POISON)


def _quarantine(fleet: RunningFleet) -> list[dict[str, Any]]:
    return fleet.store.query("SELECT * FROM quarantine ORDER BY received_at")


def test_a_message_the_store_refuses_is_quarantined_and_the_rest_stored(
        mosquitto: MosquittoBroker, tmp_path: Path, make_unit: Callable[..., FakeUnit]) -> None:
    db = tmp_path / "fleet.db"
    fleet = start_fleet(mosquitto, f"sqlite:///{db}", batch_window_ms=200)
    try:
        _install_poison_trigger(db)
        bad_unit, good_unit = make_unit("lift-bad"), make_unit("lift-good")
        good = [good_unit.alert(with_snapshot=False) for _ in range(5)]
        poison = bad_unit.alert(with_snapshot=False, detail="poison")
        after = [good_unit.alert(with_snapshot=False) for _ in range(5)] + [bad_unit.alert(with_snapshot=False)]
        wait_until(lambda: all(fleet.store.get_alert(e.event_id) for e in good + after), timeout=20)
        rows = wait_until(lambda: _quarantine(fleet), timeout=10)
        assert [(r["unit_id"], r["kind"]) for r in rows] == [("lift-bad", "event")]
        assert "this row breaks the store" in rows[0]["reason"]
        assert json.loads(rows[0]["payload"])["event_id"] == poison.event_id
        assert fleet.store.get_alert(poison.event_id) is None
        assert fleet.ingestor.stats.counters["quarantined"] == 1
        assert fleet.ingestor.stats.counters.get("store_errors", 0) == 0  # the database was never down
    finally:
        fleet.stop()


def test_the_poison_redelivered_after_a_restart_does_not_jam_ingest(
        mosquitto: MosquittoBroker, tmp_path: Path) -> None:
    db = tmp_path / "fleet.db"
    client_id = f"fleet-{uuid.uuid4().hex[:8]}"
    fleet = start_fleet(mosquitto, f"sqlite:///{db}", client_id=client_id)
    fleet.stop()  # the broker keeps the persistent session and queues for it
    _install_poison_trigger(db)
    unit = FakeUnit(mosquitto, "lift-9").connect()
    try:
        poison = unit.alert(with_snapshot=False, detail="poison")
        good = [unit.alert(with_snapshot=False) for _ in range(3)]
        fleet = start_fleet(mosquitto, f"sqlite:///{db}", client_id=client_id)
        try:
            wait_until(lambda: all(fleet.store.get_alert(e.event_id) for e in good), timeout=20)
            rows = wait_until(lambda: _quarantine(fleet), timeout=10)
            assert json.loads(rows[0]["payload"])["event_id"] == poison.event_id
            later = unit.alert(with_snapshot=False)
            wait_until(lambda: fleet.store.get_alert(later.event_id), timeout=10)
        finally:
            fleet.stop()
    finally:
        unit.close()


@pytest.mark.parametrize(("offset_s", "why"), [(10 * 86400, "ahead of the server clock"),
                                                (-400 * 86400, "behind the server clock")])
def test_a_device_clock_outside_the_window_is_quarantined_not_stored(
        fleet: RunningFleet, make_unit: Callable[..., FakeUnit], offset_s: float, why: str) -> None:
    unit = make_unit("lift-clock")
    skewed = unit.alert(with_snapshot=False, ts=time.time() + offset_s)
    fine = unit.alert(with_snapshot=False)
    wait_until(lambda: fleet.store.get_alert(fine.event_id), timeout=10)
    rows = wait_until(lambda: _quarantine(fleet), timeout=10)
    assert why in rows[0]["reason"] and json.loads(rows[0]["payload"])["event_id"] == skewed.event_id
    assert fleet.store.get_alert(skewed.event_id) is None


def test_healthz_is_degraded_while_writes_fail_and_nothing_is_lost(
        mosquitto: MosquittoBroker, tmp_path: Path, make_unit: Callable[..., FakeUnit]) -> None:
    folder = tmp_path / "db"
    fleet = start_fleet(mosquitto, f"sqlite:///{folder / 'fleet.db'}", max_ingest_lag_s=1)
    try:
        unit = make_unit("lift-1")
        assert httpx.get(f"{fleet.url}/healthz").json()["status"] == "ok"
        folder.rename(tmp_path / "db-away")  # the database vanishes under the server
        fleet.store.close()
        event = unit.alert(with_snapshot=False)

        def degraded() -> dict[str, Any] | None:
            response = httpx.get(f"{fleet.url}/healthz")
            body: dict[str, Any] = response.json()
            problems = " | ".join(body["problems"])
            return body if response.status_code == 503 and "store writes failing" in problems \
                and "ingest lags" in problems else None

        body = wait_until(degraded, timeout=20)
        assert body["status"] == "degraded" and body["db"] is False
        (tmp_path / "db-away").rename(folder)
        wait_until(lambda: fleet.store.get_alert(event.event_id), timeout=30)
        wait_until(lambda: httpx.get(f"{fleet.url}/healthz").status_code == 200, timeout=20)
    finally:
        fleet.stop()


def test_serve_logs_a_lost_broker_connection(mosquitto: MosquittoBroker, tmp_path: Path) -> None:
    port = free_port()
    env = {**os.environ, "LIFTGUARD_FLEET_DB": f"sqlite:///{tmp_path / 'f.db'}",
           "LIFTGUARD_FLEET_MQTT_URL": mosquitto.url, "LIFTGUARD_FLEET_HTTP_PORT": str(port)}
    log_path = tmp_path / "serve.log"
    with log_path.open("wb") as log_file:
        proc = subprocess.Popen([sys.executable, "-m", "fleet.cli", "serve"], env=env, stdout=log_file,
                                stderr=subprocess.STDOUT)
        try:
            wait_until(lambda: "connected to 127.0.0.1" in log_path.read_text(), timeout=30)
            mosquitto.stop()
            wait_until(lambda: "lost the connection to the MQTT broker" in log_path.read_text(), timeout=30)
            wait_until(lambda: "cannot reach the MQTT broker" in log_path.read_text(), timeout=30)
            mosquitto.start()
            wait_until(lambda: "reconnected to the MQTT broker" in log_path.read_text(), timeout=60)
        finally:
            proc.terminate()
            proc.wait(15)

