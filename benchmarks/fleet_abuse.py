"""One misbehaving unit against the fleet server (issue 16, items 1 and 3), for bench_fleet.py --abuse.

Runs `liftguard-fleet serve` (SQLite) and 50 well-behaved simulated units sending alerts at 5/s in all:
undisturbed (baseline); while one unit floods (invalid payloads and duplicate copies of one event, at
5,240 messages/s as in the issue, and as fast as one client can publish); and while one unit sends poison
(numbers out of bounds: year 10000, 1e300, Infinity, 10**30; plus a valid event the database refuses, by a
trigger standing in for any write failure). Reported per run: the good units' event latency (device
publish -> committed, the server's own metrics: the abusive unit's messages are never stored, so these are
the others' events), events lost, and what ingest did with the abuse.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

FLOODER = r"""
import json, sys, time, uuid
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
port, kind, seconds, rate = int(sys.argv[1]), sys.argv[2], float(sys.argv[3]), float(sys.argv[4])
unit = "lift-abuser"
topic = f"liftguard/v1/units/{unit}/events"
c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=unit)
c.max_queued_messages_set(0)
c.max_inflight_messages_set(1000)
c.connect("127.0.0.1", port)
c.loop_start()
event = {"event_id": str(uuid.uuid4()), "incident_id": "incident-abuse", "unit_id": unit,
         "type": "ebike_blocked", "phase": "start", "ts": time.time()}
if kind.startswith("flood"):
    payloads = [b'{"not": "an event"', json.dumps(event).encode()]  # garbage, and duplicates of one event
else:
    def spelled(field, text):
        return json.dumps({**event, "event_id": str(uuid.uuid4()), field: "@"}).replace('"@"', text).encode()
    payloads = [spelled("ts", "253402300800"), spelled("ts", "1e300"), spelled("ts", "Infinity"),
                json.dumps({"unit_id": unit, "ts": time.time(), "uptime_s": 1, "fps": 1, "inference_p50_ms": 1,
                            "inference_p95_ms": 1, "camera": "online", "relay": "released",
                            "outbox_depth": 10**30, "model_id": "m", "software": "s"}).encode(),
                json.dumps({**event, "event_id": str(uuid.uuid4()), "detail": "poison"}).encode()]
start = time.monotonic()
sent, end = 0, start + seconds
while time.monotonic() < end:
    for p in payloads:
        t = topic if b"outbox_depth" not in p else f"liftguard/v1/units/{unit}/heartbeat"
        # QoS 1 so the broker cannot shed the abuse.
        c.publish(t, p, qos=1)
        sent += 1
    if rate > 0:  # paced: sleep off any lead over `rate` messages a second
        ahead = sent / rate - (time.monotonic() - start)
        if ahead > 0:
            time.sleep(ahead)
c.loop_stop()
print(json.dumps({"sent": sent, "seconds": seconds}))
"""

REFUSE_POISON = ("CREATE TRIGGER refuse_poison BEFORE INSERT ON events WHEN NEW.detail = 'poison' "
                 "BEGIN SELECT RAISE(ABORT, 'this row breaks the store'); END")


# name -> the abusive unit's target rate in messages/s (0: as fast as one client can publish)
RUNS = {"baseline": 0.0, "flood_5240": 5240.0, "flood_max": 0.0, "poison": 20.0}


def abuse_run(kind: str, workdir: Path, cli: list[str], start_broker: Any, server_cls: Any,
              simulate: Any, seconds: float = 30.0) -> dict[str, Any]:
    from fleet.store import Store

    print(f"\n== abuse: {kind}", flush=True)
    broker = start_broker(workdir / f"broker-{kind}")
    db_path = workdir / f"{kind}.db"
    db = f"sqlite:///{db_path}"
    store = Store.open(db)
    store.migrate()
    store.close()
    with sqlite3.connect(db_path) as conn:
        conn.execute(REFUSE_POISON)
    server = server_cls(db, broker, workdir, kind, shared=False)
    report = workdir / f"sim-{kind}.json"
    sim = simulate(broker, 50, seconds + 5, 5.0, 2.0, seconds, report, prefix=kind)
    flooder = None
    try:
        time.sleep(4.0)  # units connected, alerts flowing
        if kind != "baseline":
            flooder = subprocess.Popen([sys.executable, "-c", FLOODER, str(broker.port), kind, str(seconds - 4),
                                        str(RUNS[kind])],
                                       stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        _, err = sim.communicate(timeout=seconds + 240)
        if sim.returncode != 0:
            raise RuntimeError(f"simulator failed: {err.decode()[-2000:]}")
        abuse = json.loads(flooder.communicate(timeout=120)[0]) if flooder else {"sent": 0, "seconds": 0}
        published = set(json.loads(report.read_text())["event_ids"])
        store = Store.open(db)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            stored = {r["event_id"] for r in store.query("SELECT event_id FROM events")}
            if published <= stored:
                break
            time.sleep(1)
        quarantined = store.query("SELECT kind, reason, times_seen FROM quarantine")
        store.close()
        metrics = server.metrics()
        health = server.http.get("/healthz").json()
    finally:
        if flooder and flooder.poll() is None:
            flooder.kill()
        if sim.poll() is None:
            sim.kill()
        server.stop()
        broker.stop()
    counters = metrics["ingest"]["counters"]
    result = {
        "run": kind, "abuse_target_rate_per_s": RUNS[kind] or None, "good_units": 50, "good_alerts_per_s": 5.0,
        "seconds": seconds,
        "abuse_messages_sent": abuse["sent"],
        "abuse_rate_per_s": round(abuse["sent"] / abuse["seconds"], 1) if abuse["seconds"] else 0,
        "good_events_published": len(published), "good_events_lost": len(published - stored),
        "good_event_latency_e2e": metrics["ingest"]["event_latency_e2e"],
        "good_event_p99_ms": metrics["ingest"]["event_latency_e2e"].get("p99_ms"),
        "rejected": {k: v for k, v in counters.items() if k.startswith("rejected_")},
        "duplicate_events": counters.get("duplicate_events", 0), "quarantined": counters.get("quarantined", 0),
        "store_errors": counters.get("store_errors", 0),
        "quarantine_rows": [{**q, "reason": q["reason"][:120]} for q in quarantined],
        "healthz_after": health,
    }
    print(f"   abuse {result['abuse_rate_per_s']}/s; good events {len(published)}, lost {result['good_events_lost']}, "
          f"p99 {result['good_event_p99_ms']} ms; rejected {result['rejected']}; quarantined {result['quarantined']}",
          flush=True)
    return result
