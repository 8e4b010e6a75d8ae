"""A real Mosquitto broker on a free loopback port, with its own config and persistence folder.

Mirrors mosquitto's own test style: every test starts a broker with the config it needs and may
stop/restart it to prove durability. `extra_config` lines are appended to the listener config.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest


def mosquitto_binary() -> str:
    for candidate in (shutil.which("mosquitto"), "/usr/sbin/mosquitto"):
        if candidate and Path(candidate).exists():
            return candidate
    pytest.fail("mosquitto is not installed: run `make test`, which installs it from the OS packages")


REPO = Path(__file__).resolve().parents[2]
RATELIMIT_SOURCE = REPO / "config" / "mosquitto" / "ratelimit" / "liftguard_ratelimit.c"
RATELIMIT_BUILD = REPO / "build" / "mosquitto" / "liftguard_ratelimit.so"


def ratelimit_plugin() -> Path:
    """The broker's per-client rate-limit plugin, compiled from config/mosquitto/ratelimit/ when missing or
    older than its source (needs a C compiler and the mosquitto-dev headers: `make services` installs them)."""
    if RATELIMIT_BUILD.exists() and RATELIMIT_BUILD.stat().st_mtime >= RATELIMIT_SOURCE.stat().st_mtime:
        return RATELIMIT_BUILD
    RATELIMIT_BUILD.parent.mkdir(parents=True, exist_ok=True)
    tmp = RATELIMIT_BUILD.with_suffix(f".{time.monotonic_ns()}.tmp")
    result = subprocess.run(["cc", "-shared", "-fPIC", "-O2", "-Wall", "-Wextra", "-Werror", "-o", str(tmp),
                             str(RATELIMIT_SOURCE)], capture_output=True, text=True)
    if result.returncode != 0:
        pytest.fail(f"cannot build the broker rate-limit plugin (run `make services`): {result.stderr[-1000:]}")
    tmp.replace(RATELIMIT_BUILD)  # atomic: parallel test processes never load a half-written file
    return RATELIMIT_BUILD


def ratelimit_config(rate: float, burst: int, exempt: str = "fleet") -> str:
    """`extra_config` lines that load the plugin as config/mosquitto/mosquitto.conf does."""
    lines = f"plugin {ratelimit_plugin()}\nplugin_opt_rate {rate}\nplugin_opt_burst {burst}\n"
    return lines + (f"plugin_opt_exempt {exempt}\n" if exempt else "")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class MosquittoBroker:
    def __init__(self, workdir: Path, extra_config: str = "", port: int | None = None,
                 anonymous: bool = True) -> None:
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.extra_config = extra_config
        self.anonymous = anonymous
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = workdir / "mosquitto.log"

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def write_config(self) -> Path:
        conf = self.workdir / "mosquitto.conf"
        conf.write_text(
            "\n".join(
                [
                    "per_listener_settings false",
                    "user root",
                    f"listener {self.port} 127.0.0.1",
                    f"allow_anonymous {'true' if self.anonymous else 'false'}",
                    "persistence true",
                    f"persistence_location {self.workdir}/",
                    "autosave_interval 1",
                    "autosave_on_changes true",
                    "max_queued_messages 100000",
                    "log_type all",
                    f"log_dest file {self.log_path}",
                    self.extra_config,
                    "",
                ]
            )
        )
        return conf

    def start(self, timeout: float = 10.0) -> MosquittoBroker:
        conf = self.write_config()
        self.proc = subprocess.Popen(
            [mosquitto_binary(), "-c", str(conf)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode() if self.proc.stderr else ""
                log = self.log_path.read_text() if self.log_path.exists() else ""
                raise RuntimeError(f"mosquitto exited at start: {err}\n{log}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"mosquitto did not listen on {self.port} within {timeout}s")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def restart(self) -> MosquittoBroker:
        self.stop()
        return self.start()


@pytest.fixture
def mosquitto(tmp_path: Path):  # type: ignore[no-untyped-def]
    broker = MosquittoBroker(tmp_path / "broker").start()
    yield broker
    broker.stop()
