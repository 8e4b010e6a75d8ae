"""`liftguard selftest --config FILE`: is this unit ready to guard a door? A PASS/FAIL/SKIP table.

Run it after `liftguard provision`, with the service stopped (`systemctl stop liftguard`: the camera
and the pins are the service's while it runs). Checks, in order:

    config     the config loads and validates
    clock      the year is plausible (>= 2024); ntp: synchronised per timedatectl, where it exists
    camera     a frame arrives; view: compared with the reference frame saved at provisioning
               (shift by phase correlation, structural similarity, histogram), so a camera that was
               knocked, turned, covered or sprayed is caught. Run it with the car empty.
    model      the detector loads; inference latency on this machine against detector.budget_ms
    relay      the relay clicks (0.5 s, like a press of the door-open button) and, where the door
               input is wired, the door is seen to open: the loopback proves the relay is in
               parallel with the button; fire: the fire-service input is not active
    speaker    the warning plays (aplay) or the voice module is triggered
    broker     connect with the unit's credentials, publish on its own topic and receive it back

Exit code 0 only if nothing FAILed. Each piece of hardware sits behind an injectable seam (frame
grabber, detector factory, command runner, gpiozero's pin factory, the bridge backend) for tests.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol, TextIO

import cv2
import numpy as np

from contract.errors import ConfigError, LiftGuardError
from contract.mqtt import unit_topic
from contract.stats import percentile
from edge.config import Config, load_config
from edge.install.provision import DEFAULT_CONFIG_PATH, REFERENCE_NAME, Frame, grab_frame

Status = Literal["PASS", "FAIL", "SKIP"]
CHECK_NAMES = ("clock", "ntp", "camera", "view", "model", "relay", "fire", "speaker", "broker")
RELAY_PULSE_S = 0.5
DOOR_WAIT_S = 1.5


@dataclass(frozen=True)
class CheckResult:
    name: str
    status: Status
    detail: str


class Runner(Protocol):
    def __call__(self, argv: Sequence[str], timeout: float) -> subprocess.CompletedProcess[str]: ...


def run_command(argv: Sequence[str], timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, check=False)


class DetectorLike(Protocol):
    def detect(self, frame: Any) -> Any: ...


DetectorFactory = Callable[[Config], DetectorLike]


def default_detector(config: Config) -> DetectorLike:
    from edge.decide.detect import OnnxDetector  # imported here: onnxruntime is heavy and only this check needs it
    from edge.report.model_update import ModelState

    d = config.detector
    # The model `liftguard run` would start with: the rolled-out active one (models.dir/state.json), if any.
    rolled_out = ModelState.load(config.models.dir).active
    path = rolled_out.path if rolled_out is not None and rolled_out.path else (d.model_path or None)
    return OnnxDetector(path, threads=d.threads, min_score=d.min_score, nms_iou=d.nms_iou)


class BridgeLike(Protocol):
    def set_relay(self, held: bool) -> bool: ...

    def fire_active(self) -> bool: ...

    def door_open(self) -> bool | None: ...

    def close(self) -> None: ...


def default_bridge(config: Config) -> BridgeLike:
    from firmware_bridge.host import BridgeActuators

    bridge = BridgeActuators.from_config(config.actuators)
    deadline = time.monotonic() + 1.5
    while not bridge.link_ok and time.monotonic() < deadline:  # first INPUTS report
        time.sleep(0.02)
    return bridge


# --- camera view comparison ------------------------------------------------------------------------


@dataclass(frozen=True)
class ViewComparison:
    shift_x: float  # fraction of the frame width the view moved
    shift_y: float
    similarity: float  # mean SSIM, 1 = identical
    histogram: float  # grey-level histogram correlation, 1 = identical
    contrast: float  # standard deviation of the current frame's grey levels

    @property
    def shift(self) -> float:
        return float(np.hypot(self.shift_x, self.shift_y))

    def problems(self, max_shift: float = 0.05, min_similarity: float = 0.7, min_histogram: float = 0.3,
                 min_contrast: float = 8.0) -> list[str]:
        found = []
        if self.contrast < min_contrast:
            found.append("the picture is almost uniform: lens covered, camera dark or blinded")
        if self.shift > max_shift:
            found.append(f"the view moved by {self.shift:.0%} of the frame: camera knocked or turned")
        if self.similarity < min_similarity:
            found.append(f"the view looks different from the reference (similarity {self.similarity:.2f})")
        if self.histogram < min_histogram:
            found.append(f"the brightness distribution changed (histogram {self.histogram:.2f})")
        return found


def _grey(frame: Frame, width: int = 320) -> np.ndarray[Any, Any]:
    grey = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY) if frame.ndim == 3 else frame
    h, w = grey.shape[:2]
    return cv2.resize(grey, (width, max(1, round(h * width / w))), interpolation=cv2.INTER_AREA)


def ssim(a: np.ndarray[Any, Any], b: np.ndarray[Any, Any]) -> float:
    """Mean structural similarity of two grey images (Wang et al. 2004, Gaussian window 11, σ 1.5)."""
    x, y = a.astype(np.float64), b.astype(np.float64)
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2

    def blur(img: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
        return cv2.GaussianBlur(img, (11, 11), 1.5)

    mx, my = blur(x), blur(y)
    vx, vy, cov = blur(x * x) - mx * mx, blur(y * y) - my * my, blur(x * y) - mx * my
    index = ((2 * mx * my + c1) * (2 * cov + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return float(index.mean())


def compare_views(reference: Frame, frame: Frame) -> ViewComparison:
    ref = _grey(reference)
    cur = _grey(frame)
    if cur.shape != ref.shape:
        cur = cv2.resize(cur, (ref.shape[1], ref.shape[0]), interpolation=cv2.INTER_AREA)
    h, w = ref.shape
    window = cv2.createHanningWindow((w, h), cv2.CV_64F)
    (dx, dy), _response = cv2.phaseCorrelate(ref.astype(np.float64), cur.astype(np.float64), window)
    hist_ref = cv2.calcHist([ref], [0], None, [64], [0, 256])
    hist_cur = cv2.calcHist([cur], [0], None, [64], [0, 256])
    return ViewComparison(shift_x=abs(dx) / w, shift_y=abs(dy) / h, similarity=ssim(ref, cur),
                          histogram=float(cv2.compareHist(hist_ref, hist_cur, cv2.HISTCMP_CORREL)),
                          contrast=float(cur.std()))


# --- the checks ------------------------------------------------------------------------------------


@contextmanager
def _credentials_env(config_path: Path) -> Iterator[None]:
    """Outside systemd, relative credential names resolve in the provisioned credentials folder."""
    folder = config_path.parent / "credentials"
    if os.environ.get("CREDENTIALS_DIRECTORY") or not folder.is_dir():
        yield
        return
    os.environ["CREDENTIALS_DIRECTORY"] = str(folder)
    try:
        yield
    finally:
        os.environ.pop("CREDENTIALS_DIRECTORY", None)


class SelfTest:
    def __init__(self, config: Config, config_path: Path, *, reference: Path | None = None,
                 grab: Callable[[str], Frame | None] = grab_frame,
                 detector_factory: DetectorFactory = default_detector,
                 bridge_factory: Callable[[Config], BridgeLike] = default_bridge,
                 run: Runner = run_command, now: Callable[[], dt.datetime] | None = None,
                 skip: Sequence[str] = (), latency_runs: int = 20, broker_timeout_s: float = 10.0) -> None:
        self.config = config
        self.config_path = config_path
        self.reference = reference if reference is not None else config_path.parent / REFERENCE_NAME
        self.grab = grab
        self.detector_factory = detector_factory
        self.bridge_factory = bridge_factory
        self.run_cmd = run
        self.now = now or (lambda: dt.datetime.now(dt.UTC))
        self.skip = set(skip)
        self.latency_runs = latency_runs
        self.broker_timeout_s = broker_timeout_s
        self.frame: Frame | None = None

    def run(self) -> list[CheckResult]:
        results: list[CheckResult] = []
        steps: list[tuple[tuple[str, ...], Callable[[], list[CheckResult]]]] = [
            (("clock", "ntp"), self.check_clock),
            (("camera", "view"), self.check_camera),
            (("model",), lambda: [self.check_model()]),
            (("relay", "fire"), self.check_io),
            (("speaker",), lambda: [self.check_speaker()]),
            (("broker",), lambda: [self.check_broker()]),
        ]
        for names, step in steps:
            if all(n in self.skip for n in names):
                results += [CheckResult(n, "SKIP", "skipped on request") for n in names]
                continue
            try:
                found = step()
            except Exception as exc:  # a check that crashes is a FAIL with the reason, never a traceback
                found = [CheckResult(names[0], "FAIL", f"{type(exc).__name__}: {exc}")]
            results += [r if r.name not in self.skip else CheckResult(r.name, "SKIP", "skipped on request")
                        for r in found]
        return results

    # clock ---------------------------------------------------------------------------------------

    def check_clock(self) -> list[CheckResult]:
        now = self.now()
        clock = CheckResult("clock", "PASS", now.strftime("%Y-%m-%d %H:%M:%S %Z")) if now.year >= 2024 else \
            CheckResult("clock", "FAIL", f"clock says {now:%Y-%m-%d}: set the time (no RTC battery? no NTP?)")
        if shutil.which("timedatectl") is None:
            return [clock, CheckResult("ntp", "SKIP", "timedatectl not installed")]
        try:
            result = self.run_cmd(["timedatectl", "show", "-p", "NTPSynchronized", "--value"], 5)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return [clock, CheckResult("ntp", "SKIP", f"timedatectl failed: {exc}")]
        value = result.stdout.strip()
        if result.returncode != 0 or value not in ("yes", "no"):
            reason = (result.stderr.strip().splitlines() or ["no answer"])[0]
            return [clock, CheckResult("ntp", "SKIP", f"sync state unknown ({reason})")]
        if value == "yes":
            return [clock, CheckResult("ntp", "PASS", "clock synchronised (NTP)")]
        return [clock, CheckResult("ntp", "FAIL", "clock not synchronised: enable NTP (timedatectl set-ntp true) "
                                                  "or check the network")]

    # camera --------------------------------------------------------------------------------------

    def check_camera(self) -> list[CheckResult]:
        source = self.config.camera.source
        started = time.monotonic()
        frame = self.grab(source)
        if frame is None:
            return [CheckResult("camera", "FAIL", f"no frame from {source}: check power, cable or URL"),
                    CheckResult("view", "SKIP", "no frame")]
        self.frame = frame
        h, w = frame.shape[:2]
        camera = CheckResult("camera", "PASS", f"{w}x{h} from {source} in {time.monotonic() - started:.1f} s")
        if not self.reference.exists():
            return [camera, CheckResult("view", "SKIP", f"no reference frame at {self.reference} "
                                                        "(liftguard provision saves one)")]
        reference = cv2.imread(str(self.reference))
        if reference is None:
            return [camera, CheckResult("view", "FAIL", f"reference frame {self.reference} is unreadable")]
        cmp = compare_views(reference, frame)
        numbers = (f"shift {cmp.shift:.1%}, similarity {cmp.similarity:.2f}, histogram {cmp.histogram:.2f}")
        problems = cmp.problems()
        if problems:
            return [camera, CheckResult("view", "FAIL", "; ".join(problems) + f" ({numbers})")]
        return [camera, CheckResult("view", "PASS", f"matches the reference ({numbers})")]

    # model ---------------------------------------------------------------------------------------

    def check_model(self) -> CheckResult:
        budget = self.config.detector.budget_ms
        started = time.perf_counter()
        try:
            detector = self.detector_factory(self.config)
        except ImportError as exc:
            return CheckResult("model", "FAIL", f"detector not available: {exc}")
        except (LiftGuardError, OSError) as exc:
            return CheckResult("model", "FAIL", str(exc))
        load_ms = (time.perf_counter() - started) * 1000
        frame = self.frame if self.frame is not None else \
            np.full((self.config.camera.height, self.config.camera.width, 3), 114, np.uint8)
        for _ in range(3):  # warm-up: first runs allocate
            detector.detect(frame)
        times = []
        for _ in range(self.latency_runs):
            t0 = time.perf_counter()
            detector.detect(frame)
            times.append((time.perf_counter() - t0) * 1000)
        p50, p95 = percentile(times, 50), percentile(times, 95)
        name = getattr(getattr(detector, "metadata", None), "model_id", None) or type(detector).__name__
        detail = (f"{name} loaded in {load_ms:.0f} ms; detect p50 {p50:.1f} ms, p95 {p95:.1f} ms "
                  f"(budget {budget:.0f} ms)")
        if p50 > budget:
            return CheckResult("model", "FAIL", detail + ": too slow, holds would be suppressed (fewer threads "
                                                         "elsewhere, the INT8 model, or a faster board)")
        return CheckResult("model", "PASS", detail)

    # relay, door loopback, fire input ------------------------------------------------------------

    def check_io(self) -> list[CheckResult]:
        backend = self.config.actuators.backend
        if backend == "none":
            return [CheckResult("relay", "SKIP", "actuators.backend is none"),
                    CheckResult("fire", "SKIP", "actuators.backend is none")]
        if backend == "bridge":
            return self._check_bridge()
        return self._check_gpio()

    def _check_gpio(self) -> list[CheckResult]:
        from gpiozero import DigitalInputDevice, OutputDevice

        a = self.config.actuators
        fire_dev = DigitalInputDevice(a.fire_pin, pull_up=None, active_state=a.fire_active_high) if a.fire_pin \
            else None
        door_dev = DigitalInputDevice(a.door_pin, pull_up=True) if a.door_pin else None
        relay_dev = OutputDevice(a.relay_pin, active_high=a.relay_active_high, initial_value=False)
        try:
            fire = None if fire_dev is None else bool(fire_dev.is_active)
            door: Callable[[], bool | None] = (lambda: bool(door_dev.is_active)) if door_dev else (lambda: None)
            relay = self._click(relay_dev.on, relay_dev.off, door, fire, f"pin {a.relay_pin}")
        finally:
            relay_dev.off()
            for dev in (relay_dev, door_dev, fire_dev):
                if dev is not None:
                    dev.close()
        return [relay, self._fire_result(fire, f"pin {a.fire_pin}")]

    def _check_bridge(self) -> list[CheckResult]:
        try:
            bridge = self.bridge_factory(self.config)
        except (LiftGuardError, OSError) as exc:
            return [CheckResult("relay", "FAIL", f"I/O board: {exc}"), CheckResult("fire", "SKIP", "no I/O board")]
        try:
            fire = bridge.fire_active()
            relay = self._click(lambda: bridge.set_relay(True), lambda: bridge.set_relay(False), bridge.door_open,
                                fire, f"I/O board on {self.config.actuators.bridge_port}")
        finally:
            bridge.close()
        return [relay, self._fire_result(fire, "I/O board input")]

    def _click(self, on: Callable[[], object], off: Callable[[], object], door: Callable[[], bool | None],
               fire: bool | None, where: str) -> CheckResult:
        if fire:
            return CheckResult("relay", "FAIL", f"not clicked: the fire-service input is active ({where})")
        if "relay" in self.skip:
            return CheckResult("relay", "SKIP", "skipped on request")
        before = door()
        if before:
            return CheckResult("relay", "FAIL", "door input reads open before the click: door standing open, or "
                                                "the door input is wired/levelled wrongly")
        on()
        opened = False
        started = time.monotonic()
        try:
            deadline = started + (DOOR_WAIT_S if before is not None else RELAY_PULSE_S)
            while time.monotonic() < deadline:
                if door():
                    opened = True
                    break
                time.sleep(0.01)
            seen_after = time.monotonic() - started
            remaining = RELAY_PULSE_S - seen_after
            if remaining > 0:
                time.sleep(remaining)
        finally:
            off()
        if before is None:
            return CheckResult("relay", "PASS", f"clicked {where} for {RELAY_PULSE_S:.1f} s (listen for it; "
                                                "no door input wired to confirm)")
        if opened:
            return CheckResult("relay", "PASS", f"clicked {where}; door input opened after {seen_after * 1000:.0f} ms")
        return CheckResult("relay", "FAIL", f"clicked {where} but the door input did not open within "
                                            f"{DOOR_WAIT_S:.1f} s: check the relay contact is in parallel with "
                                            "the door-open button (NO contact) and the door input wiring")

    @staticmethod
    def _fire_result(fire: bool | None, where: str) -> CheckResult:
        if fire is None:
            return CheckResult("fire", "SKIP", "no fire-service input wired (actuators.fire_pin)")
        if fire:
            return CheckResult("fire", "FAIL", f"fire-service input reads ACTIVE ({where}): holds are suppressed. "
                                               "If the building is not in fire-service mode, fix the wiring or "
                                               "fire_active_high")
        return CheckResult("fire", "PASS", f"fire-service input inactive ({where})")

    # speaker -------------------------------------------------------------------------------------

    def check_speaker(self) -> CheckResult:
        voice = self.config.actuators.voice
        if voice.mode == "none":
            return CheckResult("speaker", "SKIP", "actuators.voice.mode is none")
        if voice.mode == "gpio":
            if self.config.actuators.backend == "bridge":
                return CheckResult("speaker", "SKIP", "voice module is on the I/O board")
            from gpiozero import OutputDevice

            with OutputDevice(voice.pin, active_high=voice.active_high, initial_value=False) as trigger:
                trigger.on()
                time.sleep(0.2)
                trigger.off()
            return CheckResult("speaker", "PASS", f"voice module triggered on {voice.pin} (listen for it)")
        aplay = shutil.which("aplay")
        if aplay is None:
            return CheckResult("speaker", "FAIL", "aplay not found: apt install alsa-utils")
        with tempfile.TemporaryDirectory(prefix="liftguard-selftest-") as tmp:
            wav = voice.wav_path
            if not wav:
                from edge.act.voice import write_warning_chime

                wav = str(write_warning_chime(Path(tmp) / "warning.wav"))
            try:
                result = self.run_cmd([aplay, "-q", "-D", voice.alsa_device, wav], 15)
            except (OSError, subprocess.TimeoutExpired) as exc:
                return CheckResult("speaker", "FAIL", f"aplay failed: {exc}")
        if result.returncode != 0:
            reason = (result.stderr.strip().splitlines() or ["no message"])[-1]
            return CheckResult("speaker", "FAIL", f"aplay -D {voice.alsa_device}: {reason}")
        return CheckResult("speaker", "PASS", f"played {Path(wav).name} on {voice.alsa_device} (listen for it)")

    # broker --------------------------------------------------------------------------------------

    def check_broker(self) -> CheckResult:
        if not self.config.mqtt.url:
            return CheckResult("broker", "SKIP", "mqtt.url is empty (no fleet link)")
        from contract.mqtt_client import new_client
        from edge.report.link_settings import LinkSettings

        with _credentials_env(self.config_path):
            try:
                settings = LinkSettings.from_config(self.config)
                ssl_context = settings.ssl_context() if settings.tls else None
            except ConfigError as exc:
                return CheckResult("broker", "FAIL", str(exc))
        topic = unit_topic(self.config.unit.id, "selftest")
        nonce = uuid.uuid4().hex.encode()
        connected = threading.Event()
        received = threading.Event()
        outcome: dict[str, Any] = {}
        client = new_client(f"{self.config.unit.id}-selftest-{uuid.uuid4().hex[:6]}", v5=False,
                            username=settings.username, password=settings.password, ssl_context=ssl_context)

        def on_connect(c: Any, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
            outcome["connect"] = str(reason)
            if not reason.is_failure:
                c.subscribe(topic, qos=1)
            connected.set()

        def on_subscribe(c: Any, _u: Any, _mid: Any, reasons: Any, _p: Any) -> None:
            if any(r.is_failure for r in reasons):
                outcome["subscribe"] = ", ".join(str(r) for r in reasons)
                received.set()
                return
            outcome["sent"] = time.monotonic()
            c.publish(topic, nonce, qos=1)

        def on_message(_c: Any, _u: Any, msg: Any) -> None:
            if msg.payload == nonce:
                outcome["rtt_ms"] = (time.monotonic() - outcome["sent"]) * 1000
                received.set()

        client.on_connect = on_connect
        client.on_subscribe = on_subscribe
        client.on_message = on_message
        where = f"{settings.host}:{settings.port}"
        try:
            client.connect(settings.host, settings.port, keepalive=settings.keepalive_s)
        except (OSError, ValueError) as exc:
            return CheckResult("broker", "FAIL", f"cannot reach {where}: {exc}")
        client.loop_start()
        try:
            if not connected.wait(self.broker_timeout_s):
                return CheckResult("broker", "FAIL", f"no CONNACK from {where} within {self.broker_timeout_s:.0f} s")
            if outcome["connect"] != "Success":
                return CheckResult("broker", "FAIL", f"{where} refused the connection: {outcome['connect']} "
                                                     "(user name / password / certificate?)")
            if not received.wait(self.broker_timeout_s):
                return CheckResult("broker", "FAIL", f"connected to {where}, but the message on {topic} did not "
                                                     "come back (broker ACL?)")
            if "subscribe" in outcome:
                return CheckResult("broker", "FAIL", f"subscribe to {topic} refused: {outcome['subscribe']}")
            return CheckResult("broker", "PASS", f"{where} as {settings.username}: round trip on {topic} "
                                                 f"{outcome['rtt_ms']:.0f} ms")
        finally:
            client.disconnect()
            client.loop_stop()


# --- report and command line -----------------------------------------------------------------------


def format_table(results: Sequence[CheckResult]) -> str:
    width = max([len(r.name) for r in results] + [5])
    lines = [f"{'CHECK':<{width}}  RESULT  DETAIL"]
    lines += [f"{r.name:<{width}}  {r.status:<6}  {r.detail}" for r in results]
    failed = sum(r.status == "FAIL" for r in results)
    lines.append(f"{failed} FAIL, {sum(r.status == 'PASS' for r in results)} PASS, "
                 f"{sum(r.status == 'SKIP' for r in results)} SKIP")
    return "\n".join(lines)


def exit_code(results: Sequence[CheckResult]) -> int:
    return 1 if any(r.status == "FAIL" for r in results) else 0


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging (set up by the CLI)")
    parser.add_argument("--config", type=Path, default=Path(DEFAULT_CONFIG_PATH))
    parser.add_argument("--reference", type=Path, help="reference frame (default: reference.png beside the config)")
    parser.add_argument("--skip", action="append", default=[], choices=CHECK_NAMES, help="skip a check (repeatable)")
    parser.add_argument("--no-relay", action="store_true", help="do not click the relay (same as --skip relay)")
    parser.add_argument("--no-sound", action="store_true", help="do not play the warning (same as --skip speaker)")


def add_selftest_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add `selftest` to a CLI's subparsers; the parsed args carry `func=selftest_from_args`."""
    parser: argparse.ArgumentParser = subparsers.add_parser("selftest", help="check camera, model, relay, "
                                                            "speaker, broker and clock")
    configure_parser(parser)
    parser.set_defaults(func=selftest_from_args)
    return parser


def selftest_from_args(args: argparse.Namespace, out: TextIO = sys.stdout, **seams: Any) -> int:
    skip = list(args.skip) + (["relay"] if args.no_relay else []) + (["speaker"] if args.no_sound else [])
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(format_table([CheckResult("config", "FAIL", str(exc))]), file=out)
        return 1
    results = [CheckResult("config", "PASS", str(args.config))]
    results += SelfTest(config, args.config, reference=args.reference, skip=skip, **seams).run()
    print(format_table(results), file=out)
    return exit_code(results)


def selftest_main(argv: list[str], out: TextIO = sys.stdout, **seams: Any) -> int:
    """`liftguard selftest ...`; 0 only if no check FAILed. `seams` go to SelfTest (tests)."""
    parser = argparse.ArgumentParser(prog="liftguard selftest", description=__doc__.split("\n\n")[0])
    configure_parser(parser)
    return selftest_from_args(parser.parse_args(argv), out, **seams)
