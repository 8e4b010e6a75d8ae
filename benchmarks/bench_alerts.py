"""Alert path benchmark: events/s through the durable outbox + MQTT link, and publish-to-subscriber
latency on loopback, against a real Mosquitto started for the run.

    .venv/bin/python benchmarks/bench_alerts.py [--burst 2000] [--paced 300] [--rate 50]

Burst: events emitted back to back (each one an fsync'd SQLite commit) until all are delivered.
Paced: events at --rate per second; latency = emit() call → fleet-side subscriber on_message.
Writes benchmarks/results/bench_alerts.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import paho.mqtt.client as mqtt  # noqa: E402
from paho.mqtt.enums import CallbackAPIVersion  # noqa: E402

from contract.mqtt import EventPayload  # noqa: E402
from contract.stats import percentile  # noqa: E402
from edge.report.link import MqttLink  # noqa: E402
from edge.report.link_settings import LinkSettings  # noqa: E402
from edge.report.outbox import Outbox  # noqa: E402
from tests.support.mosquitto import MosquittoBroker, mosquitto_binary  # noqa: E402

UNIT = "bench-unit"


class Receiver:
    def __init__(self, port: int) -> None:
        self.arrived: dict[str, float] = {}
        self.lock = threading.Lock()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-fleet", protocol=mqtt.MQTTv5)
        self.client.on_message = self._on_message
        ready = threading.Event()
        self.client.on_subscribe = lambda *a: ready.set()
        self.client.connect("127.0.0.1", port)
        self.client.subscribe(f"liftguard/v1/units/{UNIT}/events", qos=1)
        self.client.loop_start()
        ready.wait(5)

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        now = time.perf_counter()
        event_id = json.loads(msg.payload)["event_id"]
        with self.lock:
            self.arrived.setdefault(event_id, now)

    def wait_for(self, ids: list[str], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if all(i in self.arrived for i in ids):
                    return True
            time.sleep(0.01)
        return False


def event(n: int) -> EventPayload:
    return EventPayload(incident_id=f"bench-{n:06d}", unit_id=UNIT, type="ebike_blocked", phase="start",
                        ts=time.time(), cls="ebike", confidence=0.9)


def pct(values: list[float], q: float) -> float:
    return percentile(values, q * 100)


def run(burst: int, paced: int, rate: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        # persistence as in config/mosquitto/mosquitto.conf (the test fixture saves on every change)
        broker = MosquittoBroker(Path(tmp) / "broker", extra_config="autosave_interval 100").start()
        receiver = Receiver(broker.port)
        settings = LinkSettings(unit_id=UNIT, host="127.0.0.1", port=broker.port, heartbeat_s=3600)
        link = MqttLink(settings, Outbox(Path(tmp) / "outbox.db"))
        link.start()
        link.wait_connected(10)
        try:
            # burst
            events = [event(n) for n in range(burst)]
            t0 = time.perf_counter()
            for e in events:
                link.emit(e)
            t_emitted = time.perf_counter()
            ok_burst = receiver.wait_for([e.event_id for e in events], 120)
            t_done = max(receiver.arrived[e.event_id] for e in events) if ok_burst else float("nan")
            # paced
            sent: dict[str, float] = {}
            period = 1.0 / rate
            next_at = time.perf_counter()
            for n in range(paced):
                e = event(burst + n)
                sent[e.event_id] = time.perf_counter()
                link.emit(e)
                next_at += period
                time.sleep(max(0.0, next_at - time.perf_counter()))
            ok_paced = receiver.wait_for(list(sent), 30)
            latencies = [(receiver.arrived[i] - t) * 1000 for i, t in sent.items() if i in receiver.arrived]
        finally:
            link.close()
            receiver.client.disconnect()
            receiver.client.loop_stop()
            broker.stop()
    version = subprocess.run([mosquitto_binary(), "-h"], capture_output=True, text=True).stdout.splitlines()[0]
    return {
        "burst_events": burst,
        "burst_all_delivered": ok_burst,
        "emit_rate_per_s": round(burst / (t_emitted - t0), 1),
        "emit_mean_ms": round((t_emitted - t0) / burst * 1000, 3),
        "end_to_end_rate_per_s": round(burst / (t_done - t0), 1),
        "paced_events": paced,
        "paced_rate_per_s": rate,
        "paced_all_delivered": ok_paced,
        "latency_ms_p50": round(statistics.median(latencies), 2),
        "latency_ms_p99": round(pct(latencies, 0.99), 2),
        "latency_ms_max": round(max(latencies), 2),
        "environment": {
            "python": platform.python_version(), "sqlite": sqlite3.sqlite_version, "mosquitto": version,
            "cpus": os.cpu_count(), "machine": platform.machine(),
            "note": "loopback, one process for link and subscriber; outbox on the temp filesystem, "
                    "synchronous=FULL (one fsync per emit)",
        },
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--burst", type=int, default=2000)
    ap.add_argument("--paced", type=int, default=300)
    ap.add_argument("--rate", type=float, default=50.0)
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "bench_alerts.json")
    opts = ap.parse_args()
    result = run(opts.burst, opts.paced, opts.rate)
    opts.out.parent.mkdir(parents=True, exist_ok=True)
    opts.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"burst {result['burst_events']} events: emit {result['emit_rate_per_s']}/s "
          f"({result['emit_mean_ms']} ms each), delivered end to end {result['end_to_end_rate_per_s']}/s")
    print(f"paced {result['paced_events']} at {result['paced_rate_per_s']}/s: latency p50 "
          f"{result['latency_ms_p50']} ms, p99 {result['latency_ms_p99']} ms, max {result['latency_ms_max']} ms")
    print(f"wrote {opts.out}")


if __name__ == "__main__":
    main()
