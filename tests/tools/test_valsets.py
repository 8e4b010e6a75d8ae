"""Validation images are scored per origin: real photos and generated scenes never share a folder."""

from __future__ import annotations

from pathlib import Path

from tests.tools.synthcorpus import make_corpus
from tools.valsets import REAL, SYNTH, main


def test_val_images_are_linked_by_origin_with_their_labels(tmp_path: Path) -> None:
    corpus = make_corpus(tmp_path / "corpus", n_train=2, n_val=4)
    manifest = corpus / "manifest.csv"
    lines = manifest.read_text().splitlines()
    # The first two val images become generated scenes; the other two stay real photos.
    val_rows = [i for i, line in enumerate(lines) if ",val," in line]
    for i in val_rows[:2]:
        lines[i] = lines[i].replace(",synthetic,", ",scenegen_s2,")
    manifest.write_text("\n".join(lines) + "\n")
    out = tmp_path / "valsets"
    for _ in range(2):  # a rerun replaces the links instead of failing
        assert main(["--data", str(corpus), "--out", str(out)]) == 0
    synth = sorted(p.name for p in (out / SYNTH / "images").iterdir())
    real = sorted(p.name for p in (out / REAL / "images").iterdir())
    assert synth == ["synth_val_000.jpg", "synth_val_001.jpg"]
    assert real == ["synth_val_002.jpg", "synth_val_003.jpg"]
    for subset, names in ((SYNTH, synth), (REAL, real)):
        for name in names:
            label = out / subset / "labels" / f"{Path(name).stem}.txt"
            assert label.read_text() == (corpus / "labels" / "val" / label.name).read_text()
            assert (out / subset / "images" / name).resolve() == (corpus / "images" / "val" / name).resolve()
    assert not any("train" in p.name for p in (out / REAL / "images").iterdir())
