"""The one way the house builds a paho MQTT client (unit link, fleet ingest, simulator, selftest).

Same callback API (VERSION2), protocol, credentials, TLS and last will everywhere; each caller then
adds its own callbacks. paho-mqtt is a base dependency, like pydantic, so every part can import this.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion


@dataclass(frozen=True)
class Will:
    """The last will: published by the broker when the client vanishes without DISCONNECT."""

    topic: str
    payload: bytes | str
    qos: int = 1
    retain: bool = True


def new_client(client_id: str, *, v5: bool = True, username: str | None = None, password: str | None = None,
               ssl_context: ssl.SSLContext | None = None, will: Will | None = None,
               reconnect_max_s: float | None = None, max_inflight: int | None = None,
               manual_ack: bool = False) -> mqtt.Client:
    """A configured, not yet connected client. `v5=False` speaks MQTT 3.1.1 (clean session)."""
    if v5:
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5,
                             manual_ack=manual_ack)
    else:
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv311,
                             clean_session=True, manual_ack=manual_ack)
    if username:
        client.username_pw_set(username, password)
    if ssl_context is not None:
        client.tls_set_context(ssl_context)
    if will is not None:
        client.will_set(will.topic, will.payload, qos=will.qos, retain=will.retain)
    if reconnect_max_s is not None:
        client.reconnect_delay_set(1, max(1, round(reconnect_max_s)))
    if max_inflight is not None:
        client.max_inflight_messages_set(max_inflight)
    return client


def tls_context(ca_file: str | None = None, cert_file: str | None = None,
                key_file: str | None = None) -> ssl.SSLContext:
    """Verifies the broker against `ca_file` (the system CAs without one); presents a client certificate."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca_file)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if cert_file:
        context.load_cert_chain(cert_file, key_file)
    return context
