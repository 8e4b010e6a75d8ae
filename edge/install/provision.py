"""`liftguard provision`: turn a freshly installed box into a configured, running LiftGuard unit.

Asks (or reads from flags / an answers file) the handful of things only the installer knows: unit
id, where the elevator is, the camera, the door region, the relay and fire-service wiring, the
voice, the broker and its credentials. Every answer is validated as it is typed, against the same
`edge.config.Config` model the service loads, so a config that provision writes is a config that
starts. Then it writes, atomically and only what changed:

    {config dir}/config.yaml          the validated config (mode 0644: no secrets in it)
    {config dir}/reference.png        the camera's view at install time (selftest compares against it)
    {config dir}/roi.png              the door region drawn on that view, to check by eye
    {config dir}/credentials/         broker password / CA / unit certificate and key (0700 / 0600)
    {unit dir}/liftguard.service      the systemd unit, pointing at this config and these credentials

A second run with the same answers reports "no changes"; `--dry-run` prints a unified diff instead of
writing. `--root DIR` prefixes every target path (tests, image builds).

The lead wires it into the CLI with one line: `add_provision_parser(subparsers)` (sets
`func=provision_from_args`), or calls `provision_main(argv)` directly.
"""

from __future__ import annotations

import argparse
import difflib
import getpass
import logging
import os
import re
import shlex
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import cv2
import numpy as np
import yaml

from contract.errors import ConfigError, LiftGuardError
from contract.mqtt import UNIT_ID_PATTERN
from edge.config import parse_config, parse_yaml

log = logging.getLogger(__name__)

DEFAULT_CONFIG_PATH = "/etc/liftguard/config.yaml"
DEFAULT_UNIT_DIR = "/etc/systemd/system"
UNIT_NAME = "liftguard.service"
REFERENCE_NAME = "reference.png"
ROI_PREVIEW_NAME = "roi.png"
CREDENTIALS_DIRNAME = "credentials"
PASSWORD_NAME = "mqtt-password"
CA_NAME, CERT_NAME, KEY_NAME = "ca.crt", "unit.crt", "unit.key"
DEFAULT_TEMPLATE = Path(__file__).resolve().parents[2] / "config" / UNIT_NAME
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
HEADER = ("# LiftGuard unit config, written by `liftguard provision` (re-run it to change the answers).\n"
          "# Fields not listed here have their defaults; `liftguard config schema` documents every field.\n")

Ask = Callable[[str], str]
Frame = np.ndarray[Any, Any]  # BGR uint8, as OpenCV gives it
Probe = Callable[[str], "Frame | None"]
CertIssuer = Callable[[str, Path], None]


class ProvisionError(LiftGuardError, RuntimeError):
    """Provisioning cannot go on; the message tells the installer what to fix."""


# --- camera --------------------------------------------------------------------------------------


def grab_frame(source: str, timeout_s: float = 5.0, warmup_frames: int = 5) -> Frame | None:
    """One BGR frame from a camera source as edge.config understands it, or None.

    V4L2 index / device and stream URLs skip `warmup_frames` (auto-exposure settles); video files
    give their first frame; a folder gives its first image.
    """
    path = Path(source)
    if path.is_dir():
        images = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        frame = cv2.imread(str(images[0])) if images else None
        return frame if frame is not None and frame.size else None
    live = source.isdigit() or source.startswith(("/dev/", "rtsp://", "rtsps://", "http://", "https://"))
    target: int | str = int(source) if source.isdigit() else source
    ms = int(timeout_s * 1000)
    cap = cv2.VideoCapture(target, cv2.CAP_ANY,
                           [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, ms, cv2.CAP_PROP_READ_TIMEOUT_MSEC, ms])
    try:
        if not cap.isOpened():
            return None
        frame = None
        for _ in range(warmup_frames + 1 if live else 1):
            ok, candidate = cap.read()
            if not ok:
                break
            frame = candidate
        return frame if frame is not None and frame.size else None
    finally:
        cap.release()


def encode_png(frame: Frame) -> bytes:
    ok, buf = cv2.imencode(".png", frame)
    if not ok:
        raise ProvisionError("could not encode PNG")
    return bytes(buf.tobytes())


def draw_roi(frame: Frame, roi: Sequence[Sequence[float]] | None) -> Frame:
    """The reference frame with the door region outlined and the outside dimmed (None = whole frame)."""
    out = frame.copy()
    h, w = out.shape[:2]
    if roi is None:
        cv2.rectangle(out, (2, 2), (w - 3, h - 3), (0, 255, 0), 2)
        cv2.putText(out, "ROI: whole frame", (10, 25), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (0, 255, 0), 2)
        return out
    points = np.array([[round(x * (w - 1)), round(y * (h - 1))] for x, y in roi], dtype=np.int32)
    mask = np.zeros((h, w), dtype=np.uint8)
    cv2.fillPoly(mask, [points], 255)
    out[mask == 0] = (out[mask == 0] // 3).astype(np.uint8)
    cv2.polylines(out, [points], isClosed=True, color=(0, 255, 0), thickness=2)
    for i, (px, py) in enumerate(points):
        cv2.circle(out, (int(px), int(py)), 4, (0, 0, 255), -1)
        cv2.putText(out, str(i + 1), (int(px) + 6, int(py) - 6), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 255), 1)
    return out


# --- answers ---------------------------------------------------------------------------------------

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


def _yes_no(value: object) -> bool:
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


def _fmt(value: object) -> str:
    return "none" if value is None else str(value)


State = dict[str, Any]  # the answers so far


@dataclass(frozen=True)
class Question:
    key: str  # answers-file key; the flag is --key-with-dashes
    prompt: str
    parse: Callable[[object], Any]
    path: tuple[str, ...] | None = None  # where the answer lands in the config (None: handled apart)
    fmt: Callable[[object], str] = _fmt
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


def _get(data: dict[str, Any], path: tuple[str, ...]) -> Any:
    node: Any = data
    for part in path:
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def _set(data: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    node = data
    for part in path[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = node[part] = {}
        node = child
    if isinstance(value, tuple | list) and path == ("policy", "roi"):
        value = [list(p) for p in value]
    node[path[-1]] = value


# --- file changes ----------------------------------------------------------------------------------


@dataclass
class FileChange:
    path: Path  # on this machine (with --root applied)
    content: bytes
    mode: int
    secret: bool = False
    binary: bool = False

    def current(self) -> bytes | None:
        try:
            return self.path.read_bytes()
        except FileNotFoundError:
            return None

    def differs(self) -> bool:
        if self.current() != self.content:
            return True
        return (self.path.stat().st_mode & 0o777) != self.mode

    def diff(self) -> str:
        old = self.current()
        if self.secret or self.binary:
            what = "secret" if self.secret else "binary"
            if old is None:
                return f"+++ {self.path} ({what}, {len(self.content)} bytes, new)\n"
            if old == self.content:
                return f"*** {self.path}: mode {oct(self.mode)}\n"
            return f"*** {self.path} ({what}, {len(old)} -> {len(self.content)} bytes)\n"
        old_lines = (old or b"").decode(errors="replace").splitlines(keepends=True)
        new_lines = self.content.decode().splitlines(keepends=True)
        text = "".join(difflib.unified_diff(old_lines, new_lines, "/dev/null" if old is None else str(self.path),
                                            str(self.path)))
        return text or f"*** {self.path}: mode {oct(self.mode)}\n"


def atomic_write(path: Path, content: bytes, mode: int) -> None:
    """Write via a temporary file in the same folder + fsync + rename: never a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(content)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


# --- the systemd unit ------------------------------------------------------------------------------


def render_unit(template: str, config_path: str, credentials: Sequence[str], credentials_dir: str,
                exec_path: str | None = None) -> str:
    """The unit with ExecStart pointing at `config_path` and one LoadCredential= per credential file."""
    out: list[str] = []
    credentials_written = False
    for line in template.splitlines():
        if line.startswith("ExecStart="):
            argv = shlex.split(line.removeprefix("ExecStart="))
            binary = exec_path or argv[0]
            line = f"ExecStart={binary} run --config {config_path}"
        elif line.startswith("LoadCredential="):
            if not credentials_written:
                out.extend(f"LoadCredential={name}:{credentials_dir}/{name}" for name in credentials)
                credentials_written = True
            continue
        out.append(line)
    return "\n".join(out) + "\n"


def unit_directives(text: str) -> list[tuple[str, str, str]]:
    """(section, key, value) for every directive in a unit file, in order (keys may repeat)."""
    section = ""
    found = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        key, _, value = line.partition("=")
        found.append((section, key.strip(), value.strip()))
    return found


# --- provisioning ----------------------------------------------------------------------------------


def default_cert_issuer(fleet_cmd: str) -> CertIssuer:
    """Runs `{fleet_cmd} ca issue --unit ID --out DIR` (writes ca.crt, ID.crt, ID.key)."""

    def issue(unit_id: str, out_dir: Path) -> None:
        argv = [*shlex.split(fleet_cmd), "ca", "issue", "--unit", unit_id, "--out", str(out_dir)]
        try:
            result = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise ProvisionError(f"could not run {fleet_cmd!r} to issue a certificate: {exc}") from None
        if result.returncode != 0:
            raise ProvisionError(f"certificate issue failed ({result.returncode}): {result.stderr.strip()[-500:]}")

    return issue


@dataclass
class Options:
    config_path: str = DEFAULT_CONFIG_PATH
    unit_dir: str = DEFAULT_UNIT_DIR
    root: str = "/"
    interactive: bool = True
    dry_run: bool = False
    probe: bool = True
    new_reference: bool = False
    reissue_cert: bool = False
    unit_template: Path = DEFAULT_TEMPLATE
    exec_path: str | None = None
    answers: dict[str, Any] = field(default_factory=dict)


class Provisioner:
    def __init__(self, options: Options, *, ask: Ask = input, ask_secret: Ask = getpass.getpass,
                 probe: Probe = grab_frame, issue_cert: CertIssuer | None = None, out: TextIO = sys.stdout) -> None:
        self.opt = options
        self.ask = ask
        self.ask_secret = ask_secret
        self.probe = probe
        self.issue_cert = issue_cert or default_cert_issuer("liftguard-fleet")
        self.out = out
        self.frame: Frame | None = None

    # paths ---------------------------------------------------------------------------------------

    def local(self, target: str | Path) -> Path:
        """A target path (as the service sees it) under --root on this machine."""
        path = Path(target)
        return Path(self.opt.root) / (path.relative_to("/") if path.is_absolute() else path)

    @property
    def config_target(self) -> Path:
        return Path(self.opt.config_path)

    @property
    def credentials_target(self) -> Path:
        return self.config_target.parent / CREDENTIALS_DIRNAME

    def say(self, text: str) -> None:
        print(text, file=self.out)

    # answers -------------------------------------------------------------------------------------

    def _existing(self) -> dict[str, Any]:
        path = self.local(self.config_target)
        if not path.exists():
            return {}
        try:
            data = parse_yaml(path.read_text(encoding="utf-8"))
            parse_config(data)
        except ConfigError as exc:
            self.say(f"note: the existing {self.config_target} is not valid ({exc}); starting from defaults")
            return {}
        return data if isinstance(data, dict) else {}

    def _default_text(self, q: Question, data: dict[str, Any], state: State) -> str | None:
        if q.path is not None:
            if q.key == "mqtt_username":
                return _fmt(_get(data, q.path) or "")
            return q.fmt(_get(parse_config(data).model_dump(mode="json"), q.path))
        if q.key == "tls" and (self.local(self.credentials_target) / CERT_NAME).exists():
            return "keep"
        return q.default

    def _accept(self, q: Question, raw: object, data: dict[str, Any], state: State) -> Any:
        """Parse one answer and validate the config with it in place; raises ValueError with the reason."""
        value = q.parse(raw)
        if q.path is not None:
            trial = yaml.safe_load(yaml.safe_dump(data))  # deep copy of plain data
            _set(trial, q.path, value if q.key != "mqtt_username" else (value or None))
            try:
                parse_config(trial)
            except ConfigError as exc:
                raise ValueError(str(exc)) from None
            data.clear()
            data.update(trial)
        state[q.key] = value
        return value

    def _ask_one(self, q: Question, default: str | None) -> str:
        shown = "" if q.secret or default is None else f" [{default}]"
        reply = (self.ask_secret if q.secret else self.ask)(f"{q.prompt}{shown}: ").strip()
        return reply if reply or default is None else default

    def gather(self, data: dict[str, Any]) -> State:
        state: State = {}
        unknown = sorted(set(self.opt.answers) - set(QUESTION_BY_KEY))
        if unknown:
            raise ProvisionError(f"unknown answers: {', '.join(unknown)} (known: {', '.join(QUESTION_BY_KEY)})")
        for q in QUESTIONS:
            if not q.when(state):
                continue
            default = self._default_text(q, data, state)
            if q.key == "unit_id" and not _get(data, ("unit", "id")):
                default = None  # never default a fleet to "liftguard-dev"
            given = self.opt.answers.get(q.key)
            while True:
                if given is not None:
                    raw: object = given
                elif self.opt.interactive:
                    raw = self._ask_one(q, default)
                elif default is not None:
                    raw = default
                else:
                    raise ProvisionError(f"{q.key} is required (--{q.key.replace('_', '-')} or the answers file)")
                try:
                    self._accept(q, raw, data, state)
                except ValueError as exc:
                    if not self.opt.interactive:
                        raise ProvisionError(f"{q.key}: {exc}") from None
                    self.say(f"  {q.key}: {exc}")
                    given = None
                    continue
                if q.key == "camera_source" and not self._camera_ok(state["camera_source"]):
                    given = None
                    continue
                break
        return state

    def _camera_ok(self, source: str) -> bool:
        if not self.opt.probe:
            return True
        self.say(f"Probing camera {source} ...")
        frame = self.probe(source)
        if frame is not None:
            h, w = frame.shape[:2]
            self.say(f"  camera OK: {w}x{h}")
            self.frame = frame
            return True
        if not self.opt.interactive:
            raise ProvisionError(f"camera {source!r} delivered no frame; check cable / URL, or pass --no-probe")
        self.say(f"  camera {source!r} delivered no frame")
        return _yes_no(self.ask("Keep this camera source anyway? [y/N]: ") or "n")

    # the plan ------------------------------------------------------------------------------------

    def _credential_files(self, state: State, data: dict[str, Any]) -> dict[str, bytes]:
        """name -> content for every credential that should be in the credentials folder."""
        cred_dir = self.local(self.credentials_target)
        files: dict[str, bytes] = {}

        def keep(name: str) -> None:
            path = cred_dir / name
            if path.exists():
                files[name] = path.read_bytes()

        if not state.get("broker_url"):
            return files
        password = state.get("mqtt_password") or ""
        if password:
            files[PASSWORD_NAME] = password.encode()
        elif _get(data, ("mqtt", "password_file")) == PASSWORD_NAME:
            keep(PASSWORD_NAME)
        tls = state.get("tls", "none")
        if tls == "keep" or (tls == "issue" and (cred_dir / CERT_NAME).exists() and not self.opt.reissue_cert):
            for name in (CA_NAME, CERT_NAME, KEY_NAME):
                keep(name)
        elif tls == "issue":
            if self.opt.dry_run:
                self.say("(dry run: a certificate would be issued with liftguard-fleet)")
            else:
                unit_id = state["unit_id"]
                with tempfile.TemporaryDirectory(prefix="liftguard-cert-") as tmp:
                    self.issue_cert(unit_id, Path(tmp))
                    sources = {CA_NAME: "ca.crt", CERT_NAME: f"{unit_id}.crt", KEY_NAME: f"{unit_id}.key"}
                    for name, src in sources.items():
                        try:
                            files[name] = (Path(tmp) / src).read_bytes()
                        except OSError as exc:
                            raise ProvisionError(f"certificate issue did not write {src}: {exc.strerror}") from None
        elif tls == "files":
            for name, key in ((CA_NAME, "ca_file"), (CERT_NAME, "cert_file"), (KEY_NAME, "key_file")):
                try:
                    files[name] = Path(state[key]).expanduser().read_bytes()
                except OSError as exc:
                    raise ProvisionError(f"{key}: cannot read {state[key]}: {exc.strerror}") from None
        return files

    def plan(self) -> list[FileChange]:
        data = self._existing()
        state = self.gather(data)
        conf_dir = self.local(self.config_target).parent
        changes: list[FileChange] = []

        credentials = self._credential_files(state, data)
        mqtt = data.setdefault("mqtt", {})
        mqtt["password_file"] = PASSWORD_NAME if PASSWORD_NAME in credentials else None
        tls_files = CERT_NAME in credentials
        mqtt["ca_file"] = CA_NAME if CA_NAME in credentials else None
        mqtt["cert_file"] = CERT_NAME if tls_files else None
        mqtt["key_file"] = KEY_NAME if tls_files else None
        for key in [k for k, v in mqtt.items() if v is None]:
            del mqtt[key]
        if not mqtt:
            del data["mqtt"]

        config = parse_config(data)
        dumped = config.model_dump(mode="json", exclude_defaults=True)
        text = HEADER + yaml.safe_dump(dumped, sort_keys=False, allow_unicode=True)
        if parse_config(parse_yaml(text)) != config:  # what we write must read back as what we checked
            raise ProvisionError("internal error: the written config would not read back identically")
        changes.append(FileChange(self.local(self.config_target), text.encode(), 0o644))

        reference_path = conf_dir / REFERENCE_NAME
        reference: Frame | None = None
        if reference_path.exists() and not self.opt.new_reference:
            reference = cv2.imread(str(reference_path))
        elif self.frame is not None:
            reference = self.frame
            changes.append(FileChange(reference_path, encode_png(self.frame), 0o644, binary=True))
        if reference is not None:
            preview = draw_roi(reference, config.policy.roi)
            changes.append(FileChange(conf_dir / ROI_PREVIEW_NAME, encode_png(preview), 0o644, binary=True))

        cred_dir = self.local(self.credentials_target)
        for name, content in sorted(credentials.items()):
            changes.append(FileChange(cred_dir / name, content, 0o600, secret=True))

        template = self._template()
        unit_text = render_unit(template, str(self.config_target), sorted(credentials),
                                str(self.credentials_target), self.opt.exec_path)
        changes.append(FileChange(self.local(Path(self.opt.unit_dir) / UNIT_NAME), unit_text.encode(), 0o644))
        return changes

    def _template(self) -> str:
        try:
            return self.opt.unit_template.read_text(encoding="utf-8")
        except OSError as exc:
            raise ProvisionError(f"unit template {self.opt.unit_template}: {exc.strerror}") from None

    def run(self) -> int:
        changes = [c for c in self.plan() if c.differs()]
        if not changes:
            self.say("no changes")
            return 0
        if self.opt.dry_run:
            for change in changes:
                self.out.write(change.diff())
            self.say(f"dry run: {len(changes)} file(s) would change")
            return 0
        self.say("Changes:")
        for change in changes:
            self.say(f"  {'update' if change.path.exists() else 'create'} {change.path}")
        if self.opt.interactive and not _yes_no(self.ask("Write these changes? [Y/n]: ") or "y"):
            self.say("nothing written")
            return 1
        for change in changes:
            if change.secret:
                change.path.parent.mkdir(parents=True, exist_ok=True)
                change.path.parent.chmod(0o700)
            atomic_write(change.path, change.content, change.mode)
        self.say(f"wrote {len(changes)} file(s)")
        if any(c.path.name == UNIT_NAME for c in changes):
            self.say("next: systemctl daemon-reload && systemctl enable --now liftguard && liftguard selftest "
                     f"--config {self.config_target}")
        return 0


# --- command line ----------------------------------------------------------------------------------


def add_provision_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add `provision` to a CLI's subparsers; the parsed args carry `func=provision_from_args`."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "provision", help="configure this unit and install the service",
        description=__doc__.split("\n\n")[0] if __doc__ else None)
    configure_parser(parser)
    parser.set_defaults(func=provision_from_args)
    return parser


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging (set up by the CLI)")
    parser.add_argument("--answers", type=Path, help="YAML file of answers (non-interactive)")
    parser.add_argument("-y", "--non-interactive", action="store_true", help="never prompt; defaults fill gaps")
    parser.add_argument("--config-path", default=DEFAULT_CONFIG_PATH, help="where the config goes")
    parser.add_argument("--unit-dir", default=DEFAULT_UNIT_DIR, help="where the systemd unit goes")
    parser.add_argument("--root", default="/", help="prefix for every written path (tests, image builds)")
    parser.add_argument("--dry-run", action="store_true", help="show a diff of what would change, write nothing")
    parser.add_argument("--no-probe", action="store_true", help="do not open the camera")
    parser.add_argument("--new-reference", action="store_true", help="replace the saved reference frame")
    parser.add_argument("--reissue-cert", action="store_true", help="issue a new certificate even if one exists")
    parser.add_argument("--fleet-cmd", default="liftguard-fleet", help="command that runs `ca issue`")
    parser.add_argument("--unit-template", type=Path, default=DEFAULT_TEMPLATE)
    parser.add_argument("--exec-path", help="liftguard binary for ExecStart (default: the template's)")
    for q in QUESTIONS:
        parser.add_argument(f"--{q.key.replace('_', '-')}", dest=f"answer_{q.key}", metavar="VALUE",
                            help=q.prompt)


def options_from_args(args: argparse.Namespace) -> Options:
    answers: dict[str, Any] = {}
    if args.answers is not None:
        try:
            loaded = yaml.safe_load(args.answers.read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError) as exc:
            raise ProvisionError(f"answers file {args.answers}: {exc}") from None
        if not isinstance(loaded, dict):
            raise ProvisionError(f"answers file {args.answers} must be a mapping of question: answer")
        answers.update(loaded)
    for q in QUESTIONS:
        value = getattr(args, f"answer_{q.key}")
        if value is not None:
            answers[q.key] = value
    return Options(config_path=args.config_path, unit_dir=args.unit_dir, root=args.root,
                   interactive=not (args.non_interactive or args.answers is not None), dry_run=args.dry_run,
                   probe=not args.no_probe, new_reference=args.new_reference, reissue_cert=args.reissue_cert,
                   unit_template=args.unit_template, exec_path=args.exec_path, answers=answers)


def provision_from_args(args: argparse.Namespace, *, ask: Ask = input, ask_secret: Ask = getpass.getpass,
                        probe: Probe = grab_frame, out: TextIO = sys.stdout) -> int:
    try:
        options = options_from_args(args)
        issuer = default_cert_issuer(args.fleet_cmd)
        return Provisioner(options, ask=ask, ask_secret=ask_secret, probe=probe, issue_cert=issuer, out=out).run()
    except (ProvisionError, ConfigError) as exc:
        print(f"provision: {exc}", file=sys.stderr)
        return 2
    except (KeyboardInterrupt, EOFError):
        print("\nprovision: cancelled, nothing written", file=sys.stderr)
        return 130


def provision_main(argv: list[str], *, ask: Ask = input, ask_secret: Ask = getpass.getpass,
                   probe: Probe = grab_frame, out: TextIO = sys.stdout) -> int:
    """`liftguard provision ...`; returns the exit code (0 ok, 1 declined, 2 error, 130 cancelled)."""
    parser = argparse.ArgumentParser(prog="liftguard provision")
    configure_parser(parser)
    return provision_from_args(parser.parse_args(argv), ask=ask, ask_secret=ask_secret, probe=probe, out=out)
