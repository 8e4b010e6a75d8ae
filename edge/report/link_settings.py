"""How the link reaches the broker: URL, TLS files and credentials, resolved from the config.

Secrets come from files (systemd `LoadCredential=` puts them in `$CREDENTIALS_DIRECTORY`;
a relative `password_file` resolves there) and are never logged or repr'd.
"""

from __future__ import annotations

import os
import ssl
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from contract.errors import ConfigError
from contract.mqtt_client import tls_context
from edge.config import Config

DEFAULT_PORTS = {"mqtt": 1883, "mqtts": 8883}


@dataclass(frozen=True)
class LinkSettings:
    unit_id: str
    host: str
    port: int = 1883
    tls: bool = False
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    keepalive_s: int = 6
    heartbeat_s: float = 30.0
    reconnect_max_s: float = 60.0
    home_assistant: bool = False
    window: int = 32  # outbox rows in flight (published, PUBACK pending)
    site: str | None = None
    building: str | None = None
    elevator: str | None = None

    @classmethod
    def from_config(cls, cfg: Config) -> LinkSettings:
        m = cfg.mqtt
        if not m.url:
            raise ConfigError("mqtt.url: empty, no broker to link to")
        scheme, host, port = parse_url(m.url)
        return cls(
            unit_id=cfg.unit.id, host=host, port=port, tls=scheme == "mqtts",
            username=m.username or cfg.unit.id,
            password=read_secret(m.password_file) if m.password_file else None,
            ca_file=resolve_credential(m.ca_file), cert_file=resolve_credential(m.cert_file),
            key_file=resolve_credential(m.key_file), keepalive_s=m.keepalive_s, heartbeat_s=m.heartbeat_s,
            reconnect_max_s=m.reconnect_max_s, home_assistant=m.home_assistant,
            site=cfg.unit.site or None,
            building=cfg.unit.building or None, elevator=cfg.unit.elevator or None,
        )

    def ssl_context(self) -> ssl.SSLContext:
        """Verifies the broker against ca_file (system CAs without one); presents the unit certificate."""
        try:
            ctx = tls_context(self.ca_file, self.cert_file, self.key_file)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"mqtt TLS files: {exc}") from None
        return ctx


def parse_url(url: str) -> tuple[str, str, int]:
    parts = urlsplit(url)
    if parts.scheme not in DEFAULT_PORTS or not parts.hostname:
        raise ConfigError(f"mqtt.url: expected mqtt://host[:port] or mqtts://host[:port], got {parts.scheme}://")
    if parts.username or parts.password:
        raise ConfigError("mqtt.url: credentials belong in mqtt.password_file, not in the URL")
    try:
        port = parts.port or DEFAULT_PORTS[parts.scheme]
    except ValueError:
        raise ConfigError("mqtt.url: invalid port") from None
    return parts.scheme, parts.hostname, port


def resolve_credential(name: str | None) -> str | None:
    """Relative names resolve in `$CREDENTIALS_DIRECTORY` when systemd provides one."""
    if name is None:
        return None
    creds = os.environ.get("CREDENTIALS_DIRECTORY")
    if creds and not os.path.isabs(name):
        return str(Path(creds) / name)
    return name


def read_secret(name: str) -> str:
    path = resolve_credential(name)
    assert path is not None
    try:
        secret = Path(path).read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(f"mqtt.password_file: cannot read {path}: {exc.strerror}") from None
    if not secret:
        raise ConfigError(f"mqtt.password_file: {path} is empty")
    return secret
