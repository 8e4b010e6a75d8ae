"""`liftguard-fleet models add | list | rollout`: the model registry and staged rollout (issue 17).

`add` reads the file's metadata and graph I/O without onnx (contract/onnx_header.py, the device's own
rules) and refuses what the device would refuse. `rollout` sends the `model` command and the file in
chunks over MQTT (contract/models.py says why MQTT), then waits for every unit's `model/reported`
and records the outcome per unit (the `rollouts` table). A unit that is offline does not get it:
run the rollout again later.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt

from contract.errors import ModelError, PayloadError
from contract.models import CHUNK_BYTES, ModelArgs, ModelReportedPayload, Stage, encode_chunk
from contract.mqtt import CommandPayload, CommandResultPayload, decode, encode, parse_topic, unit_topic
from contract.mqtt_client import new_client, tls_context
from contract.onnx_header import MAX_MODEL_BYTES, ModelFile, check_model
from fleet.config import FleetSettings
from fleet.errors import FleetError, StoreError
from fleet.store import Store

log = logging.getLogger(__name__)


def read_model_file(path: Path) -> tuple[ModelFile, bytes]:
    """The file's bytes and what the device would find in them; ModelError if it would refuse it."""
    try:
        size = path.stat().st_size
        if size > MAX_MODEL_BYTES:
            raise ModelError(f"{path}: {size} bytes; a model may be at most {MAX_MODEL_BYTES}")
        data = path.read_bytes()
    except OSError as exc:
        raise ModelError(f"cannot read {path}: {exc.strerror}") from None
    return check_model(data, str(path)), data


def add_model(store: Store, path: Path, added_by: str | None = None) -> tuple[ModelFile, bool]:
    checked, data = read_model_file(path)
    return checked, store.add_model(checked, data, added_by)


@dataclass
class UnitRollout:
    unit_id: str
    state: str = "sent"
    detail: str = ""
    active: str | None = None
    shadow: str | None = None


@dataclass
class Rollout:
    rollout_id: str
    model_id: str
    stage: Stage
    units: dict[str, UnitRollout] = field(default_factory=dict)

    def finished(self) -> bool:
        return all(u.state in ("ok", "failed") for u in self.units.values())


def rollout(store: Store, settings: FleetSettings, model_id: str, unit_ids: list[str], stage: Stage,
            wait_s: float = 120.0) -> Rollout:
    """Send `model_id` to `unit_ids` as `stage` and wait up to `wait_s` for their answers."""
    if not unit_ids:
        raise FleetError("no units to roll out to (unknown site, or no unit has reported from it)")
    model: dict[str, Any] | None = None
    if stage != "off":
        model = store.get_model(model_id)
        if model is None:
            raise FleetError(f"no model {model_id!r} in the registry (add it with `liftguard-fleet models add`)")
        data: bytes = model["data"]
        if hashlib.sha256(data).hexdigest() != model["sha256"]:
            raise StoreError(f"registry copy of {model_id} does not match its sha256: add it again")
    result = Rollout(uuid.uuid4().hex[:16], model_id, stage, {u: UnitRollout(u) for u in unit_ids})
    lock = threading.Lock()
    done = threading.Event()
    command_ids = {u: f"model-{result.rollout_id}-{i}" for i, u in enumerate(unit_ids)}

    def on_message(_c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        if msg.retain:
            return  # a retained model/reported is the state before this rollout
        try:
            unit_id, suffix = parse_topic(msg.topic)
            with lock:
                unit = result.units.get(unit_id)
                if unit is None:
                    return
                if suffix == "cmd_result":
                    answer = decode(CommandResultPayload, bytes(msg.payload))
                    if answer.command_id != command_ids[unit_id]:
                        return
                    if not answer.ok:
                        unit.state, unit.detail = "failed", answer.detail
                    elif unit.state == "sent":
                        unit.state, unit.detail = "receiving", answer.detail
                elif suffix == "model/reported":
                    report = decode(ModelReportedPayload, bytes(msg.payload))
                    if stage != "off" and report.model_id != model_id:
                        return
                    unit.state = "ok" if report.ok else "failed"
                    unit.detail, unit.active, unit.shadow = report.detail, report.active, report.shadow
                else:
                    return
                store.record_rollout(result.rollout_id, model_id, unit_id, stage, unit.state, unit.detail,
                                     unit.active, unit.shadow)
                if result.finished():
                    done.set()
        except PayloadError as exc:
            log.warning("rollout: unreadable answer on %s: %s", msg.topic, exc)

    client = _client(settings, result.rollout_id)
    subscribed = threading.Event()
    client.on_message = on_message
    client.on_subscribe = lambda *_a: subscribed.set()
    connected = threading.Event()
    client.on_connect = lambda *_a: connected.set()
    client.connect(settings.mqtt_host, settings.mqtt_port, keepalive=30)
    client.loop_start()
    try:
        if not connected.wait(15):
            raise FleetError(f"cannot reach the broker at {settings.mqtt_url}")
        client.subscribe([(unit_topic(u, s), 1) for u in unit_ids for s in ("cmd_result", "model/reported")])
        if not subscribed.wait(15):
            raise FleetError("the broker did not confirm the subscriptions")
        for unit_id in unit_ids:
            store.record_rollout(result.rollout_id, model_id, unit_id, stage, "sent")
            _send(client, unit_id, command_ids[unit_id], model, stage)
        done.wait(wait_s)
    finally:
        client.disconnect()
        client.loop_stop()
    with lock:
        for unit in result.units.values():
            if unit.state == "sent":
                unit.state, unit.detail = "no_answer", f"no answer within {wait_s:g} s (offline?)"
            elif unit.state == "receiving":
                unit.detail = f"no outcome within {wait_s:g} s: {unit.detail}"
            store.record_rollout(result.rollout_id, model_id, unit.unit_id, stage, unit.state, unit.detail,
                                 unit.active, unit.shadow)
    return result


def _client(settings: FleetSettings, rollout_id: str) -> mqtt.Client:
    s = settings
    password = s.mqtt_password_file.read_text().strip() if s.mqtt_username and s.mqtt_password_file else None
    tls = tls_context(str(s.mqtt_ca) if s.mqtt_ca else None, str(s.mqtt_cert) if s.mqtt_cert else None,
                      str(s.mqtt_key) if s.mqtt_key else None) if s.mqtt_tls else None
    client = new_client(f"{s.client_id[:40]}-rollout-{rollout_id[:8]}", username=s.mqtt_username,
                        password=password, ssl_context=tls, max_inflight=20)
    return client


def _send(client: mqtt.Client, unit_id: str, command_id: str, model: dict[str, Any] | None, stage: Stage) -> None:
    if model is None:
        args = ModelArgs(stage=stage)
        chunks: list[bytes] = []
    else:
        data: bytes = model["data"]
        chunks = [data[i:i + CHUNK_BYTES] for i in range(0, len(data), CHUNK_BYTES)]
        args = ModelArgs(stage=stage, model_id=model["model_id"], sha256=model["sha256"], size=len(data),
                         chunks=len(chunks))
    command = CommandPayload(command_id=command_id, ts=time.time(), args=args.model_dump(mode="json"))
    infos = [client.publish(unit_topic(unit_id, "cmd/model"), encode(command), qos=1)]
    for index, chunk in enumerate(chunks):
        frame = encode_chunk(args.sha256, index, len(chunks), chunk)
        infos.append(client.publish(unit_topic(unit_id, "model/data"), frame, qos=1))
    for info in infos:
        info.wait_for_publish(60)
