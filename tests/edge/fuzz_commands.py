"""Coverage-guided fuzzing of the command handler with atheris (libFuzzer).

    python -m tests.edge.fuzz_commands -runs=100000      # or -max_total_time=60

Invariant: any bytes on any command topic are answered with a CommandResultPayload, and a
command that is not answered ok leaves the device untouched.
"""

from __future__ import annotations

import logging
import sys

import atheris

import contract.mqtt  # noqa: F401  (imported first so only edge.report.commands itself is instrumented)
from tests.edge.link_support import FakeControl

with atheris.instrument_imports(include=["edge.report.commands"]):
    from edge.report.commands import COMMAND_NAMES, CommandHandler

NAMES = sorted(COMMAND_NAMES)


def one_input(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    name = NAMES[fdp.ConsumeIntInRange(0, len(NAMES) - 1)] if fdp.ConsumeBool() else fdp.ConsumeUnicode(8)
    control = FakeControl()
    result = CommandHandler(control).handle(name, fdp.ConsumeBytes(fdp.remaining_bytes()))
    if not result.ok and [c for c in control.calls if c[0] != "snapshot_jpeg"]:
        raise AssertionError(f"rejected {name!r} but the device was changed: {control.calls}")


def main() -> None:
    logging.disable(logging.CRITICAL)  # every rejection logs a warning: too slow and too loud here
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
