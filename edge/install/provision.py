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
import getpass
import logging
import shlex
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, TextIO

import cv2
import numpy as np
import yaml
from pydantic import ValidationError

from contract.errors import ConfigError, LiftGuardError
from edge.config import CameraConfig, parse_config, parse_yaml
from edge.install.files import FileChange, atomic_write
from edge.install.questions import QUESTION_BY_KEY, QUESTIONS, Question, State, fmt_answer, get_path, set_path, yes_no
from edge.install.unit import render_unit
from edge.see.capture import grab_one

log = logging.getLogger(__name__)

DEFAULT_CONFIG_PATH = "/etc/liftguard/config.yaml"
DEFAULT_UNIT_DIR = "/etc/systemd/system"
UNIT_NAME = "liftguard.service"
REFERENCE_NAME = "reference.png"
ROI_PREVIEW_NAME = "roi.png"
CREDENTIALS_DIRNAME = "credentials"
PASSWORD_NAME = "mqtt-password"
CA_NAME, CERT_NAME, KEY_NAME = "ca.crt", "unit.crt", "unit.key"
# Packaged with edge.install (package data), so an installed unit finds it outside a checkout too.
DEFAULT_TEMPLATE = Path(str(resources.files("edge.install").joinpath(UNIT_NAME)))
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
    timeout_s = min(max(timeout_s, 0.5), 30.0)  # within CameraConfig's bounds
    try:
        cfg = CameraConfig(source=source, open_timeout_s=timeout_s, read_timeout_s=timeout_s)
    except ValidationError:
        return None
    return grab_one(cfg, warmup_frames)  # the one way a camera is opened (edge/see/capture.py)


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
                return fmt_answer(get_path(data, q.path) or "")
            return q.fmt(get_path(parse_config(data).model_dump(mode="json"), q.path))
        if q.key == "tls" and (self.local(self.credentials_target) / CERT_NAME).exists():
            return "keep"
        return q.default

    def _accept(self, q: Question, raw: object, data: dict[str, Any], state: State) -> Any:
        """Parse one answer and validate the config with it in place; raises ValueError with the reason."""
        value = q.parse(raw)
        if q.path is not None:
            trial = yaml.safe_load(yaml.safe_dump(data))  # deep copy of plain data
            set_path(trial, q.path, value if q.key != "mqtt_username" else (value or None))
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
            if q.key == "unit_id" and not get_path(data, ("unit", "id")):
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
        return yes_no(self.ask("Keep this camera source anyway? [y/N]: ") or "n")

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
        elif get_path(data, ("mqtt", "password_file")) == PASSWORD_NAME:
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
        if self.opt.interactive and not yes_no(self.ask("Write these changes? [Y/n]: ") or "y"):
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
