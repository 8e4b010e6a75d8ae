"""Where events go: the `EventSink` seam, the local JSONL sink, and a fan-out.

The policy produces `EventPayload`s (edge/contract.py); sinks deliver them. The JSONL sink is
the embedded default; the MQTT link (edge/link.py, behind the durable outbox) is another sink.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Protocol, runtime_checkable

from contract.mqtt import EventPayload

log = logging.getLogger(__name__)


@runtime_checkable
class EventSink(Protocol):
    """Receives every event once, in order. `emit` must not block the frame loop for long."""

    def emit(self, event: EventPayload, snapshot_jpeg: bytes | None = None) -> None: ...

    def close(self) -> None: ...


class JsonlSink:
    """Appends one JSON object per line; snapshots written beside it as `<event_id>.jpg`."""

    def __init__(self, path: str | Path, snapshot_dir: str | Path | None = None) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.snapshot_dir = Path(snapshot_dir) if snapshot_dir else None
        if self.snapshot_dir:
            self.snapshot_dir.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._file = self.path.open("a", encoding="utf-8")

    def emit(self, event: EventPayload, snapshot_jpeg: bytes | None = None) -> None:
        line = json.dumps(event.model_dump(mode="json", exclude_none=True), separators=(",", ":"))
        with self._lock:
            self._file.write(line + "\n")
            self._file.flush()
            os.fsync(self._file.fileno())
        if snapshot_jpeg and self.snapshot_dir:
            (self.snapshot_dir / f"{event.event_id}.jpg").write_bytes(snapshot_jpeg)

    def close(self) -> None:
        with self._lock:
            self._file.close()


class MemorySink:
    """Keeps events in a list: for replay timelines and tests."""

    def __init__(self) -> None:
        self.events: list[EventPayload] = []
        self.snapshots: dict[str, bytes] = {}

    def emit(self, event: EventPayload, snapshot_jpeg: bytes | None = None) -> None:
        self.events.append(event)
        if snapshot_jpeg:
            self.snapshots[event.event_id] = snapshot_jpeg

    def close(self) -> None:
        pass


class FanOut:
    """Delivers to several sinks; one failing sink never stops the others (it is logged)."""

    def __init__(self, sinks: Iterable[EventSink]) -> None:
        self.sinks = list(sinks)

    def emit(self, event: EventPayload, snapshot_jpeg: bytes | None = None) -> None:
        for sink in self.sinks:
            try:
                sink.emit(event, snapshot_jpeg)
            except Exception:
                log.exception("event sink %s failed for event %s", type(sink).__name__, event.event_id)

    def close(self) -> None:
        for sink in self.sinks:
            try:
                sink.close()
            except Exception:
                log.exception("closing event sink %s failed", type(sink).__name__)
