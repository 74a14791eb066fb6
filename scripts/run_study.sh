#!/usr/bin/env bash
# The shipped data-size study: `encvit study data-size` with its datasets and patch learning rates, JOBS runs at a
# time, each in its own process with one share of the cores (resumes in OUT when run again).
#   usage: bash scripts/run_study.sh [OUT]        (default runs/study)
#   env: JOBS (default: the CPU cores), PATCH_LRS, STUDY_ARGS (more options, e.g. "--epochs 1"), and the sizes and
#        seeds of `encvit study` (ENCVIT_STUDY_SIZES, ENCVIT_STUDY_SEEDS)
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck disable=SC2086  # ENCVIT and STUDY_ARGS are split into words on purpose
exec ${ENCVIT:-.venv/bin/encvit} study data-size --datasets fashion5k,mnist5k --patch-lrs "${PATCH_LRS:-1e-3,3e-3,3e-2}" \
  --jobs "${JOBS:-$(nproc)}" --out "${1:-runs/study}" ${STUDY_ARGS:-}
