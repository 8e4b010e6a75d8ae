"""How many unit connections one Mosquitto holds here, and what each costs (issue 18, item 3).

Starts Mosquitto with the benchmark's settings (no per-packet log, no persistence), then opens unit-like
connections step by step from worker processes: MQTT 3.1.1 CONNECT with a retained LWT, SUBSCRIBE to the
unit's `cmd/#`, one retained `status` (what a LiftGuard unit does on connect). After each step it reads
the broker's RSS and open file handles from /proc. Past the last step, the workers keep connecting until
the broker stops answering: the most connections it held.

Writes benchmarks/results/bench_broker_connections.json. Usage:
    .venv/bin/python benchmarks/bench_broker_connections.py [--steps 0,2000,5000,10000,15000,19000]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing as mp
import os
import resource
import socket
import sys
import tempfile
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.bench_fleet import start_broker  # noqa: E402
from benchmarks.proc_sampler import proc_rss_mb  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
PREFIX = "liftguard/v1/units"


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _s(text: str | bytes) -> bytes:
    data = text.encode() if isinstance(text, str) else text
    return len(data).to_bytes(2, "big") + data


def _packet(first: int, body: bytes) -> bytes:
    return bytes([first]) + _varint(len(body)) + body


def unit_packets(unit: str) -> bytes:
    """CONNECT (clean session, keep-alive off, retained QoS 1 LWT) + SUBSCRIBE cmd/# + retained status."""
    flags = 0x02 | 0x04 | 0x08 | 0x20  # clean session, will, will QoS 1, will retain
    connect = _packet(0x10, _s("MQTT") + bytes([4, flags]) + (0).to_bytes(2, "big") + _s(unit)
                      + _s(f"{PREFIX}/{unit}/status") + _s(b'{"state": "offline"}'))
    subscribe = _packet(0x82, (1).to_bytes(2, "big") + _s(f"{PREFIX}/{unit}/cmd/#") + bytes([1]))
    status = _packet(0x31, _s(f"{PREFIX}/{unit}/status") + b'{"state": "online", "site": "Site 001"}')
    return connect + subscribe + status


def worker(port: int, worker_no: int, pipe: Connection) -> None:
    """Opens connections when told how many more; answers with how many got a CONNACK."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    socks: list[socket.socket] = []
    while True:
        more = pipe.recv()
        if more is None:
            break
        ok = failed = 0
        for _ in range(more):
            unit = f"w{worker_no}-{len(socks):06d}"
            try:
                s = socket.create_connection(("127.0.0.1", port), timeout=10)
                s.sendall(unit_packets(unit))
                connack = s.recv(4)
            except OSError:
                failed += 1
                if failed >= 20:
                    break  # the broker (or this process) is out of file handles
                continue
            if connack[:1] == b"\x20" and connack[3:4] == b"\x00":
                socks.append(s)
                ok += 1
            else:
                s.close()
                failed += 1
        pipe.send((ok, failed, len(socks)))
    for s in socks:
        s.close()


def broker_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", default="0,2000,5000,10000,15000,19000")
    parser.add_argument("--workers", type=int, default=3, help="client processes (each its own file handles)")
    args = parser.parse_args()
    steps = [int(x) for x in args.steps.split(",")]
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # the broker inherits it
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-broker-") as tmp:
        broker = start_broker(Path(tmp))
        assert broker.proc is not None
        pid = broker.proc.pid
        pipes, procs = [], []
        for w in range(args.workers):
            ours, theirs = mp.Pipe()
            p = mp.Process(target=worker, args=(broker.port, w, theirs), daemon=True)
            p.start()
            pipes.append(ours)
            procs.append(p)
        held = 0
        try:
            for target in [*steps, None]:
                more = (max(0, target - held) if target is not None else 10**6)
                share = [more // args.workers + (1 if i < more % args.workers else 0) for i in range(args.workers)]
                t0 = time.monotonic()
                for pipe, n in zip(pipes, share, strict=True):
                    pipe.send(n)
                answers = [pipe.recv() for pipe in pipes]
                held = sum(a[2] for a in answers)
                time.sleep(1.0)  # let the broker settle its buffers
                status = Path(f"/proc/{pid}/status").read_text()
                row = {"target": target, "connections": held, "refused_or_failed": sum(a[1] for a in answers),
                       "broker_rss_mb": round(proc_rss_mb(pid), 1), "broker_fds": broker_fds(pid),
                       "broker_vmhwm_mb": round(proc_rss_mb(pid, "VmHWM"), 1),
                       "broker_threads": int(next(ln.split()[1] for ln in status.splitlines()
                                                  if ln.startswith("Threads:"))),
                       "connect_s": round(time.monotonic() - t0, 1), "alive": broker.proc.poll() is None}
                rows.append(row)
                print(json.dumps(row), flush=True)
                if target is None or not row["alive"]:
                    break
        finally:
            for pipe in pipes:
                with contextlib.suppress(OSError):
                    pipe.send(None)
            for p in procs:
                p.join(10)
            broker.stop()
    base = rows[0]
    per_conn = [(r["broker_rss_mb"] - base["broker_rss_mb"]) * 1024 / r["connections"]
                for r in rows[1:] if r["connections"]]
    out = {"benchmark": "broker_connections", "mosquitto": "2.0.11", "rlimit_nofile": [soft, hard],
           "cpu_count": os.cpu_count(), "loadavg_at_end": os.getloadavg(), "steps": rows,
           "most_connections_held": max(r["connections"] for r in rows),
           "kb_per_connection": round(sorted(per_conn)[len(per_conn) // 2], 1) if per_conn else None,
           "note": "each connection = CONNECT with retained LWT + SUBSCRIBE cmd/# + retained status, keep-alive off"}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "bench_broker_connections.json").write_text(json.dumps(out, indent=1))
    print(f"most held {out['most_connections_held']}, {out['kb_per_connection']} KB each; "
          f"wrote {RESULTS / 'bench_broker_connections.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
