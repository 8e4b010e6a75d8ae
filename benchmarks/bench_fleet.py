"""Fleet server benchmark: real Mosquitto, `liftguard-fleet simulate`, `liftguard-fleet serve`.

Scenarios (heartbeat every 30 s, real time):
  1. 1,237 units (the seed fleet), a trickle of alerts.
  2. 12,370 units (10x), then a burst of 100 alerts/s for 60 s (each alert = event + JPEG snapshot).
  3. Two servers on one MQTT v5 shared subscription ($share/fleet/...) over PostgreSQL, 12,370
     units and the same burst: how the load splits, still without loss.

Measured per scenario: ingest latency (device publish -> row committed, p50/p99, from the server's
own /api/metrics), events lost (ids the simulator got PUBACKs for minus ids in the database: must
be 0), server CPU (share of one core) and peak RSS. Writes benchmarks/results/bench_fleet.json and
.png. Usage:  .venv/bin/python benchmarks/bench_fleet.py [--quick]

`--abuse` runs instead a one-unit flood and a poison-message run beside 50 good units (benchmarks/fleet_abuse.py)
and records the good units' event p99 in benchmarks/results/bench_fleet_abuse.json.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.proc_sampler import ProcessSampler, proc_cpu_s, stop_process  # noqa: E402
from fleet.store import Store  # noqa: E402
from tests.fleet.pgserver import PostgresServer, pg_bin_dir  # noqa: E402
from tests.support.mosquitto import MosquittoBroker, free_port, ratelimit_config  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
PASSWORD = "benchmark-password-1"
CLI = [sys.executable, "-m", "fleet.cli"]


class Server:
    """One `liftguard-fleet serve` process."""

    def __init__(self, db: str, broker: MosquittoBroker, workdir: Path, name: str, shared: bool) -> None:
        self.port = free_port()
        self.name = name
        env = {**os.environ, "LIFTGUARD_FLEET_PASSWORD": PASSWORD, "PYTHONPATH": str(ROOT)}
        subprocess.run([*CLI, "user", "add", "bench", "--role", "admin", "--db", db], env=env, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        cmd = [*CLI, "serve", "--db", db, "--mqtt", broker.url, "--http-port", str(self.port), "--client-id",
               f"fleet-{name}", "--stats-out", str(workdir / f"stats-{name}.json"), "--no-migrate"]
        if shared:
            cmd += ["--shared-group", "fleet"]
        self.log = (workdir / f"server-{name}.log").open("w")
        self.proc = subprocess.Popen(cmd, env=env, stdout=self.log, stderr=subprocess.STDOUT)
        self.http = httpx.Client(base_url=f"http://127.0.0.1:{self.port}", timeout=30)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if self.http.get("/healthz").json().get("mqtt"):
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        else:
            raise RuntimeError(f"server {name} did not come up")
        self.http.post("/api/login", json={"username": "bench", "password": PASSWORD}).raise_for_status()
        self.sampler = ProcessSampler({name: self.proc.pid})

    @property
    def peak_rss(self) -> float:
        return self.sampler.peak_rss_mb[self.name]

    @property
    def samples(self) -> list[tuple[float, float, float]]:
        """(wall time, cpu seconds, rss MB) every 0.5 s while the server ran."""
        return self.sampler.timeline(self.name)

    def cpu_share_between(self, start: float, end: float) -> float:
        """Average share of one core used between two wall-clock times (from the samples)."""
        return self.sampler.shares(start, end)[0].get(self.name, float("nan"))

    def metrics(self) -> dict[str, Any]:
        return dict(self.http.get("/api/metrics").json())

    def stop(self) -> None:
        self.sampler.stop()
        stop_process(self.proc, 30)
        self.log.close()


def simulate(broker: MosquittoBroker, units: int, duration_s: float, alert_rate: float, alert_start_s: float,
             alert_duration_s: float | None, report: Path, prefix: str) -> subprocess.Popen[bytes]:
    cmd = [*CLI, "simulate", "--mqtt", broker.url, "--units", str(units), "--heartbeat-s", "30",
           "--duration-s", str(duration_s), "--alert-rate", str(alert_rate), "--alert-start-s", str(alert_start_s),
           "--report", str(report), "--prefix", prefix, "--stop", "drop", "--connect-rate", "3000"]
    if alert_duration_s is not None:
        cmd += ["--alert-duration-s", str(alert_duration_s)]
    return subprocess.Popen(cmd, env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)


def wait_for_connected(store: Store, units: int, timeout: float = 120) -> float:
    """Seconds until every unit's `status` reached the database (asked of the DB, not the API, so
    polling does not load the server being measured)."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if int(store.query("SELECT COUNT(*) AS n FROM units")[0]["n"]) >= units:
            return time.monotonic() - t0
        time.sleep(1)
    return float("nan")


def start_broker(workdir: Path, extra: str = "") -> MosquittoBroker:
    broker = MosquittoBroker(workdir, extra_config="max_connections -1\nmax_inflight_messages 1000\n" + extra)
    conf = broker.write_config()
    # The test fixture's broker logs every packet; at 12k clients that log would be the bottleneck.
    conf.write_text(conf.read_text().replace("log_type all", "log_type error\nlog_type warning")
                    .replace("persistence true", "persistence false"))
    broker.write_config = lambda: conf  # type: ignore[method-assign]
    return broker.start()


def scenario(name: str, db: str, workdir: Path, units: int, n_servers: int,
             alert_rate: float, burst_s: float, warmup_s: float) -> dict[str, Any]:
    print(f"\n== {name}: {units} units, {n_servers} server(s), alerts {alert_rate}/s for {burst_s}s", flush=True)
    # A fresh broker per scenario: no retained statuses of the previous fleet.
    broker = start_broker(workdir / f"broker-{name}")
    store = Store.open(db)
    store.migrate()
    servers = [Server(db, broker, workdir, f"{name}-{i}", shared=n_servers > 1) for i in range(n_servers)]
    report_path = workdir / f"sim-{name}.json"
    duration = warmup_s + burst_s + 5
    sim = simulate(broker, units, duration, alert_rate, warmup_s, burst_s, report_path, prefix=name)
    try:
        connect_s = wait_for_connected(store, units)
        print(f"   all {units} units known to the fleet after {connect_s:.1f}s", flush=True)
        cpu0 = [proc_cpu_s(s.proc.pid) for s in servers]
        t0 = time.monotonic()
        _, err = sim.communicate(timeout=duration + 180)
        if sim.returncode != 0:
            raise RuntimeError(f"simulator failed: {err.decode()[-2000:]}")
        wall = time.monotonic() - t0
        cpu = [proc_cpu_s(s.proc.pid) - c for s, c in zip(servers, cpu0, strict=True)]
        sim_report = json.loads(report_path.read_text())
        published = set(sim_report["event_ids"])
        # Let the writers drain what is still queued, then compare ids.
        deadline = time.monotonic() + 60
        stored: set[str] = set()
        while time.monotonic() < deadline:
            stored = {r["event_id"] for r in store.query("SELECT event_id FROM events")}
            if published <= stored:
                break
            time.sleep(1)
        metrics = [s.metrics() for s in servers]
        beats = int(store.query("SELECT COALESCE(SUM(beats), 0) AS n FROM heartbeat_hours")[0]["n"])
        window = store.query("SELECT MIN(received_at) AS a, MAX(received_at) AS b FROM events")[0]
        burst_window = (float(window["a"] or 0), float(window["b"] or 0))
    finally:
        if sim.poll() is None:
            sim.kill()
        for s in servers:
            s.stop()
        store.close()
        broker.stop()
    per_server = []
    for s, m, c in zip(servers, metrics, cpu, strict=True):
        ingest = m["ingest"]
        per_server.append({
            "name": s.name, "cpu_core_share": round(c / wall, 3),
            "cpu_core_share_during_alerts": round(s.cpu_share_between(*burst_window), 3),
            "peak_rss_mb": round(s.peak_rss, 1),
            "timeline": [(round(t - burst_window[0], 1), round(cpu, 2), round(rss, 1)) for t, cpu, rss in s.samples],
            "accepted": {k: v for k, v in ingest["counters"].items() if k.startswith("accepted_")},
            "rejected": {k: v for k, v in ingest["counters"].items() if k.startswith("rejected_")},
            "latency_e2e": ingest["event_latency_e2e"], "latency_server": ingest["event_latency_server"]})
    # Combined percentiles of several servers: the worst server's figure is the honest bound.
    p50 = max(p["latency_e2e"].get("p50_ms", 0) for p in per_server)
    p99 = max(p["latency_e2e"].get("p99_ms", 0) for p in per_server)
    result = {
        "scenario": name, "units": units, "servers": n_servers, "db": db.split(":")[0],
        "alert_rate_per_s": alert_rate, "burst_s": burst_s, "measured_wall_s": round(wall, 1),
        "connect_to_all_known_s": round(connect_s, 1), "simulator_connect_s": sim_report["connect_s"],
        "simulator": sim_report["counters"],
        "events_published": len(published), "events_stored": len(published & stored),
        "events_lost": len(published - stored), "heartbeats_sent": sim_report["counters"].get("heartbeats", 0),
        "heartbeats_stored": beats, "latency_p50_ms": p50, "latency_p99_ms": p99, "per_server": per_server,
    }
    print(f"   published {len(published)} alerts, lost {result['events_lost']}, p50 {p50} ms, p99 {p99} ms; "
          + "; ".join(f"{p['name']}: CPU {p['cpu_core_share'] * 100:.0f}% of a core over the run, "
                      f"{p['cpu_core_share_during_alerts'] * 100:.0f}% during alerts, RSS {p['peak_rss_mb']} MB, "
                      f"events {p['accepted'].get('accepted_event', 0)}" for p in per_server), flush=True)
    return result


def plot(results: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{r['units']} units\n{r['servers']} server(s)\n{r['alert_rate_per_s']:g} alerts/s" for r in results]
    fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(16, 4.4))
    x = range(len(results))
    ax1.bar([i - 0.2 for i in x], [r["latency_p50_ms"] for r in results], 0.4, label="p50")
    ax1.bar([i + 0.2 for i in x], [r["latency_p99_ms"] for r in results], 0.4, label="p99")
    ax1.axhline(250, color="red", linestyle="--", label="p99 budget 250 ms")
    ax1.set_xticks(list(x), labels, fontsize=8)
    ax1.set_ylabel("ingest latency, publish -> committed (ms)")
    ax1.set_title("Event ingest latency (events lost: " + ", ".join(str(r["events_lost"]) for r in results) + ")")
    ax1.legend()
    cpu = [sum(p["cpu_core_share_during_alerts"] for p in r["per_server"]) * 100 for r in results]
    rss = [max(p["peak_rss_mb"] for p in r["per_server"]) for r in results]
    ax2.bar([i - 0.2 for i in x], cpu, 0.4, label="CPU during alerts, % of a core (all servers)")
    ax2b = ax2.twinx()
    ax2b.bar([i + 0.2 for i in x], rss, 0.4, color="tab:green", label="peak RSS per server (MB)")
    ax2.set_xticks(list(x), labels, fontsize=8)
    ax2.set_ylim(0, max(cpu) * 1.5)  # headroom for the two legends
    ax2b.set_ylim(0, max(rss) * 1.5)
    ax2.set_ylabel("CPU %")
    ax2b.set_ylabel("RSS MB")
    ax2.set_title("Server resources")
    ax2.legend(loc="upper left", fontsize=8)
    ax2b.legend(loc="upper right", fontsize=8)
    for r in results:
        for p in r["per_server"]:
            tl = p["timeline"][::4]  # 2 s steps: 0.5 s of CPU ticks is too noisy to read
            xs = [(a[0] + b[0]) / 2 for a, b in itertools.pairwise(tl)]
            ys = [100 * (b[1] - a[1]) / max(1e-6, b[0] - a[0]) for a, b in itertools.pairwise(tl)]
            ax3.plot(xs, ys, linewidth=0.8, label=f"{r['units']} units, {p['name']}")
    ax3.set_xlabel("seconds from the first alert")
    ax3.set_ylabel("server CPU, % of one core")
    ax3.set_title("Server CPU over time (alerts start at 0)")
    ax3.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small fleets and short phases (smoke test)")
    parser.add_argument("--burst-s", type=float, default=60.0)
    parser.add_argument("--abuse", action="store_true",
                        help="only the one-unit flood and poison runs (and a baseline): bench_fleet_abuse.json")
    parser.add_argument("--no-broker-limit", action="store_true",
                        help="with --abuse: a broker without the rate-limit plugin (ingest's own limit only)")
    parser.add_argument("--ladder", action="store_true",
                        help="the city-scale ladder (issue 18): 12,370 -> 123,700 unit-equivalents, one server on "
                             "SQLite and N on PostgreSQL: bench_fleet_ladder.json and .png")
    parser.add_argument("--setups", default="sqlite:1,postgres:2",
                        help="ladder setups, engine:servers, comma-separated (default sqlite:1,postgres:2)")
    parser.add_argument("--rungs", default="", help="ladder rungs in unit-equivalents (default all six)")
    parser.add_argument("--rung-s", type=float, default=30.0, help="measured seconds per rung")
    parser.add_argument("--simulator-nice", type=int, default=0, choices=range(20), metavar="0-19",
                        help="ladder: run the load generator at this nice level, i.e. on CPU the stack leaves idle")
    parser.add_argument("--out-suffix", default="", help="ladder: write bench_fleet_ladder<suffix>.json/.png")
    args = parser.parse_args()
    if args.abuse:
        return abuse_main(args.no_broker_limit)
    if args.ladder:
        return ladder_main(args)
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # 12k unit sockets; children inherit it
    scale = 0.05 if args.quick else 1.0
    seed_units, big_units = max(20, int(1237 * scale)), max(50, int(12370 * scale))
    burst = 10.0 if args.quick else args.burst_s
    RESULTS.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-fleet-") as tmp:
        work = Path(tmp)
        pg: PostgresServer | None = None
        try:
            results.append(scenario("seed", f"sqlite:///{work / 'seed.db'}", work, seed_units, 1,
                                    alert_rate=5.0, burst_s=burst / 2, warmup_s=10.0))
            results.append(scenario("tenx", f"sqlite:///{work / 'tenx.db'}", work, big_units, 1,
                                    alert_rate=100.0, burst_s=burst, warmup_s=15.0))
            if pg_bin_dir() is not None:
                pg = PostgresServer(work / "pg").start()
                db = pg.create_database()
            else:
                print("PostgreSQL absent: the shared-subscription run uses one SQLite file")
                db = f"sqlite:///{work / 'shared.db'}"
            results.append(scenario("shared", db, work, big_units, 2, alert_rate=100.0,
                                    burst_s=burst * 2 / 3, warmup_s=15.0))
        finally:
            if pg:
                pg.stop()
    total = time.monotonic() - started
    out = {"benchmark": "fleet", "quick": args.quick, "total_s": round(total, 1), "cpu_count": os.cpu_count(),
           "loadavg_at_end": os.getloadavg(), "heartbeat_s": 30, "results": results}
    suffix = "-quick" if args.quick else ""
    (RESULTS / f"bench_fleet{suffix}.json").write_text(json.dumps(out, indent=1))
    plot(results, RESULTS / f"bench_fleet{suffix}.png")
    print(f"\nwrote {RESULTS / f'bench_fleet{suffix}.json'} and .png in {total:.0f}s")
    return 0 if all(r["events_lost"] == 0 for r in results) else 1


def ladder_main(args: argparse.Namespace) -> int:
    from benchmarks.fleet_ladder import RUNGS, ladder, markdown_table, plot

    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # 12k unit sockets; children inherit it
    setups = [(s.split(":")[0], int(s.split(":")[1])) for s in args.setups.split(",") if s]
    rungs = [int(r) for r in args.rungs.split(",") if r] or list(RUNGS)
    started = time.monotonic()
    results = ladder(setups, rungs, args.rung_s, args.simulator_nice)
    out = {"benchmark": "fleet_ladder", "total_s": round(time.monotonic() - started, 1),
           "cpu_count": os.cpu_count(), "loadavg_at_end": os.getloadavg(), "rung_s": args.rung_s,
           "note": "12,370 real connections; a heartbeat of 30 s x 12,370 / N stands in for N units; 100 alerts/s "
                   "(event + JPEG snapshot) on every rung. The machine is shared with other agents: see "
                   "machine_busy_cores / other_processes_cores / loadavg per rung.",
           "results": results}
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"bench_fleet_ladder{args.out_suffix}.json"
    path.write_text(json.dumps(out, indent=1))
    ok = [r for r in results if "error" not in r]
    if ok:
        plot(ok, path.with_suffix(".png"))
    print(f"\nwrote {path} and .png\n\n{markdown_table(results)}")
    return 0


def abuse_main(no_broker_limit: bool = False) -> int:
    from benchmarks.fleet_abuse import RUNS, abuse_run

    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bench-fleet-abuse-") as tmp:
        work = Path(tmp)
        # The broker as shipped: the per-client rate limit (config/mosquitto/mosquitto.conf), unless --no-broker-limit.
        limit = "" if no_broker_limit else ratelimit_config(20, 200)

        def limited_broker(path: Path) -> MosquittoBroker:
            return start_broker(path, limit)

        runs = [abuse_run(kind, work, CLI, limited_broker, Server, simulate) for kind in RUNS]
    out = {"benchmark": "fleet_abuse", "broker_rate_limit": None if no_broker_limit else "20/s, burst 200",
           "total_s": round(time.monotonic() - started, 1), "cpu_count": os.cpu_count(),
           "loadavg_at_end": os.getloadavg(), "runs": runs}
    RESULTS.mkdir(parents=True, exist_ok=True)
    name = "bench_fleet_abuse_no_broker_limit.json" if no_broker_limit else "bench_fleet_abuse.json"
    (RESULTS / name).write_text(json.dumps(out, indent=1))
    print(f"\nwrote {RESULTS / name}")
    return 0 if all(r["good_events_lost"] == 0 for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
