"""Items 3 and 4 of issue 16: one unit's flood costs the others nothing (cheap rejection before parsing, a
token bucket per unit), and snapshot storage has limits (only for known events, a per-unit quota,
retention by age and total size)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from contract.mqtt import MAX_PAYLOAD_BYTES, EventPayload
from fleet.ingest import Rejected, UnitBuckets, prefilter
from fleet.simulate import snapshot_jpeg
from fleet.store import IngestBatch, Store
from tests.fleet.conftest import FakeUnit, RunningFleet, start_fleet, wait_until
from tests.support.mosquitto import MosquittoBroker


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_unit_may_burst_then_send_at_its_rate_and_others_are_untouched() -> None:
    clock = FakeClock()
    buckets = UnitBuckets(rate=2.0, burst=5, clock=clock)
    assert [buckets.allow("noisy") for _ in range(7)] == [True] * 5 + [False] * 2
    assert buckets.allow("quiet")  # its own bucket
    clock.now += 1.0  # two more tokens
    assert [buckets.allow("noisy") for _ in range(3)] == [True, True, False]
    clock.now += 1000.0  # refills to the burst, not beyond
    assert sum(buckets.allow("noisy") for _ in range(10)) == 5


def test_size_and_topic_are_checked_before_anything_is_parsed() -> None:
    assert prefilter("liftguard/v1/units/u-1/events", 100) == ("u-1", "events")
    too_big = prefilter("liftguard/v1/units/u-1/events", MAX_PAYLOAD_BYTES + 1)
    assert isinstance(too_big, Rejected) and too_big.reason == "too_large"
    assert prefilter("liftguard/v1/units/u-1/snapshots/s1", MAX_PAYLOAD_BYTES + 1) == ("u-1", "snapshots/s1")
    wrong = prefilter("liftguard/v1/units/../events", 10)
    assert isinstance(wrong, Rejected) and wrong.reason == "bad_topic"


def test_a_flooding_unit_is_cut_off_before_parsing_and_the_others_events_all_arrive(
        mosquitto: MosquittoBroker, tmp_path: Path, make_unit: Callable[..., FakeUnit]) -> None:
    fleet: RunningFleet = start_fleet(mosquitto, f"sqlite:///{tmp_path / 'fleet.db'}", unit_rate_per_s=5,
                                      unit_burst=50)
    try:
        noisy, quiet = make_unit("lift-noisy"), make_unit("lift-quiet")
        started = time.monotonic()
        good: list[EventPayload] = []
        for i in range(2000):
            noisy.client.publish("liftguard/v1/units/lift-noisy/events", b'{"not": "an event"}', qos=1)
            if i % 200 == 0:
                good.append(quiet.alert(with_snapshot=False))
        wait_until(lambda: all(fleet.store.get_alert(e.event_id) for e in good), timeout=20)
        elapsed = time.monotonic() - started
        counters = fleet.ingestor.stats.counters
        wait_until(lambda: counters["rejected_rate_limited"] + counters["rejected_bad_payload"] == 2000, timeout=60)
        parsed = counters["rejected_bad_payload"]
        # Parsed at most: the burst, plus the rate over the run, plus slack for the status message.
        assert parsed <= 50 + 5 * (time.monotonic() - started + elapsed) + 5
        assert counters["rejected_rate_limited"] == 2000 - parsed
        limited = fleet.ingestor.stats.snapshot()["rate_limited_units"]
        assert limited == {"lift-noisy": counters["rejected_rate_limited"]}
    finally:
        fleet.stop()


# -- snapshots -----------------------------------------------------------------------------------------------
def _event(unit: str, snapshot: str | None) -> EventPayload:
    return EventPayload(incident_id=f"inc-{uuid.uuid4().hex[:8]}", unit_id=unit, type="ebike_blocked",
                        phase="start", ts=time.time(), snapshot=f"snapshots/{snapshot}" if snapshot else None)


def _write(store: Store, events: list[EventPayload], snaps: list[tuple[str, str, bytes, float]],
           quota: int | None = None) -> IngestBatch:
    batch = IngestBatch()
    batch.events = [(e, time.time(), e.model_dump_json()) for e in events]
    batch.snapshots = snaps
    store.write_batch(batch, unit_snapshot_quota=quota)
    return batch


def test_only_snapshots_of_known_events_are_stored(store: Store) -> None:
    jpeg = snapshot_jpeg("x")
    ev = _event("u-1", "s-known")
    batch = _write(store, [ev], [("u-1", "s-known", jpeg, 1.0), ("u-1", "s-orphan", jpeg, 1.0),
                                 ("u-2", "s-known", jpeg, 1.0)])  # u-2 did not send the event
    assert store.get_snapshot("u-1", "s-known") == jpeg
    assert store.get_snapshot("u-1", "s-orphan") is None and store.get_snapshot("u-2", "s-known") is None
    assert {(u, s) for u, s, _, _ in batch.orphan_snapshots} == {("u-1", "s-orphan"), ("u-2", "s-known")}
    # The event may come in a later batch: the snapshot is stored then.
    _write(store, [_event("u-1", "s-orphan")], [("u-1", "s-orphan", jpeg, 2.0)])
    assert store.get_snapshot("u-1", "s-orphan") == jpeg


def test_a_unit_over_its_quota_loses_its_oldest_snapshots_only(store: Store) -> None:
    image = b"\xff\xd8\xff" + b"\0" * 997  # 1000 bytes
    other = _event("u-2", "theirs")
    _write(store, [other], [("u-2", "theirs", image, 1.0)])
    for i in range(5):
        _write(store, [_event("u-1", f"s{i}")], [("u-1", f"s{i}", image, 10.0 + i)], quota=3000)
    kept = [i for i in range(5) if store.get_snapshot("u-1", f"s{i}")]
    assert kept == [2, 3, 4] and store.snapshot_bytes("u-1") == 3000
    assert store.get_snapshot("u-2", "theirs") == image


def test_retention_drops_old_snapshots_then_the_oldest_beyond_the_total(store: Store) -> None:
    image = b"\xff\xd8\xff" + b"\0" * 997
    for i in range(6):
        _write(store, [_event(f"u-{i}", "s")], [(f"u-{i}", "s", image, 100.0 + i)])
    assert store.prune_snapshots(older_than=102.0, max_total_bytes=10_000) == 2  # u-0, u-1 by age
    assert store.prune_snapshots(older_than=0.0, max_total_bytes=2500) == 2  # then u-2, u-3 by size
    assert [i for i in range(6) if store.get_snapshot(f"u-{i}", "s")] == [4, 5]


@pytest.mark.parametrize("late", [False, True])
def test_ingest_stores_a_snapshot_that_arrives_before_its_event_and_drops_strays(
        fleet: RunningFleet, make_unit: Callable[..., FakeUnit], late: bool) -> None:
    unit = make_unit("lift-3")
    jpeg = snapshot_jpeg("lift-3")
    stray = f"stray-{uuid.uuid4().hex[:6]}"
    unit.publish(f"snapshots/{stray}", jpeg)
    if late:  # the snapshot first, its event a moment later (in another batch)
        event_id = str(uuid.uuid4())
        unit.publish(f"snapshots/{event_id}", jpeg)
        wait_until(lambda: fleet.ingestor.stats.counters["accepted_snapshot"] == 2, timeout=10)
        fleet.ingestor.drain()
        event = unit.alert(with_snapshot=False, event_id=event_id, snapshot=f"snapshots/{event_id}")
    else:
        event = unit.alert()
    wait_until(lambda: fleet.store.get_snapshot("lift-3", event.event_id), timeout=10)
    assert fleet.store.get_snapshot("lift-3", stray) is None
