"""Training smoke run on a tiny generated corpus, plus the pieces it is built from."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.tools.synthcorpus import train_tiny
from tools.augment import augment, letterbox, letterbox_params
from tools.features import GRID_H, GRID_W, build_targets
from tools.metrics import Det
from tools.model import CLASSES, P4_LAST_BLOCK, EfficientNetLite0, LiftGuardDetector, compact_state
from tools.train import focal_loss, load_init, parse_args, validation_report


def test_pretrained_backbone_loads_with_strict_keys() -> None:
    net = EfficientNetLite0()
    net.load_pretrained()  # raises on any missing or unexpected key
    p4, p5 = net.eval().features(torch.zeros(1, 3, 256, 320))
    assert p4.shape == (1, 112, 16, 20)
    assert p5.shape == (1, 320, 8, 10)


def test_letterbox_of_a_vga_frame_matches_the_model_format() -> None:
    assert letterbox_params(640, 480) == (0.5, 0, 8)
    img, boxes = letterbox(np.zeros((480, 640, 3), np.uint8), np.array([[0, 100, 100, 300, 200]], np.float32))
    assert img.shape == (256, 320, 3)
    assert (img[:8] == 114).all() and (img[8:248] == 0).all()
    np.testing.assert_allclose(boxes[0, 1:], [50, 58, 150, 108])


def test_augmented_boxes_stay_inside_the_input() -> None:
    rng = np.random.default_rng(0)
    src = np.array([[0, 10, 20, 200, 150], [2, 300, 100, 620, 470]], np.float32)
    for _ in range(50):
        img, boxes = augment(np.full((480, 640, 3), 90, np.uint8), src, rng)
        assert img.shape == (256, 320, 3)
        assert (boxes[:, [1, 3]] >= 0).all() and (boxes[:, [1, 3]] <= 320).all()
        assert (boxes[:, [2, 4]] >= 0).all() and (boxes[:, [2, 4]] <= 256).all()
        assert (boxes[:, 3] > boxes[:, 1]).all() and (boxes[:, 4] > boxes[:, 2]).all()


def test_targets_peak_at_the_box_centre_cell() -> None:
    heat, reg = build_targets(np.array([[2, 100, 40, 164, 104]], np.float32))  # centre (132, 72) px
    assert heat.shape == (6, GRID_H, GRID_W)
    assert heat[2, 4, 8] == 1.0 and heat[2].sum() > 1.0 and heat[0].max() == 0
    np.testing.assert_allclose(reg[:, 4, 8], [132 / 16 - 8, 72 / 16 - 4, np.log(4), np.log(4), 1.0], rtol=1e-5)


def test_ebike_weight_scales_only_the_missed_ebike_centres_term() -> None:
    heat, _ = build_targets(np.array([[0, 100, 40, 164, 104], [2, 200, 100, 264, 164]], np.float32))
    gt = torch.from_numpy(heat)[None]
    logits = torch.full_like(gt, -2.0)  # unsure everywhere: every centre and background cell costs something
    ebike = CLASSES.index("ebike")
    base = focal_loss(logits, gt)
    heavy = focal_loss(logits, gt, ebike_weight=3.0)
    # Only the e-bike centre's positive term grows, by (3 - 1) × its own cost; background terms are untouched.
    p = torch.sigmoid(torch.tensor(-2.0))
    ebike_centre_cost = -(torch.log(p) * (1 - p) ** 2) / 2  # normalised by the two object centres
    assert float(heavy - base) == pytest.approx(2 * float(ebike_centre_cost), rel=1e-5)
    no_ebike = gt.clone()
    no_ebike[:, ebike] = 0
    assert float(focal_loss(logits, no_ebike, ebike_weight=3.0)) == pytest.approx(float(focal_loss(logits, no_ebike)))


def test_ebike_threshold_spends_the_false_block_budget_on_protected_images_only() -> None:
    box = (10.0, 10.0, 50.0, 50.0)

    def image(cls: int | None, ebike_score: float) -> tuple[list[Det], np.ndarray]:
        truth = np.array([[cls, *box]], np.float32) if cls is not None else np.zeros((0, 5), np.float32)
        return [Det(box, ebike_score, "ebike")], truth

    wheelchair, person = CLASSES.index("wheelchair"), CLASSES.index("person")
    images = [image(CLASSES.index("ebike"), s) for s in (0.9, 0.6, 0.45, 0.3)]
    images += [image(wheelchair, 0.5)] + [image(person, 0.1)] * 99  # 1 of 100 protected images scores 0.5
    images += [image(None, 0.8)] * 20  # street scenes with nothing labelled score high: not in the budget
    report = validation_report([d for d, _ in images], [t for _, t in images], false_block_budget=0.015)
    # 0.2 would hold 1 % of protected images (≤ 1.5 %): the lowest threshold in range is kept.
    assert report["thresholds"]["ebike"] == pytest.approx(0.2)
    assert report["image_level"]["protected_false_block_rate"] == pytest.approx(0.01)
    assert report["image_level"]["n_protected"] == 100 and report["image_level"]["ebike_recall"] == 1.0
    strict = validation_report([d for d, _ in images], [t for _, t in images], false_block_budget=0.0)
    assert strict["thresholds"]["ebike"] == pytest.approx(0.505)  # just above the wheelchair's 0.5
    assert strict["image_level"]["ebike_recall"] == pytest.approx(0.5)  # 0.9 and 0.6 still caught


@pytest.mark.parametrize("flag", [["--ebike-weight", "0"], ["--ebike-weight", "50"], ["--false-block-budget", "0.5"]])
def test_out_of_range_training_numbers_are_refused_naming_the_range(
        flag: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parse_args(["--data", "d", "--out", "o", *flag])
    assert f"{flag[0]}: {flag[1]} is outside [" in capsys.readouterr().err


@pytest.mark.slow
def test_training_smoke_run_writes_a_model_and_learns(tmp_path: Path) -> None:
    _, out = train_tiny(tmp_path, n_train=16, n_val=4, epochs=4)
    for name in ("model.pt", "metrics.json", "loss_curve.png", "pr_val.png"):
        assert (out / name).is_file(), name
    metrics = json.loads((out / "metrics.json").read_text())
    history = metrics["history"]
    assert len(history) == 4 and history[-1]["train_loss"] < history[0]["train_loss"]
    assert set(metrics["thresholds"]) == {"ebike", "bicycle", "wheelchair", "stroller", "person", "cart"}
    assert "synthetic: 16" in metrics["trained_on"]


@pytest.mark.slow
def test_tuning_the_tail_changes_only_the_stride32_blocks_and_the_head(tmp_path: Path) -> None:
    _, out = train_tiny(tmp_path, 8, 2, 2, 4, "--tune-tail")
    ckpt = torch.load(out / "model.pt", map_location="cpu", weights_only=False)
    assert ckpt["tuned_tail"] is True
    imagenet = EfficientNetLite0()
    imagenet.load_pretrained()
    reference = {f"backbone.{k}": v for k, v in imagenet.state_dict().items()}
    first_tail = f"backbone._blocks.{P4_LAST_BLOCK + 1}."
    tail_keys = [k for k in reference if any(k.startswith(f"backbone._blocks.{i}.")
                                             for i in range(P4_LAST_BLOCK + 1, len(imagenet._blocks)))]
    stem_keys = [k for k in reference if k not in tail_keys]
    assert any(k.startswith(first_tail) for k in tail_keys)
    # The stride-16 stages produced the cached features, so they must be exactly the ImageNet ones...
    assert all(torch.equal(ckpt["state_dict"][k], reference[k]) for k in stem_keys)
    # ...while the tail's weights moved (its BatchNorm running statistics stay frozen).
    moved = [k for k in tail_keys if not torch.equal(ckpt["state_dict"][k], reference[k])]
    assert moved and all(not k.endswith(("running_mean", "running_var")) for k in moved)


@pytest.mark.slow
def test_init_starts_from_a_trained_detector_whose_features_never_mix_with_imagenet_ones(tmp_path: Path) -> None:
    # A "GPU-trained" detector: ImageNet weights with the frozen stem moved, saved compact like train_full does.
    trained = LiftGuardDetector()
    trained.backbone.load_pretrained()
    with torch.no_grad():
        trained.backbone._conv_stem.weight.add_(0.01)
    init = tmp_path / "gpu_model.pt"
    torch.save({"state_dict": compact_state(trained.state_dict()), "classes": CLASSES, "version": "9.9.9",
                "trained_on": "the GPU corpus"}, init)
    store = tmp_path / "store"
    _, out = train_tiny(tmp_path / "a", 4, 2, 1, 4, "--init", str(init), "--feature-store", str(store))
    ckpt = torch.load(out / "model.pt", map_location="cpu", weights_only=False)
    stem = "backbone._conv_stem.weight"
    # The frozen stem is the init's (to float16 precision), not ImageNet's, and the record says so.
    torch.testing.assert_close(ckpt["state_dict"][stem], trained.state_dict()[stem], atol=1e-3, rtol=0)
    assert ckpt["init"] == "9.9.9"
    assert "fine-tuned from detector 9.9.9, which was trained on: the GPU corpus" in ckpt["trained_on"]
    # The store now belongs to that backbone: an ImageNet run may not read or add features there.
    with pytest.raises(ValueError, match="holds features of backbone"):
        train_tiny(tmp_path / "b", 4, 2, 1, 4, "--feature-store", str(store))


def test_init_refuses_a_detector_with_other_classes(tmp_path: Path) -> None:
    init = tmp_path / "other.pt"
    torch.save({"state_dict": {}, "classes": ["car", "bus"]}, init)
    with pytest.raises(ValueError, match="classes"):
        load_init(LiftGuardDetector(), init)
