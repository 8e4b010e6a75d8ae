#!/usr/bin/env bash
# The shipped model's whole recipe on an ordinary machine (2 CPU cores is enough), from the shared
# datasets to a scored ONNX file, in one seeded command:
#
#   scripts/train_cpu.sh SHARED_DATASETS WORK_DIR [VERSION] [extra tools.train args]
#
#   1. tools.dataset_builder: the real photos, split by source group, 5 grouped folds of the elevator photos
#   2. tools.scenegen images: 6,000 generated elevator scenes (seed 2) with real cut-outs
#   3. tools.scenegen merge:  one corpus (WORK_DIR/corpus)
#   4. tools.train:           head + backbone stages 6-7 on cached features (model 0.4.0's recipe)
#   5. tools.export:          WORK_DIR/run/liftguard-det.onnx, e-bike threshold 0.40 (see the model card)
#   6. liftguard eval:        real val photos and generated val scenes, scored separately
#   7. with CV=1, tools.crossval: the elevator photos, 5 folds, none scored by a model that saw it
#
# Every step is skipped when its output exists, so a stopped run resumes. The data never enters the
# project tree: WORK_DIR must lie outside it. Sizes can be shrunk for a smoke run (the tests do):
# SCENES (6000), EPOCHS (10), MAX_TRAIN (0 = all), EBIKE_THRESHOLD (0.4), GRABCUT (1; 0 = soft
# rectangular cut-outs, a faster start).
# On 2 shared cores: 20-25 min for the backbone pass over 14,087 views (24 min measured for 0.6.0's CPU
# step), ~50 min of training (10 epochs, measured for 0.4.0); the corpus steps come first.
set -euo pipefail
shared=$1; work=$2; version=${3:-0.4.0-local}
py=${PYTHON:-python3}
scenes=${SCENES:-6000}; epochs=${EPOCHS:-10}; max_train=${MAX_TRAIN:-0}; thr=${EBIKE_THRESHOLD:-0.4}
cut=(--cutouts "$shared"); [ "${GRABCUT:-1}" = 0 ] && cut+=(--no-grabcut)
work=$(realpath -m "$work")
case "$work/" in "$(git rev-parse --show-toplevel 2>/dev/null || echo /nonexistent)"/*)
    echo "WORK_DIR must be outside the project: the datasets' licences forbid committing them" >&2; exit 2;; esac
mkdir -p "$work"
step() { echo "== $(date +%H:%M:%S) $*"; }

if [ ! -f "$work/real/manifest.csv" ]; then
    step "building the real corpus from $shared"
    "$py" -m tools.dataset_builder --src "$shared" --out "$work/real" --folds 5
fi
if [ ! -f "$work/scenes/manifest.csv" ]; then
    step "generating $scenes elevator scenes (seed 2)"
    "$py" -m tools.scenegen images --out "$work/scenes" --n "$scenes" --seed 2 "${cut[@]}"
fi
if [ ! -f "$work/corpus/manifest.csv" ]; then
    step "merging"
    "$py" -m tools.scenegen merge --out "$work/corpus" "$work/real" "$work/scenes"
fi
if [ ! -f "$work/run/model.pt" ]; then
    step "training ($epochs epochs)"
    "$py" -m tools.train --data "$work/corpus" --out "$work/run" --seed 0 --copies 2 --ebike-extra 4 \
        --synthetic-copies 1 --epochs "$epochs" --max-train "$max_train" --tune-tail --ebike-weight 3 \
        --feature-store "$work/featstore" --version "$version" "${@:4}"
fi
step "exporting (e-bike threshold $thr)"
"$py" -m tools.export --run "$work/run" --out "$work/run/liftguard-det.onnx" --threshold "ebike=$thr"
"$py" -m tools.valsets --data "$work/corpus" --out "$work/valsets"
for subset in val_real val_synth; do
    if [ -n "$(ls -A "$work/valsets/$subset/images" 2>/dev/null)" ]; then
        step "scoring $subset"
        "$py" -m tools.evaluate --model "$work/run/liftguard-det.onnx" --images "$work/valsets/$subset/images" \
            --labels "$work/valsets/$subset/labels" --names "$work/corpus/data.yaml" --out "$work/run/eval_$subset"
    fi
done
if [ "${CV:-0}" = 1 ]; then
    step "cross-validating the real elevator photos"
    "$py" -m tools.crossval --run "$work/run" --out "$work/run/cv_real" --epochs 5 --max-views 4000
fi
step "done: $work/run/liftguard-det.onnx; scores in $work/run/eval_*/metrics.json"
