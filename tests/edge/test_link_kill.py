"""A device process that dies (SIGKILL) or hangs (SIGSTOP) loses no alert and is reported offline.

Each scenario runs the device as a real subprocess (tests/edge/link_device.py) raising events
through MqttLink, and a fleet-side subscriber with a persistent session watching the broker.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from contract.mqtt import StatusPayload, decode
from edge.config import MqttConfig
from edge.report.outbox import Outbox
from tests.edge.link_support import FleetSubscriber, read_line, spawn_device
from tests.support.mosquitto import MosquittoBroker

UNIT = "liftguard/v1/units/unit-a"
KEEPALIVE_S = MqttConfig().keepalive_s  # the shipped default
# The MQTT rule: the broker drops a client it has heard nothing from for 1.5 x keepalive and then
# publishes its will (our retained `offline`). Mosquitto 2.0 runs that check in ~5 s sweeps, so a
# *silent* client is dropped up to 5 s later (measured: ~10.5 s for keepalive 5 s).
MOSQUITTO_KEEPALIVE_SLACK_S = 5.0
OFFLINE_TARGET_S = 15.0  # issue 15 item 8: the fleet sees a hung unit offline within 15 s


@pytest.fixture
def devices() -> Iterator[list[subprocess.Popen[str]]]:
    procs: list[subprocess.Popen[str]] = []
    yield procs
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGCONT)
            p.kill()
        p.wait()


def kill(proc: subprocess.Popen[str]) -> None:
    proc.kill()
    proc.wait(timeout=10)


def freeze_broker_after_acks(broker_pid: int, outbox: Path, total: int, acked: int, deadline_s: float = 20.0) -> int:
    """SIGSTOP the broker once at least `acked` of `total` events have left the device's outbox; returns the
    outbox rows left at that moment.

    The broker is stopped *before* each look, so nothing is acknowledged between the look and the freeze
    (only the ≤ window PUBACKs already on their way can still land); a busy host makes the loop slower, not
    wrong. A trigger on what a subscriber has seen is not enough: under load it lags the broker by seconds.
    """
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        os.kill(broker_pid, signal.SIGSTOP)
        with sqlite3.connect(f"file:{outbox}?mode=ro", uri=True) as db:
            left = int(db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]) if outbox.exists() else total
        if left <= total - acked:
            return left
        os.kill(broker_pid, signal.SIGCONT)
        time.sleep(0.005)
    raise AssertionError(f"fewer than {acked} of {total} events were acknowledged in {deadline_s} s")


@pytest.mark.slow
def test_killed_in_the_middle_of_publishing_50_events_all_arrive_after_restart(
        mosquitto: MosquittoBroker, devices: list[subprocess.Popen[str]], tmp_path: Path) -> None:
    assert mosquitto.proc is not None
    window = 4
    fleet = FleetSubscriber(mosquitto, [f"{UNIT}/events"])
    outbox = tmp_path / "outbox.db"
    devices.append(device := spawn_device(mosquitto.port, outbox, "--emit", "50", "--before-start",
                                          "--window", str(window)))
    raised = set(read_line(device, "committed ").split(","))
    assert len(raised) == 50
    try:
        left_at_freeze = freeze_broker_after_acks(mosquitto.proc.pid, outbox, 50, acked=10)
        assert left_at_freeze > window, "publishing must be mid-way when the broker freezes"
        kill(device)
    finally:
        os.kill(mosquitto.proc.pid, signal.SIGCONT)
    left = Outbox(outbox)
    assert left.depth() > 0, "the kill must land before every event was acknowledged"
    left.close()

    devices.append(spawn_device(mosquitto.port, outbox))
    assert fleet.wait_for(lambda f: f.event_ids() == raised, 20), f"{len(fleet.event_ids())} of 50 arrived"
    fleet.close()


@pytest.mark.slow
def test_killed_right_after_a_commit_the_event_is_delivered_after_restart(
        mosquitto: MosquittoBroker, devices: list[subprocess.Popen[str]], tmp_path: Path) -> None:
    fleet = FleetSubscriber(mosquitto, [f"{UNIT}/events"])
    outbox = tmp_path / "outbox.db"
    devices.append(device := spawn_device(mosquitto.port, outbox, "--emit", "1", "--die-after-commit"))
    event_id = read_line(device, "committed ")
    assert device.wait(timeout=10) == -signal.SIGKILL

    with sqlite3.connect(outbox) as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    devices.append(spawn_device(mosquitto.port, outbox))
    assert fleet.wait_for(lambda f: event_id in f.event_ids(), 15)
    fleet.close()


def status_log(fleet: FleetSubscriber) -> list[str]:
    return [decode(StatusPayload, p).state for p in fleet.payloads("/status")]


@pytest.mark.slow
def test_a_killed_device_is_reported_offline_at_once(mosquitto: MosquittoBroker,
                                                     devices: list[subprocess.Popen[str]], tmp_path: Path) -> None:
    fleet = FleetSubscriber(mosquitto, [f"{UNIT}/status"])
    devices.append(device := spawn_device(mosquitto.port, tmp_path / "outbox.db"))
    read_line(device, "connected")
    assert fleet.wait_for(lambda f: status_log(f)[-1:] == ["online"], 5)
    kill(device)
    started = time.monotonic()
    assert fleet.wait_for(lambda f: status_log(f)[-1:] == ["offline"], 1.5 * KEEPALIVE_S)
    print(f"offline {time.monotonic() - started:.2f}s after SIGKILL")
    fleet.close()


@pytest.mark.slow
def test_a_hung_device_is_reported_offline_once_the_broker_keepalive_expires(
        mosquitto: MosquittoBroker, devices: list[subprocess.Popen[str]], tmp_path: Path) -> None:
    fleet = FleetSubscriber(mosquitto, [f"{UNIT}/status"])
    devices.append(device := spawn_device(mosquitto.port, tmp_path / "outbox.db", "--keepalive", str(KEEPALIVE_S)))
    read_line(device, "connected")
    assert fleet.wait_for(lambda f: status_log(f)[-1:] == ["online"], 5)
    device.send_signal(signal.SIGSTOP)  # socket stays open: only the keepalive can tell
    started = time.monotonic()
    assert 1.5 * KEEPALIVE_S + MOSQUITTO_KEEPALIVE_SLACK_S <= OFFLINE_TARGET_S
    assert fleet.wait_for(lambda f: status_log(f)[-1:] == ["offline"], OFFLINE_TARGET_S)
    took = time.monotonic() - started
    print(f"offline {took:.2f}s after the device hung (keepalive {KEEPALIVE_S}s)")
    retained = FleetSubscriber(mosquitto, [f"{UNIT}/status"], client_id="late-observer")
    assert retained.wait_for(lambda f: status_log(f) == ["offline"], 5), "offline is retained"
    assert json.loads(retained.payloads("/status")[0]) == {"state": "offline"}
    retained.close()
    fleet.close()
