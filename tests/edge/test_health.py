"""edge.report.health: sd_notify sequence over a fake $NOTIFY_SOCKET, watchdog tied to processed frames."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from contract.stats import percentile
from edge.report.health import Health, Metrics, Notifier, watchdog_interval_s


class FakeSystemd:
    """A datagram server standing in for systemd's notify socket; records (time, message) pairs."""

    def __init__(self, address: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)
        self.sock.settimeout(0.05)
        self.messages: list[tuple[float, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            self.messages.append((time.monotonic(), data.decode()))

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sock.close()

    def keys(self) -> list[str]:
        """First key of every datagram, in order: READY, WATCHDOG, STATUS, STOPPING."""
        return [m.split("\n")[0].split("=")[0] for _, m in self.messages]

    def pings_between(self, start: float, end: float) -> int:
        return sum(1 for t, m in self.messages if start <= t < end and "WATCHDOG=1" in m)

    def wait_for(self, predicate, timeout: float = 3.0) -> None:  # type: ignore[no-untyped-def]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return
            time.sleep(0.01)
        raise AssertionError(f"timed out; messages so far: {self.messages}")


@pytest.fixture
def systemd(tmp_path: Path) -> Iterator[FakeSystemd]:
    server = FakeSystemd(str(tmp_path / "notify.sock"))
    yield server
    server.close()


def test_notifier_without_socket_is_a_silent_no_op(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    notifier = Notifier()
    assert not notifier.enabled
    assert notifier.ready() is False


def test_notifier_reads_notify_socket_from_the_environment(systemd: FakeSystemd,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", systemd.sock.getsockname())
    assert Notifier().status("hello") is True
    systemd.wait_for(lambda: systemd.messages)
    assert systemd.messages[0][1] == "STATUS=hello"


def test_abstract_socket_names_start_with_at() -> None:
    name = f"liftguard-test-{os.getpid()}-{time.monotonic_ns()}"
    server = FakeSystemd("\0" + name)
    try:
        assert Notifier("@" + name).notify("READY=1")
        server.wait_for(lambda: server.messages)
        assert server.messages[0][1] == "READY=1"
    finally:
        server.close()


def test_unreachable_socket_is_reported_not_raised(tmp_path: Path) -> None:
    assert Notifier(str(tmp_path / "nobody-listens")).notify("READY=1") is False


def test_ready_only_once_camera_model_and_pins_are_up(systemd: FakeSystemd) -> None:
    health = Health(Notifier(systemd.sock.getsockname()), ping_interval_s=10)
    health.component_up("camera")
    health.component_up("model")
    assert health.status_line() == "starting: waiting for pins"
    time.sleep(0.1)
    assert systemd.messages == []
    health.component_up("pins")
    health.component_up("pins")  # READY is sent once, not per call
    systemd.wait_for(lambda: systemd.messages)
    time.sleep(0.1)
    assert systemd.keys() == ["READY"]
    assert health.ready


def test_watchdog_pings_only_after_a_frame_went_through_the_pipeline(systemd: FakeSystemd) -> None:
    health = Health(Notifier(systemd.sock.getsockname()), ping_interval_s=0.05, stale_after_s=0.3)
    for name in ("camera", "model", "pins"):
        health.component_up(name)
    with health:
        time.sleep(0.3)
        assert systemd.pings_between(0, time.monotonic()) == 0, "no frame yet: no ping"
        deadline = time.monotonic() + 10  # frames keep flowing, as in the service, until a ping is seen
        while systemd.pings_between(0, time.monotonic()) == 0 and time.monotonic() < deadline:
            health.frame_processed()
            time.sleep(0.02)
    systemd.wait_for(lambda: systemd.keys().count("STOPPING") == 1)  # the datagram may still be in flight
    keys = systemd.keys()
    assert keys[0] == "READY"
    assert "WATCHDOG" in keys
    assert keys[-1] == "STOPPING"
    assert keys.index("WATCHDOG") < keys.index("STOPPING")


def test_a_hung_pipeline_stops_the_pings(systemd: FakeSystemd) -> None:
    """Frames flow for 0.5 s, then the pipeline hangs: pings stop within stale_after_s and the
    status line says so, so systemd's WatchdogSec fires and restarts the service."""
    health = Health(Notifier(systemd.sock.getsockname()), ping_interval_s=0.05, stale_after_s=0.2)
    for name in ("camera", "model", "pins"):
        health.component_up(name)
    health.set_camera("online")
    with health:
        t0 = time.monotonic()
        while time.monotonic() - t0 < 0.5:
            health.frame_processed()
            time.sleep(0.02)
        hung_at = time.monotonic()
        time.sleep(0.8)
        end = time.monotonic()
    assert systemd.pings_between(t0, hung_at) >= 5
    assert systemd.pings_between(hung_at + 0.2 + 0.06, end) == 0, "pings must stop once frames stop"
    stalled = [m for t, m in systemd.messages if t > hung_at + 0.3 and m.startswith("STATUS=")]
    assert stalled and stalled[-1].startswith("STATUS=stalled: no frame processed for")


def test_pings_resume_when_frames_flow_again(systemd: FakeSystemd) -> None:
    now = [100.0]
    health = Health(Notifier(systemd.sock.getsockname()), clock=lambda: now[0], stale_after_s=2.0)
    for name in ("camera", "model", "pins"):
        health.component_up(name)
    health.frame_processed()
    assert health.ping_once() is True
    now[0] += 5
    assert health.ping_once() is False
    health.frame_processed()
    assert health.ping_once() is True


def test_status_line_is_readable_by_a_person() -> None:
    now = [0.0]
    health = Health(Notifier(""), clock=lambda: now[0])
    for name in ("camera", "model", "pins"):
        health.component_up(name)
    health.set_camera("online")
    for _ in range(11):
        health.metrics.observe_inference(14.0)  # the pipeline's report, into the metrics health reads
        health.frame_processed()
        now[0] += 0.1
    now[0] -= 0.1
    assert health.status_line() == "watching: 10.0 fps, inference 14 ms, door released"
    health.set_door(True)
    health.set_camera("frozen")
    health.set_note("fire service active")
    assert health.status_line() == ("watching: 10.0 fps, inference 14 ms, door held, camera frozen, "
                                    "fire service active")


def test_watchdog_interval_is_half_of_watchdog_usec() -> None:
    assert watchdog_interval_s({"WATCHDOG_USEC": "10000000"}) == 5.0
    assert watchdog_interval_s({"WATCHDOG_USEC": "10000000", "WATCHDOG_PID": "1"}) is None  # not ours
    assert watchdog_interval_s({}) is None


@pytest.mark.parametrize(("values", "q", "expected"), [
    ([], 50, 0.0),
    ([5.0], 95, 5.0),
    ([float(i) for i in range(1, 101)], 50, 50.0),
    ([float(i) for i in range(1, 101)], 95, 95.0),
])
def test_percentile_is_nearest_rank(values: list[float], q: float, expected: float) -> None:
    assert percentile(values, q) == expected


def test_metrics_registry_counts_gauges_and_inference_window() -> None:
    metrics = Metrics(window=10)
    metrics.inc("events")
    metrics.inc("events", 2)
    metrics.set_gauge("outbox_depth", 7)
    for ms in range(100):  # only the last 10 (90..99) stay in the window
        metrics.observe_inference(float(ms))
    snap = metrics.snapshot()
    assert snap["events"] == 3
    assert snap["outbox_depth"] == 7
    assert (snap["inference_p50_ms"], snap["inference_p95_ms"]) == (94.0, 99.0)
