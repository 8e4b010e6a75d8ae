"""The store on both engines (SQLite file and a real PostgreSQL server): one schema, one behaviour."""

from __future__ import annotations

import datetime as dt
import io
import sqlite3
import time
import uuid
import zipfile
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

import fleet.migrations
from contract import samples
from contract.mqtt import CommandResultPayload, EventPayload, HeartbeatPayload, StatusPayload
from fleet.api import write_dataset_zip
from fleet.store import IngestBatch, Store, day_bounds, local_day

JPEG = b"\xff\xd8\xff\xe0jpeg-bytes"
SHANGHAI = ZoneInfo("Asia/Shanghai")  # UTC+8 all year
# 20:30 on 29 November in London is already 04:30 on the 30th in Shanghai.
EVENING_UTC = dt.datetime(2026, 11, 29, 20, 30, tzinfo=dt.UTC).timestamp()


def heartbeat(unit: str, **kw: object) -> HeartbeatPayload:
    fields: dict[str, object] = dict(inference_p50_ms=10, inference_p95_ms=20, model_id="m1", software="1.0",
                                     site="S", building="B1")
    return samples.heartbeat(unit, **{**fields, **kw})


def alert(unit: str, ts: float | None = None, **kw: object) -> EventPayload:
    event_id = str(uuid.uuid4())
    fields: dict[str, object] = dict(event_id=event_id, ts=ts or time.time(), snapshot=f"snapshots/{event_id}")
    return samples.alert(unit, **{**fields, **kw})


def batch_of(*events: EventPayload, snapshots: bool = True) -> IngestBatch:
    batch = IngestBatch()
    now = time.time()
    for e in events:
        batch.events.append((e, now, e.model_dump_json()))
        if snapshots and e.snapshot:
            batch.snapshots.append((e.unit_id, e.snapshot.removeprefix("snapshots/"), JPEG, now))
    return batch


def test_migrate_applies_each_file_once_and_records_the_version(store: Store) -> None:
    files = sorted(p.stem for p in Path(fleet.migrations.__file__).parent.glob("[0-9][0-9][0-9][0-9]_*.sql"))
    assert store.applied_migrations() == files
    assert store.schema_version() == int(files[-1][:4])
    assert store.migrate() == []  # idempotent: a second server starting changes nothing
    assert store.schema_version() == int(files[-1][:4])


def test_a_migration_with_double_dashes_and_semicolons_inside_literals_applies_whole(
        store: Store, tmp_path: Path) -> None:
    """The hand-written splitter cut statements at `--` and at a `;` ending a line, even inside a string."""
    folder = tmp_path / "migrations"
    folder.mkdir()
    for f in Path(fleet.migrations.__file__).parent.glob("*.sql"):
        (folder / f.name).write_text(f.read_text())
    (folder / "9001_note.sql").write_text(
        "-- depends: 0003_quarantine_and_snapshot_sizes\n"
        "CREATE TABLE notes (body TEXT NOT NULL);\n"
        "INSERT INTO notes (body) VALUES ('press -- then release;\n"
        "-- not a comment;');  -- a real comment\n")
    assert store.migrate(folder) == ["9001_note"]
    assert store.query("SELECT body FROM notes") == [{"body": "press -- then release;\n-- not a comment;"}]


def test_a_database_migrated_by_the_old_migrator_is_adopted_not_migrated_again(tmp_path: Path) -> None:
    db = tmp_path / "old.db"
    with sqlite3.connect(db) as conn:  # what the hand-written migrator left: 0001 + 0002 and its bookkeeping
        for name in ("0001_initial", "0002_config_reported"):
            sql = (Path(fleet.migrations.__file__).parent / f"{name}.sql").read_text()
            conn.executescript(sql)
        conn.execute("CREATE TABLE schema_version (version INTEGER PRIMARY KEY, name TEXT NOT NULL, "
                     "applied_at DOUBLE PRECISION NOT NULL)")
        conn.executemany("INSERT INTO schema_version VALUES (?, ?, 0)", [(1, "0001_initial.sql"),
                                                                         (2, "0002_config_reported.sql")])
    store = Store.open(f"sqlite:///{db}")
    files = sorted(p.stem for p in Path(fleet.migrations.__file__).parent.glob("[0-9][0-9][0-9][0-9]_*.sql"))
    assert store.migrate() == files[2:]  # 0003 onwards: 0001 and 0002 were adopted
    assert store.schema_version() == int(files[-1][:4])
    store.close()


def test_events_are_deduplicated_by_event_id_within_and_across_batches(store: Store) -> None:
    e1, e2 = alert("u1"), alert("u1")
    assert [e.event_id for e in store.write_batch(batch_of(e1, e1, e2))] == [e1.event_id, e2.event_id]
    assert store.write_batch(batch_of(e1)) == []  # redelivery after a reconnect
    assert store.count_events() == 2


def test_heartbeats_update_the_unit_and_roll_up_per_hour(store: Store) -> None:
    batch = IngestBatch()
    batch.add_heartbeat(heartbeat("u1", camera="frozen", fps=0), 7200.5)
    batch.add_heartbeat(heartbeat("u1", software="1.1", inference_p95_ms=40), 7201.0)
    store.write_batch(batch)
    unit = store.get_unit("u1")
    assert unit is not None
    assert (unit["state"], unit["software"], unit["camera"], unit["last_heartbeat"]) == ("online", "1.1", "online",
                                                                                          7201.0)
    rollup = store.query("SELECT * FROM heartbeat_hours WHERE unit_id = 'u1'")
    assert [(r["hour"], r["beats"], r["camera_bad"], r["inference_p95_max"]) for r in rollup] == [(2, 2, 1, 40.0)]


def test_an_lwt_after_the_last_heartbeat_marks_the_unit_offline_but_an_older_one_does_not(store: Store) -> None:
    batch = IngestBatch()
    batch.add_heartbeat(heartbeat("late-lwt"), 100.0)
    batch.statuses["late-lwt"] = (StatusPayload(state="offline"), 101.0)
    batch.add_heartbeat(heartbeat("old-lwt"), 100.0)
    batch.statuses["old-lwt"] = (StatusPayload(state="offline"), 99.0)
    store.write_batch(batch)
    assert store.get_unit("late-lwt")["state"] == "offline"  # type: ignore[index]
    assert store.get_unit("old-lwt")["state"] == "online"  # type: ignore[index]


def test_a_bare_status_after_a_named_one_in_the_same_batch_keeps_the_names(store: Store) -> None:
    batch = IngestBatch()
    batch.add_status("u1", StatusPayload(state="online", site="Tower A", building="B1", software="1.2"), 10.0)
    batch.add_status("u1", StatusPayload(state="stopped"), 11.0)  # e.g. a bare "stopped" right after start-up
    store.write_batch(batch)
    unit = store.get_unit("u1")
    assert unit is not None
    assert (unit["state"], unit["site"], unit["building"], unit["software"]) == ("stopped", "Tower A", "B1", "1.2")


def test_a_unit_can_only_answer_commands_addressed_to_it(store: Store) -> None:
    store.create_command("cmd-00001", "u1", "release", "alice")
    batch = IngestBatch()
    batch.cmd_results.append(("u2", CommandResultPayload(command_id="cmd-00001", command="release", ok=False,
                                                         ts=1), 1.0))
    store.write_batch(batch)
    assert store.get_command("cmd-00001")["result_ok"] is None  # type: ignore[index]
    batch.cmd_results[:] = [("u1", CommandResultPayload(command_id="cmd-00001", command="release", ok=True,
                                                        detail="released", ts=2), 2.0)]
    store.write_batch(batch)
    cmd = store.get_command("cmd-00001")
    assert cmd is not None and (cmd["result_ok"], cmd["result_detail"]) == (1, "released")


def test_alert_queue_filters_and_verdicts(store: Store) -> None:
    hb = IngestBatch()
    hb.add_heartbeat(heartbeat("u1", building="North"), time.time())
    hb.add_heartbeat(heartbeat("u2", building="South"), time.time())
    store.write_batch(hb)
    a1, a2 = alert("u1"), alert("u2", cls="escooter")
    fault = alert("u2", type="camera_fault", snapshot=None)
    end = alert("u1", phase="end")
    store.write_batch(batch_of(a1, a2, fault, end))

    open_ids = {r["event_id"] for r in store.list_alerts("open")}
    assert open_ids == {a1.event_id, a2.event_id, fault.event_id}  # `end` phases are not alerts
    assert [r["event_id"] for r in store.list_alerts("open", building="North")] == [a1.event_id]
    assert [r["event_id"] for r in store.list_alerts("open", q="ESCOOT")] == [a2.event_id]
    assert store.get_alert(a1.event_id)["has_snapshot"]  # type: ignore[index]

    store.set_label(a1.event_id, "false_alarm", "alice")
    store.set_label(a1.event_id, "confirmed", "bob")  # a later verdict replaces the earlier one
    assert a1.event_id not in {r["event_id"] for r in store.list_alerts("open")}
    labelled = store.list_alerts("confirmed")
    assert [(r["event_id"], r["labelled_by"]) for r in labelled] == [(a1.event_id, "bob")]


def test_dataset_export_has_a_labels_csv_and_the_snapshots(store: Store) -> None:
    a1, a2 = alert("u1"), alert("u1")
    store.write_batch(batch_of(a1, a2))
    store.set_label(a1.event_id, "false_alarm", "alice")
    buf = io.BytesIO()
    assert write_dataset_zip(store, buf) == 1
    with zipfile.ZipFile(buf) as zf:
        assert zf.read(f"snapshots/{a1.event_id}.jpg") == JPEG
        lines = zf.read("labels.csv").decode().splitlines()
    assert lines[0].startswith("event_id,unit_id")
    assert len(lines) == 2 and a1.event_id in lines[1] and "false_alarm" in lines[1]


def test_daily_counts_group_ebike_alerts_by_site_building_and_day(store: Store) -> None:
    hb = IngestBatch()
    hb.add_heartbeat(heartbeat("u1", site="Harbour", building="North"), time.time())
    hb.add_heartbeat(heartbeat("u2", site="Hillside", building="North"), time.time())  # same name, other site
    store.write_batch(hb)
    day1, day2 = 1_700_000_000.0, 1_700_000_000.0 + 86400
    store.write_batch(batch_of(alert("u1", ts=day1), alert("u1", ts=day1 + 60), alert("u1", ts=day2),
                               alert("u2", ts=day2), alert("u9", ts=day2), alert("u1", ts=day2, type="camera_fault")))
    d1, d2 = local_day(day1, dt.UTC), local_day(day2, dt.UTC)  # the store's default zone
    counts = {(r["day"], r["site"], r["building"]): r["n"] for r in store.daily_counts(d1, d2)}
    assert counts == {(d1, "Harbour", "North"): 2, (d2, "Harbour", "North"): 1, (d2, "Hillside", "North"): 1,
                      (d2, "Unassigned", "Unassigned"): 1}


@pytest.mark.parametrize(("zone", "day"), [(dt.UTC, "2026-11-29"), (SHANGHAI, "2026-11-30")])
def test_an_alert_counts_for_its_day_in_the_sites_time_zone(db_url: str, zone: dt.tzinfo, day: str) -> None:
    store = Store.open(db_url, zone)
    try:
        store.migrate()
        store.write_batch(batch_of(alert("u1", ts=EVENING_UTC)))
        assert [(r["day"], r["n"]) for r in store.daily_counts("2026-11-28", "2026-12-01")] == [(day, 1)]
    finally:
        store.close()


def test_alerts_stored_before_the_zone_changed_keep_their_day(db_url: str) -> None:
    before, after = Store.open(db_url), Store.open(db_url, SHANGHAI)  # the same database, restarted with a zone
    try:
        before.migrate()
        before.write_batch(batch_of(alert("u1", ts=EVENING_UTC)))
        after.write_batch(batch_of(alert("u1", ts=EVENING_UTC)))
        assert [(r["day"], r["n"]) for r in after.daily_counts("2026-11-28", "2026-12-01")] == [
            ("2026-11-29", 1), ("2026-11-30", 1)]
    finally:
        before.close()
        after.close()


@pytest.mark.parametrize(("day", "zone", "starts_utc", "hours"), [
    (dt.date(2026, 11, 29), dt.UTC, "2026-11-29T00:00:00+00:00", 24),
    (dt.date(2026, 11, 30), SHANGHAI, "2026-11-29T16:00:00+00:00", 24),
    (dt.date(2026, 3, 29), ZoneInfo("Europe/Berlin"), "2026-03-28T23:00:00+00:00", 23),  # clocks go forward
    (dt.date(2026, 10, 25), ZoneInfo("Europe/Berlin"), "2026-10-24T22:00:00+00:00", 25),  # and back
])
def test_a_day_starts_at_local_midnight_and_lasts_until_the_next(day: dt.date, zone: dt.tzinfo, starts_utc: str,
                                                                 hours: int) -> None:
    start, end = day_bounds(day, zone)
    assert dt.datetime.fromtimestamp(start, dt.UTC).isoformat() == starts_utc
    assert (end - start) / 3600 == hours
    assert local_day(start, zone) == day.isoformat() and local_day(end - 1, zone) == day.isoformat()


def test_sessions_expire(store: Store) -> None:
    store.add_user("alice", "manager", "scrypt$x")
    store.create_session("h1", "alice", "csrf", ttl_s=60)
    store.create_session("h2", "alice", "csrf", ttl_s=-1)
    assert store.get_session("h1") is not None
    assert store.get_session("h2") is None


def test_unknown_database_urls_are_refused() -> None:
    with pytest.raises(ValueError, match="unsupported database URL"):
        Store.open("mysql://nope")
