"""``python -m tools.scenegen images|merge|clip|sheet`` — the data engine's command line."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import cv2

from tools.corpus import class_counts, merge_corpora

log = logging.getLogger("tools.scenegen")
DEFAULT_SRC = Path("../shared/datasets")


def _images(args: argparse.Namespace) -> None:
    from tools.scenegen.cutouts import CutoutBank, load_bank
    from tools.scenegen.generate import generate

    src: Path | None = None if args.no_cutouts else args.cutouts
    if src is not None and not src.is_dir():
        log.warning("cut-out source %s not found: procedural objects only", src)
        src = None
    bank = load_bank(src, args.val_fraction, grabcut=not args.no_grabcut) if src is not None else CutoutBank.empty()
    generate(args.out, args.n, args.seed, args.val_fraction, bank)
    log.info("%s", class_counts(args.out))


def _merge(args: argparse.Namespace) -> None:
    rows = merge_corpora(args.out, args.sources)
    log.info("merged %d images into %s: %s", len(rows), args.out, class_counts(args.out))


def _clip(args: argparse.Namespace) -> None:
    from tools.scenegen.clip import write_clip

    write_clip(args.out, args.seed, args.subject)


def _sheet(args: argparse.Namespace) -> None:
    from tools.scenegen.sheet import write_sheet

    write_sheet(args.out, args.seed)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.scenegen", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("images", help="generate a labelled YOLO corpus")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--n", type=int, required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--val-fraction", type=float, default=0.15)
    p.add_argument("--cutouts", type=Path, default=DEFAULT_SRC, help="shared datasets folder for real cut-outs")
    p.add_argument("--no-cutouts", action="store_true", help="procedural objects only (redistributable output)")
    p.add_argument("--no-grabcut", action="store_true", help="soft rectangular cut-outs (faster start-up)")
    p.set_defaults(func=_images)
    p = sub.add_parser("merge", help="merge corpora into one (union of manifests)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("sources", type=Path, nargs="+")
    p.set_defaults(func=_merge)
    p = sub.add_parser("clip", help="render a demo video with ground truth (procedural only)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--subject", choices=("ebike", "bicycle", "wheelchair", "stroller"), default="ebike")
    p.set_defaults(func=_clip)
    p = sub.add_parser("sheet", help="contact sheet of 16 procedural samples with boxes")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--seed", type=int, default=3)
    p.set_defaults(func=_sheet)
    args = parser.parse_args(argv)
    # One thread: the generator is run beside other jobs on small shared machines, and OpenCV's
    # thread pool buys little for 640x480 drawing.
    cv2.setNumThreads(1)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    args.func(args)
    return 0
