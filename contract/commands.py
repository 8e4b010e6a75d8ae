"""Argument and config payload shapes of the fleet's commands (docs/ARCHITECTURE.md §3).

`cmd/{name}` args, `config/desired` (fleet → unit, retained) and `config/reported` (unit → fleet,
retained). Dispatch lives in edge/report/commands.py; the fleet validates the same shapes.
"""

from __future__ import annotations

import math
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from contract.bounds import Counter, JsonObject, Timestamp

__all__ = ["PROTECTED_CLASSES", "REQUIRED_VETOES", "CommandArgs", "ConfigReportedPayload", "DesiredConfigPayload",
           "NoArgs", "ReleaseArgs", "RemoteCamera", "RemoteConfig", "RemoteDetector", "RemotePolicy", "RemoteTracker",
           "SetConfigArgs"]


class CommandArgs(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class NoArgs(CommandArgs):
    pass


class ReleaseArgs(CommandArgs):
    reason: str = Field("remote", min_length=1, max_length=128)


class SetConfigArgs(CommandArgs):
    config: JsonObject


class DesiredConfigPayload(CommandArgs):
    """`config/desired`, retained, fleet → unit."""

    config: JsonObject
    version: Counter = 0


class ConfigReportedPayload(CommandArgs):
    """`config/reported`, retained, unit → fleet: what the unit runs now (or why it refused)."""

    ok: bool
    version: Counter | None = Field(None, description="desired version this answers; None for set_config")
    config: JsonObject = Field(default_factory=dict)
    detail: str = Field("", max_length=512)
    ts: Timestamp


# --- the remotely settable config (set_config args.config, config/desired config) ------------------

# Never blockable from the fleet, and vetoes the fleet can never remove.
PROTECTED_CLASSES = frozenset({"wheelchair", "stroller", "bicycle", "person"})
REQUIRED_VETOES = frozenset({"wheelchair", "stroller"})
MAX_REMOTE_VETO_THRESHOLD = 0.7  # a veto threshold pushed to 1.0 would switch the veto off


class _Remote(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RemotePolicy(_Remote):
    """policy.* as the fleet may set it: tighter bounds than the local file, and the safety rules."""

    block_classes: tuple[str, ...] | None = Field(None, min_length=1, max_length=4)
    veto_classes: tuple[str, ...] | None = Field(None, min_length=2, max_length=8)
    thresholds: dict[str, float] | None = Field(None, max_length=16)
    confirm_frames: int | None = Field(None, ge=2, le=10)
    confirm_window: int | None = Field(None, ge=2, le=20)
    confirm_within_s: float | None = Field(None, ge=0.5, le=3.0)
    veto_iou: float | None = Field(None, ge=0.1, le=0.6)
    clear_after_s: float | None = Field(None, ge=1.0, le=10.0)
    hold_max_s: float | None = Field(None, ge=10.0, le=120.0)
    cooldown_s: float | None = Field(None, ge=10.0, le=600.0)
    min_box_area: float | None = Field(None, ge=0.0, le=0.1)
    roi: tuple[tuple[float, float], ...] | None = Field(None, min_length=3, max_length=32)

    @field_validator("block_classes")
    @classmethod
    def _never_protected(cls, v: tuple[str, ...] | None) -> tuple[str, ...] | None:
        bad = sorted(set(v or ()) & PROTECTED_CLASSES)
        if bad:
            raise ValueError(f"{', '.join(bad)} can never be blocked")
        return v

    @field_validator("veto_classes")
    @classmethod
    def _vetoes_kept(cls, v: tuple[str, ...] | None) -> tuple[str, ...] | None:
        missing = sorted(REQUIRED_VETOES - set(v or ())) if v is not None else []
        if missing:
            raise ValueError(f"the veto list must keep {', '.join(missing)}")
        return v

    @field_validator("thresholds")
    @classmethod
    def _thresholds(cls, v: dict[str, float] | None) -> dict[str, float] | None:
        for name, value in (v or {}).items():
            if not (isinstance(value, float | int) and math.isfinite(value)):
                raise ValueError(f"thresholds.{name} must be a number")
            low, high = (0.05, MAX_REMOTE_VETO_THRESHOLD) if name in PROTECTED_CLASSES else (0.3, 1.0)
            if not low <= value <= high:
                raise ValueError(f"thresholds.{name} must be within [{low}, {high}] when set remotely")
        return v


class RemoteTracker(_Remote):
    match_iou: float | None = Field(None, ge=0.1, le=0.6)
    max_missed_s: float | None = Field(None, ge=0.5, le=5.0)


class RemoteCamera(_Remote):
    fps: float | None = Field(None, ge=5, le=30)
    read_timeout_s: float | None = Field(None, ge=0.5, le=5)
    reconnect_min_s: float | None = Field(None, ge=0.1, le=10)
    reconnect_max_s: float | None = Field(None, ge=1, le=120)
    frozen_after_s: float | None = Field(None, ge=0.5, le=2.0)
    frozen_max_diff: float | None = Field(None, ge=0.0, le=5.0)


class RemoteDetector(_Remote):
    budget_ms: float | None = Field(None, ge=50, le=500)
    min_score: float | None = Field(None, ge=0.05, le=0.5)
    nms_iou: float | None = Field(None, ge=0.3, le=0.9)


class RemoteConfig(_Remote):
    """The whole remotely settable surface (set_config and config/desired). Anything else is refused."""

    policy: RemotePolicy | None = None
    tracker: RemoteTracker | None = None
    camera: RemoteCamera | None = None
    detector: RemoteDetector | None = None
    blocking_enabled: bool | None = None

    @model_validator(mode="after")
    def _not_empty(self) -> RemoteConfig:
        if not self.model_fields_set:
            raise ValueError("empty config fragment")
        return self

    def fragment(self) -> dict[str, Any]:
        """The accepted settings as a merge fragment (only what was sent)."""
        return self.model_dump(mode="json", exclude_unset=True)
