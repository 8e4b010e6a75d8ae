"""Valid v1 payloads with plain defaults, for simulators and tests: one builder per payload, so a field added
to the contract is added here once, not in every test module.

Every builder validates (pydantic), so a sample is always something a real unit could send.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from contract.mqtt import EventPayload, HeartbeatPayload


def heartbeat(unit_id: str, **changes: Any) -> HeartbeatPayload:
    """A healthy unit's heartbeat now (camera online, relay released, empty outbox); `changes` override."""
    fields: dict[str, Any] = dict(unit_id=unit_id, ts=time.time(), uptime_s=1.0, fps=10.0, inference_p50_ms=20.0,
                                  inference_p95_ms=30.0, camera="online", relay="released", outbox_depth=0,
                                  model_id="sample-model", software="0.0.0-sample")
    fields.update(changes)
    return HeartbeatPayload.model_validate(fields)


def alert(unit_id: str, **changes: Any) -> EventPayload:
    """The start of an e-bike block now, with fresh event and incident ids; `changes` override."""
    fields: dict[str, Any] = dict(event_id=str(uuid.uuid4()), incident_id=str(uuid.uuid4()), unit_id=unit_id,
                                  type="ebike_blocked", phase="start", ts=time.time(), cls="ebike", confidence=0.9)
    fields.update(changes)
    return EventPayload.model_validate(fields)
