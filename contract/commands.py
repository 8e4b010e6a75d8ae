"""Argument and config payload shapes of the fleet's commands (docs/ARCHITECTURE.md §3).

`cmd/{name}` args, `config/desired` (fleet → unit, retained) and `config/reported` (unit → fleet,
retained). Dispatch lives in edge/run/commands.py; the fleet validates the same shapes.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["CommandArgs", "ConfigReportedPayload", "DesiredConfigPayload", "NoArgs", "ReleaseArgs", "SetConfigArgs"]


class CommandArgs(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class NoArgs(CommandArgs):
    pass


class ReleaseArgs(CommandArgs):
    reason: str = Field("remote", min_length=1, max_length=128)


class SetConfigArgs(CommandArgs):
    config: dict[str, Any]


class DesiredConfigPayload(CommandArgs):
    """`config/desired`, retained, fleet → unit."""

    config: dict[str, Any]
    version: int = Field(0, ge=0)


class ConfigReportedPayload(CommandArgs):
    """`config/reported`, retained, unit → fleet: what the unit runs now (or why it refused)."""

    ok: bool
    version: int | None = Field(None, ge=0, description="desired version this answers; None for set_config")
    config: dict[str, Any] = Field(default_factory=dict)
    detail: str = Field("", max_length=512)
    ts: float = Field(ge=0)
