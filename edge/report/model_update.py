"""Model rollout on the unit (contract/models.py): receive, verify, install, swap or roll back.

`ModelUpdater` takes the fleet's `model` command (an offer: id, sha256, size, stage, chunk count)
and then the `model/data` chunks of that offer. When all have arrived it checks the size and the
sha256 of the whole file, writes it atomically into `models.dir`, and hands it to the device
(`ModelSlots`, implemented over the pipeline in edge/run/models.py) on its own thread, so neither
the frame loop nor the link waits for a model to load:

- stage `shadow`: loaded beside the active model (it never actuates);
- stage `active`: the new model is loaded and self-checked *before* the swap; if either fails, the
  running model stays (nothing was swapped); if it passes, it is swapped in and the previous one is
  kept in `state.json`, so a later start-up whose self-check fails goes back to it (`ModelState`);
- stage `off`: the shadow model stops.

Each outcome goes to `model/reported` (retained). A wrong sha256 or size refuses the file: the unit
keeps its model and says so.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol

from contract.errors import LiftGuardError, PayloadError
from contract.models import ModelArgs, ModelReportedPayload, Stage, decode_chunk

log = logging.getLogger(__name__)

STATE_FILE = "state.json"


class ModelSlots(Protocol):
    """What the updater may do to the running device's models."""

    def active_model_id(self) -> str: ...

    def shadow_model_id(self) -> str | None: ...

    def load_shadow(self, path: Path) -> str:
        """Load (and self-check) a shadow model; its id. ModelError: nothing changed."""
        ...

    def stop_shadow(self) -> None: ...

    def activate(self, path: Path) -> str:
        """Load and self-check `path`, then swap it in as the active model; its id.
        ModelError (or any error) before the swap: the running model is untouched."""
        ...


@dataclass
class Slot:
    model_id: str
    path: str
    sha256: str = ""


@dataclass
class ModelState:
    """`models.dir/state.json`: the rolled-out active model, the one before it, and the shadow."""

    active: Slot | None = None
    previous: Slot | None = None
    shadow: Slot | None = None
    rollbacks: list[str] = field(default_factory=list)  # newest last, bounded

    @classmethod
    def load(cls, folder: str | Path) -> ModelState:
        path = Path(folder) / STATE_FILE
        try:
            data = json.loads(path.read_text())
            return cls(**{k: Slot(**data[k]) if data.get(k) else None for k in ("active", "previous", "shadow")},
                       rollbacks=[str(r) for r in data.get("rollbacks", [])][-20:])
        except FileNotFoundError:
            return cls()
        except (OSError, ValueError, TypeError) as exc:
            log.error("model state %s unreadable (%s): using the configured model", path, exc)
            return cls()

    def save(self, folder: str | Path) -> None:
        data = {k: asdict(v) if v else None for k, v in (("active", self.active), ("previous", self.previous),
                                                           ("shadow", self.shadow))}
        atomic_write(Path(folder) / STATE_FILE, json.dumps(data | {"rollbacks": self.rollbacks[-20:]}).encode())


def atomic_write(path: Path, data: bytes) -> None:
    """Write, fsync, rename: a power cut leaves the old file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    with contextlib.suppress(OSError):  # the directory entry too (not possible on every filesystem)
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@dataclass
class _Download:
    args: ModelArgs
    parts: dict[int, bytes] = field(default_factory=dict)
    received: int = 0


Report = Callable[[ModelReportedPayload], None]


class ModelUpdater:
    def __init__(self, folder: str | Path, slots: ModelSlots, report: Report | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.folder = Path(folder)
        self.slots = slots
        self.report = report or (lambda _payload: None)
        self.clock = clock
        self.counts = {"chunks": 0, "chunks_dropped": 0, "refused": 0, "installed": 0, "rolled_back": 0}
        self._download: _Download | None = None
        self._lock = threading.Lock()
        self._worker: threading.Thread | None = None
        self.last: ModelReportedPayload | None = None

    # --- from the link ----------------------------------------------------------------------------

    def offer(self, args: ModelArgs) -> tuple[bool, str]:
        """The `model` command: start receiving (or stop the shadow). Answered at once."""
        if args.stage == "off":
            self._start(lambda: self._stop_shadow())
            return True, "stopping the shadow model"
        with self._lock:
            self._download = _Download(args)
        log.info("model %s (%s, %d bytes in %d chunks) offered as %s", args.model_id, args.sha256[:12], args.size,
                 args.chunks, args.stage)
        return True, f"receiving {args.model_id} in {args.chunks} chunks"

    def chunk(self, raw: bytes) -> None:
        """One `model/data` frame. Frames of no accepted offer are dropped (counted)."""
        try:
            sha, index, count, data = decode_chunk(raw)
        except PayloadError as exc:
            self.counts["chunks_dropped"] += 1
            log.warning("model chunk refused: %s", exc)
            return
        with self._lock:
            dl = self._download
            if dl is None or sha != dl.args.sha256 or count != dl.args.chunks:
                self.counts["chunks_dropped"] += 1
                return
            if index not in dl.parts:
                dl.parts[index] = data
                dl.received += len(data)
            self.counts["chunks"] += 1
            if len(dl.parts) < count and dl.received <= dl.args.size:
                return
            self._download = None
        blob = b"".join(dl.parts[i] for i in sorted(dl.parts))
        self._start(lambda: self._finish(dl.args, blob))

    # --- the worker ---------------------------------------------------------------------------

    def _start(self, job: Callable[[], None]) -> None:
        previous = self._worker
        def run() -> None:
            if previous is not None:
                previous.join()  # one install at a time, in order
            try:
                job()
            except Exception:
                log.exception("model update failed")
                self._report(False, None, "", "internal error; the running model was kept")
        self._worker = threading.Thread(target=run, name="model-update", daemon=True)
        self._worker.start()

    def wait(self, timeout: float) -> bool:
        worker = self._worker
        if worker is not None:
            worker.join(timeout)
            return not worker.is_alive()
        return True

    def _finish(self, args: ModelArgs, blob: bytes) -> None:
        digest = hashlib.sha256(blob).hexdigest()
        if len(blob) != args.size or digest != args.sha256:
            self.counts["refused"] += 1
            self._report(False, args, args.model_id, f"refused: {len(blob)} bytes with sha256 {digest[:12]}, expected "
                         f"{args.size} bytes with {args.sha256[:12]}; kept {self.slots.active_model_id()}")
            return
        path = self.folder / f"{args.model_id}.{args.sha256[:12]}.onnx"
        if path.resolve().parent != self.folder.resolve():  # ModelArgs allows plain names only; twice is cheap
            self._report(False, args, args.model_id, "refused: the model id is not a plain file name")
            return
        atomic_write(path, blob)
        self.install(args.stage, path, args)

    def install(self, stage: Stage, path: Path, args: ModelArgs | None = None) -> None:
        state = ModelState.load(self.folder)
        slot_sha = args.sha256 if args else ""
        model_id = args.model_id if args else path.stem
        if stage == "shadow":
            try:
                loaded = self.slots.load_shadow(path)
            except Exception as exc:
                self.counts["refused"] += 1
                self._report(False, args, model_id, f"shadow not loaded: {_why(exc)}")
                return
            state.shadow = Slot(loaded, str(path), slot_sha)
            state.save(self.folder)
            self.counts["installed"] += 1
            self._report(True, args, model_id, f"{loaded} runs in shadow")
            return
        before = self.slots.active_model_id()
        try:
            loaded = self.slots.activate(path)
        except Exception as exc:
            self.counts["rolled_back"] += 1
            state.rollbacks.append(f"{model_id}: {_why(exc)}"[:200])
            state.save(self.folder)
            self._report(False, args, model_id, f"rolled back to {before}: {_why(exc)}")
            return
        previous = state.active or Slot(before, "")
        state.previous, state.active = previous, Slot(loaded, str(path), slot_sha)
        if state.shadow and state.shadow.model_id == loaded:
            state.shadow = None
            self.slots.stop_shadow()
        state.save(self.folder)
        self.counts["installed"] += 1
        self._report(True, args, model_id, f"{loaded} active (previous {previous.model_id})")

    def _stop_shadow(self) -> None:
        self.slots.stop_shadow()
        state = ModelState.load(self.folder)
        state.shadow = None
        state.save(self.folder)
        self._report(True, None, "", "shadow model stopped")

    def announce(self, ok: bool, detail: str) -> None:
        """Publish what runs now (at start-up, with the rollback that happened, if any)."""
        self._report(ok, None, "", detail)

    def _report(self, ok: bool, args: ModelArgs | None, model_id: str, detail: str) -> None:
        (log.info if ok else log.error)("model update: %s", detail)
        state = ModelState.load(self.folder)
        previous = state.previous.model_id[:128] if state.previous else None
        payload = ModelReportedPayload(
            ok=ok, model_id=model_id[:128], stage=args.stage if args else None,
            active=self.slots.active_model_id()[:128], previous=previous,
            shadow=(self.slots.shadow_model_id() or "")[:128] or None, detail=detail[:512], ts=max(0.0, self.clock()))
        self.last = payload
        try:
            self.report(payload)
        except Exception:
            log.exception("could not report the model update")


def _why(exc: BaseException) -> str:
    text = str(exc) if isinstance(exc, LiftGuardError) else f"{type(exc).__name__}: {exc}"
    return text.splitlines()[0][:300] if text else type(exc).__name__
