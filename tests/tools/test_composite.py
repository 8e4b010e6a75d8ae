"""The real-pixel data engine: composites record every source whose pixels they carry."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tests.tools.shared_sources import make_shared_sources
from tools.composite import ETOILES, composite_jobs, inpainted_stills, load_cutouts, write_corpus
from tools.corpus import CLASS_ID, read_manifest
from tools.features import SYNTHETIC_PREFIX, load_split
from tools.loso import train_mask
from tools.model import INPUT_H, INPUT_W

EBIKE_SOURCES = {ETOILES, "roboflow-motorbike-scooter"}


def test_composites_name_the_sources_of_their_cutouts_and_backgrounds(tmp_path: Path) -> None:
    src = make_shared_sources(tmp_path)
    bank = load_cutouts(src, grabcut=False)
    assert {c.source for c in bank[CLASS_ID["ebike"]]} == EBIKE_SOURCES
    stills = inpainted_stills(src)
    assert len(stills) == 5
    jobs = list(composite_jobs(bank, stills, 24, seed=0))
    for view, rgb in jobs:
        assert rgb.shape == (INPUT_H, INPUT_W, 3) and view.kind == "composite" and view.source == "composite"
        for b in view.boxes:
            assert 0 <= b[1] < b[3] <= INPUT_W and 0 <= b[2] < b[4] <= INPUT_H
        if any(int(b[0]) == CLASS_ID["ebike"] for b in view.boxes):
            assert set(view.uses) & EBIKE_SOURCES, "an e-bike cut-out's source is recorded"
    with_still = [v for v, _ in jobs if ETOILES in v.uses]
    assert with_still and len(with_still) < len(jobs), "both backgrounds occur: etoiles stills and procedural cars"
    # A fold holding out the elevator stills drops every composite with one of their pixels.
    views = [v for v, _ in jobs]
    keep = train_mask(views, ETOILES)
    assert not any(k and ETOILES in v.uses for v, k in zip(views, keep, strict=True))
    assert keep.sum() == len(views) - len(with_still)
    again = [v for v, _ in composite_jobs(bank, stills, 3, seed=0)]
    assert [v.boxes for v in again] == [v.boxes for v in views[:3]], "seeded: the same composites again"
    assert np.isfinite(np.array([b for v in views for b in v.boxes], dtype=float)).all()


def test_a_fold_corpus_of_composites_carries_no_pixel_of_the_held_out_source(tmp_path: Path) -> None:
    src = make_shared_sources(tmp_path / "src")
    held = frozenset({ETOILES})
    bank = load_cutouts(src, grabcut=False, exclude=held)
    stills = inpainted_stills(src, held)
    assert stills == [] and all(c.source != ETOILES for cuts in bank.values() for c in cuts)
    root = tmp_path / "corpus"
    assert write_corpus(root, composite_jobs(bank, stills, 12, seed=1), 12) == 12
    samples = load_split(root, "train")
    assert len(samples) == 12 and load_split(root, "val") == []
    rows = read_manifest(root)
    assert all(r.source.startswith(SYNTHETIC_PREFIX) for r in rows), "the trainer treats them as generated"
    assert not any(ETOILES in r.source_group for r in rows), "no composite used a still or cut-out of the fold"
    assert sum(len(s.boxes) for s in samples) == sum(r.n_boxes for r in rows) > 0
    assert all(((s.boxes[:, 1:] >= 0) & (s.boxes[:, 1:] <= 1)).all() for s in samples)
