"""`liftguard-fleet serve | ingest | simulate | ca | migrate | user | models | dataset`."""

from __future__ import annotations

import argparse
import getpass
import json
import logging
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

from contract.errors import ConfigError, LiftGuardError

log = logging.getLogger("fleet")


def _settings(args: argparse.Namespace) -> Any:
    from fleet.config import load_settings

    overrides = {k: getattr(args, k, None) for k in (
        "db", "mqtt_url", "shared_group", "http_host", "http_port", "client_id", "silence_s", "batch_max",
        "batch_window_ms", "heartbeat_flush_s", "mqtt_username", "mqtt_password_file", "mqtt_ca", "mqtt_cert",
        "mqtt_key", "timezone", "data_dir", "notify_file", "public_url", "trusted_proxies", "ingest_processes")}
    if getattr(args, "cookie_secure", False):
        overrides["cookie_secure"] = True
    return load_settings(overrides)


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from fleet.api import FleetServer, build_context, create_app
    from fleet.ingest import Ingestor
    from fleet.notify import Notifier, load_notify_config
    from fleet.store import Store

    settings = _settings(args)
    rules = load_notify_config(settings.notify_file)  # a broken rules file stops serve before it starts
    store = Store.open(settings.db, settings.tz)
    if not args.no_migrate:
        store.migrate()
    workers = IngestWorkers(settings, args.stats_out) if settings.ingest_processes > 1 else None
    ctx = build_context(settings, store)
    ctx.outbound = Notifier(store, rules, timezone=settings.timezone, public_url=settings.public_url)
    ctx.notifier.listeners.append(ctx.outbound.wake)
    ctx.outbound.start()
    ingestor = Ingestor(settings, store, on_commit=ctx.notifier.on_commit)
    ctx.ingestor = ingestor
    ingestor.start()
    log.info("fleet server: db=%s mqtt=%s subscription=%s http=%s:%s", settings.db.split("@")[-1],
             settings.mqtt_url, ingestor.topic_filter, settings.http_host, settings.http_port)
    # uvicorn handles SIGTERM/SIGINT itself and re-raises them after its shutdown; with no-op
    # handlers installed here, that re-raise lands on them and the cleanup below still runs
    # (committing the last batch, handing the MQTT session back cleanly).
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: None)
    try:
        config = uvicorn.Config(create_app(ctx), host=settings.http_host, port=settings.http_port,
                                log_level="warning", timeout_graceful_shutdown=3,
                                # X-Forwarded-For is read by the app, and only from `trusted_proxies`.
                                proxy_headers=False)
        FleetServer(config, ctx).run()
    finally:
        if workers:
            workers.stop()
        ingestor.stop()
        ctx.outbound.stop()
        if args.stats_out:
            Path(args.stats_out).write_text(json.dumps(ingestor.stats.snapshot(), indent=1))
        store.close()
    return 0


class IngestWorkers:
    """The `ingest_processes - 1` ingest-only children of `serve`, each its own MQTT client on the shared
    subscription (client id <client_id>-<n>); one that dies is started again."""

    def __init__(self, settings: Any, stats_out: str | None) -> None:
        from fleet.config import settings_env

        self.env = {**os.environ, **settings_env(settings)}
        self.client_id = settings.client_id
        self.stats_out = stats_out
        self.procs: dict[int, subprocess.Popen[bytes]] = {}
        self._stop = threading.Event()
        for n in range(1, settings.ingest_processes):
            self._start(n)
        self._watch = threading.Thread(target=self._supervise, name="ingest-workers", daemon=True)
        self._watch.start()

    def _start(self, n: int) -> None:
        cmd = [sys.executable, "-m", "fleet.cli", "ingest", "--no-migrate", "--client-id", f"{self.client_id}-{n}"]
        if self.stats_out:
            cmd += ["--stats-out", f"{self.stats_out}.{n}"]
        self.procs[n] = subprocess.Popen(cmd, env=self.env)
        log.info("ingest process %d started (pid %d)", n, self.procs[n].pid)

    def _supervise(self) -> None:
        while not self._stop.wait(2.0):
            for n, proc in list(self.procs.items()):
                if proc.poll() is not None and not self._stop.is_set():
                    log.error("ingest process %d exited with %s; starting it again", n, proc.returncode)
                    self._start(n)

    def stop(self) -> None:
        self._stop.set()
        for proc in self.procs.values():
            proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()


def cmd_ingest(args: argparse.Namespace) -> int:
    """MQTT ingest only (no HTTP): one more process on the shared subscription, on this host or another."""
    from fleet.ingest import Ingestor
    from fleet.store import Store

    settings = _settings(args)
    if not settings.shared_group:
        raise ConfigError("`ingest` runs beside a fleet server: set shared_group (--shared-group), or every "
                          "message would be stored by both")
    store = Store.open(settings.db, settings.tz)
    if not args.no_migrate:
        store.migrate()
    ingestor = Ingestor(settings, store)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    ingestor.start()
    log.info("fleet ingest: db=%s mqtt=%s subscription=%s client=%s", settings.db.split("@")[-1],
             settings.mqtt_url, ingestor.topic_filter, settings.client_id)
    try:
        stop.wait()
    finally:
        ingestor.stop()
        if args.stats_out:
            Path(args.stats_out).write_text(json.dumps(ingestor.stats.snapshot(), indent=1))
        store.close()
    return 0


def cmd_migrate(args: argparse.Namespace) -> int:
    from fleet.store import Store

    store = Store.open(_settings(args).db)
    applied = store.migrate()
    print(f"schema version {store.schema_version()}; applied: {', '.join(applied) or 'nothing'}")
    store.close()
    return 0


def _password(args: argparse.Namespace) -> str:
    if args.password_file:
        return Path(args.password_file).read_text().strip()
    if os.environ.get("LIFTGUARD_FLEET_PASSWORD"):
        return os.environ["LIFTGUARD_FLEET_PASSWORD"]
    return getpass.getpass(f"password for {args.username}: ")


def cmd_user(args: argparse.Namespace) -> int:
    """add | list | disable | enable | reset: dashboard users."""
    import datetime as dt

    from fleet.api import build_context
    from fleet.errors import AuthError
    from fleet.store import Store

    settings = _settings(args)
    store = Store.open(settings.db)
    try:
        store.migrate()
        auth = build_context(settings, store).auth
        if args.user_command == "list":
            for row in store.list_users():
                state = "enabled" if row["disabled_at"] is None else "disabled " + dt.datetime.fromtimestamp(
                    row["disabled_at"], settings.tz).strftime("%Y-%m-%d %H:%M")
                print(f"{row['username']}\t{row['role']}\t{state}")
            return 0
        if args.user_command == "add":
            auth.add_user(args.username, args.role, _password(args))
            print(f"user {args.username} ({args.role}) saved")
        elif args.user_command == "reset":
            auth.reset_password(args.username, _password(args))
            print(f"password of {args.username} reset; their sessions ended")
        else:
            disable = args.user_command == "disable"
            if not store.set_user_disabled(args.username, disable):
                raise AuthError(f"no user {args.username!r}")
            print(f"user {args.username} {'disabled; their sessions ended' if disable else 'enabled'}")
        return 0
    finally:
        store.close()


def cmd_simulate(args: argparse.Namespace) -> int:
    from fleet.config import load_settings
    from fleet.simulate import SimConfig, Simulator

    settings = load_settings({"mqtt_url": args.mqtt_url})
    config = SimConfig(host=settings.mqtt_host, port=settings.mqtt_port, units=args.units, prefix=args.prefix,
                       heartbeat_s=args.heartbeat_s, alert_rate=args.alert_rate, alert_start_s=args.alert_start_s,
                       alert_duration_s=args.alert_duration_s, duration_s=args.duration_s,
                       connect_rate=args.connect_rate, seed=args.seed)
    sim = Simulator(config)
    try:
        report = sim.run()
    finally:
        sim.stop(graceful=args.stop == "graceful")
    result = report.as_dict()
    if args.report:
        Path(args.report).write_text(json.dumps({**result, "event_ids": report.event_ids}))
    print(json.dumps(result))
    return 0


def cmd_ca(args: argparse.Namespace) -> int:
    from fleet.ca import CA_KEY, init_ca, issue_unit

    ca_dir = Path(args.ca_dir) if args.ca_dir else _settings(args).ca_dir
    if args.ca_command == "init":
        print(init_ca(ca_dir, force=args.force))
        return 0
    if not (ca_dir / CA_KEY).exists():
        # First provisioning on a fresh fleet: create the CA rather than fail the installer.
        print(f"no CA in {ca_dir}; creating one", file=sys.stderr)
        init_ca(ca_dir)
    files = issue_unit(ca_dir, args.unit, Path(args.out), days=args.days)
    print(json.dumps({"key": str(files.key), "cert": str(files.cert), "ca_cert": str(files.ca_cert)}))
    return 0


def _server_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--db", help="sqlite:///path or postgresql://... (default sqlite:///<data dir>/fleet.db)")
    _data_flag(p)


def _data_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", help="the fleet's data directory ($LIFTGUARD_FLEET_DATA_DIR; default "
                                      "/var/lib/liftguard-fleet as root, else ~/.local/share/liftguard-fleet)")


def _ingest_flags(p: argparse.ArgumentParser, shared_group_help: str, client_id_help: str) -> None:
    """The broker connection and batching flags that `serve` and `ingest` share."""
    p.add_argument("--mqtt", dest="mqtt_url", help="broker URL, mqtt://host:port or mqtts://")
    p.add_argument("--mqtt-username")
    p.add_argument("--mqtt-password-file")
    p.add_argument("--mqtt-ca")
    p.add_argument("--mqtt-cert")
    p.add_argument("--mqtt-key")
    p.add_argument("--shared-group", help=shared_group_help)
    p.add_argument("--client-id", help=client_id_help)
    p.add_argument("--batch-max", type=int)
    p.add_argument("--batch-window-ms", type=float)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="liftguard-fleet", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="MQTT ingest + HTTP API + dashboard")
    _server_flags(serve)
    _ingest_flags(serve, "MQTT v5 shared subscription group, for several servers",
                  "stable MQTT client id (unique per server)")
    serve.add_argument("--http-host")
    serve.add_argument("--http-port", type=int)
    serve.add_argument("--silence-s", type=float, help="heartbeat silence that marks a unit offline")
    serve.add_argument("--heartbeat-flush-s", type=float,
                       help="write coalesced heartbeats this often (default 5; 0 = with every batch)")
    serve.add_argument("--timezone", help="the site's IANA time zone, e.g. Asia/Shanghai: where days begin "
                                          "(default UTC)")
    serve.add_argument("--notify-file", help="TOML rules for e-mail / webhook notifications and escalation")
    serve.add_argument("--public-url", help="the dashboard's address, for links in notifications")
    serve.add_argument("--trusted-proxies", help="comma-separated reverse proxy addresses/networks whose "
                                                 "X-Forwarded-For is believed (default: none)")
    serve.add_argument("--cookie-secure", action="store_true", help="Secure cookies (serve behind HTTPS)")
    serve.add_argument("--no-migrate", action="store_true", help="do not apply pending migrations at start")
    serve.add_argument("--stats-out", help="write ingest statistics as JSON here on shutdown (children: .1, .2 ...)")
    serve.add_argument("--ingest-processes", type=int,
                       help="MQTT ingest processes (default 1; more need --shared-group): scale ingest over cores")
    serve.set_defaults(func=cmd_serve)

    ingest = sub.add_parser("ingest", help="MQTT ingest only, one more process on the shared subscription")
    _server_flags(ingest)
    _ingest_flags(ingest, "MQTT v5 shared subscription group (required)",
                  "stable MQTT client id, unique per process")
    ingest.add_argument("--heartbeat-flush-s", type=float)
    ingest.add_argument("--timezone")
    ingest.add_argument("--no-migrate", action="store_true", help="do not apply pending migrations at start")
    ingest.add_argument("--stats-out", help="write ingest statistics as JSON here on shutdown")
    ingest.set_defaults(func=cmd_ingest)

    migrate = sub.add_parser("migrate", help="apply pending schema migrations")
    _server_flags(migrate)
    migrate.set_defaults(func=cmd_migrate)

    user = sub.add_parser("user", help="manage dashboard users").add_subparsers(dest="user_command", required=True)
    add = user.add_parser("add", help="create a user or reset its password and role")
    add.add_argument("username")
    add.add_argument("--role", choices=("manager", "admin"), default="manager")
    reset = user.add_parser("reset", help="set a new password (ends the user's sessions)")
    reset.add_argument("username")
    for p in (add, reset):
        p.add_argument("--password-file", help="else $LIFTGUARD_FLEET_PASSWORD, else a prompt")
    listing = user.add_parser("list", help="users, roles and whether they are disabled")
    disable = user.add_parser("disable", help="refuse the user's logins and end their sessions")
    enable = user.add_parser("enable", help="let a disabled user log in again")
    for p in (disable, enable):
        p.add_argument("username")
    for p in (add, reset, listing, disable, enable):
        _server_flags(p)
        p.set_defaults(func=cmd_user)

    sim = sub.add_parser("simulate", help="N simulated units speaking the v1 contract")
    sim.add_argument("--mqtt", dest="mqtt_url", default=None)
    sim.add_argument("--units", type=int, default=10)
    sim.add_argument("--prefix", default="sim")
    sim.add_argument("--heartbeat-s", type=float, default=30.0)
    sim.add_argument("--alert-rate", type=float, default=0.05, help="alerts per second, whole fleet")
    sim.add_argument("--alert-start-s", type=float, default=0.0)
    sim.add_argument("--alert-duration-s", type=float, default=None)
    sim.add_argument("--duration-s", type=float, default=60.0)
    sim.add_argument("--connect-rate", type=float, default=2000.0)
    sim.add_argument("--seed", type=int, default=1)
    sim.add_argument("--stop", choices=("graceful", "drop"), default="graceful",
                     help="drop: close sockets without DISCONNECT so every unit's LWT fires")
    sim.add_argument("--report", help="write counters and published event ids as JSON here")
    sim.set_defaults(func=cmd_simulate)

    ca = sub.add_parser("ca", help="certificates for unit provisioning").add_subparsers(dest="ca_command",
                                                                                       required=True)
    default_ca = os.environ.get("LIFTGUARD_FLEET_CA_DIR")  # else <data dir>/ca
    ca_init = ca.add_parser("init", help="create the fleet CA")
    ca_init.add_argument("--ca-dir", default=default_ca)
    ca_init.add_argument("--force", action="store_true")
    ca_issue = ca.add_parser("issue", help="issue a unit key + certificate (CN = unit id)")
    ca_issue.add_argument("--ca-dir", default=default_ca)
    ca_issue.add_argument("--unit", required=True)
    ca_issue.add_argument("--out", required=True)
    ca_issue.add_argument("--days", type=int, default=825)
    for p in (ca_init, ca_issue):
        _data_flag(p)
        p.set_defaults(func=cmd_ca)

    from fleet.lifecycle_cli import add_parsers

    add_parsers(sub, _server_flags, _settings)  # models …, dataset … (issue 17)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args))
    except LiftGuardError as exc:
        print(f"liftguard-fleet: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
