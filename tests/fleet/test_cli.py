"""The `liftguard-fleet` commands an operator runs: migrate, user add, serve."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from fleet.cli import main
from fleet.store import Store
from tests.fleet.conftest import PASSWORD, wait_until
from tests.support.mosquitto import MosquittoBroker, free_port


def test_migrate_reports_the_schema_version(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = f"sqlite:///{tmp_path / 'f.db'}"
    folder = Path(__file__).parents[2] / "fleet" / "migrations"
    files = sorted(p.stem for p in folder.glob("[0-9][0-9][0-9][0-9]_*.sql"))
    assert files[:3] == ["0001_initial", "0002_config_reported", "0003_quarantine_and_snapshot_sizes"]
    assert main(["migrate", "--db", db]) == 0
    assert f"schema version {int(files[-1][:4])}; applied: {', '.join(files)}" in capsys.readouterr().out
    assert main(["migrate", "--db", db]) == 0
    assert "applied: nothing" in capsys.readouterr().out


def test_user_add_stores_a_hashed_password(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    db = f"sqlite:///{tmp_path / 'f.db'}"
    (tmp_path / "pw").write_text(PASSWORD + "\n")
    assert main(["user", "add", "alice", "--role", "admin", "--db", db, "--password-file", str(tmp_path / "pw")]) == 0
    user = Store.open(db).get_user("alice")
    assert user is not None and user["role"] == "admin" and user["password_hash"].startswith("$argon2id$")
    monkeypatch.setenv("LIFTGUARD_FLEET_PASSWORD", "short")
    assert main(["user", "add", "bob", "--db", db]) == 2  # too short: refused with a message


@pytest.mark.parametrize("how", ["flag", "environment"])
def test_serve_refuses_an_unknown_time_zone_naming_the_setting(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, how: str) -> None:
    argv = ["serve", "--db", f"sqlite:///{tmp_path / 'f.db'}"]
    if how == "flag":
        argv += ["--timezone", "Asia/Shanghi"]
    else:
        monkeypatch.setenv("LIFTGUARD_FLEET_TIMEZONE", "Asia/Shanghi")
    assert main(argv) == 2  # before opening the database or the broker
    error = capsys.readouterr().err
    assert "fleet setting timezone (LIFTGUARD_FLEET_TIMEZONE): unknown time zone 'Asia/Shanghi'" in error
    assert "did you mean 'Asia/Shanghai'?" in error
    assert not (tmp_path / "f.db").exists()


def test_serve_runs_ingest_and_http_until_terminated(mosquitto: MosquittoBroker, tmp_path: Path) -> None:
    port = free_port()
    env = {**os.environ, "LIFTGUARD_FLEET_DB": f"sqlite:///{tmp_path / 'f.db'}",
           "LIFTGUARD_FLEET_MQTT_URL": mosquitto.url, "LIFTGUARD_FLEET_HTTP_PORT": str(port)}
    proc = subprocess.Popen([sys.executable, "-m", "fleet.cli", "serve", "--stats-out", str(tmp_path / "s.json")],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        health = wait_until(lambda: _get(f"http://127.0.0.1:{port}/healthz"), timeout=60)  # a loaded machine
        assert (health["status"], health["db"], health["mqtt"]) == ("ok", True, True)
        assert httpx.get(f"http://127.0.0.1:{port}/api/units").status_code == 401
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(15)
    assert proc.returncode == 0
    assert (tmp_path / "s.json").exists()


def _get(url: str) -> object:
    try:
        response = httpx.get(url, timeout=1)
    except httpx.HTTPError:
        return None
    return response.json() if response.status_code == 200 and response.json()["mqtt"] else None


def test_user_list_disable_enable_and_reset(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from fleet.api import build_context
    from fleet.config import load_settings
    from fleet.errors import AuthError

    db = f"sqlite:///{tmp_path / 'f.db'}"
    pw = tmp_path / "pw"
    pw.write_text(PASSWORD + "\n")
    for name, role in (("alice", "admin"), ("bob", "manager")):
        assert main(["user", "add", name, "--role", role, "--db", db, "--password-file", str(pw)]) == 0
    store = Store.open(db)
    auth = build_context(load_settings({"db": db}, environ={}), store).auth
    token, _ = auth.login("bob", PASSWORD, "10.0.0.1")
    capsys.readouterr()

    assert main(["user", "disable", "bob", "--db", db]) == 0
    assert main(["user", "list", "--db", db]) == 0
    listing = capsys.readouterr().out.splitlines()
    assert listing[-2] == "alice\tadmin\tenabled" and listing[-1].startswith("bob\tmanager\tdisabled ")
    with pytest.raises(AuthError):
        auth.resolve(token)  # the session ended with the disabling
    with pytest.raises(AuthError, match="wrong username or password"):  # no hint that the account exists
        auth.login("bob", PASSWORD, "10.0.0.2")

    assert main(["user", "enable", "bob", "--db", db]) == 0
    token, _ = auth.login("bob", PASSWORD, "10.0.0.3")
    pw.write_text("a brand new passphrase\n")
    assert main(["user", "reset", "bob", "--db", db, "--password-file", str(pw)]) == 0
    with pytest.raises(AuthError):
        auth.resolve(token)  # a reset ends the user's sessions
    assert auth.login("bob", "a brand new passphrase", "10.0.0.4")[1].role == "manager"
    assert main(["user", "reset", "nobody", "--db", db, "--password-file", str(pw)]) == 2
    assert "no user 'nobody'" in capsys.readouterr().err
    store.close()


def test_ca_and_database_default_to_the_data_directory_not_the_current_one(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from fleet.config import default_data_dir, load_settings

    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    monkeypatch.delenv("LIFTGUARD_FLEET_CA_DIR", raising=False)
    monkeypatch.setenv("LIFTGUARD_FLEET_DATA_DIR", str(tmp_path / "data"))
    assert main(["migrate"]) == 0
    assert main(["ca", "issue", "--unit", "lift-1", "--out", str(tmp_path / "prov")]) == 0
    assert (tmp_path / "data" / "fleet.db").exists() and (tmp_path / "data" / "ca" / "ca.key").exists()
    assert list(elsewhere.iterdir()) == []  # nothing written where the installer happened to stand
    root = os.geteuid() == 0  # a service's data: /var/lib; a person's: their XDG data home
    assert load_settings({}, environ={"HOME": "/home/ana", "XDG_DATA_HOME": "/srv/xdg"}).db == (
        "sqlite:////var/lib/liftguard-fleet/fleet.db" if root else "sqlite:////srv/xdg/liftguard-fleet/fleet.db")
    assert default_data_dir({"HOME": "/home/ana"}) == (
        Path("/var/lib/liftguard-fleet") if root else Path("/home/ana/.local/share/liftguard-fleet"))


def test_serve_with_ingest_processes_splits_the_units_messages_over_them(
        mosquitto: MosquittoBroker, tmp_path: Path) -> None:
    """Issue 18.1: the number of ingest processes is a setting; they share one subscription, so every
    message is stored once, by one of them."""
    import json
    import time
    import uuid

    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    from contract.mqtt import EventPayload, encode, unit_topic

    port, db = free_port(), f"sqlite:///{tmp_path / 'f.db'}"
    env = {**os.environ, "LIFTGUARD_FLEET_DB": db, "LIFTGUARD_FLEET_MQTT_URL": mosquitto.url,
           "LIFTGUARD_FLEET_HTTP_PORT": str(port), "LIFTGUARD_FLEET_CLIENT_ID": "fleet-t"}
    assert main(["serve", "--db", db, "--ingest-processes", "2"]) == 2  # no shared subscription: refused
    proc = subprocess.Popen([sys.executable, "-m", "fleet.cli", "serve", "--ingest-processes", "3",
                             "--shared-group", "fleet", "--stats-out", str(tmp_path / "s.json")],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    unit = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="lift-1")
    events = [EventPayload(incident_id=str(uuid.uuid4()), unit_id="lift-1", type="ebike_blocked", phase="start",
                           ts=time.time()) for _ in range(60)]
    try:
        wait_until(lambda: _get(f"http://127.0.0.1:{port}/healthz"), timeout=30)
        log = mosquitto.log_path
        # All three ingest clients subscribed (serve's own and its two children).
        wait_until(lambda: all(f"Received SUBSCRIBE from fleet-t{s}\n" in log.read_text()
                               for s in ("", "-1", "-2")), timeout=30)
        unit.connect("127.0.0.1", mosquitto.port)
        unit.loop_start()
        for ev in events:
            unit.publish(unit_topic("lift-1", "events"), encode(ev), qos=1).wait_for_publish(5)
        store = Store.open(db)
        wait_until(lambda: len(store.query("SELECT event_id FROM events")) == len(events), timeout=30)
        store.close()
    finally:
        unit.loop_stop()
        unit.disconnect()
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    assert proc.returncode == 0
    stats = [json.loads(p.read_text()) for p in (tmp_path / "s.json", tmp_path / "s.json.1", tmp_path / "s.json.2")]
    accepted = [s["counters"].get("accepted_event", 0) for s in stats]
    assert sum(accepted) == len(events), accepted  # each stored once
    assert sum(1 for n in accepted if n) >= 2, accepted  # and the work was shared
