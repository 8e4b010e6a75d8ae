"""contract.samples: what simulators and tests send is what the contract accepts, field for field."""

from __future__ import annotations

import pytest

from contract import samples
from contract.errors import PayloadError
from contract.mqtt import EventPayload, HeartbeatPayload, decode, encode


def test_samples_survive_the_wire_unchanged() -> None:
    hb = samples.heartbeat("car-1", relay="held", outbox_depth=3)
    ev = samples.alert("car-1", confidence=0.75)
    assert decode(HeartbeatPayload, encode(hb)) == hb and hb.relay == "held" and hb.outbox_depth == 3
    assert decode(EventPayload, encode(ev)) == ev and ev.confidence == 0.75
    assert samples.alert("car-1").event_id != ev.event_id  # fresh ids each time


def test_a_sample_the_contract_refuses_is_refused_when_built() -> None:
    with pytest.raises(ValueError):
        samples.heartbeat("car-1", fps=10**30)
    with pytest.raises((ValueError, PayloadError)):
        samples.alert("../escape")
