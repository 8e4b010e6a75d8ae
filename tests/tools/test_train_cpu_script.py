"""`scripts/train_cpu.sh`: the shipped model's recipe as one command, from the shared datasets to scores."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.tools.shared_sources import make_shared_sources
from tools.corpus import read_manifest
from tools.evaluate import load_detector

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "train_cpu.sh"


def _run(shared: Path, work: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    # A tiny run: 6 scenes, 12 training images, one view each, one epoch.
    env = {**os.environ, "PYTHON": sys.executable, "SCENES": "6", "EPOCHS": "1", "MAX_TRAIN": "12", "GRABCUT": "0"}
    return subprocess.run(["bash", str(SCRIPT), str(shared), str(work), "9.9.9-smoke", "--copies", "1",
                           "--ebike-extra", "0", "--batch", "8", *extra],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)


@pytest.mark.slow
def test_one_command_builds_the_corpus_trains_exports_and_scores_each_kind_of_val_image(tmp_path: Path) -> None:
    shared, work = make_shared_sources(tmp_path), tmp_path / "work"
    done = _run(shared, work)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    model = load_detector(work / "run" / "liftguard-det.onnx")
    assert model.metadata.version == "9.9.9-smoke"
    assert model.metadata.thresholds["ebike"] == pytest.approx(0.4)
    val = [r for r in read_manifest(work / "corpus") if r.split == "val"]
    n_synth = sum(r.source.startswith("scenegen") for r in val)
    assert 0 < n_synth < len(val), "the merged corpus holds both real photos and generated scenes"
    for subset, expected in (("val_real", len(val) - n_synth), ("val_synth", n_synth)):
        metrics = json.loads((work / "run" / f"eval_{subset}" / "metrics.json").read_text())
        assert metrics["n_images"] == expected, subset
    # A second call resumes: the corpus and the trained weights are kept, export and scoring rerun.
    again = _run(shared, work)
    assert again.returncode == 0, again.stderr[-3000:]
    steps = [line for line in again.stdout.splitlines() if line.startswith("== ")]
    assert not any(word in line for line in steps for word in ("building", "generating", "merging", "training"))
    assert any("exporting" in line for line in steps) and any("scoring val_real" in line for line in steps)


def test_a_work_dir_inside_the_project_is_refused(tmp_path: Path) -> None:
    done = _run(tmp_path, ROOT / "out" / "never-here")
    assert done.returncode == 2
    assert "outside the project" in done.stderr
    assert not (ROOT / "out" / "never-here").exists()
