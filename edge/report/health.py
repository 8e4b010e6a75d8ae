"""Health: systemd notifications (READY, WATCHDOG, STATUS, STOPPING) and a small metrics registry.

The watchdog is tied to real work, not to a timer that is alive: `WATCHDOG=1` is sent only while
frames keep going through the whole pipeline (`Health.frame_processed`). A hung camera read, a
stuck inference or a deadlocked policy stops the pings, and systemd restarts the service
(`WatchdogSec=` in edge/install/liftguard.service); the restart releases the relay on the way down and
the I/O board releases it on its own if the host goes silent.

sd_notify is plain datagram socket code (no libsystemd): `$NOTIFY_SOCKET` is a filesystem path or,
starting with `@`, a Linux abstract socket. Without `$NOTIFY_SOCKET` every notification is a no-op,
so the same code runs under systemd, in a terminal and in tests.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from contract.stats import percentile

log = logging.getLogger(__name__)

Clock = Callable[[], float]
REQUIRED_COMPONENTS = ("camera", "model", "pins")


# --- sd_notify -----------------------------------------------------------------------------------


def _socket_address(path: str) -> str:
    """`@name` is an abstract socket: the kernel spells it with a leading NUL byte."""
    return "\0" + path[1:] if path.startswith("@") else path


class Notifier:
    """Sends sd_notify datagrams to `socket_path` (default `$NOTIFY_SOCKET`); silent no-op without one."""

    def __init__(self, socket_path: str | None = None) -> None:
        self.socket_path = socket_path if socket_path is not None else os.environ.get("NOTIFY_SOCKET", "")
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None

    @property
    def enabled(self) -> bool:
        return bool(self.socket_path)

    def notify(self, *assignments: str) -> bool:
        """Send `KEY=value` lines as one datagram; False (logged once per failure) if it could not."""
        if not self.enabled:
            return False
        message = "\n".join(assignments).encode()
        with self._lock:
            try:
                if self._sock is None:
                    self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                # Never block the service on a slow reader: drop the datagram instead (logged).
                self._sock.sendto(message, socket.MSG_DONTWAIT, _socket_address(self.socket_path))
                return True
            except OSError as exc:
                log.warning("sd_notify to %s failed: %s", self.socket_path, exc)
                self._close_locked()
                return False

    def ready(self, status: str = "") -> bool:
        return self.notify("READY=1", *([f"STATUS={status}"] if status else []))

    def watchdog(self, status: str = "") -> bool:
        return self.notify("WATCHDOG=1", *([f"STATUS={status}"] if status else []))

    def status(self, text: str) -> bool:
        return self.notify(f"STATUS={text}")

    def stopping(self, status: str = "stopping") -> bool:
        return self.notify("STOPPING=1", f"STATUS={status}")

    def close(self) -> None:
        with self._lock:
            self._close_locked()

    def _close_locked(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def watchdog_interval_s(environ: dict[str, str] | None = None) -> float | None:
    """Half of systemd's `WATCHDOG_USEC` (the ping period systemd recommends), or None if unset.

    `WATCHDOG_PID`, when present, must be our pid: the variable may have leaked from a parent.
    """
    env = os.environ if environ is None else environ
    usec = env.get("WATCHDOG_USEC", "")
    pid = env.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0 or (pid and pid != str(os.getpid())):
        return None
    return int(usec) / 2e6


# --- metrics -------------------------------------------------------------------------------------


class Metrics:
    """The device's one registry of counters, gauges and timing windows; thread-safe.

    Written by the pipeline (frames processed and skipped, inference and per-frame times), the MQTT link
    (rejected commands and configs) and whoever else counts; read by the heartbeat (`Pipeline.heartbeat`),
    the systemd status line (`Health`) and the demo's summary. Each timing window keeps the last `window`
    values (the heartbeat's inference p50/p95 are over the last 100 frames).
    """

    def __init__(self, window: int = 100, clock: Clock = time.monotonic) -> None:
        self._lock = threading.Lock()
        self._window = window
        self._clock = clock
        self.started = clock()
        self._counters: dict[str, int] = {}
        self._gauges: dict[str, float] = {}
        self._windows: dict[str, deque[float]] = {}

    def inc(self, name: str, by: int = 1) -> None:
        with self._lock:
            self._counters[name] = self._counters.get(name, 0) + by

    def set_gauge(self, name: str, value: float) -> None:
        with self._lock:
            self._gauges[name] = value

    def observe(self, name: str, value: float) -> None:
        """One value into the sliding window `name` (e.g. "inference_ms", "pipeline_ms")."""
        with self._lock:
            window = self._windows.get(name)
            if window is None:
                window = self._windows[name] = deque(maxlen=self._window)
            window.append(value)

    def observe_inference(self, ms: float) -> None:
        self.observe("inference_ms", ms)

    def counter(self, name: str) -> int:
        with self._lock:
            return self._counters.get(name, 0)

    def gauge(self, name: str, default: float = 0.0) -> float:
        with self._lock:
            return self._gauges.get(name, default)

    def window(self, name: str) -> list[float]:
        """The values in the window `name`, oldest first; [] before the first."""
        with self._lock:
            return list(self._windows.get(name, ()))

    def uptime_s(self) -> float:
        return max(0.0, self._clock() - self.started)

    def inference_percentiles(self) -> tuple[float, float]:
        """(p50, p95) in ms over the window; (0, 0) before the first inference."""
        window = self.window("inference_ms")
        return percentile(window, 50), percentile(window, 95)

    def snapshot(self) -> dict[str, float]:
        """Flat dict for logs: counters, gauges, `inference_p50_ms`, `inference_p95_ms`."""
        p50, p95 = self.inference_percentiles()
        with self._lock:
            out: dict[str, float] = {**self._counters, **self._gauges}
        out["inference_p50_ms"] = p50
        out["inference_p95_ms"] = p95
        return out


# --- health --------------------------------------------------------------------------------------


@dataclass
class _State:
    components: set[str]
    ready_sent: bool = False
    stopping: bool = False
    last_frame: float | None = None
    last_tick: float | None = None
    door: str = "released"
    camera: str = "starting"
    note: str = ""


class Health:
    """Ties systemd's watchdog to frames that went through the whole pipeline.

    The app calls `component_up("camera" | "model" | "pins")` as each comes up (READY=1 is sent once
    all three are), `frame_processed(ts)` after each frame's decision was applied, and
    `set_door` / `set_camera` as state changes. `start()` runs the pinger thread: every
    `ping_interval_s` it sends `WATCHDOG=1` plus a readable `STATUS=` line, but only if the last
    processed frame is younger than `stale_after_s`; otherwise it sends a "stalled" status and no
    ping, so systemd's watchdog fires. `stop()` sends `STOPPING=1`.

    `ts` arguments are in the `clock`'s time base (time.monotonic by default). `metrics` is read, not
    written: the pipeline reports its counters and timings there (the service passes the same registry).
    """

    def __init__(self, notifier: Notifier | None = None, metrics: Metrics | None = None, *,
                 clock: Clock = time.monotonic, ping_interval_s: float | None = None,
                 stale_after_s: float | None = None, fps_window: int = 50,
                 required: Iterable[str] = REQUIRED_COMPONENTS) -> None:
        self.notifier = notifier if notifier is not None else Notifier()
        self.metrics = metrics if metrics is not None else Metrics()
        self.clock = clock
        interval = ping_interval_s if ping_interval_s is not None else watchdog_interval_s()
        self.ping_interval_s = interval if interval is not None else 2.0
        # A frame older than two ping periods means the pipeline is stuck (systemd's WatchdogSec is
        # two ping periods too, so a hang is caught within about 2 x WatchdogSec at worst).
        self.stale_after_s = stale_after_s if stale_after_s is not None else 2 * self.ping_interval_s
        self._required = frozenset(required)
        self._state = _State(components=set())
        self._frame_times: deque[float] = deque(maxlen=fps_window)
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._ready_out = threading.Event()
        self._thread: threading.Thread | None = None

    # -- called by the app ------------------------------------------------------------------------

    def component_up(self, name: str) -> None:
        """Mark camera / model / pins as up; READY=1 goes out (once) when all required ones are."""
        with self._lock:
            self._state.components.add(name)
            send = not self._state.ready_sent and self._required <= self._state.components
            if send:
                self._state.ready_sent = True
        if send:
            log.info("all components up: notifying systemd READY")
            self.notifier.ready(self.status_line())
            self._ready_out.set()  # only now may the pinger speak: READY=1 is always the first message

    def frame_processed(self, ts: float | None = None) -> None:
        """One frame went camera → detector → tracker → policy → actuators (the watchdog's proof of
        progress; the frame's counters and times are in `metrics`, written by the pipeline)."""
        now = self.clock() if ts is None else ts
        with self._lock:
            self._state.last_frame = now
            self._frame_times.append(now)

    def loop_ticked(self, ts: float | None = None) -> None:
        """The main loop went round without a frame (camera offline: time-only policy step)."""
        now = self.clock() if ts is None else ts
        with self._lock:
            self._state.last_tick = now

    def set_door(self, held: bool) -> None:
        with self._lock:
            self._state.door = "held" if held else "released"

    def set_camera(self, state: str) -> None:
        with self._lock:
            self._state.camera = state

    def set_note(self, note: str) -> None:
        """Extra words for the status line (e.g. "blocking disabled", "fire service active")."""
        with self._lock:
            self._state.note = note

    # -- readable state ---------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        return self._ready_out.is_set()

    def fps(self) -> float:
        with self._lock:
            times = list(self._frame_times)
        if len(times) < 2 or times[-1] <= times[0]:
            return 0.0
        return (len(times) - 1) / (times[-1] - times[0])

    def seconds_since_frame(self) -> float | None:
        with self._lock:
            last = self._state.last_frame
        return None if last is None else max(0.0, self.clock() - last)

    def pipeline_alive(self) -> bool:
        """Frames keep going through; or, while the camera is not online, the loop keeps stepping (the
        unit is degraded, not hung: restarting it would not bring the camera back)."""
        age = self.seconds_since_frame()
        if age is not None and age <= self.stale_after_s:
            return True
        with self._lock:
            camera, tick = self._state.camera, self._state.last_tick
        return camera != "online" and tick is not None and self.clock() - tick <= self.stale_after_s

    def status_line(self) -> str:
        """What `systemctl status liftguard` shows, e.g. "watching: 10.0 fps, inference 14 ms, door released"."""
        with self._lock:
            state = _State(**vars(self._state))
            state.components = set(self._state.components)
        if state.stopping:
            return "stopping"
        if not state.ready_sent:
            missing = sorted(self._required - state.components)
            return f"starting: waiting for {', '.join(missing)}"
        age = self.seconds_since_frame()
        if state.camera in ("offline", "frozen") and (age is None or age > self.stale_after_s):
            return f"degraded: camera {state.camera}, holds suppressed; door {state.door}"
        if age is None:
            return f"started, no frame processed yet; camera {state.camera}, door {state.door}"
        if age > self.stale_after_s:
            return f"stalled: no frame processed for {age:.1f} s; camera {state.camera}, door {state.door}"
        p50, _ = self.metrics.inference_percentiles()
        text = f"watching: {self.fps():.1f} fps, inference {p50:.0f} ms, door {state.door}"
        if state.camera != "online":
            text += f", camera {state.camera}"
        if state.note:
            text += f", {state.note}"
        return text

    # -- pinger -----------------------------------------------------------------------------------

    def ping_once(self) -> bool:
        """One pinger step: WATCHDOG=1 + STATUS if the pipeline is alive, STATUS only if not."""
        if not self.ready:
            return False
        status = self.status_line()
        if self.pipeline_alive():
            self.notifier.watchdog(status)
            return True
        self.notifier.status(status)
        return False

    def start(self) -> None:
        if self._thread is not None:
            return
        self._wake.clear()
        self._thread = threading.Thread(target=self._run, name="health-pinger", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        stalled = False
        while not self._wake.wait(self.ping_interval_s):
            alive = self.ping_once()
            if self.ready and alive == stalled:
                stalled = not alive
                if stalled:
                    log.error("pipeline stalled: %s; withholding watchdog pings", self.status_line())
                else:
                    log.info("pipeline running again")

    def stop(self, status: str = "stopping") -> None:
        """Send STOPPING=1 and end the pinger; safe to call more than once."""
        with self._lock:
            first = not self._state.stopping
            self._state.stopping = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        if first:
            self.notifier.stopping(status)
        self.notifier.close()

    def __enter__(self) -> Health:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
