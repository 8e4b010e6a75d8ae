"""Server CPU per ingested message, without the broker: the fleet's own share of the cost.

Feeds the ladder's message mix (12,370 units' heartbeats plus alerts = event + JPEG snapshot, ~2.4 %
of messages) straight into `Ingestor._on_message` (what paho's network thread calls), lets the
writer thread store it, and reads each thread's CPU clock. The MQTT socket layer (paho reading
packets) is not in these figures; the ladder (bench_fleet.py --ladder) measures the whole server.

Usage:  .venv/bin/python benchmarks/bench_ingest_cpu.py [--messages 60000] [--db sqlite|postgres]
        [--profile out.prof]   (cProfile of the network-thread side)
"""

from __future__ import annotations

import argparse
import cProfile
import json
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from contract.mqtt import EventPayload, HeartbeatPayload, encode, unit_topic  # noqa: E402
from fleet.config import load_settings  # noqa: E402
from fleet.ingest import Ingestor  # noqa: E402
from fleet.simulate import snapshot_jpeg  # noqa: E402
from fleet.store import Store  # noqa: E402
from tests.fleet.pgserver import PostgresServer  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"


def messages(n: int, units: int, alert_share: float) -> list[mqtt.MQTTMessage]:
    """The ladder's mix: each unit beats in turn; every 1/alert_share-th message starts an alert."""
    jpeg = snapshot_jpeg()
    out: list[mqtt.MQTTMessage] = []
    now = time.time()
    every = max(2, round(1 / alert_share)) if alert_share > 0 else 0
    mid = 0
    i = 0
    while len(out) < n:
        unit = f"bench-{i % units:05d}"
        if every and i % every == every - 1:
            event_id = str(uuid.uuid4())
            ev = EventPayload(event_id=event_id, incident_id=str(uuid.uuid4()), unit_id=unit, type="ebike_blocked",
                              phase="start", ts=now, cls="ebike", confidence=0.9, snapshot=f"snapshots/{event_id}")
            for topic, payload in ((unit_topic(unit, "events"), encode(ev)),
                                   (unit_topic(unit, f"snapshots/{event_id}"), jpeg)):
                mid += 1
                msg = mqtt.MQTTMessage(mid, topic.encode())
                msg.payload, msg.qos = payload, 1
                out.append(msg)
        else:
            hb = HeartbeatPayload(unit_id=unit, ts=now, uptime_s=100.0 + i, fps=10.0, inference_p50_ms=18.0,
                                  inference_p95_ms=24.0, camera="online", relay="released", outbox_depth=0,
                                  model_id="sim-ebike-v1", software="liftguard-sim/0.1.0", site="Site 001",
                                  building="Building 001-1", elevator="Lift 1")
            msg = mqtt.MQTTMessage(0, unit_topic(unit, "heartbeat").encode())
            msg.payload, msg.qos = encode(hb), 0
            out.append(msg)
        i += 1
    return out


def thread_cpu(thread: threading.Thread) -> float:
    assert thread.ident is not None
    return time.clock_gettime(time.pthread_getcpuclockid(thread.ident))


def run(db: str, msgs: list[mqtt.MQTTMessage], profile: str | None) -> dict[str, Any]:
    store = Store.open(db)
    store.migrate()
    settings = load_settings({"db": db, "mqtt_url": "mqtt://127.0.0.1:1"}, environ={})
    ing = Ingestor(settings, store)
    ing.client.ack = lambda mid, qos: mqtt.MQTT_ERR_SUCCESS  # type: ignore[method-assign]  # no broker here
    writer = ing._writer
    prof = cProfile.Profile() if profile else None
    writer.start()
    w0, n0, p0, t0 = thread_cpu(writer), time.thread_time(), time.process_time(), time.perf_counter()
    if prof:
        prof.enable()
    for msg in msgs:
        ing._on_message(ing.client, None, msg)
    network_cpu = time.thread_time() - n0
    ing.drain(600)
    writer_cpu = thread_cpu(writer) - w0
    process_cpu = time.process_time() - p0
    ing.stop()  # flushes what is still held back (coalesced heartbeats): counted in neither figure
    wall = time.perf_counter() - t0
    if prof:
        prof.disable()
        prof.dump_stats(profile)
    beats = int(store.query("SELECT COALESCE(SUM(beats), 0) AS n FROM heartbeat_hours")[0]["n"])
    events = int(store.query("SELECT COUNT(*) AS n FROM events")[0]["n"])
    snaps = int(store.query("SELECT COUNT(*) AS n FROM snapshots")[0]["n"])
    store.close()
    n = len(msgs)
    return {"db": db.split(":")[0], "messages": n, "heartbeats_stored": beats, "events_stored": events,
            "snapshots_stored": snaps, "wall_s": round(wall, 2),
            "network_thread_us_per_msg": round(network_cpu / n * 1e6, 1),
            "writer_thread_us_per_msg": round(writer_cpu / n * 1e6, 1),
            "process_us_per_msg": round(process_cpu / n * 1e6, 1)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=60_000)
    parser.add_argument("--units", type=int, default=12_370)
    parser.add_argument("--alert-share", type=float, default=0.012, help="alerts per message (each = 2 messages)")
    parser.add_argument("--db", choices=("sqlite", "postgres", "both"), default="both")
    parser.add_argument("--profile", help="write a cProfile of the sqlite run here")
    parser.add_argument("--label", default="", help="stored with the result (e.g. before / after)")
    parser.add_argument("--out", help="append the result to this JSON file")
    args = parser.parse_args()
    msgs = messages(args.messages, args.units, args.alert_share)
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp:
        if args.db in ("sqlite", "both"):
            results.append(run(f"sqlite:///{tmp}/fleet.db", msgs, args.profile))
            print(json.dumps(results[-1]), flush=True)
        if args.db in ("postgres", "both"):
            pg = PostgresServer(Path(tmp) / "pg").start()
            try:
                results.append(run(pg.create_database(), msgs, None))
                print(json.dumps(results[-1]), flush=True)
            finally:
                pg.stop()
    if args.out:
        path = Path(args.out)
        old = json.loads(path.read_text()) if path.exists() else []
        old.append({"label": args.label, "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "results": results})
        path.write_text(json.dumps(old, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
