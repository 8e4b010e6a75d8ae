"""Fleet commands: valid ones act and answer; anything else is rejected, counted, and changes nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge.report.commands import COMMAND_NAMES, CommandHandler
from tests.edge.link_support import REPO, FakeControl


def handler() -> tuple[CommandHandler, FakeControl]:
    control = FakeControl()
    return CommandHandler(control, clock=lambda: 1000.0), control


def cmd(command_id: str = "cmd-00000001", **args: Any) -> bytes:
    return json.dumps({"command_id": command_id, "ts": 1000.0, "args": args}).encode()


@pytest.mark.parametrize(("name", "raw", "call", "detail"), [
    ("release", cmd(reason="lobby"), ("release_hold", "lobby"), "released"),
    ("release", cmd(), ("release_hold", "remote"), "released"),
    ("enable", cmd(), ("set_blocking", True), "blocking enabled"),
    ("disable", cmd(), ("set_blocking", False), "blocking disabled"),
    ("test_alarm", cmd(), ("test_alarm", None), "alarm test started"),
    ("set_config", cmd(config={"policy": {"hold_max_s": 60}}), ("apply_config", {"policy": {"hold_max_s": 60}}),
     "config applied"),
])
def test_a_valid_command_acts_once_and_is_answered(name: str, raw: bytes, call: tuple[str, Any], detail: str) -> None:
    h, control = handler()
    result = h.handle(name, raw)
    assert (result.ok, result.command, result.command_id, result.detail) == (True, name, "cmd-00000001", detail)
    assert control.calls == [call]
    assert h.counts["accepted"] == 1


def test_a_redelivered_command_is_answered_again_but_not_executed_twice() -> None:
    h, control = handler()
    first = h.handle("test_alarm", cmd())
    assert h.handle("test_alarm", cmd()) == first
    assert control.calls == [("test_alarm", None)]
    assert h.counts["duplicate"] == 1


def test_a_snapshot_is_handed_to_the_snapshot_sink() -> None:
    control = FakeControl()
    control.frame = b"\xff\xd8jpeg"
    sent: list[tuple[str, bytes]] = []
    h = CommandHandler(control, snapshot_sink=lambda ref, jpeg: sent.append((ref, jpeg)) or f"snapshots/{ref}",
                       clock=lambda: 1000.0)
    assert h.handle("snapshot", cmd("snap-0001")).detail == "snapshot snapshots/snap-0001"
    assert sent == [("snap-0001", b"\xff\xd8jpeg")]


def test_no_frame_means_a_failed_snapshot() -> None:
    h, _ = handler()
    assert not h.handle("snapshot", cmd()).ok


@pytest.mark.parametrize(("name", "raw", "why"), [
    ("reboot", cmd(), "unknown command"),
    ("release", b"", "not JSON"),
    ("release", b"[]", "not a JSON object"),
    ("release", b'{"args": {}}', "command_id"),
    ("release", cmd(reason=""), "args.reason"),
    ("release", cmd(force=True), "args.force"),
    ("enable", cmd(now=1), "args.now"),
    ("set_config", cmd(), "args.config"),
    ("set_config", cmd(config={"policy": {"hold_max_s": 100000}}), "config refused"),
    ("set_config", cmd(config={"mqtt": {"url": "mqtt://evil"}}), "not remotely settable: mqtt"),
    ("set_config", cmd(config={"unit": {"id": "unit-b"}}), "not remotely settable: unit"),
    ("set_config", cmd(config={"detector": {"model_path": "/tmp/x.onnx"}}), "detector.model_path"),
    ("\ud800", cmd(), "unknown command"),  # found by atheris: a lone surrogate in the echoed name
    ("release", b'{"command_id": "cmd-\\ud800-0001"}', "command_id"),
    ("release", b'{"command_id": "cmd-00000001", "ts": 1000, "args": {"\\udfff": 1}}', "args."),
    ("release", b"[" * 30000 + b"]" * 30000, "nested too deeply"),
])
def test_invalid_input_is_rejected_counted_and_changes_nothing(name: str, raw: bytes, why: str) -> None:
    h, control = handler()
    result = h.handle(name, raw)
    assert not result.ok
    assert why in result.detail
    assert control.calls == []
    assert control.config.policy.hold_max_s == 120
    assert h.counts["rejected"] == 1


def test_a_device_error_is_answered_not_raised() -> None:
    class Broken(FakeControl):
        def test_alarm(self) -> None:
            raise OSError("amplifier gone")

    h = CommandHandler(Broken(), clock=lambda: 1000.0)
    result = h.handle("test_alarm", cmd())
    assert (result.ok, result.detail) == (False, "internal error")
    assert h.counts["failed"] == 1


def test_desired_config_is_applied_and_reported_with_its_version() -> None:
    h, control = handler()
    report = h.apply_desired(json.dumps({"config": {"blocking_enabled": False}, "version": 3}).encode())
    assert (report.ok, report.version, report.config["blocking_enabled"]) == (True, 3, False)
    assert control.config.blocking_enabled is False


def test_an_invalid_desired_config_is_reported_and_changes_nothing() -> None:
    h, control = handler()
    report = h.apply_desired(b'{"config": {"policy": {"confirm_frames": 99}}, "version": 4}')
    assert not report.ok and report.version == 4
    assert control.calls == [] and control.config == FakeControl().config


# --- fuzzing -------------------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=20)
names = st.sampled_from(sorted(COMMAND_NAMES)) | st.text(max_size=40)
command_shaped = st.fixed_dictionaries(
    {"command_id": st.text(min_size=0, max_size=70)},
    optional={"args": json_values, "ts": json_values, "extra": json_values})


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(name=names, raw=st.binary(max_size=300))
def test_fuzz_arbitrary_bytes_never_crash_and_never_act(name: str, raw: bytes) -> None:
    h, control = handler()
    result = h.handle(name, raw)
    if not result.ok:
        assert [c for c in control.calls if c[0] != "snapshot_jpeg"] == []


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(name=names, payload=command_shaped)
def test_fuzz_command_shaped_json_acts_only_when_valid(name: str, payload: dict[str, Any]) -> None:
    h, control = handler()
    before = control.config
    result = h.handle(name, json.dumps(payload).encode())
    changes = [c for c in control.calls if c[0] != "snapshot_jpeg"]  # taking a picture changes nothing
    if not result.ok:
        assert changes == [] and control.config == before
        assert h.counts["rejected"] + h.counts["failed"] == 1
    else:
        assert name in COMMAND_NAMES and len(control.calls) == 1


@settings(max_examples=200, deadline=None)
@given(raw=st.binary(max_size=200) | json_values.map(lambda v: json.dumps({"config": v}).encode()))
def test_fuzz_desired_config_never_crashes(raw: bytes) -> None:
    h, control = handler()
    report = h.apply_desired(raw)
    if not report.ok:
        assert control.config == FakeControl().config


def test_atheris_short_run_finds_no_crash(tmp_path: Path) -> None:
    """A few seconds of coverage-guided fuzzing (longer: python -m tests.edge.fuzz_commands -max_total_time=600)."""
    pytest.importorskip("atheris")
    seconds = os.environ.get("LIFTGUARD_FUZZ_S", "6")
    run = subprocess.run([sys.executable, "-m", "tests.edge.fuzz_commands", f"-max_total_time={seconds}",
                          "-max_len=512", f"-artifact_prefix={tmp_path}/"],
                         cwd=REPO, capture_output=True, text=True, timeout=int(seconds) + 60)
    assert run.returncode == 0, run.stderr[-2000:]
