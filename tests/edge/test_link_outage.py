"""A broker outage loses no alert: events raised while the broker is down arrive after it returns.

The default suite uses a 5 s outage; LIFTGUARD_LONG=1 runs the full 60 s one.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from edge.report.link import MqttLink
from edge.report.outbox import Outbox
from tests.edge.link_support import FleetSubscriber, heartbeat_of, make_event, settings_for
from tests.support.mosquitto import MosquittoBroker

OUTAGE_S = 60.0 if os.environ.get("LIFTGUARD_LONG") == "1" else 5.0


@pytest.mark.slow
@pytest.mark.timeout(OUTAGE_S + 90)
def test_100_events_raised_during_a_broker_outage_all_arrive_after_restart(tmp_path: Path) -> None:
    broker = MosquittoBroker(tmp_path / "broker").start()
    fleet = FleetSubscriber(broker, ["liftguard/v1/units/unit-a/events"])  # persistent session
    link = MqttLink(settings_for(broker, reconnect_max_s=2.0), Outbox(tmp_path / "outbox.db"), None,
                    heartbeat_of())
    link.start()
    assert link.wait_connected(10)
    try:
        broker.stop()
        outage_started = time.monotonic()
        raised = []
        for n in range(100):  # spread over the first half of the outage
            event = make_event(n=n)
            link.emit(event)
            raised.append(event.event_id)
            time.sleep(OUTAGE_S / 2 / 100)
        assert link.outbox.depth() == 100
        time.sleep(max(0.0, OUTAGE_S - (time.monotonic() - outage_started)))
        broker.start()

        assert fleet.wait_for(lambda f: f.event_ids() == set(raised), 30), \
            f"{len(fleet.event_ids() & set(raised))} of 100 arrived"
        assert link.wait_drained(10)
    finally:
        link.close()
        fleet.close()
        broker.stop()
