"""The scene generator: deterministic, labels sane, all classes produced, corpus layout right."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from tools.corpus import CLASSES, class_counts, merge_corpora, read_manifest
from tools.corpus import main as corpus_main
from tools.scenegen.camera import fisheye
from tools.scenegen.cutouts import CutoutBank
from tools.scenegen.generate import LICENCE_CUTOUTS, generate
from tools.scenegen.scene import SceneConfig, render_scene
from tools.scenegen.sprite import Sprite


def _files(root: Path, kind: str) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((root / kind).glob("*/*"))}


def test_same_seed_gives_identical_labels_and_images(tmp_path: Path) -> None:
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    for out, seed in ((a, 5), (b, 5), (c, 6)):
        generate(out, 6, seed, 0.3, CutoutBank.empty(), progress=False)
    assert _files(a, "labels") == _files(b, "labels")
    assert _files(a, "images") == _files(b, "images")
    assert (a / "manifest.csv").read_bytes() == (b / "manifest.csv").read_bytes()
    assert list(_files(a, "images").values()) != list(_files(c, "images").values())


def test_labels_are_sane_and_cover_every_class() -> None:
    seen: set[int] = set()
    for i in range(60):
        scene = render_scene(np.random.default_rng([11, i]), CutoutBank.empty())
        h, w = scene.image.shape[:2]
        assert (w, h) == (640, 480)
        for b in scene.boxes:
            assert 0 <= b.x1 < b.x2 <= w and 0 <= b.y1 < b.y2 <= h
            assert b.x2 - b.x1 >= 2 and b.y2 - b.y1 >= 2
            seen.add(b.cls)
    assert seen == set(range(len(CLASSES)))


def test_fisheye_moves_the_instance_map_with_the_image() -> None:
    img = np.zeros((480, 640, 3), np.uint8)
    ids = np.zeros((480, 640), np.uint8)
    img[20:80, 20:120] = 255  # an object near the corner, where the warp is strongest
    ids[20:80, 20:120] = 1
    out, out_ids = fisheye(img, ids, 1.0)
    bright = out[:, :, 0] > 128
    assert out_ids.any()
    # Every labelled pixel is bright and (almost) every bright pixel is labelled.
    assert bright[out_ids == 1].mean() > 0.95
    assert (out_ids[bright] == 1).mean() > 0.9


def test_cutouts_are_used_and_marked_in_the_licence(tmp_path: Path) -> None:
    bgra = np.zeros((120, 80, 4), np.uint8)
    bgra[10:110, 10:70] = (40, 200, 40, 255)
    bank = CutoutBank()
    for split in ("train", "val"):
        bank.by_split[split] = {cls: [Sprite(bgra, cls)] for cls in range(len(CLASSES)) if cls != 3}
    bank.by_split["val"] = {cls: [Sprite(bgra, cls, "photo/val-only")] for cls in range(len(CLASSES)) if cls != 3}
    generate(tmp_path, 20, 3, 0.2, bank, SceneConfig(cutout=1.0, solid=0.0), progress=False)
    rows = read_manifest(tmp_path)
    with_cuts = {r.file for r in rows if r.licence == LICENCE_CUTOUTS}
    assert with_cuts
    with (tmp_path / "cutouts.csv").open() as f:
        origins = list(csv.DictReader(f))
    assert {o["file"] for o in origins} == with_cuts
    split_of = {r.file: r.split for r in rows}
    # A cut-out from a val photo only ever lands in val scenes.
    assert all(split_of[o["file"]] == "val" for o in origins if o["cutout_source_group"] == "photo/val-only")


def test_merge_unions_manifests(tmp_path: Path) -> None:
    generate(tmp_path / "a", 3, 1, 0.0, CutoutBank.empty(), progress=False)
    generate(tmp_path / "b", 3, 2, 0.0, CutoutBank.empty(), progress=False)
    rows = merge_corpora(tmp_path / "m", [tmp_path / "a", tmp_path / "b"])
    assert len(rows) == 6 == len(read_manifest(tmp_path / "m"))
    assert class_counts(tmp_path / "m")["train"]["images"] == 6
    # The same from the command line, as the model card's recipe runs it.
    assert corpus_main(["merge", str(tmp_path / "c"), str(tmp_path / "a"), str(tmp_path / "b")]) == 0
    assert {r.file for r in read_manifest(tmp_path / "c")} == {r.file for r in rows}


def test_demo_clip_timeline_and_readback(tmp_path: Path) -> None:
    import json

    import cv2

    from tools.scenegen.clip import write_clip

    out = tmp_path / "demo_clip.mp4"
    truth = write_clip(out, seed=7, subject="ebike")
    assert out.stat().st_size < 3_000_000
    cap = cv2.VideoCapture(str(out))
    ok, frame = cap.read()
    cap.release()
    assert ok and frame.shape == (480, 640, 3)
    sidecar = json.loads(out.with_suffix(".json").read_text())
    assert sidecar["fully_in_view_frame"] == truth["fully_in_view_frame"]
    # Enters at ~2 s, fully in by ~3 s, gone by ~9 s (10 fps).
    assert 18 <= sidecar["first_in_view_frame"] <= 22
    assert 25 <= sidecar["fully_in_view_frame"] <= 32
    assert 80 <= sidecar["last_in_view_frame"] <= 90
    for rec in sidecar["per_frame"]:
        for b in rec["boxes"]:
            x1, y1, x2, y2 = b["xyxy"]
            assert 0 <= x1 < x2 <= 640 and 0 <= y1 < y2 <= 480


def test_a_bicycle_clip_is_pushed_in_and_backs_out_like_an_ebike() -> None:
    from tools.scenegen.clip import render_clip

    frames, truth = render_clip(201, "bicycle")
    assert len(frames) == 100 and truth["subject"] == "bicycle"
    assert 18 <= truth["first_in_view_frame"] <= 22  # type: ignore[operator]
    labelled = {b["class"] for rec in truth["per_frame"] for b in rec["boxes"]}  # type: ignore[attr-defined]
    assert labelled == {"bicycle", "person"}


def test_grabcut_separates_an_object_from_its_background() -> None:
    from tools.scenegen.cutouts import _grabcut_alpha

    rng = np.random.default_rng(0)
    crop = np.clip(rng.normal(200, 8, (100, 80, 3)), 0, 255).astype(np.uint8)
    crop[20:85, 25:55] = (30, 40, 160)  # the object, inside the rect below
    alpha = _grabcut_alpha(crop, (10, 10, 60, 85))
    assert alpha is not None
    assert alpha[50, 40] > 200 and alpha[15, 15] < 50 and alpha[50, 65] < 50


def test_cli_images_and_merge(tmp_path: Path) -> None:
    from tools.scenegen.cli import main

    assert main(["images", "--out", str(tmp_path / "g"), "--n", "4", "--seed", "9", "--no-cutouts"]) == 0
    assert main(["merge", "--out", str(tmp_path / "m"), str(tmp_path / "g")]) == 0
    rows = read_manifest(tmp_path / "m")
    assert len(rows) == 4 and {r.source for r in rows} == {"scenegen"}
    assert (tmp_path / "m" / "data.yaml").exists()
