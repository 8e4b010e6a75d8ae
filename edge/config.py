"""Device configuration: YAML → validated, typed, immutable models.

Every number has bounds, unknown keys are errors, and cross-field safety rules live in
validators, so a config that loads is a config that is safe to run. Errors name the field path
(`policy.hold_max_s: ...`). `liftguard config schema` prints the JSON Schema of `Config`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from edge.contract import UNIT_ID_PATTERN
from edge.errors import ConfigError

MAX_CONFIG_BYTES = 256 * 1024
CLASSES_WITH_ACTIONS = ("ebike", "bicycle", "wheelchair", "stroller", "person", "cart")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class UnitConfig(_Section):
    id: str = Field("liftguard-dev", pattern=UNIT_ID_PATTERN, title="Unit id",
                    description="Also the MQTT username / certificate CN.")
    site: str = Field("", max_length=128, description="Estate or complex name, for the dashboard.")
    building: str = Field("", max_length=128, description="Building within the site.")
    elevator: str = Field("", max_length=128, description="Car name within the building.")


class CameraConfig(_Section):
    source: str = Field("0", min_length=1, max_length=1024, title="Camera source",
                        description="V4L2 index or /dev/videoN, rtsp:// URL, video file, or folder of frames.")
    fps: float = Field(10.0, ge=1, le=60, description="Frames per second to process (extra frames dropped).")
    width: int = Field(640, ge=160, le=3840)
    height: int = Field(480, ge=120, le=2160)
    open_timeout_s: float = Field(5.0, ge=0.5, le=60)
    read_timeout_s: float = Field(2.0, ge=0.1, le=30, description="No frame for this long = camera offline.")
    reconnect_min_s: float = Field(0.5, ge=0.1, le=60)
    reconnect_max_s: float = Field(30.0, ge=0.5, le=600)
    frozen_after_s: float = Field(5.0, ge=1, le=300, description="Identical frames for this long = frozen.")
    frozen_max_diff: float = Field(0.5, ge=0, le=50, description="Mean absolute pixel difference below "
                                   "which two frames count as identical.")
    loop: bool = Field(False, description="Loop a video file (testing).")

    @model_validator(mode="after")
    def _backoff_order(self) -> CameraConfig:
        if self.reconnect_min_s > self.reconnect_max_s:
            raise ValueError("reconnect_min_s must not exceed reconnect_max_s")
        return self


class DetectorConfig(_Section):
    model_path: str = Field("", max_length=1024, description="ONNX model; empty = the shipped default model.")
    threads: int = Field(2, ge=1, le=16, description="onnxruntime intra-op threads.")
    budget_ms: float = Field(250.0, ge=10, le=5000, description="Inference slower than this (median over "
                             "the last frames) suppresses holds: fail open, report overload.")
    nms_iou: float = Field(0.6, ge=0.1, le=1.0)
    min_score: float = Field(0.2, ge=0.01, le=1.0, description="Detections below this are dropped.")


def _default_thresholds() -> dict[str, float]:
    return {"ebike": 0.5, "bicycle": 0.4, "wheelchair": 0.3, "stroller": 0.3, "person": 0.4, "cart": 0.4}


class PolicyConfig(_Section):
    block_classes: tuple[str, ...] = Field(("ebike",), min_length=1, description="Classes that get blocked.")
    veto_classes: tuple[str, ...] = Field(("wheelchair", "stroller"), description="Evidence of these on the "
                                          "same track vetoes a block (never block a wheelchair).")
    thresholds: dict[str, float] = Field(default_factory=_default_thresholds,
                                         description="Per-class score thresholds (0..1).")
    confirm_frames: int = Field(3, ge=1, le=30, description="k: frames with the e-bike above threshold ...")
    confirm_window: int = Field(5, ge=1, le=60, description="... out of the last n frames of its track.")
    confirm_within_s: float = Field(2.0, ge=0.2, le=3.0, description="Confirmation must happen within this "
                                    "time of first sight, or the track is not blocked (latency budget).")
    veto_iou: float = Field(0.3, ge=0.0, le=1.0, description="A veto-class box overlapping the track by this "
                            "IoU counts as veto evidence for it.")
    clear_after_s: float = Field(3.0, ge=0.5, le=60, description="No e-bike seen for this long = clear.")
    hold_max_s: float = Field(120.0, ge=5, le=600, description="Hard cap of one hold (safety).")
    cooldown_s: float = Field(30.0, ge=0, le=600, description="No new hold for this long after a cap release.")
    min_box_area: float = Field(0.01, ge=0, le=0.5, description="Ignore detections smaller than this fraction "
                                "of the frame (far outside the car).")
    roi: tuple[tuple[float, float], ...] | None = Field(
        None, description="Door/car region as a polygon of (x, y) in 0..1 frame coordinates; only tracks "
        "whose box centre lies inside count. None = whole frame.")

    @model_validator(mode="after")
    def _safety(self) -> PolicyConfig:
        if self.confirm_frames > self.confirm_window:
            raise ValueError("confirm_frames must not exceed confirm_window")
        overlap = set(self.block_classes) & set(self.veto_classes)
        if overlap:
            raise ValueError(f"a class cannot be both blocked and a veto: {sorted(overlap)}")
        for name, value in self.thresholds.items():
            if not 0.0 < value <= 1.0:
                raise ValueError(f"thresholds.{name} must be in (0, 1], got {value}")
        missing = [c for c in (*self.block_classes, *self.veto_classes) if c not in self.thresholds]
        if missing:
            raise ValueError(f"thresholds missing for {missing}")
        if self.roi is not None:
            if len(self.roi) < 3:
                raise ValueError("roi needs at least 3 points")
            if any(not (0 <= x <= 1 and 0 <= y <= 1) for x, y in self.roi):
                raise ValueError("roi points must be within 0..1")
        return self


class TrackerConfig(_Section):
    match_iou: float = Field(0.2, ge=0.01, le=0.9, description="Minimum IoU to continue a track.")
    max_missed_s: float = Field(1.5, ge=0.1, le=30, description="A track unseen this long is dropped.")


class VoiceConfig(_Section):
    mode: Literal["none", "alsa", "gpio"] = Field("alsa", description="alsa: play wav_path with aplay; "
                                                  "gpio: pulse/hold a voice-module trigger pin.")
    wav_path: str = Field("", max_length=1024, description="WAV to play; empty = the bundled warning.")
    alsa_device: str = Field("default", max_length=128)
    pin: str | None = Field(None, max_length=32, description="Trigger pin of a GPIO voice module.")
    active_high: bool = True
    repeat_s: float = Field(8.0, ge=1, le=120, description="Repeat the warning this often while holding.")


class ActuatorConfig(_Section):
    backend: Literal["gpio", "bridge", "none"] = Field("gpio", description="gpio: pins on this host; "
                                                       "bridge: the I/O board over serial; none: log only.")
    relay_pin: str = Field("GPIO17", max_length=32, description="Door-hold relay (energised = hold).")
    relay_active_high: bool = Field(True, description="False for low-trigger relay boards.")
    fire_pin: str | None = Field(None, max_length=32, description="Fire-service / inspection input; when "
                                 "active, holds are released within 100 ms and suppressed.")
    fire_active_high: bool = False
    door_pin: str | None = Field(None, max_length=32, description="Optional door-open input (self-test).")
    beacon_pin: str | None = Field(None, max_length=32, description="Optional warning beacon.")
    voice: VoiceConfig = VoiceConfig()
    bridge_port: str = Field("/dev/ttyACM0", max_length=256, description="Serial port of the I/O board.")
    bridge_baud: int = Field(115200, ge=1200, le=3_000_000)

    @model_validator(mode="after")
    def _distinct_pins(self) -> ActuatorConfig:
        if self.backend != "gpio":
            return self
        pins = [p for p in (self.relay_pin, self.fire_pin, self.door_pin, self.beacon_pin,
                            self.voice.pin if self.voice.mode == "gpio" else None) if p]
        if len(pins) != len(set(pins)):
            raise ValueError(f"pins must be distinct, got {pins}")
        if self.voice.mode == "gpio" and not self.voice.pin:
            raise ValueError("voice.pin is required when voice.mode is gpio")
        return self


class EventsConfig(_Section):
    jsonl_path: str = Field("/var/lib/liftguard/events.jsonl", max_length=1024,
                            description="Local event log (JSON lines); empty disables it.")
    snapshot_dir: str = Field("/var/lib/liftguard/snapshots", max_length=1024)
    snapshot_keep: int = Field(200, ge=0, le=100_000, description="Newest snapshots kept on disk.")
    blur_faces: bool = Field(True, description="Blur faces before a snapshot leaves the device.")


class MqttConfig(_Section):
    url: str = Field("", max_length=1024, description="mqtt://host:1883 or mqtts://host:8883; empty = no link.")
    username: str | None = Field(None, max_length=128, description="Defaults to unit.id.")
    password_file: str | None = Field(None, max_length=1024, description="File holding the password; "
                                      "relative names resolve in $CREDENTIALS_DIRECTORY.")
    ca_file: str | None = Field(None, max_length=1024)
    cert_file: str | None = Field(None, max_length=1024)
    key_file: str | None = Field(None, max_length=1024)
    keepalive_s: int = Field(30, ge=5, le=600)
    heartbeat_s: float = Field(30.0, ge=1, le=3600)
    reconnect_max_s: float = Field(60.0, ge=1, le=600)
    outbox_path: str = Field("/var/lib/liftguard/outbox.sqlite3", max_length=1024)
    outbox_max_rows: int = Field(100_000, ge=10, le=10_000_000, description="Oldest rows evicted (counted) "
                                 "beyond this.")
    home_assistant: bool = Field(False, description="Publish Home Assistant MQTT discovery.")

    @model_validator(mode="after")
    def _tls_pairs(self) -> MqttConfig:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together")
        if self.url and not self.url.startswith(("mqtt://", "mqtts://")):
            raise ValueError("url must start with mqtt:// or mqtts://")
        return self


class Config(_Section):
    """The whole device configuration (config/default.yaml documents every field)."""

    unit: UnitConfig = UnitConfig()
    camera: CameraConfig = CameraConfig()
    detector: DetectorConfig = DetectorConfig()
    tracker: TrackerConfig = TrackerConfig()
    policy: PolicyConfig = PolicyConfig()
    actuators: ActuatorConfig = ActuatorConfig()
    events: EventsConfig = EventsConfig()
    mqtt: MqttConfig = MqttConfig()
    blocking_enabled: bool = Field(True, description="False: detect and alert, never hold the door.")


# --- loading -------------------------------------------------------------------------------------


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys and aliases (no billion-laughs, no silent overrides)."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()  # type: ignore[no-untyped-call]
            raise ConfigError(f"YAML aliases are not allowed (line {event.start_mark.line + 1})")
        return super().compose_node(parent, index)

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise ConfigError(f"duplicate key {key!r} (line {key_node.start_mark.line + 1})")
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def format_validation_error(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        path = ".".join(str(p) for p in err["loc"]) or "<root>"
        lines.append(f"{path}: {err['msg']}")
    return "; ".join(lines)


def parse_config(data: Any) -> Config:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"config must be a mapping at the top level, got {type(data).__name__}")
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc)) from None


def parse_yaml(text: str) -> Any:
    if len(text.encode()) > MAX_CONFIG_BYTES:
        raise ConfigError(f"config is larger than {MAX_CONFIG_BYTES} bytes")
    try:
        return yaml.load(text, Loader=_StrictLoader)  # _StrictLoader is a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise ConfigError(f"not valid YAML: {exc}") from None


def load_config(path: str | Path) -> Config:
    """Read and validate a YAML config; any problem raises ConfigError naming the field path."""
    p = Path(path)
    try:
        size = p.stat().st_size
    except OSError as exc:
        raise ConfigError(f"cannot read config {p}: {exc.strerror}") from None
    if size > MAX_CONFIG_BYTES:
        raise ConfigError(f"config {p} is {size} bytes; the limit is {MAX_CONFIG_BYTES}")
    return parse_config(parse_yaml(p.read_text(encoding="utf-8")))


def merge_fragment(config: Config, fragment: dict[str, Any]) -> Config:
    """A new Config with `fragment` deep-merged in (fleet `set_config`); the old one is untouched."""

    def deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
        out = dict(base)
        for key, value in extra.items():
            if isinstance(value, dict) and isinstance(out.get(key), dict):
                out[key] = deep_merge(out[key], value)
            else:
                out[key] = value
        return out

    if not isinstance(fragment, dict):
        raise ConfigError("config fragment must be a mapping")
    return parse_config(deep_merge(config.model_dump(mode="python"), fragment))
