"""Home Assistant MQTT discovery for one unit (optional: `mqtt.home_assistant: true`).

Two entities, both available while the unit's retained `status` says `online`:
- `event.<unit>_blocks`: fires on every message of the unit's `events` topic (event_type = the
  LiftGuard event type, e.g. `ebike_blocked`);
- `binary_sensor.<unit>_door_hold`: ON while the door-hold relay is energised, from the retained
  `ON`/`OFF` the link publishes on `liftguard/v1/units/{id}/ha/door_hold`.

Discovery topics are `homeassistant/{component}/{unit_id}/{object}/config`, so a broker ACL can
confine them with `pattern write homeassistant/+/%u/#`. Home Assistant accepts only
[A-Za-z0-9_-] in the node id: units with a `.` in their id are skipped (logged).
"""

from __future__ import annotations

import json
import logging
import re
from typing import get_args

from contract.mqtt import EventType, unit_topic

log = logging.getLogger(__name__)

DISCOVERY_PREFIX = "homeassistant"
_NODE_ID = re.compile(r"^[A-Za-z0-9_-]+$")


def door_hold_topic(unit_id: str) -> str:
    return unit_topic(unit_id, "ha/door_hold")


def door_hold_payload(held: bool) -> bytes:
    return b"ON" if held else b"OFF"


def discovery_messages(unit_id: str, software: str | None = None, name: str | None = None
                       ) -> list[tuple[str, bytes]]:
    """(topic, retained JSON config) pairs announcing the unit's entities to Home Assistant."""
    if not _NODE_ID.match(unit_id):
        log.warning("unit id %s is not a valid Home Assistant node id; discovery skipped", unit_id)
        return []
    device = {"identifiers": [f"liftguard_{unit_id}"], "name": name or f"LiftGuard {unit_id}",
              "manufacturer": "LiftGuard", "model": "elevator e-bike guard"}
    if software:
        device["sw_version"] = software
    availability = {"availability": [{
        "topic": unit_topic(unit_id, "status"), "value_template": "{{ value_json.state }}",
        "payload_available": "online", "payload_not_available": "offline"}]}
    event = {
        "name": "E-bike blocks", "unique_id": f"liftguard_{unit_id}_blocks",
        "state_topic": unit_topic(unit_id, "events"),
        "event_types": list(get_args(EventType)),
        "value_template": '{{ {"event_type": value_json.type, "phase": value_json.phase} | tojson }}',
        "device": device, **availability,
    }
    door = {
        "name": "Door hold", "unique_id": f"liftguard_{unit_id}_door_hold",
        "state_topic": door_hold_topic(unit_id), "payload_on": "ON", "payload_off": "OFF",
        "icon": "mdi:elevator-passenger", "device": device, **availability,
    }
    return [
        (f"{DISCOVERY_PREFIX}/event/{unit_id}/blocks/config", json.dumps(event).encode()),
        (f"{DISCOVERY_PREFIX}/binary_sensor/{unit_id}/door_hold/config", json.dumps(door).encode()),
    ]
