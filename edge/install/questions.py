"""The installer's questions: each answer parsed and validated as it is typed, and where it lands in the config."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from contract.mqtt import UNIT_ID_PATTERN

_PIN_RE = re.compile(r"^[A-Za-z0-9:_-]{1,32}$")
_URL_RE = re.compile(r"^mqtts?://[A-Za-z0-9.\-\[\]:]+(:\d{1,5})?/?$")
_NONE_WORDS = ("", "none", "no", "-")


def _text(max_len: int) -> Callable[[object], str]:
    def parse(value: object) -> str:
        text = str(value).strip()
        if len(text) > max_len:
            raise ValueError(f"at most {max_len} characters")
        return text
    return parse


def _unit_id(value: object) -> str:
    text = str(value).strip()
    if not re.match(UNIT_ID_PATTERN, text):
        raise ValueError("1-64 characters: letters, digits, '.', '_' or '-', starting with a letter or digit")
    return text


def _level(value: object) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("high", "h", "1", "true"):
        return True
    if text in ("low", "l", "0", "false"):
        return False
    raise ValueError("answer high or low")


def _pin(value: object) -> str:
    text = str(value).strip()
    if not _PIN_RE.match(text):
        raise ValueError("a pin name such as GPIO17, BOARD11 or 17")
    return text


def _optional_pin(value: object) -> str | None:
    if value is None or str(value).strip().lower() in _NONE_WORDS:
        return None
    return _pin(value)


def _choice(*options: str) -> Callable[[object], str]:
    def parse(value: object) -> str:
        text = str(value).strip().lower()
        if text not in options:
            raise ValueError(f"one of {', '.join(options)}")
        return text
    return parse


def yes_no(value: object) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("y", "yes", "true", "1"):
        return True
    if text in ("n", "no", "false", "0", ""):
        return False
    raise ValueError("answer y or n")


def _url(value: object) -> str:
    text = str(value).strip()
    if text.lower() in _NONE_WORDS:
        return ""
    if not _URL_RE.match(text):
        raise ValueError("mqtt://host:1883 or mqtts://host:8883, or none")
    return text.rstrip("/")


def parse_roi(value: object) -> list[tuple[float, float]] | None:
    """`"x,y x,y x,y ..."` (0..1 of the frame) or a list of pairs; none/empty = whole frame."""
    if value is None:
        return None
    if isinstance(value, list | tuple):
        pairs = [tuple(p) for p in value]
    else:
        text = str(value).strip()
        if text.lower() in _NONE_WORDS:
            return None
        try:
            pairs = [tuple(float(v) for v in chunk.split(",")) for chunk in text.replace(";", " ").split()]
        except ValueError:
            raise ValueError("points as x,y pairs separated by spaces, e.g. 0.2,0.1 0.8,0.1 0.8,0.95 0.2,0.95"
                             ) from None
    if any(len(p) != 2 for p in pairs):
        raise ValueError("each point is x,y")
    roi = [(float(x), float(y)) for x, y in pairs]
    if len(roi) < 3:
        raise ValueError("at least 3 points")
    if any(not (0 <= x <= 1 and 0 <= y <= 1) for x, y in roi):
        raise ValueError("x and y are fractions of the frame, 0..1")
    return roi


def format_roi(roi: object) -> str:
    if not roi:
        return "none"
    return " ".join(f"{x:g},{y:g}" for x, y in roi)  # type: ignore[attr-defined]


def _fmt_level(value: object) -> str:
    return "high" if value else "low"


def fmt_answer(value: object) -> str:
    return "none" if value is None else str(value)


State = dict[str, Any]  # the answers so far


@dataclass(frozen=True)
class Question:
    key: str  # answers-file key; the flag is --key-with-dashes
    prompt: str
    parse: Callable[[object], Any]
    path: tuple[str, ...] | None = None  # where the answer lands in the config (None: handled apart)
    fmt: Callable[[object], str] = fmt_answer
    when: Callable[[State], bool] = lambda s: True
    secret: bool = False
    default: str | None = None  # for answers not in the config


def _gpio(s: State) -> bool:
    return bool(s.get("backend") == "gpio")


def _broker(s: State) -> bool:
    return bool(s.get("broker_url"))


def _tls(s: State) -> bool:
    return str(s.get("broker_url", "")).startswith("mqtts://")


QUESTIONS: tuple[Question, ...] = (
    Question("unit_id", "Unit id (also the MQTT user / certificate name)", _unit_id, ("unit", "id"), str),
    Question("site", "Site (estate or complex)", _text(128), ("unit", "site"), str),
    Question("building", "Building", _text(128), ("unit", "building"), str),
    Question("elevator", "Elevator (car name)", _text(128), ("unit", "elevator"), str),
    Question("camera_source", "Camera (0, /dev/video0, rtsp://..., a video file or a folder)",
             _text(1024), ("camera", "source"), str),
    Question("roi", "Door region as x,y points in 0..1 (e.g. 0.2,0.1 0.8,0.1 0.8,0.95 0.2,0.95), or none",
             parse_roi, ("policy", "roi"), format_roi),
    Question("backend", "Relay driven by: gpio (pins on this board), bridge (I/O board on USB), none",
             _choice("gpio", "bridge", "none"), ("actuators", "backend"), str),
    Question("bridge_port", "I/O board serial port", _text(256), ("actuators", "bridge_port"), str,
             when=lambda s: s.get("backend") == "bridge"),
    Question("relay_pin", "Door-hold relay pin", _pin, ("actuators", "relay_pin"), str, when=_gpio),
    Question("relay_active", "Relay board triggers on high or low", _level, ("actuators", "relay_active_high"),
             _fmt_level, when=_gpio),
    Question("fire_pin", "Fire-service / inspection input pin, or none", _optional_pin,
             ("actuators", "fire_pin"), when=_gpio),
    Question("fire_active", "Fire-service input is active high or low", _level,
             ("actuators", "fire_active_high"), _fmt_level, when=lambda s: _gpio(s) and bool(s.get("fire_pin"))),
    Question("door_pin", "Door-open input pin (for the self-test loopback), or none", _optional_pin,
             ("actuators", "door_pin"), when=_gpio),
    Question("voice", "Voice warning: alsa (speaker), gpio (voice module), none", _choice("alsa", "gpio", "none"),
             ("actuators", "voice", "mode"), str),
    Question("voice_pin", "Voice module trigger pin", _pin, ("actuators", "voice", "pin"),
             when=lambda s: s.get("voice") == "gpio"),
    Question("broker_url", "Broker URL (mqtts://host:8883), or none", _url, ("mqtt", "url"),
             lambda v: str(v) or "none"),
    Question("mqtt_username", "Broker user name (empty = the unit id)", _text(128), ("mqtt", "username"),
             lambda v: "" if v is None else str(v), when=_broker),
    Question("mqtt_password", "Broker password (empty = none / keep the current one)", _text(256),
             when=_broker, secret=True, default=""),
    Question("tls", "Client certificate: issue (liftguard-fleet ca issue), files (copy given files), "
             "keep (the installed ones), none", _choice("issue", "files", "keep", "none"), when=_tls, default="none"),
    Question("ca_file", "CA certificate file to copy", _text(1024), when=lambda s: s.get("tls") == "files"),
    Question("cert_file", "Unit certificate file to copy", _text(1024), when=lambda s: s.get("tls") == "files"),
    Question("key_file", "Unit key file to copy", _text(1024), when=lambda s: s.get("tls") == "files"),
)
QUESTION_BY_KEY = {q.key: q for q in QUESTIONS}


def get_path(data: dict[str, Any], path: tuple[str, ...]) -> Any:
    node: Any = data
    for part in path:
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def set_path(data: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    node = data
    for part in path[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = node[part] = {}
        node = child
    if isinstance(value, tuple | list) and path == ("policy", "roi"):
        value = [list(p) for p in value]
    node[path[-1]] = value
