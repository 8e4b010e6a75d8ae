"""The outbox: committed before published, deleted only on PUBACK, bounded with counted eviction."""

from __future__ import annotations

import stat
import threading
from pathlib import Path

from edge.report.outbox import Message, Outbox


def events(n: int, start: int = 0) -> list[Message]:
    return [Message("liftguard/v1/units/u1/events", f'{{"n":{i}}}'.encode()) for i in range(start, start + n)]


def test_committed_rows_survive_a_reopen_in_commit_order(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.db")
    box.put(events(3))
    box.close()

    reopened = Outbox(tmp_path / "o.db")
    assert [r.payload for r in reopened.pending()] == [b'{"n":0}', b'{"n":1}', b'{"n":2}']
    assert reopened.depth() == 3


def test_only_acknowledged_rows_are_deleted(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.db")
    ids = box.put(events(3))
    assert box.ack([ids[1]]) == 1
    assert [r.id for r in box.pending()] == [ids[0], ids[2]]
    assert box.ack([ids[1]]) == 0, "a repeated ack is harmless"
    assert box.depth() == 2


def test_pending_pages_after_a_cursor(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.db")
    ids = box.put(events(5))
    assert [r.id for r in box.pending(after_id=ids[1], limit=2)] == ids[2:4]


def test_a_full_outbox_evicts_the_oldest_and_counts_them_across_restarts(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.db", max_rows=10)
    for i in range(25):
        box.put(events(1, start=i))
    assert box.depth() == 10
    assert box.evicted() == 15
    assert box.pending()[0].payload == b'{"n":15}', "the newest ten are kept"
    box.close()

    assert Outbox(tmp_path / "o.db", max_rows=10).evicted() == 15


def test_snapshots_have_their_own_byte_budget_and_never_push_out_events(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.db", max_snapshot_bytes=250)
    for i in range(5):
        box.put([*events(1, start=i), Message(f"snap/{i}", bytes(100), "snapshot")])
    kinds = [r.kind for r in box.pending()]
    assert kinds.count("event") == 5
    assert kinds.count("snapshot") == 2
    assert box.evicted_snapshots() == 3
    assert box.evicted() == 0


def test_a_snapshot_over_the_whole_budget_is_dropped_but_its_event_is_kept(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.db", max_snapshot_bytes=50)
    box.put([*events(1), Message("snap/0", bytes(100), "snapshot")])
    assert [r.kind for r in box.pending()] == ["event"]


def test_concurrent_producers_lose_nothing(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.db")

    def produce(k: int) -> None:
        for i in range(50):
            box.put(events(1, start=k * 1000 + i))

    threads = [threading.Thread(target=produce, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    rows = box.pending(limit=1000)
    assert box.depth() == len(rows) == 200
    assert len({r.payload for r in rows}) == 200


def test_the_database_is_owner_only_and_in_wal_mode(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.db")
    box.put(events(1))
    assert stat.S_IMODE((tmp_path / "o.db").stat().st_mode) == 0o600
    assert (tmp_path / "o.db-wal").exists()
    assert box.integrity_ok()


def test_an_unreadable_file_is_moved_aside_not_reused(tmp_path: Path) -> None:
    (tmp_path / "o.db").write_bytes(b"this is not sqlite" * 100)
    box = Outbox(tmp_path / "o.db")
    assert box.depth() == 0
    assert list(tmp_path.glob("o.db.corrupt-*"))
