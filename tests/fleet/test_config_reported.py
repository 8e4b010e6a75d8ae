"""`config/reported`: each unit's answer to the fleet's retained `config/desired` is stored and shown."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

from contract.commands import ConfigReportedPayload
from contract.errors import ConfigError
from contract.mqtt import encode
from edge.report.commands import CommandHandler
from fleet.api import unit_view
from fleet.store import IngestBatch, Store
from tests.fleet.conftest import FakeUnit, RunningFleet, wait_until
from tests.fleet.test_ingest_mqtt import counters


class Device:
    """The device side of a config push: applies a fragment, or refuses it as the real app does."""

    def __init__(self, refuse: str = "") -> None:
        self.refuse = refuse

    def release_hold(self, reason: str) -> bool:
        return False

    def set_blocking(self, enabled: bool) -> None:
        pass

    def test_alarm(self) -> None:
        pass

    def snapshot_jpeg(self) -> bytes | None:
        return None

    def apply_config(self, fragment: dict[str, Any]) -> dict[str, Any]:
        if self.refuse:
            raise ConfigError(self.refuse)
        return fragment


def answer(desired: dict[str, Any], refuse: str = "") -> bytes:
    """What a unit publishes on `config/reported` after receiving `desired` on `config/desired`."""
    return encode(CommandHandler(Device(refuse)).apply_desired(json.dumps(desired).encode()))


def report(ts: float, ok: bool = True, version: int | None = 7, **kw: Any) -> ConfigReportedPayload:
    return ConfigReportedPayload(ok=ok, version=version, ts=ts, **kw)


def config_of(store: Store, unit_id: str) -> dict[str, Any] | None:
    row = store.get_unit(unit_id)
    return unit_view(row, time.time(), 60)["config_report"] if row else None


def write(store: Store, unit_id: str, r: ConfigReportedPayload, received_at: float) -> None:
    batch = IngestBatch()
    batch.add_config_report(unit_id, r, received_at)
    store.write_batch(batch)


def test_the_store_round_trips_the_latest_report(store: Store) -> None:
    write(store, "u1", report(100.0, config={"policy": {"block": ["ebike"]}}, detail="applied"), 1000.0)
    assert config_of(store, "u1") == {"applied": True, "version": 7, "detail": "applied",
                                      "config": {"policy": {"block": ["ebike"]}}, "ts": 100.0, "received_at": 1000.0}
    write(store, "u1", report(200.0, ok=False, version=8, detail="config refused: fps too high"), 2000.0)
    assert config_of(store, "u1") == {"applied": False, "version": 8, "detail": "config refused: fps too high",
                                      "config": None, "ts": 200.0, "received_at": 2000.0}


def test_only_a_newer_report_replaces_the_stored_one(store: Store) -> None:
    write(store, "u1", report(200.0, version=8), 2000.0)
    write(store, "u1", report(200.0, version=8), 3000.0)  # the retained report re-delivered on reconnect
    write(store, "u1", report(100.0, ok=False, version=7, detail="old"), 3001.0)  # an older one, late
    assert config_of(store, "u1") == {"applied": True, "version": 8, "detail": "", "config": None,
                                      "ts": 200.0, "received_at": 2000.0}
    batch = IngestBatch()  # within one batch, too, the newest report wins whatever the arrival order
    batch.add_config_report("u1", report(400.0, version=None, detail="applied"), 4000.0)
    batch.add_config_report("u1", report(300.0, version=9), 4001.0)
    store.write_batch(batch)
    assert (config_of(store, "u1") or {})["ts"] == 400.0
    assert (config_of(store, "u1") or {})["version"] is None  # a set_config answer answers no desired version


def test_a_unit_that_never_reported_has_no_config_report(store: Store) -> None:
    write(store, "u1", report(1.0), 1.0)
    assert config_of(store, "u2") is None
    assert store.list_units()[0]["unit_id"] == "u1"


def test_an_applied_report_from_a_unit_shows_in_the_unit_api_and_dashboard(
        fleet: RunningFleet, make_unit: Callable[..., FakeUnit]) -> None:
    unit = make_unit("lift-c1")
    unit.publish("config/reported", answer({"config": {"blocking_enabled": True}, "version": 7}), retain=True)
    client, _ = fleet.login()
    body = wait_until(lambda: client.get("/api/units/lift-c1").json().get("config_report"))
    assert (body["applied"], body["version"], body["detail"], body["config"]) == (
        True, 7, "applied", {"blocking_enabled": True})
    assert counters(fleet).get("accepted_config_reported") == 1
    assert "config v7 applied " in client.get("/").text


def test_a_refused_report_shows_its_reason_escaped(fleet: RunningFleet, make_unit: Callable[..., FakeUnit]) -> None:
    unit = make_unit("lift-c2")
    unit.publish("config/reported", answer({"config": {"policy": {}}, "version": 8}, refuse="<b>fps</b> too high"),
                 retain=True)
    client, _ = fleet.login()
    body = wait_until(lambda: client.get("/api/units/lift-c2").json().get("config_report"))
    assert (body["applied"], body["version"], body["detail"]) == (False, 8, "<b>fps</b> too high")
    page = client.get("/").text
    assert "config v8 refused: &lt;b&gt;fps&lt;/b&gt; too high" in page
    assert "<b>fps</b>" not in page


def test_a_malformed_report_is_rejected_counted_and_stores_nothing(
        fleet: RunningFleet, make_unit: Callable[..., FakeUnit]) -> None:
    unit = make_unit("lift-c3")
    unit.publish("config/reported", b'{"ok": "maybe", "ts": 1}', retain=True)
    unit.publish("config/reported", b"{garbage", retain=True)
    wait_until(lambda: counters(fleet).get("rejected_bad_payload") == 2)
    wait_until(lambda: fleet.store.get_unit("lift-c3"))  # the unit's `status` was stored, its report was not
    assert fleet.ingestor.drain()
    assert config_of(fleet.store, "lift-c3") is None
    assert "accepted_config_reported" not in counters(fleet)
