"""`liftguard replay`: a recording through the whole pipeline on clip time, events with clip stamps."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge.run.cli import main
from tests.support.onnx_models import brightness_model

FPS = 10


def write_clip(folder: Path, pattern: str) -> Path:
    """One frame per character: '#' bright (object present), '.' dark (absent)."""
    folder.mkdir()
    for i, c in enumerate(pattern):
        cv2.imwrite(str(folder / f"{i:04d}.png"), np.full((480, 640, 3), 250 if c == "#" else 5, np.uint8))
    return folder


@pytest.fixture
def scene(tmp_path: Path) -> tuple[Path, Path, Path]:
    model = brightness_model(tmp_path / "m.onnx", [40, 40, 200, 220])
    clip = write_clip(tmp_path / "clip", "." * 10 + "#" * 30 + "." * 60)
    config = tmp_path / "config.yaml"
    config.write_text("unit: {id: replay-test}\nactuators: {voice: {mode: none}}\n"
                      "events: {jsonl_path: '', snapshot_dir: ''}\npolicy: {clear_after_s: 3.0}\n")
    return model, clip, config


def test_replay_prints_a_timeline_and_writes_clip_time_events(scene: tuple[Path, Path, Path], tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    model, clip, config = scene
    events_out = tmp_path / "events.jsonl"
    code = main(["replay", str(clip), "--fps", str(FPS), "--config", str(config), "--model", str(model),
                 "--events-out", str(events_out)])
    assert code == 0
    events = [json.loads(line) for line in events_out.read_text().splitlines()]
    start = next(e for e in events if e["type"] == "ebike_blocked" and e["phase"] == "start")
    end = next(e for e in events if e["type"] == "ebike_blocked" and e["phase"] == "end")
    # bright from frame 10 (1.0 s); k=3 of n=5 -> confirmed on frame 12 = 1.2 s of clip time
    assert start["ts"] == pytest.approx(1.2)
    assert start["times"]["first_seen"] == pytest.approx(1.0)
    assert start["times"]["relay"] == pytest.approx(1.2)
    assert start["times"]["voice"] == pytest.approx(1.2)
    assert start["snapshot"] == f"snapshots/{start['event_id']}"
    assert end["incident_id"] == start["incident_id"]
    assert 3.9 + 3.0 <= end["ts"] <= 3.9 + 3.5  # clear_after_s after the last bright frame
    out = capsys.readouterr().out
    assert "1.20 s  e-bike confirmed (track 1" in out
    assert "door released" in out


def test_a_clip_ending_mid_hold_runs_on_until_released(tmp_path: Path) -> None:
    model = brightness_model(tmp_path / "m.onnx", [40, 40, 200, 220])
    clip = write_clip(tmp_path / "clip", "#" * 20)
    events_out = tmp_path / "events.jsonl"
    assert main(["replay", str(clip), "--fps", "10", "--model", str(model), "--events-out", str(events_out)]) == 0
    kinds = [(e["type"], e["phase"]) for e in map(json.loads, events_out.read_text().splitlines())]
    assert kinds == [("ebike_blocked", "start"), ("ebike_blocked", "end")]


def test_replay_of_a_missing_file_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["replay", str(tmp_path / "nope.mp4")]) == 2
    assert "recording not found" in capsys.readouterr().err
