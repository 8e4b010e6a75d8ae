"""A tiny device process for the kill tests: raises events through a real MqttLink.

    python -m tests.edge.link_device --port P --outbox F [--emit N] [--before-start] [--die-after-commit]

Prints `committed <id,id,...>` once its events are in the outbox, `connected` when linked, then
serves until killed (the tests SIGKILL / SIGSTOP it) unless --die-after-commit kills itself the
instant its single emit returns.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time

from edge.report.link import MqttLink
from edge.report.link_settings import LinkSettings
from edge.report.outbox import Outbox
from tests.edge.link_support import heartbeat_of, make_event


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--outbox", required=True)
    ap.add_argument("--unit", default="unit-a")
    ap.add_argument("--emit", type=int, default=0)
    ap.add_argument("--keepalive", type=int, default=5)
    ap.add_argument("--window", type=int, default=32)
    ap.add_argument("--before-start", action="store_true", help="commit all events before connecting")
    ap.add_argument("--die-after-commit", action="store_true")
    opts = ap.parse_args()

    settings = LinkSettings(unit_id=opts.unit, host="127.0.0.1", port=opts.port, keepalive_s=opts.keepalive,
                            reconnect_max_s=1.0, window=opts.window)
    link = MqttLink(settings, Outbox(opts.outbox), heartbeat=heartbeat_of(opts.unit))
    if not opts.before_start:
        link.start()
    ids = []
    for n in range(opts.emit):
        event = make_event(opts.unit, n)
        link.emit(event)
        ids.append(event.event_id)
        if opts.die_after_commit:
            print(f"committed {event.event_id}", flush=True)
            os.kill(os.getpid(), signal.SIGKILL)
    print(f"committed {','.join(ids)}", flush=True)
    if opts.before_start:
        link.start()
    if link.wait_connected(15):
        print("connected", flush=True)
    while True:
        time.sleep(1)


if __name__ == "__main__":
    sys.exit(main())
