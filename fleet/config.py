"""Fleet server settings: one validated model, filled from LIFTGUARD_FLEET_* variables, then flags."""

from __future__ import annotations

import datetime as dt
import difflib
import ipaddress
import os
import zoneinfo
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import PydanticCustomError

from contract.errors import ConfigError

ENV_PREFIX = "LIFTGUARD_FLEET_"


class FleetSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    data_dir: Path = Field(default_factory=lambda: default_data_dir(os.environ),
                           description="where the SQLite database and the CA live by default (not the current "
                                       "directory): $LIFTGUARD_FLEET_DATA_DIR, else /var/lib/liftguard-fleet for "
                                       "root, else $XDG_DATA_HOME/liftguard-fleet (~/.local/share/liftguard-fleet)")
    db: str = Field("", description="sqlite:///path or postgresql://user@host:port/db (default: "
                                    "sqlite:///<data_dir>/fleet.db)")
    mqtt_url: str = Field("mqtt://127.0.0.1:1883", description="mqtt:// or mqtts:// broker URL")
    mqtt_username: str | None = None
    mqtt_password_file: Path | None = Field(None, description="file holding the broker password")
    mqtt_ca: Path | None = Field(None, description="CA bundle for mqtts://")
    mqtt_cert: Path | None = Field(None, description="client certificate for mqtts://")
    mqtt_key: Path | None = Field(None, description="client key for mqtts://")
    client_id: str = Field("liftguard-fleet", max_length=64, description="stable: the broker keeps the session")
    shared_group: str | None = Field(
        None, pattern=r"^[A-Za-z0-9_-]{1,32}$",
        description="subscribe as $share/<group>/... so several servers split the load")
    ingest_processes: int = Field(
        1, ge=1, le=64,
        description="MQTT ingest processes `serve` runs (itself and N-1 `liftguard-fleet ingest` children, client "
                    "ids <client_id>-1 ...), all on the shared subscription: ingest scales out over cores")
    http_host: str = "127.0.0.1"
    http_port: int = Field(8080, ge=0, le=65535)
    silence_s: float = Field(90.0, ge=5, le=86400, description="no heartbeat this long = offline")
    batch_max: int = Field(2000, ge=1, le=100_000, description="most messages per DB transaction")
    batch_window_ms: float = Field(25.0, ge=0, le=5000, description="wait this long to fill a batch")
    heartbeat_flush_s: float = Field(
        5.0, ge=0, le=60,
        description="QoS 0 heartbeats are coalesced (latest per unit, hourly counts of all) and written this "
                    "often (at most silence_s / 4); 0 writes each with its batch. A crash loses at most this much "
                    "of them")
    heartbeat_flush_units: int = Field(50_000, ge=1, le=10_000_000,
                                       description="write the held heartbeats early once this many units wait")
    max_clock_ahead_s: float = Field(
        86400.0, ge=60, le=366 * 86400,
        description="an event or config report stamped further ahead of the server clock is quarantined")
    max_event_age_s: float = Field(
        90 * 86400.0, ge=3600, le=10 * 366 * 86400,
        description="an event or config report stamped further in the past is quarantined (an outbox that "
                    "waited longer than this, or a unit clock reset to 1970)")
    max_ingest_lag_s: float = Field(30.0, ge=1, le=86400,
                                    description="/healthz reports degraded when ingest falls this far behind")
    unit_rate_per_s: float = Field(20.0, gt=0, le=100_000,
                                   description="messages per second a unit may send on average (token bucket)")
    unit_burst: int = Field(200, ge=1, le=1_000_000, description="messages a unit may send at once")
    snapshot_quota_mb: float = Field(100.0, gt=0, le=1_000_000, description="most snapshot storage per unit")
    snapshot_total_mb: float = Field(10_000.0, gt=0, le=100_000_000, description="most snapshot storage in all")
    snapshot_max_age_days: float = Field(180.0, gt=0, le=36_600, description="snapshots older than this go")
    clip_quota_mb: float = Field(200.0, gt=0, le=1_000_000, description="most event-clip storage per unit")
    clip_total_mb: float = Field(20_000.0, gt=0, le=100_000_000, description="most event-clip storage in all")
    clip_max_age_days: float = Field(180.0, gt=0, le=36_600, description="event clips older than this go")
    session_ttl_s: float = Field(12 * 3600, ge=60, le=30 * 86400)
    cookie_secure: bool = Field(False, description="set the Secure cookie flag (behind HTTPS)")
    login_max_failures: int = Field(3, ge=1, le=1000,
                                    description="wrong passwords per (address, user) before each next one doubles "
                                                "the wait (1 s, 2 s, 4 s, ...); never a lockout")
    login_max_delay_s: float = Field(60.0, ge=1, le=3600, description="the longest wait between login tries")
    login_window_s: float = Field(900.0, ge=1, le=86400,
                                  description="wrong passwords are forgotten this long after the last one")
    trusted_proxies: tuple[str, ...] = Field(
        (), description="addresses or networks (comma-separated) of reverse proxies whose X-Forwarded-For "
                        "names the client; from anyone else the header is ignored")
    notify_file: Path | None = Field(
        None, description="TOML file of per-site e-mail / webhook notification and escalation rules (fleet/notify.py)")
    public_url: str | None = Field(None, pattern=r"^https?://",
                                   description="the dashboard's address, for links in e-mails and webhooks")
    timezone: str = Field(
        "UTC", title="site time zone",
        description="IANA name (e.g. Asia/Shanghai): whose midnight starts a day in the daily alert counts, "
                    "the alert history's day filter and the times on the dashboard")

    @model_validator(mode="after")
    def _default_db(self) -> FleetSettings:
        if not self.db:
            object.__setattr__(self, "db", f"sqlite:///{self.data_dir / 'fleet.db'}")
        return self

    @property
    def ca_dir(self) -> Path:
        return self.data_dir / "ca"

    @model_validator(mode="after")
    def _processes_share(self) -> FleetSettings:
        if self.ingest_processes > 1 and not self.shared_group:
            raise ValueError("ingest_processes > 1 needs shared_group (e.g. fleet): without a shared subscription "
                             "every process would get, and store, every message")
        return self

    @property
    def heartbeat_flush_every_s(self) -> float:
        """The coalescing period used: `heartbeat_flush_s`, but at most a quarter of `silence_s`, so a unit
        never looks silent while its beats wait to be written."""
        return min(self.heartbeat_flush_s, self.silence_s / 4)

    @field_validator("trusted_proxies", mode="before")
    @classmethod
    def _split_proxies(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = [part.strip() for part in value.split(",") if part.strip()]
        for item in value or ():
            try:
                ipaddress.ip_network(str(item), strict=False)
            except ValueError:
                raise PydanticCustomError("bad_proxy", "{reason}",
                                          {"reason": f"{item!r} is not an IP address or network"}) from None
        return value

    @property
    def proxy_networks(self) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
        return tuple(ipaddress.ip_network(p, strict=False) for p in self.trusted_proxies)

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, name: str) -> str:
        try:
            zone_for(name)
        except ValueError as exc:
            raise PydanticCustomError("unknown_time_zone", "{reason}", {"reason": str(exc)}) from None
        return name

    @property
    def tz(self) -> dt.tzinfo:
        return zone_for(self.timezone)

    @property
    def mqtt_host(self) -> str:
        return urlparse(self.mqtt_url).hostname or "127.0.0.1"

    @property
    def mqtt_port(self) -> int:
        parsed = urlparse(self.mqtt_url)
        return parsed.port or (8883 if parsed.scheme == "mqtts" else 1883)

    @property
    def mqtt_tls(self) -> bool:
        return urlparse(self.mqtt_url).scheme == "mqtts"


def default_data_dir(environ: Mapping[str, str]) -> Path:
    """The fleet's data directory when no `data_dir` is set: never the current directory, which is wherever
    the installer happened to be."""
    if environ.get("XDG_DATA_HOME") and os.geteuid() != 0:
        return Path(environ["XDG_DATA_HOME"]) / "liftguard-fleet"
    if os.geteuid() == 0 or not environ.get("HOME"):
        return Path("/var/lib/liftguard-fleet")
    return Path(environ["HOME"]) / ".local" / "share" / "liftguard-fleet"


def settings_env(settings: FleetSettings) -> dict[str, str]:
    """The settings as LIFTGUARD_FLEET_* variables (what a child process reads back with load_settings)."""
    env = {}
    for name, value in settings.model_dump().items():
        if value is None:
            continue
        if isinstance(value, list | tuple):
            text = ",".join(str(v) for v in value)
        elif isinstance(value, bool):
            text = "true" if value else "false"
        else:
            text = str(value)
        env[ENV_PREFIX + name.upper()] = text
    return env


def zone_for(name: str) -> dt.tzinfo:
    """The tzinfo of an IANA zone name; ValueError, with a close match if one exists, when unknown."""
    if name == "UTC":
        return dt.UTC  # needs no time zone database, so the default works everywhere
    try:
        return zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):
        pass
    known = zoneinfo.available_timezones()
    if not known:
        raise ValueError(f"unknown time zone {name!r}: this machine has no time zone database "
                         "(install the OS package tzdata, or `pip install tzdata`)")
    by_case = {k.lower(): k for k in known}
    guesses = difflib.get_close_matches(name, known, n=1, cutoff=0.85)
    guess = by_case.get(name.strip().lower()) or (guesses[0] if guesses else None)
    hint = f"; did you mean {guess!r}?" if guess else ""
    raise ValueError(f"unknown time zone {name!r} (an IANA name such as 'Asia/Shanghai' or 'UTC'){hint}")


def load_settings(overrides: Mapping[str, Any] | None = None,
                  environ: Mapping[str, str] | None = None) -> FleetSettings:
    """Environment first, then explicit overrides (CLI flags); None overrides are ignored."""
    env = os.environ if environ is None else environ
    fields = FleetSettings.model_fields
    data: dict[str, Any] = {}
    for name in fields:
        value = env.get(ENV_PREFIX + name.upper())
        if value is not None:
            data[name] = value
    data.update({k: v for k, v in (overrides or {}).items() if v is not None})
    data.setdefault("data_dir", default_data_dir(env))
    try:
        return FleetSettings.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        if not where:  # a rule between settings
            raise ConfigError(f"fleet settings: {first['msg'].removeprefix('Value error, ')}") from None
        raise ConfigError(f"fleet setting {where} ({ENV_PREFIX}{where.upper()}): {first['msg']}") from None
