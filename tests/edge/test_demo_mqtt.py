"""`liftguard demo --mqtt URL`: the alert and its snapshot reach the fleet side through a real Mosquitto."""

from __future__ import annotations

import json
import time
from pathlib import Path

from edge.run.cli import main
from tests.edge.link_support import FleetSubscriber
from tests.support.mosquitto import MosquittoBroker


def test_demo_publishes_the_block_with_its_snapshot(mosquitto: MosquittoBroker, tmp_path: Path) -> None:
    fleet = FleetSubscriber(mosquitto, ["liftguard/v1/units/demo-unit/#"], client_id="fleet-demo-test")
    began = time.time()
    try:
        code = main(["demo", "--mqtt", mosquitto.url, "--events-out", str(tmp_path / "events.jsonl"),
                     "--snapshot-out", str(tmp_path / "snap.png")])
        assert code == 0

        def has_block_and_snapshot(sub: FleetSubscriber) -> bool:
            return bool(sub.payloads("events")) and any("snapshots/" in m.topic for m in sub.messages)

        assert fleet.wait_for(has_block_and_snapshot, timeout=20)
        events = [json.loads(p) for p in fleet.payloads("events")]
        start = next(e for e in events if e["type"] == "ebike_blocked" and e["phase"] == "start")
        snapshot = next(m for m in fleet.messages if m.topic.endswith(start["snapshot"]))
        assert snapshot.payload[:2] == b"\xff\xd8"  # a JPEG
        # Wall-clock times (the fleet files alerts by date), clip time apart: the block comes some seconds
        # of clip after the start, not in 1970.
        assert began <= start["ts"] <= time.time() + 60
        assert all(began <= e["ts"] <= time.time() + 60 for e in events)
        assert fleet.wait_for(lambda sub: b'"stopped"' in b"".join(sub.payloads("status")), timeout=10)
    finally:
        fleet.close()
