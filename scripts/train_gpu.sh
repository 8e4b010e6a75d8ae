#!/usr/bin/env bash
# Train the default detector on a machine with a GPU: the real corpus plus fresh procedural elevator
# scenes from the data engine, every layer trained, and the real elevator photos' 5 cross-validation
# folds trained alongside on the same batches (tools/train_full.py says how).
#
#   scripts/train_gpu.sh REAL_CORPUS OUT_DIR [MINUTES] [SCENES] [extra tools.train_full args]
#
# The recipe of model 0.5.0 (models/MODEL_CARD.md): MINUTES=7.5, SCENES=12800 on one H200.
# Scenes come in 16 seeded shards (seeds 100-115) whatever the core count, so a run is repeatable.
set -euo pipefail
real=$1; out=$2; minutes=${3:-7.5}; scenes=${4:-12800}
py=${PYTHON:-python3}
shards=16
per=$(( (scenes + shards - 1) / shards ))
mkdir -p "$out/gen"
echo "scenegen: $((per * shards)) scenes in $shards shards on $(nproc) cores"
t0=$(date +%s)
seq 0 $((shards - 1)) | xargs -P "$(nproc)" -I{} sh -c \
    "\"$py\" -m tools.scenegen images --out \"$out/gen/s{}\" --n $per --seed \$((100 + {})) --val-fraction 0 \
     --no-cutouts >\"$out/gen/s{}.log\" 2>&1 || { tail -5 \"$out/gen/s{}.log\"; exit 255; }"
echo "scenegen: done in $(( $(date +%s) - t0 )) s"
data=(--data "$real")
for k in $(seq 0 $((shards - 1))); do data+=(--data "$out/gen/s$k"); done
"$py" -m tools.train_full "${data[@]}" --out "$out/run" --minutes "$minutes" \
    --cv-source etoiles-elevator-ebike --compact-folds "${@:5}"
