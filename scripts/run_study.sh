#!/usr/bin/env bash
# The full data-size study as the shipped one was run: one single-thread piece per dataset and seed, JOBS pieces
# at a time (one thread each beats two threads per run on 2 cores), then `encvit study merge`.
# Each piece resumes where it stopped if the script is run again.
#   usage: bash scripts/run_study.sh [OUT]        (default runs/study; pieces in OUT-parts/)
#   env: JOBS (2), ENCVIT_STUDY_SIZES, ENCVIT_STUDY_SEEDS, PATCH_LRS, STUDY_ARGS (more options, e.g. "--epochs 1")
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/study}
PARTS=$OUT-parts
JOBS=${JOBS:-2}
SIZES=${ENCVIT_STUDY_SIZES:-500,1000,2000,3600}
SEEDS=${ENCVIT_STUDY_SEEDS:-3}
PATCH_LRS=${PATCH_LRS:-1e-3,3e-3,3e-2}
STUDY_ARGS=${STUDY_ARGS:-}
ENCVIT=${ENCVIT:-.venv/bin/encvit}  # a command, split into words
mkdir -p "$PARTS"

pieces=()
for seed in $(seq 0 $((SEEDS - 1))); do
  for dataset in fashion5k mnist5k; do pieces+=("$dataset:$seed"); done
done

run_piece() {
  local dataset=${1%:*} seed=${1#*:}
  OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 ENCVIT_STUDY_SIZES=$SIZES ENCVIT_STUDY_SEEDS=1 $ENCVIT study data-size \
    --datasets "$dataset" --seed "$seed" --patch-lrs "$PATCH_LRS" --out "$PARTS/$dataset-seed$seed" $STUDY_ARGS \
    >> "$PARTS/$dataset-seed$seed.log" 2>&1
  echo "$(date -u +%FT%TZ) finished $1"
}
export -f run_piece
export SIZES PATCH_LRS STUDY_ARGS ENCVIT PARTS

start=$(date +%s)
printf '%s\n' "${pieces[@]}" | xargs -P "$JOBS" -I{} bash -c 'run_piece {}'
$ENCVIT study merge "$PARTS"/*-seed*/ --out "$OUT"
echo "wall time: $(( $(date +%s) - start )) s with $JOBS pieces at a time"
