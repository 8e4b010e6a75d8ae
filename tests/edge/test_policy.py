"""Policy timelines with an injected clock: what the door does, frame by frame."""

from __future__ import annotations

from collections.abc import Iterable

import pytest

from edge.config import PolicyConfig
from edge.decide.detect import Detection
from edge.decide.policy import Conditions, Decision, Policy, State
from edge.decide.track import IouTracker

FPS = 10.0
EBIKE_BOX = (100.0, 100.0, 300.0, 400.0)
FAULTS = [  # conditions under which the device must fail open, and the event that reports each
    (Conditions(camera_ok=False), "camera_fault"),
    (Conditions(within_budget=False), "overload"),
    (Conditions(fire_active=True), "fire_override"),
]


def ebike(score: float = 0.9, box: tuple[float, float, float, float] = EBIKE_BOX) -> Detection:
    return Detection(box, score, "ebike")


def wheelchair(score: float = 0.8, box: tuple[float, float, float, float] = EBIKE_BOX) -> Detection:
    return Detection(box, score, "wheelchair")


class Scenario:
    """Feeds per-frame detections at FPS through tracker + policy; records the relay timeline."""

    def __init__(self, **policy: object) -> None:
        self.policy = Policy(PolicyConfig.model_validate(policy), "unit-1")
        self.tracker = IouTracker()
        self.t = 0.0
        self.decisions: list[tuple[float, Decision]] = []

    def frames(self, seconds: float, detections: Iterable[Detection] = (), cond: Conditions | None = None) -> None:
        dets = list(detections)
        cond = cond or Conditions()
        for _ in range(round(seconds * FPS)):
            tracks = self.tracker.update(self.t, dets)
            self.decisions.append((self.t, self.policy.update(self.t, tracks, cond)))
            self.t = round(self.t + 1 / FPS, 6)

    def hold_intervals(self) -> list[tuple[float, float]]:
        spans, start = [], None
        for t, d in self.decisions:
            if d.hold and start is None:
                start = t
            if not d.hold and start is not None:
                spans.append((start, t))
                start = None
        if start is not None:
            spans.append((start, self.t))
        return spans

    def events(self) -> list[tuple[str, str]]:
        return [(e.type, e.phase) for _, d in self.decisions for e in d.events]


def test_an_ebike_is_held_after_k_frames_and_released_after_it_leaves() -> None:
    s = Scenario(confirm_frames=3, confirm_window=5, clear_after_s=2.0)
    s.frames(1.0)
    s.frames(4.0, [ebike()])
    s.frames(5.0)
    [(start, end)] = s.hold_intervals()
    assert start == pytest.approx(1.2)  # third e-bike frame: 0.2 s after it appeared
    last_sighting = 4.9
    # released clear_after_s after the evidence window (k of n frames) last held the e-bike
    assert 2.0 <= end - last_sighting <= 2.0 + 0.3
    assert s.events() == [("ebike_blocked", "start"), ("ebike_blocked", "end")]


@pytest.mark.parametrize(
    ("pattern", "held"),
    [
        ([1, 0, 0, 1, 0, 0, 1, 0, 0, 0], False),  # flicker: never 3 of 5
        ([1, 1, 0, 1, 0, 0, 0, 0, 0, 0], True),  # 3 of 5
        ([1, 1, 1, 0, 0, 0, 0, 0, 0, 0], True),
    ],
)
def test_confirmation_needs_k_of_n_frames(pattern: list[int], held: bool) -> None:
    s = Scenario(confirm_frames=3, confirm_window=5)
    for seen in pattern:
        s.frames(0.1, [ebike()] if seen else [])
    assert bool(s.hold_intervals()) is held


def test_low_scores_below_threshold_never_hold() -> None:
    s = Scenario(thresholds={"ebike": 0.6, "wheelchair": 0.3, "stroller": 0.3})
    s.frames(5.0, [ebike(0.55)])
    assert s.hold_intervals() == []


@pytest.mark.parametrize("veto", ["wheelchair", "stroller"])
def test_wheelchair_or_stroller_evidence_on_the_same_object_vetoes(veto: str) -> None:
    s = Scenario()
    s.frames(5.0, [ebike(0.9), Detection(EBIKE_BOX, 0.5, veto)])
    assert s.hold_intervals() == []


def test_a_wheelchair_elsewhere_in_the_car_does_not_veto_an_ebike() -> None:
    s = Scenario()
    s.frames(3.0, [ebike(0.9), wheelchair(0.9, (400.0, 50.0, 600.0, 300.0))])
    assert len(s.hold_intervals()) == 1


def test_veto_evidence_arriving_during_a_hold_releases_it() -> None:
    s = Scenario()
    s.frames(1.0, [ebike()])
    assert s.policy.holding
    s.frames(0.3, [ebike(), wheelchair()])
    assert not s.policy.holding
    assert s.decisions[-1][1].hold is False


def test_the_hold_cap_releases_and_cooldown_blocks_a_new_hold() -> None:
    s = Scenario(hold_max_s=10, cooldown_s=20)
    s.frames(40.0, [ebike()])
    spans = s.hold_intervals()
    assert 10.0 - 0.11 <= spans[0][1] - spans[0][0] <= 10.0
    assert all(end - start <= 10.0 + 1e-9 for start, end in spans)
    assert all(e.hold_s is not None and e.hold_s <= 10.0 for _, d in s.decisions for e in d.events
               if e.type == "cap_released")
    assert spans[1][0] - spans[0][1] >= 20.0  # no hold during the cool-down
    assert ("cap_released", "end") in s.events()


def test_tick_enforces_the_cap_even_when_no_frames_arrive() -> None:
    s = Scenario(hold_max_s=10)
    s.frames(1.0, [ebike()])
    assert s.policy.holding
    d = s.policy.tick(s.t + 10.0, Conditions())
    assert d.hold is False and not s.policy.holding


@pytest.mark.parametrize(("cond", "fault"), FAULTS)
def test_blind_camera_overload_and_fire_input_never_hold(cond: Conditions, fault: str) -> None:
    s = Scenario()
    s.frames(5.0, [ebike()], cond)
    assert s.hold_intervals() == []
    assert (fault, "start") in s.events()
    assert all(d.state == State.SUPPRESSED for _, d in s.decisions)


@pytest.mark.parametrize(("cond", "fault"), FAULTS)
def test_a_fault_during_a_hold_releases_at_once(cond: Conditions, fault: str) -> None:
    s = Scenario()
    s.frames(1.0, [ebike()])
    assert s.policy.holding
    d = s.policy.tick(s.t + 0.01, cond)  # e.g. the fire input's edge callback, 10 ms later
    assert d.hold is False
    assert (fault, "end") in [(e.type, e.phase) for e in d.events]


def test_fire_input_released_within_100_ms_of_its_edge() -> None:
    s = Scenario()
    s.frames(1.0, [ebike()])
    edge_at = s.t
    d = s.policy.tick(edge_at + 0.0, Conditions(fire_active=True))
    assert d.hold is False  # released in the same step as the edge: 0 ms < 100 ms


def test_remote_release_then_cooldown() -> None:
    s = Scenario(cooldown_s=5)
    s.frames(1.0, [ebike()])
    d = s.policy.remote_release(s.t)
    assert not d.hold and [e.type for e in d.events] == ["remote_released"]
    s.frames(4.0, [ebike()])
    assert len(s.hold_intervals()) == 1  # nothing new during the 5 s cool-down


def test_disabled_blocking_alerts_once_but_never_holds() -> None:
    s = Scenario()
    s.policy.blocking_enabled = False
    s.frames(3.0, [ebike()])
    assert s.hold_intervals() == []
    assert s.events() == [("blocking_disabled", "start")]


def test_roi_ignores_objects_outside_the_car() -> None:
    s = Scenario(roi=((0.5, 0.0), (1.0, 0.0), (1.0, 1.0), (0.5, 1.0)))  # right half only
    s.frames(3.0, [ebike()])  # centre at x=200 of 640: left half
    assert s.hold_intervals() == []


def test_confirmation_must_fit_the_latency_window() -> None:
    # 3 frames needed within 0.5 s; at 10 fps an e-bike seen every 4th frame never confirms.
    s = Scenario(confirm_frames=3, confirm_window=12, confirm_within_s=0.5)
    for _ in range(8):
        s.frames(0.1, [ebike()])
        s.frames(0.3)
    assert s.hold_intervals() == []


def test_the_policy_admits_detections_from_half_their_threshold_and_the_minimum_area() -> None:
    policy = Policy(PolicyConfig.model_validate({"thresholds": {"ebike": 0.6}, "min_box_area": 0.01}), "unit-1",
                    model_thresholds={"wheelchair": 0.4})
    frame = (640, 480)  # 1 % of the frame = 3072 px²
    big, small = (0.0, 0.0, 100.0, 100.0), (0.0, 0.0, 50.0, 50.0)
    detections = [
        Detection(big, 0.30, "ebike"),  # half of the configured 0.6: tracked
        Detection(big, 0.29, "ebike"),  # below half: dropped
        Detection(big, 0.20, "wheelchair"),  # half of the model's 0.4: tracked
        Detection(small, 0.99, "ebike"),  # 2500 px² < 1 % of the frame: dropped
    ]
    assert policy.admit(detections, frame) == [detections[0], detections[2]]


def test_a_live_reconfigure_keeps_the_hold_and_changes_the_rules() -> None:
    sim = Scenario()
    sim.frames(2.0, [ebike()])
    assert sim.policy.holding
    sim.policy.reconfigure(PolicyConfig.model_validate({"thresholds": {"ebike": 0.95}}), blocking_enabled=False)
    assert sim.policy.holding and sim.policy.threshold("ebike") == 0.95 and not sim.policy.blocking_enabled
