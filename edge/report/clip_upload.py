"""Clip upload (issue 17): the clips of holds, from `clips.dir` to the fleet, in chunks on `clips/{clip_id}`.

The transport is decided and specified in contract/clips.py. This class only decides *what* goes next;
the MQTT link's worker thread (edge/report/link.py) asks it for a chunk when the event outbox is empty
and nothing of its own is in flight, publishes it at QoS 1, and reports the broker's answer. So:

- the frame loop never waits for it (it runs on the link's thread, never the pipeline's);
- alerts go first (a chunk is only sent while no event row waits), one chunk in flight at a time and at
  most one every `interval_s`, so a clip can use neither the unit's bandwidth nor its broker rate limit
  while something more urgent waits;
- the clips folder is its durable outbox: bounded by `clips.max_mb` with counted eviction (the recorder
  evicts the oldest), and a clip is deleted from it only after the broker acknowledged every chunk;
- a reconnect starts the current clip again from its first chunk (the fleet ignores parts it has).
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from contract.clips import CLIP_CHUNK_BYTES, MAX_CLIP_BYTES, encode_chunk, read_clip
from contract.errors import PayloadError

log = logging.getLogger(__name__)

# A broker that refuses a chunk (ACL, quota) is asked again after this long, not in a loop.
REFUSED_BACKOFF_S = 30.0


@dataclass
class _Upload:
    path: Path
    clip_id: str
    data: bytes
    sha256: str
    count: int
    index: int = 0


class ClipUploader:
    def __init__(self, directory: str | Path, interval_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.dir = Path(directory)
        self.interval_s = interval_s
        self.clock = clock
        self.counts = {"uploaded": 0, "chunks": 0, "refused": 0, "unreadable": 0}
        self._current: _Upload | None = None
        self._inflight = False
        self._next_at = 0.0

    def due_in(self) -> float:
        """Seconds until a chunk may be sent (0: now); the link's worker wakes up by then. With a chunk in
        flight, the broker's answer (which wakes the worker) comes first."""
        if self._inflight:
            return 1.0
        return max(0.0, self._next_at - self.clock())

    def next_chunk(self) -> tuple[str, bytes] | None:
        """(topic suffix, payload) of the next chunk, or None: one in flight, too early, or nothing to send."""
        if self._inflight or self.due_in() > 0:
            return None
        if self._current is None:
            self._current = self._pick()
            if self._current is None:
                self._next_at = self.clock() + 1.0  # look at the folder again in a second, not every loop
                return None
        up = self._current
        start = up.index * CLIP_CHUNK_BYTES
        self._inflight = True
        return f"clips/{up.clip_id}", encode_chunk(up.sha256, up.index, up.count,
                                                   up.data[start:start + CLIP_CHUNK_BYTES])

    def sent(self, ok: bool) -> None:
        """The broker's answer to the chunk in flight (PUBACK, or a refusal)."""
        if not self._inflight:
            return
        self._inflight = False
        now = self.clock()
        if not ok:
            self.counts["refused"] += 1
            self._next_at = now + REFUSED_BACKOFF_S
            log.warning("the broker refused a chunk of clip %s; trying again in %.0f s",
                        self._current.clip_id if self._current else "?", REFUSED_BACKOFF_S)
            return
        self._next_at = now + self.interval_s
        self.counts["chunks"] += 1
        up = self._current
        if up is None:
            return
        up.index += 1
        if up.index >= up.count:
            self.counts["uploaded"] += 1
            self._current = None
            up.path.unlink(missing_ok=True)
            log.info("clip %s uploaded (%d KB in %d chunks)", up.path.name, len(up.data) // 1024, up.count)

    def restart(self) -> None:
        """After a reconnect: nothing is in flight any more; the current clip goes again from chunk 0."""
        self._inflight = False
        if self._current is not None:
            self._current.index = 0

    def pending(self) -> int:
        return len(self._candidates())

    def _candidates(self) -> list[Path]:
        # Names start with the trigger time: oldest first. Near misses name no alert: they stay here.
        return sorted(self.dir.glob("*-hold-*.zip")) if self.dir.is_dir() else []

    def _pick(self) -> _Upload | None:
        for path in self._candidates():
            try:
                data = path.read_bytes()
                if len(data) > MAX_CLIP_BYTES:
                    raise PayloadError(f"{len(data)} bytes, over {MAX_CLIP_BYTES}")
                manifest, _frames = read_clip(data)
            except FileNotFoundError:
                continue  # evicted meanwhile
            except (OSError, PayloadError) as exc:
                # Unreadable here is unreadable anywhere (a torn disk write): removed and counted, never
                # retried; a copy kept aside would sit outside the folder's size cap.
                self.counts["unreadable"] += 1
                log.error("clip %s cannot be uploaded (%s); removed", path.name, exc)
                path.unlink(missing_ok=True)
                continue
            return _Upload(path, manifest.clip_id, data, hashlib.sha256(data).hexdigest(),
                           max(1, -(-len(data) // CLIP_CHUNK_BYTES)))
        return None
