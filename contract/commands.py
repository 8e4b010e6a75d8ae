"""Argument and config payload shapes of the fleet's commands (docs/ARCHITECTURE.md §3).

`cmd/{name}` args, `config/desired` (fleet → unit, retained) and `config/reported` (unit → fleet,
retained). Dispatch lives in edge/report/commands.py; the fleet validates the same shapes.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from contract.bounds import Counter, JsonObject, Timestamp

__all__ = ["CommandArgs", "ConfigReportedPayload", "DesiredConfigPayload", "NoArgs", "ReleaseArgs", "SetConfigArgs"]


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
