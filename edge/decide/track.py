"""Tracking: one physical object = one track id across frames, with its per-frame class evidence.

Detections of different classes on the same object (an e-bike box and a stroller box over one
pram) are merged into one observation first, so the policy sees *all* class evidence for that
object: that is what makes the wheelchair/stroller veto work.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from edge.decide.detect import Box, Detection, iou


@dataclass(frozen=True)
class Observation:
    """One object in one frame: its box and the best score of every class seen on it."""

    box: Box
    scores: dict[str, float]


@dataclass
class Track:
    id: int
    box: Box
    first_seen: float
    last_seen: float
    history: deque[tuple[float, dict[str, float]]] = field(default_factory=lambda: deque(maxlen=60))

    def recent(self, n: int) -> list[tuple[float, dict[str, float]]]:
        """The last n frame entries (timestamp, class scores); missed frames have empty scores."""
        return list(self.history)[-n:]

    @property
    def age_s(self) -> float:
        return self.last_seen - self.first_seen


def merge_detections(detections: Iterable[Detection], merge_iou: float, ignore: Sequence[str] = ()) -> list[
        Observation]:
    """Cluster overlapping detections (any class) into observations; the strongest box leads."""
    pending = sorted((d for d in detections if d.cls not in ignore), key=lambda d: -d.score)
    observations: list[Observation] = []
    while pending:
        lead = pending.pop(0)
        scores = {lead.cls: lead.score}
        rest = []
        for d in pending:
            if iou(lead.box, d.box) >= merge_iou:
                scores[d.cls] = max(scores.get(d.cls, 0.0), d.score)
            else:
                rest.append(d)
        pending = rest
        observations.append(Observation(lead.box, scores))
    return observations


class IouTracker:
    """Greedy IoU association. Unmatched tracks record an empty frame until max_missed_s."""

    def __init__(self, match_iou: float = 0.2, max_missed_s: float = 1.5, merge_iou: float = 0.3,
                 ignore: Sequence[str] = ("person",)) -> None:
        self.match_iou = match_iou
        self.max_missed_s = max_missed_s
        self.merge_iou = merge_iou
        self.ignore = tuple(ignore)
        self.tracks: list[Track] = []
        self._next_id = 1

    def update(self, now: float, detections: Iterable[Detection]) -> list[Track]:
        observations = merge_detections(detections, self.merge_iou, self.ignore)
        pairs = sorted(
            ((iou(t.box, o.box), ti, oi) for ti, t in enumerate(self.tracks) for oi, o in enumerate(observations)),
            reverse=True,
        )
        used_t: set[int] = set()
        used_o: set[int] = set()
        for overlap, ti, oi in pairs:
            if overlap < self.match_iou:
                break
            if ti in used_t or oi in used_o:
                continue
            used_t.add(ti)
            used_o.add(oi)
            track, obs = self.tracks[ti], observations[oi]
            track.box, track.last_seen = obs.box, now
            track.history.append((now, obs.scores))
        for ti, track in enumerate(self.tracks):
            if ti not in used_t:
                track.history.append((now, {}))
        for oi, obs in enumerate(observations):
            if oi not in used_o:
                track = Track(self._next_id, obs.box, now, now)
                track.history.append((now, obs.scores))
                self.tracks.append(track)
                self._next_id += 1
        self.tracks = [t for t in self.tracks if now - t.last_seen <= self.max_missed_s]
        return list(self.tracks)

    def reset(self) -> None:
        self.tracks.clear()
