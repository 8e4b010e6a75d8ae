"""Fleet commands: parse, validate, dispatch to the device, answer. Pure: no MQTT, no clock of its own.

Every byte from the broker is untrusted. A command that is unknown, malformed, carries
unexpected arguments, or asks for a config the device refuses is rejected *before* anything
on the device changes, answered with `ok=false` and counted. A command delivered twice
(QoS 1 is at-least-once) is answered from the stored result and not executed again: the ids are
kept in SQLite (`SeenCommands`), so a restart does not forget them. A command whose `ts` is missing
or more than `MAX_COMMAND_AGE_S` away from the unit's clock is refused (a captured command replayed
later does nothing).

Remote config is narrower than the local file (`RemoteConfig`): what a compromised or mistaken
fleet could push must never make the unit hold the door for a wheelchair, stroller, bicycle or
person, empty the veto list, drop the cool-down or cap floors, or blow the decision budget. What is
accepted is applied to the live objects through the device's update map, or refused whole.

Wire shapes (`cmd/{name}`, CommandPayload): `{"command_id": "...", "args": {...}}` with args
  release     {"reason": str}  (optional)
  enable, disable, test_alarm, snapshot   {}
  set_config  {"config": {fragment}}
  model       ModelArgs (contract/models.py): a model rollout offer; chunks follow on `model/data`
`config/desired` (retained, from the fleet): `{"config": {fragment}, "version": int}`;
answered on `config/reported` (retained) with ConfigReportedPayload.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol, TypeVar, get_args

from pydantic import BaseModel, ValidationError

from contract.commands import (
    PROTECTED_CLASSES,
    REQUIRED_VETOES,
    CommandArgs,
    ConfigReportedPayload,
    DesiredConfigPayload,
    NoArgs,
    ReleaseArgs,
    RemoteConfig,
    SetConfigArgs,
)
from contract.errors import ConfigError, PayloadError
from contract.models import ModelArgs
from contract.mqtt import CommandName, CommandPayload, CommandResultPayload, decode

log = logging.getLogger(__name__)

COMMAND_NAMES: frozenset[str] = frozenset(get_args(CommandName))
MAX_COMMAND_AGE_S = 60.0
# Identity, connectivity, wiring and file paths are provisioned on the device, never pushed:
# a bad push there could strand a unit or make it write where it should not.
REMOTE_SETTABLE = frozenset({"policy", "tracker", "camera", "detector", "blocking_enabled"})
REMOTE_FORBIDDEN_LEAVES = frozenset({("detector", "model_path"), ("camera", "source"), ("detector", "threads")})
def check_merged_policy(policy: Any) -> None:
    """The policy a remote change would produce must still obey the remote safety rules."""
    bad = sorted(set(policy.block_classes) & PROTECTED_CLASSES)
    if bad:
        raise ConfigError(f"policy.block_classes would block {', '.join(bad)}")
    missing = sorted(REQUIRED_VETOES - set(policy.veto_classes))
    if missing:
        raise ConfigError(f"policy.veto_classes would lose {', '.join(missing)}")


class DeviceControl(Protocol):
    """What the fleet may ask of the device (implemented by the app)."""

    def release_hold(self, reason: str) -> bool: ...

    def set_blocking(self, enabled: bool) -> None: ...

    def test_alarm(self) -> None: ...

    def snapshot_jpeg(self) -> bytes | None: ...

    def apply_config(self, fragment: dict[str, Any]) -> dict[str, Any]:
        """Apply a validated fragment (merge_fragment); return the reported fragment; ConfigError if invalid."""
        ...


# (reference id, jpeg) -> snapshot topic suffix the fleet will find it on
SnapshotSink = Callable[[str, bytes], str]


M = TypeVar("M", bound=BaseModel)

_ARGS: dict[str, type[CommandArgs]] = {
    "release": ReleaseArgs, "enable": NoArgs, "disable": NoArgs, "test_alarm": NoArgs,
    "snapshot": NoArgs, "set_config": SetConfigArgs, "model": ModelArgs,
}
# The `model` command's handler (edge/report/model_update.py ModelUpdater.offer): (ok, detail).
ModelOffer = Callable[[ModelArgs], tuple[bool, str]]


class _Rejected(Exception):
    """Input refused before anything on the device changed."""


class SeenCommands:
    """Command ids already executed, with their answers, in SQLite: survives restarts, bounded to
    the newest `keep` ids (older ones are also older than MAX_COMMAND_AGE_S, so refused by age)."""

    def __init__(self, path: str | Path = ":memory:", keep: int = 10_000) -> None:
        self.keep = keep
        if str(path) != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.execute("CREATE TABLE IF NOT EXISTS seen (n INTEGER PRIMARY KEY AUTOINCREMENT, "
                         "key TEXT UNIQUE NOT NULL, result TEXT NOT NULL)")

    def get(self, name: str, command_id: str) -> CommandResultPayload | None:
        with self._lock:
            row = self._db.execute("SELECT result FROM seen WHERE key = ?", (f"{name}/{command_id}",)).fetchone()
        return CommandResultPayload.model_validate_json(row[0]) if row else None

    def add(self, name: str, command_id: str, result: CommandResultPayload) -> None:
        with self._lock:
            try:
                self._db.execute("INSERT OR REPLACE INTO seen (key, result) VALUES (?, ?)",
                                 (f"{name}/{command_id}", result.model_dump_json()))
                self._db.execute("DELETE FROM seen WHERE n <= (SELECT MAX(n) FROM seen) - ?", (self.keep,))
            except sqlite3.Error as exc:  # a full disk must not stop the command being answered
                log.error("could not record command %s as seen: %s", command_id, exc)

    def close(self) -> None:
        with self._lock:
            self._db.close()


class CommandHandler:
    """Turns raw command bytes into device actions and a CommandResultPayload.

    `counts` holds accepted / rejected / failed / duplicate totals (the metrics counter).
    `seen`: where executed command ids are remembered (SQLite; in memory by default).
    """

    def __init__(self, control: DeviceControl, *, snapshot_sink: SnapshotSink | None = None,
                 clock: Callable[[], float] = time.time, seen: SeenCommands | None = None) -> None:
        self.control = control
        self.snapshot_sink = snapshot_sink
        self.clock = clock
        self.counts: dict[str, int] = {"accepted": 0, "rejected": 0, "failed": 0, "duplicate": 0}
        self.seen = seen or SeenCommands()
        self.last_report: ConfigReportedPayload | None = None
        self.model_offer: ModelOffer | None = None

    # --- cmd/{name} --------------------------------------------------------------------------

    def handle(self, name: str, raw: bytes) -> CommandResultPayload:
        command = name[:32]
        try:
            cmd = _parse(CommandPayload, raw)
        except _Rejected as exc:
            return self._reject(command, "invalid", str(exc))
        if name not in COMMAND_NAMES:
            return self._reject(command, cmd.command_id, f"unknown command {command!r}")
        if cmd.ts is None:
            return self._reject(command, cmd.command_id, "no ts: a command must say when it was sent")
        age = self.clock() - cmd.ts
        if abs(age) > MAX_COMMAND_AGE_S:
            return self._reject(command, cmd.command_id, f"stale command: ts is {age:+.0f} s from the unit's clock "
                                f"(limit {MAX_COMMAND_AGE_S:g} s)")
        previous = self.seen.get(name, cmd.command_id)
        if previous is not None:
            self.counts["duplicate"] += 1
            return previous
        try:
            args = _ARGS[name].model_validate(cmd.args)
            if isinstance(args, SetConfigArgs):
                args = SetConfigArgs(config=remote_fragment(args.config))
        except ValidationError as exc:
            return self._reject(command, cmd.command_id, _first_error(exc))
        except _Rejected as exc:
            return self._reject(command, cmd.command_id, str(exc))
        result = self._execute(name, cmd.command_id, args)
        self.seen.add(name, cmd.command_id, result)
        return result

    def _execute(self, name: str, command_id: str, args: CommandArgs) -> CommandResultPayload:
        try:
            ok, detail = self._dispatch(name, command_id, args)
        except ConfigError as exc:
            return self._reject(name, command_id, f"config refused: {exc}")
        except Exception:  # the device must answer and keep running whatever its parts raise
            log.exception("command %s (%s) failed", name, command_id)
            self.counts["failed"] += 1
            return self._result(command_id, name, False, "internal error")
        self.counts["accepted" if ok else "failed"] += 1
        log.info("command %s (%s): %s", name, command_id, detail)
        return self._result(command_id, name, ok, detail)

    def _dispatch(self, name: str, command_id: str, args: CommandArgs) -> tuple[bool, str]:
        control = self.control
        if isinstance(args, ReleaseArgs):
            return True, "released" if control.release_hold(args.reason) else "no hold was active"
        if name in ("enable", "disable"):
            control.set_blocking(name == "enable")
            return True, f"blocking {name}d"
        if name == "test_alarm":
            control.test_alarm()
            return True, "alarm test started"
        if name == "snapshot":
            jpeg = control.snapshot_jpeg()
            if not jpeg:
                return False, "no frame available"
            where = self.snapshot_sink(command_id, jpeg) if self.snapshot_sink else ""
            return True, f"snapshot {where}".strip()
        if isinstance(args, ModelArgs):
            if self.model_offer is None:
                return False, "model rollout is not available on this unit"
            return self.model_offer(args)
        assert isinstance(args, SetConfigArgs)
        self.last_report = self._report(True, None, control.apply_config(args.config), "applied")
        return True, "config applied"

    # --- config/desired -----------------------------------------------------------------------

    def apply_desired(self, raw: bytes) -> ConfigReportedPayload:
        """Apply the fleet's retained desired config; the answer goes to `config/reported`."""
        try:
            desired = _parse(DesiredConfigPayload, raw)
        except _Rejected as exc:
            self.counts["rejected"] += 1
            log.warning("config/desired rejected: %s", exc)
            return self._report(False, None, {}, str(exc))
        try:
            desired = desired.model_copy(update={"config": remote_fragment(desired.config)})
        except _Rejected as exc:
            self.counts["rejected"] += 1
            log.warning("config/desired v%s rejected: %s", desired.version, exc)
            return self._report(False, desired.version, {}, str(exc))
        try:
            reported = self.control.apply_config(desired.config)
        except ConfigError as exc:
            self.counts["rejected"] += 1
            log.warning("config/desired v%s refused: %s", desired.version, exc)
            return self._report(False, desired.version, {}, str(exc))  # `ok: false` already says "refused"
        except Exception:
            log.exception("applying config/desired v%s failed", desired.version)
            self.counts["failed"] += 1
            return self._report(False, desired.version, {}, "internal error")
        self.counts["accepted"] += 1
        log.info("config/desired v%s applied", desired.version)
        self.last_report = self._report(True, desired.version, reported, "applied")
        return self.last_report

    # --- helpers ------------------------------------------------------------------------------

    def _reject(self, command: str, command_id: str, detail: str) -> CommandResultPayload:
        self.counts["rejected"] += 1
        log.warning("command %r (%s) rejected: %s", command, command_id, detail)
        return self._result(command_id, command, False, detail)

    def _result(self, command_id: str, command: str, ok: bool, detail: str) -> CommandResultPayload:
        return CommandResultPayload(command_id=_clean(command_id, 64) or "invalid", command=_clean(command, 32),
                                    ok=ok, detail=_clean(detail, 512), ts=max(0.0, self.clock()))

    def _report(self, ok: bool, version: int | None, config: dict[str, Any], detail: str) -> ConfigReportedPayload:
        return ConfigReportedPayload(ok=ok, version=version, config=config, detail=detail[:512],
                                     ts=max(0.0, self.clock()))


def _parse(model: type[M], raw: bytes) -> M:
    try:
        return decode(model, raw)
    except PayloadError as exc:
        raise _Rejected(str(exc)) from None
    except RecursionError:  # json.loads on pathologically nested input
        raise _Rejected("payload nested too deeply") from None


def remote_fragment(fragment: dict[str, Any]) -> dict[str, Any]:
    """Check a fleet config fragment against `RemoteConfig`; the accepted fragment or _Rejected."""
    refused = sorted(str(k) for k in set(fragment) - REMOTE_SETTABLE)
    if refused:
        raise _Rejected(f"not remotely settable: {', '.join(refused)[:200]}")
    for section, leaf in REMOTE_FORBIDDEN_LEAVES:
        value = fragment.get(section)
        if isinstance(value, dict) and leaf in value:
            raise _Rejected(f"not remotely settable: {section}.{leaf}")
    try:
        return RemoteConfig.model_validate(fragment).fragment()
    except ValidationError as exc:
        raise _Rejected(f"config refused: {_first_error(exc).removeprefix('args.')}") from None


def _clean(text: str, limit: int) -> str:
    """Echoed input may hold lone surrogates (JSON `\\ud800`), which are not valid UTF-8 on the wire."""
    return text.encode("utf-8", "replace").decode("utf-8")[:limit]


def _first_error(exc: ValidationError) -> str:
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or "<root>"
    return f"args.{where}: {first['msg']}"
