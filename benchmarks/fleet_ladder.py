"""The city-scale load ladder (issue 18), for `bench_fleet.py --ladder`.

12,370 real MQTT connections (one paho client each, one simulator process); a shorter heartbeat stands
in for more units: 30 s = 12,370 unit-equivalents, 3 s = 123,700 (a real unit beats every 30 s). Plus
100 alerts/s (event + JPEG snapshot, QoS 1) on every rung. Each rung runs on a fresh broker and database:
one `liftguard-fleet serve` on SQLite, or N of them on one PostgreSQL, on the shared subscription
`$share/fleet/...`.

Honest stand-in: coalescing writes a unit's row once per `heartbeat_flush_s`; with 12,370 connections
beating every 3 s, a flush period above 3 s would merge beats that a real 123,700-unit fleet (one beat per
unit per 30 s) could not merge. So each rung flushes at 0.8 x the stand-in interval (at most 5 s): the
database writes as many unit rows per second as the real fleet would make it write.

Per rung: offered vs stored (heartbeats, events), events lost (PUBACKed by the broker minus in the
database), event latency p50/p99 (device publish -> committed; the worst server's figure), CPU of the
servers, PostgreSQL, the broker and the simulator (share of one core over the measured window), the
whole machine's busy cores and what other processes used (this is a shared machine), peak RSS, load average.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from benchmarks.bench_fleet import CLI, PASSWORD, ROOT, start_broker
from benchmarks.proc_sampler import ProcessSampler, stop_process
from fleet.store import Store
from tests.fleet.pgserver import PostgresServer
from tests.support.mosquitto import MosquittoBroker, free_port

CONNECTIONS = 12_370
REAL_HEARTBEAT_S = 30.0
RUNGS = (12_370, 24_740, 49_480, 61_850, 82_467, 123_700)
ALERT_RATE = 100.0


class LadderServer:
    """One `liftguard-fleet serve` process with the ladder's settings; statistics read from --stats-out."""

    def __init__(self, db: str, broker: MosquittoBroker, workdir: Path, name: str, shared: bool,
                 flush_s: float) -> None:
        self.name = name
        self.port = free_port()
        self.stats_path = workdir / f"stats-{name}.json"
        env = {**os.environ, "LIFTGUARD_FLEET_PASSWORD": PASSWORD, "PYTHONPATH": str(ROOT)}
        cmd = [*CLI, "serve", "--db", db, "--mqtt", broker.url, "--http-port", str(self.port), "--client-id",
               f"fleet-{name}", "--stats-out", str(self.stats_path), "--no-migrate",
               "--heartbeat-flush-s", f"{flush_s:g}"]
        if shared:
            cmd += ["--shared-group", "fleet"]
        self.log = (workdir / f"server-{name}.log").open("w")
        self.proc = subprocess.Popen(cmd, env=env, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}/healthz", timeout=5).json().get("mqtt"):
                    break
            except (httpx.HTTPError, ValueError):
                pass
            if self.proc.poll() is not None:
                raise RuntimeError(f"server {name} exited: see {workdir}/server-{name}.log")
            time.sleep(0.3)
        else:
            raise RuntimeError(f"server {name} did not come up")

    def queued(self) -> int:
        """Messages received and not yet taken by the writer (from /healthz)."""
        try:
            body = httpx.get(f"http://127.0.0.1:{self.port}/healthz", timeout=10).json()
        except (httpx.HTTPError, ValueError):
            return 1
        return int(body.get("ingest", {}).get("queued", 0))

    def stop(self) -> dict[str, Any]:
        stop_process(self.proc, 60)
        self.log.close()
        return dict(json.loads(self.stats_path.read_text())) if self.stats_path.exists() else {}


def start_server(db: str, broker: MosquittoBroker, workdir: Path, name: str, shared: bool,
                 flush_s: float) -> LadderServer:
    """A server, tried again on another port when its free port was taken before it bound it (other
    processes on this shared machine pick free ports too)."""
    for attempt in range(3):
        try:
            return LadderServer(db, broker, workdir, name, shared, flush_s)
        except RuntimeError as exc:
            if "address already in use" not in (workdir / f"server-{name}.log").read_text() or attempt == 2:
                raise
            print(f"   {name}: its HTTP port was taken meanwhile ({exc}); again on another port", flush=True)
    raise AssertionError("unreachable")


def rung(setup: str, n_servers: int, units_equiv: int, work: Path, pg: PostgresServer | None,
         duration_s: float, simulator_nice: int = 0) -> dict[str, Any]:
    heartbeat_s = REAL_HEARTBEAT_S * CONNECTIONS / units_equiv
    flush_s = round(min(5.0, 0.8 * heartbeat_s), 2)
    name = f"{setup}{n_servers}-{units_equiv}"
    rdir = work / name
    rdir.mkdir()
    print(f"\n== {name}: {CONNECTIONS} connections beating every {heartbeat_s:.2f} s = {units_equiv} units, "
          f"{n_servers} server(s) on {setup}, alerts {ALERT_RATE:g}/s, flush {flush_s} s", flush=True)
    db = pg.create_database() if pg else f"sqlite:///{rdir / 'fleet.db'}"
    store = Store.open(db)
    store.migrate()
    broker = start_broker(rdir / "broker")
    assert broker.proc is not None
    servers: list[LadderServer] = []
    sim: subprocess.Popen[bytes] | None = None
    stats: list[dict[str, Any]] = []
    try:
        servers = [start_server(db, broker, rdir, f"{name}-{i}", n_servers > 1, flush_s) for i in range(n_servers)]
        report = rdir / "sim.json"
        # `nice` > 0: the load generator runs only on CPU the stack leaves idle, as if on a core of its own;
        # the offered rate column shows whether it still kept up.
        niced = ["nice", "-n", str(simulator_nice)] if simulator_nice else []
        sim = subprocess.Popen(
            [*niced, *CLI, "simulate", "--mqtt", broker.url, "--units", str(CONNECTIONS),
             "--heartbeat-s", f"{heartbeat_s:g}",
             "--duration-s", str(duration_s), "--alert-rate", str(ALERT_RATE), "--alert-start-s", "2",
             "--alert-duration-s", str(duration_s - 4), "--report", str(report), "--prefix", "u",
             "--stop", "drop", "--connect-rate", "3000"],
            env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        pids = {"broker": broker.proc.pid, "simulator": sim.pid, **{s.name: s.proc.pid for s in servers}}
        pg_pid = int((pg.datadir / "postmaster.pid").read_text().split()[0]) if pg else None
        sampler = ProcessSampler(pids, trees={"postgres": pg_pid} if pg_pid else None)
        t_connect = time.monotonic()
        while time.monotonic() - t_connect < 180:  # every unit's status stored = connected and known
            if int(store.query("SELECT COUNT(*) AS n FROM units")[0]["n"]) >= CONNECTIONS:
                break
            time.sleep(0.5)
        connect_s = time.monotonic() - t_connect
        pg_log = pg.workdir / "postgres.log" if pg else None
        log_from = pg_log.stat().st_size if pg_log and pg_log.exists() else 0
        spy = []
        if os.environ.get("LADDER_PYSPY_DIR"):  # profile the servers over the measured window (py-spy, raw stacks)
            for srv in servers:
                out = Path(os.environ["LADDER_PYSPY_DIR"]) / f"pyspy-{srv.name}.txt"
                spy.append(subprocess.Popen(["py-spy", "record", "--pid", str(srv.proc.pid), "--rate", "100",
                                             "--duration", str(int(duration_s - 4)), "--format", "raw",
                                             "--threads", "-o", str(out)],
                                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        load0 = os.getloadavg()
        _, err = sim.communicate(timeout=duration_s + 240)
        for p in spy:
            p.wait(60)
        load1 = os.getloadavg()
        if sim.returncode != 0:
            raise RuntimeError(f"simulator failed: {err.decode()[-2000:]}")
        sim_report = json.loads(report.read_text())
        # Everything over the window the simulator offered its load (all units connected -> its loop ended).
        wall = sim_report["run_to"] - sim_report["run_from"]
        shares, machine = sampler.shares(sim_report["run_from"], sim_report["run_to"])
        cpu = {k: v for k, v in shares.items() if k not in ("simulator", "postgres")}
        pg_cpu = shares.get("postgres", 0.0)
        sim_cpu = shares.get("simulator", float("nan"))
        published = set(sim_report["event_ids"])
        t_drain = time.monotonic()
        stored: set[str] = set()
        while time.monotonic() - t_drain < 120:
            stored = {r["event_id"] for r in store.query("SELECT event_id FROM events")}
            if published <= stored:
                break
            time.sleep(0.5)
        # ... and every server's inbox empty, so heartbeats still queued are not cut off by the shutdown.
        while time.monotonic() - t_drain < 180 and any(s.queued() for s in servers):
            time.sleep(0.5)
        drain_s = time.monotonic() - t_drain
        rss = sampler.stop()
        stats = [s.stop() for s in servers]  # stopping flushes the held heartbeats
        servers = []
        beats = int(store.query("SELECT COALESCE(SUM(beats), 0) AS n FROM heartbeat_hours")[0]["n"])
        lock_waits = deadlocks = 0
        if pg_log and pg_log.exists():
            with pg_log.open("rb") as f:
                f.seek(log_from)
                text = f.read().decode(errors="replace")
            lock_waits = text.count("still waiting for")
            if os.environ.get("LADDER_PGLOG_DIR"):
                (Path(os.environ["LADDER_PGLOG_DIR"]) / f"pglog-{name}.txt").write_text(text)
            deadlocks = text.count("deadlock detected")
    finally:
        if sim and sim.poll() is None:
            sim.kill()
        for s in servers:
            s.stop()
        store.close()
        broker.stop()
    sent_beats = int(sim_report["counters"].get("heartbeats", 0))
    counters: dict[str, int] = {}
    for st in stats:
        for k, v in st.get("counters", {}).items():
            counters[k] = counters.get(k, 0) + int(v)
    lat = [st.get("event_latency_e2e", {}) for st in stats]
    ours = sum(cpu.values()) + pg_cpu + (sim_cpu if sim_cpu == sim_cpu else 0.0)
    result = {
        "setup": setup, "servers": n_servers, "units_equivalent": units_equiv, "connections": CONNECTIONS,
        "heartbeat_s": round(heartbeat_s, 3), "heartbeat_flush_s": flush_s, "alert_rate_per_s": ALERT_RATE,
        "measured_wall_s": round(wall, 1), "connect_s": round(connect_s, 1),
        "connected": sim_report["counters"].get("connected"),
        "disconnects": sim_report["counters"].get("disconnects", 0),
        "offered_msgs_per_s": round((sent_beats + 2 * len(published)) / wall, 1),
        "heartbeats_sent": sent_beats, "heartbeats_stored": beats, "heartbeats_lost": sent_beats - beats,
        "events_published": len(published), "events_stored": len(published & stored),
        "events_lost": len(published - stored), "drain_s": round(drain_s, 1),
        "latency_p50_ms": max((x.get("p50_ms", 0.0) for x in lat), default=None),
        "latency_p99_ms": max((x.get("p99_ms", 0.0) for x in lat), default=None),
        "latency_max_ms": max((x.get("max_ms", 0.0) for x in lat), default=None),
        "latency_per_server": lat,
        # received by a server -> committed: the server's own part (the rest is simulator + broker under load)
        "server_latency_p99_ms": max((st.get("event_latency_server", {}).get("p99_ms", 0.0) for st in stats),
                                     default=None),
        # The fleet servers' CPU time per message offered: a capacity figure that load on the machine barely moves.
        "server_cpu_us_per_msg": round((sum(cpu.values()) - cpu.get("broker", 0.0)) * wall * 1e6
                                       / max(1, sent_beats + 2 * len(published)), 1),
        "cpu_core_share": {**{k: round(v, 3) for k, v in cpu.items()}, "postgres": round(pg_cpu, 3),
                           "simulator": round(sim_cpu, 3)},
        "machine_busy_cores": round(machine, 2), "other_processes_cores": round(max(0.0, machine - ours), 2),
        "pg_lock_waits_over_50ms": lock_waits, "pg_deadlocks": deadlocks,
        "peak_rss_mb": rss, "loadavg_start": [round(x, 2) for x in load0], "loadavg_end": [round(x, 2) for x in load1],
        "ingest_counters": {k: v for k, v in counters.items()
                            if k.startswith(("write_retries", "store_errors", "heartbeat", "rejected", "quarantined",
                                             "accepted", "duplicate"))},
    }
    ok = result["events_lost"] == 0 and (result["latency_p99_ms"] or 1e9) <= 250
    print(f"   {'OK ' if ok else 'MISS'} p50 {result['latency_p50_ms']} ms, p99 {result['latency_p99_ms']} ms, "
          f"events lost {result['events_lost']}/{len(published)}, heartbeats {beats}/{sent_beats}, "
          f"CPU {result['cpu_core_share']}, machine busy {result['machine_busy_cores']} cores "
          f"(others {result['other_processes_cores']}), load {result['loadavg_end'][0]}", flush=True)
    return result


def time_wait_sockets() -> int:
    """TCP sockets in TIME_WAIT (state 06 in /proc/net/tcp and tcp6)."""
    n = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as f:
            n += sum(1 for line in f if line.split()[3:4] == ["06"])
    return n


def wait_for_ports(most: int = 2000, timeout_s: float = 120.0) -> float:
    """Let the last rung's 12,370 closed connections leave TIME_WAIT before the next opens as many: with
    28k ephemeral ports, two rungs back to back ran out of them (connect: address already in use)."""
    t0 = time.monotonic()
    while time_wait_sockets() > most and time.monotonic() - t0 < timeout_s:
        time.sleep(1)
    return round(time.monotonic() - t0, 1)


def ladder(setups: list[tuple[str, int]], rungs: list[int], duration_s: float,
           simulator_nice: int = 0) -> list[dict[str, Any]]:
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-fleet-ladder-") as tmp:
        work = Path(tmp)
        for setup, n in setups:
            pg = PostgresServer(work / f"pg-{setup}{n}").start() if setup == "postgres" else None
            if pg:  # log every row-lock wait over 50 ms: the ladder counts them per rung
                import psycopg

                with psycopg.connect(pg.url(), autocommit=True) as conn:
                    conn.execute("ALTER SYSTEM SET log_lock_waits = on")
                    conn.execute("ALTER SYSTEM SET deadlock_timeout = '50ms'")
                    conn.execute("SELECT pg_reload_conf()")
            try:
                for units in rungs:
                    try:
                        waited = wait_for_ports()
                        results.append({**rung(setup, n, units, work, pg, duration_s, simulator_nice),
                                        "waited_for_ports_s": waited, "simulator_nice": simulator_nice})
                    except Exception as exc:  # one failed rung is a result too; the ladder goes on
                        print(f"   rung failed: {exc}", file=sys.stderr, flush=True)
                        results.append({"setup": setup, "servers": n, "units_equivalent": units, "error": str(exc)})
            finally:
                if pg:
                    pg.stop()
    return results


def plot(results: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(17, 4.8))
    keys = sorted({(r["setup"], r["servers"]) for r in results})
    for setup, n in keys:
        rows = [r for r in results if (r["setup"], r["servers"]) == (setup, n) and "error" not in r]
        label = f"{n} server{'s' if n > 1 else ''}, {'PostgreSQL' if setup == 'postgres' else 'SQLite'}"
        xs = [r["units_equivalent"] / 1000 for r in rows]
        ax1.plot(xs, [max(1.0, r["latency_p99_ms"] or 1.0) for r in rows], "o-", label=f"{label} p99")
        ax1.plot(xs, [max(1.0, r["latency_p50_ms"] or 1.0) for r in rows], "x:", label=f"{label} p50")
        for r in rows:
            if r["events_lost"]:
                ax1.annotate(f"lost {r['events_lost']}", (r["units_equivalent"] / 1000, r["latency_p99_ms"] or 1))
        ax2.plot(xs, [sum(v for k, v in r["cpu_core_share"].items() if k not in ("broker", "simulator", "postgres"))
                      for r in rows], "o-", label=f"{label}: fleet servers")
        if setup == "postgres":
            ax2.plot(xs, [r["cpu_core_share"]["postgres"] for r in rows], "s--", label=f"{label}: PostgreSQL")
        ax2.plot(xs, [r["cpu_core_share"]["broker"] for r in rows], "^:", label=f"{label}: Mosquitto")
        ax2.plot(xs, [r["other_processes_cores"] for r in rows], "k.", alpha=0.4,
                 label=f"{label}: other agents' processes")
        ax3.plot(xs, [r["offered_msgs_per_s"] for r in rows], "o-", label=f"{label} offered")
        ax3.plot(xs, [(r["heartbeats_stored"] + 2 * r["events_stored"]) / r["measured_wall_s"] for r in rows], "x:",
                 label=f"{label} stored")
    ax1.axhline(250, color="red", linestyle="--", label="p99 budget 250 ms")
    ax1.set_yscale("log")
    ax1.set_xlabel("unit-equivalents (thousands)")
    ax1.set_ylabel("event latency, publish -> committed (ms)")
    ax1.set_title("Event latency per rung (100 alerts/s)")
    ax1.legend(fontsize=7)
    ax2.set_xlabel("unit-equivalents (thousands)")
    ax2.set_ylabel("cores (share of one core)")
    ax2.set_title("CPU over the measured window (2-core machine, shared)")
    ax2.legend(fontsize=6)
    ax3.set_xlabel("unit-equivalents (thousands)")
    ax3.set_ylabel("messages / s")
    ax3.set_title("Offered vs stored (heartbeats + events + snapshots)")
    ax3.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def markdown_table(results: list[dict[str, Any]]) -> str:
    """The ladder as the README quotes it."""
    lines = ["| setup | unit-equiv. (beat every) | offered msg/s | events lost / sent | heartbeats stored / sent "
             "| p50 / p99 (server part p99) | CPU: servers · PostgreSQL · broker · simulator (cores) | others' "
             "cores · load | server µs/msg | peak RSS per server |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        label = f"{r['servers']} × {'PostgreSQL' if r['setup'] == 'postgres' else 'SQLite'}"
        if "error" in r:
            lines.append(f"| {label} | {r['units_equivalent']:,} | failed: {r['error'][:80]} |||||||")
            continue
        cpu = r["cpu_core_share"]
        servers = sum(v for k, v in cpu.items() if k not in ("broker", "simulator", "postgres"))
        rss = max(v for k, v in r["peak_rss_mb"].items() if k not in ("broker", "simulator"))
        ok = r["events_lost"] == 0 and (r["latency_p99_ms"] or 1e9) <= 250
        p99 = f"**{r['latency_p99_ms']:,.0f}**" if ok else f"{r['latency_p99_ms']:,.0f}"
        lines.append(
            f"| {label} | {r['units_equivalent']:,} ({r['heartbeat_s']:g} s) | {r['offered_msgs_per_s']:,.0f} "
            f"| {r['events_lost']} / {r['events_published']:,} | {r['heartbeats_stored']:,} / {r['heartbeats_sent']:,} "
            f"| {r['latency_p50_ms']:,.0f} / {p99} ms ({r['server_latency_p99_ms']:,.0f}) "
            f"| {servers:.2f} · {cpu.get('postgres', 0):.2f} · {cpu.get('broker', 0):.2f} "
            f"· {cpu.get('simulator', 0):.2f} "
            f"| {r['other_processes_cores']:.2f} · {r['loadavg_end'][0]:.1f} | {r['server_cpu_us_per_msg']:.0f} "
            f"| {rss:.0f} MB |")
    return "\n".join(lines)
