"""`liftguard demo` and the bundled clips, with the real shipped model (onnxruntime, CPU)."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import pytest
from gpiozero import Device

from edge.run.cli import ASSETS, main


def test_the_demo_blocks_the_ebike_and_writes_events_and_a_snapshot(tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    events_out, snapshot = tmp_path / "events.jsonl", tmp_path / "snapshot.png"
    factory_before = Device.pin_factory
    assert main(["demo", "--events-out", str(events_out), "--snapshot-out", str(snapshot)]) == 0
    assert Device.pin_factory is factory_before  # mock pins went to the demo's actuators, not gpiozero's global
    events = [json.loads(line) for line in events_out.read_text().splitlines()]
    start = next(e for e in events if e["type"] == "ebike_blocked" and e["phase"] == "start")
    end = next(e for e in events if e["type"] == "ebike_blocked" and e["phase"] == "end")
    truth = json.loads((ASSETS / "demo_clip.json").read_text())
    fully_in_view_s = truth["fully_in_view_frame"] / truth["fps"]
    first_in_view_s = truth["first_in_view_frame"] / truth["fps"]
    assert first_in_view_s <= start["times"]["relay"] <= fully_in_view_s + 3.0  # within 3 s of full view
    assert end["incident_id"] == start["incident_id"] and end["ts"] > start["ts"]
    image = cv2.imread(str(snapshot))
    assert image is not None and image.shape[:2] == (480, 640)
    out = capsys.readouterr().out
    assert "e-bike confirmed" in out and "door released" in out


@pytest.mark.parametrize("clip", ["wheelchair_clip.mp4", "stroller_clip.mp4"])
def test_wheelchair_and_stroller_clips_are_never_blocked(clip: str, tmp_path: Path) -> None:
    events_out = tmp_path / "events.jsonl"
    assert main(["replay", str(ASSETS / clip), "--events-out", str(events_out)]) == 0
    kinds = {json.loads(line)["type"] for line in events_out.read_text().splitlines()}
    assert "ebike_blocked" not in kinds
