"""Issue 18.3: past one broker. Two site brokers bridged to a central one with the shipped bridge
configuration (config/mosquitto/bridge-site-*.conf: its topic lines verbatim, only the address and TLS
pointed at the test brokers); the fleet server connects to the central broker unchanged, on its shared
subscription, and sees every unit of both sites: statuses, events with snapshots, heartbeats, LWTs;
its commands reach the unit on whichever site broker it is connected to."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fleet.conftest import FakeUnit, start_fleet, wait_until
from tests.support.mosquitto import MosquittoBroker

CONFIG = Path(__file__).resolve().parents[2] / "config" / "mosquitto"


def bridge_block(site: str, central_port: int) -> str:
    """The shipped bridge block, pointed at the local central broker (plain TCP in the test)."""
    lines = []
    for line in (CONFIG / f"bridge-site-{site}.conf").read_text().splitlines():
        if line.startswith("address "):
            line = f"address 127.0.0.1:{central_port}"
        elif line.startswith(("bridge_cafile", "bridge_certfile", "bridge_keyfile", "bridge_tls_version")):
            continue
        lines.append(line)
    return "\n".join(lines)


@pytest.fixture
def city(tmp_path: Path) -> Iterator[tuple[MosquittoBroker, dict[str, MosquittoBroker]]]:
    central = MosquittoBroker(tmp_path / "central").start()
    sites = {s: MosquittoBroker(tmp_path / f"site-{s}", extra_config=bridge_block(s, central.port)).start()
             for s in ("a", "b")}
    yield central, sites
    for broker in (*sites.values(), central):
        broker.stop()


def test_the_fleet_server_works_unchanged_behind_bridged_site_brokers(
        city: tuple[MosquittoBroker, dict[str, MosquittoBroker]], tmp_path: Path) -> None:
    central, sites = city
    fleet = start_fleet(central, f"sqlite:///{tmp_path / 'fleet.db'}", shared_group="fleet", heartbeat_flush_s=0)
    units = {s: FakeUnit(broker, f"lift-{s}1").connect() for s, broker in sites.items()}
    try:
        wait_until(lambda: {r["unit_id"]: r["state"] for r in fleet.store.query("SELECT * FROM units")}
                   == {"lift-a1": "online", "lift-b1": "online"}, timeout=30)
        alerts = {s: u.alert() for s, u in units.items()}  # event + JPEG snapshot, QoS 1, over the bridge
        for u in units.values():
            u.heartbeat(outbox_depth=7)
        for ev in alerts.values():
            wait_until(lambda ev=ev: (row := fleet.store.get_alert(ev.event_id)) and row["has_snapshot"], timeout=30)
        wait_until(lambda: all(r["outbox_depth"] == 7 for r in fleet.store.query("SELECT * FROM units")), timeout=30)

        # Downlink: the fleet publishes on the central broker; the bridge of the unit's site delivers it.
        command_id = uuid.uuid4().hex
        fleet.ingestor.publish_command("lift-b1", "release", command_id)
        wait_until(lambda: [c.command_id for _, c in units["b"].commands] == [command_id], timeout=30)
        wait_until(lambda: fleet.ingestor.stats.counters["accepted_cmd_result"] == 1, timeout=30)
        assert units["a"].commands == []  # delivered where the unit is, and only to it

        # A unit that vanishes: its site broker's LWT crosses the bridge.
        units["a"].drop()
        wait_until(lambda: fleet.store.query("SELECT state FROM units WHERE unit_id = 'lift-a1'")[0]["state"]
                   == "offline", timeout=30)
        assert fleet.ingestor.stats.counters.get("rejected_bad_topic", 0) == 0
    finally:
        for u in units.values():
            u.close()
        fleet.stop()
