"""Issue 18: the ingest writer at city scale. Several writers (fleet servers on one shared subscription)
lock unit rows in one order and so never deadlock; a lost race is retried at once; QoS 0 heartbeats are
coalesced (one write per unit and flush, the latest values, every beat still counted)."""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest

from contract.mqtt import EventPayload, HeartbeatPayload, StatusPayload, encode
from fleet.config import load_settings
from fleet.ingest import HeartbeatCoalescer, Ingestor, Message
from fleet.store import IngestBatch, Store
from tests.fleet.conftest import FakeUnit, start_fleet, wait_until
from tests.fleet.pgserver import PostgresServer
from tests.support.mosquitto import MosquittoBroker


def _heartbeat(unit: str, n: int = 0, ts: float | None = None) -> HeartbeatPayload:
    return HeartbeatPayload(unit_id=unit, ts=ts or time.time(), uptime_s=float(n), fps=float(n % 100),
                            inference_p50_ms=10.0, inference_p95_ms=20.0, camera="online", relay="released",
                            outbox_depth=n, model_id="m-1", software="1.0", site="S", building="B")


def _event(unit: str) -> EventPayload:
    return EventPayload(incident_id=str(uuid.uuid4()), unit_id=unit, type="ebike_blocked", phase="start",
                        ts=time.time(), cls="ebike", confidence=0.9)


def _scrambled_batch(units: list[str], at: float, seed: int) -> IngestBatch:
    """Heartbeats, statuses and events of `units`, each kind added in its own random order (as messages
    from a shared subscription arrive)."""
    rng = random.Random(seed)
    batch = IngestBatch()
    for kind in ("heartbeat", "status", "event"):
        order = list(units)
        rng.shuffle(order)
        for i, unit in enumerate(order):
            if kind == "heartbeat":
                batch.add_heartbeat(_heartbeat(unit, i), at)
            elif kind == "status":
                batch.add_status(unit, StatusPayload(state="online", site="S"), at + 0.001)
            elif i % 3 == 0:
                ev = _event(unit)
                batch.events.append((ev, at, encode(ev).decode()))
    return batch


# -- one order ------------------------------------------------------------------------------------------
def test_every_multi_row_write_and_the_up_front_lock_go_in_unit_id_order(store: Store,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str, list[Any]]] = []
    insert_rows, lock_units = store._insert_rows, store.lock_units

    def record_rows(cur: Any, head: str, row: str, tail: str, rows: Any, types: str) -> None:
        calls.append((head, list(rows)))
        insert_rows(cur, head, row, tail, rows, types)

    def record_lock(cur: Any, first_seen: dict[str, float]) -> None:
        calls.append(("lock", sorted(first_seen)))
        lock_units(cur, first_seen)

    monkeypatch.setattr(store, "_insert_rows", record_rows)
    monkeypatch.setattr(store, "lock_units", record_lock)
    units = [f"lift-{i:03d}" for i in range(40)]
    store.write_batch(_scrambled_batch(units, time.time(), seed=7))

    assert calls[0] == ("lock", units), "the batch locks every unit it writes, first, in unit-id order"
    written = [(head, rows) for head, rows in calls[1:]]
    assert {h.split("(")[0].split()[-1] for h, _ in written} >= {"units", "heartbeat_hours", "events"}
    for head, rows in written:
        keys = [r[2] if "INTO events" in head else r[0] for r in rows]
        assert keys == sorted(keys), f"rows of {head.split()[2]} are not in unit-id order"


def test_coalesced_heartbeats_leave_in_unit_id_order_with_the_latest_of_each() -> None:
    held = HeartbeatCoalescer(flush_s=5.0, max_units=1000)
    for n, unit in enumerate(["c", "a", "b", "a", "c", "a"]):
        held.add(Message("heartbeat", unit, _heartbeat(unit, n), received_at=1000.0 + n), now=0.0)
    assert not held.due(4.9) and held.due(5.0)
    latest, rollup, beats = held.take()
    assert [m.unit_id for m in latest] == ["a", "b", "c"]
    assert [m.body.outbox_depth for m in latest] == [5, 2, 4]  # the last beat of each
    assert beats == 6 and sum(int(acc[0]) for acc in rollup.values()) == 6
    assert held.take() == ([], {}, 0)


def test_the_flush_period_never_lets_a_unit_look_silent() -> None:
    assert load_settings({"heartbeat_flush_s": 5}, environ={}).heartbeat_flush_every_s == 5.0
    assert load_settings({"heartbeat_flush_s": 5, "silence_s": 8}, environ={}).heartbeat_flush_every_s == 2.0


# -- two writers on one PostgreSQL ----------------------------------------------------------------------
def test_two_writers_fed_interleaved_batches_of_the_same_units_never_deadlock(postgres: PostgresServer) -> None:
    url = postgres.create_database()
    stores = [Store.open(url), Store.open(url)]
    stores[0].migrate()
    units = [f"lift-{i:03d}" for i in range(80)]
    rounds = 25
    barrier = threading.Barrier(2)
    errors: list[BaseException] = []

    def writer(k: int) -> None:
        for r in range(rounds):
            batch = _scrambled_batch(units, time.time(), seed=1000 * k + r)  # each its own arrival order
            try:
                barrier.wait(30)
                stores[k].write_batch(batch)
            except BaseException as exc:  # reported below, whatever it is
                errors.append(exc)
                barrier.abort()
                return

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    try:
        assert not errors, f"a writer failed: {errors[0]!r}"
        beats = stores[0].query("SELECT SUM(beats) AS n, COUNT(DISTINCT unit_id) AS units FROM heartbeat_hours")[0]
        assert int(beats["n"]) == 2 * rounds * len(units) and int(beats["units"]) == len(units)
    finally:
        for s in stores:
            s.close()


def test_a_lost_deadlock_is_retried_at_once_and_nothing_is_quarantined(tmp_path: Path) -> None:
    class LosesOneRace(Store.open(f"sqlite:///{tmp_path / 'x.db'}").__class__):  # type: ignore[misc]
        races = 1

        def write_batch(self, batch: IngestBatch, unit_snapshot_quota: int | None = None,
                        unit_clip_quota: int | None = None) -> list[EventPayload]:
            if self.races:
                self.races -= 1
                raise psycopg.errors.DeadlockDetected("deadlock detected")
            return super().write_batch(batch, unit_snapshot_quota, unit_clip_quota)

        def is_transient(self, exc: BaseException) -> bool:
            return isinstance(exc, psycopg.errors.DeadlockDetected)

    store = LosesOneRace(tmp_path / "fleet.db")
    store.migrate()
    ingestor = Ingestor(load_settings({"db": "sqlite:///unused"}, environ={}), store)
    ev = _event("lift-1")
    committed = ingestor._commit([Message("event", "lift-1", ev, time.time(), raw=encode(ev).decode())])
    assert committed is not None and [e.event_id for e in committed[0]] == [ev.event_id]
    counters = ingestor.stats.counters
    assert counters["write_retries_transient"] == 1
    assert counters["store_errors"] == 0 and counters["quarantined"] == 0  # no back-off path, no bisecting
    assert store.list_quarantine() == []
    store.close()


# -- coalescing, through the broker ---------------------------------------------------------------------
def test_heartbeats_of_a_unit_are_written_once_per_flush_with_the_latest_values_and_every_beat_counted(
        mosquitto: MosquittoBroker, tmp_path: Path, make_unit: Callable[..., FakeUnit]) -> None:
    fleet = start_fleet(mosquitto, f"sqlite:///{tmp_path / 'fleet.db'}", heartbeat_flush_s=60, silence_s=600)
    try:
        busy, quiet = make_unit("lift-busy"), make_unit("lift-quiet")
        wait_until(lambda: len(fleet.store.query("SELECT unit_id FROM units")) == 2)
        for n in range(20):
            busy.publish("heartbeat", encode(_heartbeat("lift-busy", n)), qos=0)  # QoS 0, as the contract says
            if n == 10:
                alert = busy.alert(with_snapshot=False)
        for n in range(3):
            quiet.publish("heartbeat", encode(_heartbeat("lift-quiet", 100 + n)), qos=0)
        counters = fleet.ingestor.stats.counters
        # The alert does not wait for the heartbeats: it is stored while they are still held.
        wait_until(lambda: fleet.store.get_alert(alert.event_id), timeout=20)
        wait_until(lambda: counters["accepted_heartbeat"] == 23, timeout=20)
        assert fleet.store.query("SELECT last_heartbeat FROM units WHERE unit_id = 'lift-busy'")[0][
            "last_heartbeat"] is None
        busy.drop()  # its LWT (`offline`) arrives after its beats and is stored before they are
        wait_until(lambda: fleet.store.query("SELECT state FROM units WHERE unit_id = 'lift-busy'")[0]["state"]
                   == "offline", timeout=20)

        assert fleet.ingestor.drain(30)  # writes the held heartbeats now
        rows = {r["unit_id"]: r for r in fleet.store.query("SELECT * FROM units")}
        assert rows["lift-busy"]["outbox_depth"] == 19 and rows["lift-busy"]["fps"] == 19.0  # the latest beat
        assert rows["lift-quiet"]["outbox_depth"] == 102
        assert rows["lift-busy"]["state"] == "offline", "an older beat must not undo the later LWT"
        assert rows["lift-quiet"]["state"] == "online"
        beats = {r["unit_id"]: int(r["n"]) for r in fleet.store.query(
            "SELECT unit_id, SUM(beats) AS n FROM heartbeat_hours GROUP BY unit_id")}
        assert beats == {"lift-busy": 20, "lift-quiet": 3}  # every beat counted in the roll-up
        assert counters["heartbeat_rows_written"] == 2 and counters["heartbeats_coalesced"] == 21
    finally:
        fleet.stop()
