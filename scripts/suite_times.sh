#!/usr/bin/env bash
# The test suite's wall times as the README states them: a clean clone of
# HEAD (so a cold compilation cache and MNIST prepared afresh), the whole
# suite, then the quick tier cold in a second clean clone and again warm.
# Uses the current Python environment (activate the project's venv first).
#
#   bash scripts/suite_times.sh            # about 20 minutes on 2 cores
#   bash scripts/suite_times.sh --quick    # the quick tier only
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
SCRATCH="$(mktemp -d)"
trap 'rm -rf "$SCRATCH"' EXIT
unset DIGITS_JAX_TEST_DATA_DIR JAX_COMPILATION_CACHE_DIR

timed() {  # timed LABEL DIR PYTEST_ARGS...: one line with the wall time.
  local label="$1" dir="$2"; shift 2
  local start end
  start=$(date +%s)
  (cd "$dir" && python -m pytest -q "$@" > "$SCRATCH/$label.log" 2>&1) || {
    tail -20 "$SCRATCH/$label.log"; echo "$label: FAILED"; exit 1; }
  end=$(date +%s)
  printf '%-22s %4d s  %s\n' "$label" $((end - start)) \
    "$(grep -E '^[0-9]+ passed' "$SCRATCH/$label.log" | tail -1)"
}

echo "$(nproc) cores: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2)"
if [[ "${1:-}" != --quick ]]; then
  git clone -q "$ROOT" "$SCRATCH/full"
  timed whole_suite_cold "$SCRATCH/full" -n 2
fi
git clone -q "$ROOT" "$SCRATCH/quick"
timed quick_tier_cold "$SCRATCH/quick" -n 2 -m 'not slow'
timed quick_tier_warm "$SCRATCH/quick" -n 2 -m 'not slow'
