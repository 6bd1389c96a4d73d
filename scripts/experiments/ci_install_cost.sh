#!/usr/bin/env bash
# What TensorFlow cost this project's CI: `.ci/run` on two clean clones of
# one commit, one after the other, without TensorFlow (as the project is)
# and with it (pyproject.toml plus the `tensorflow-cpu` line the project had
# before it dropped TensorFlow). No pip cache, so both download everything.
# Prints one line per variant: exit code, wall seconds, site-packages MB,
# the TensorFlow version installed and pytest's last line.
#
#   bash scripts/experiments/ci_install_cost.sh [REV]   # default: HEAD; ~1 hour here
set -u
repo=$(cd "$(dirname "$0")/../.." && pwd)
rev=${1:-$(git -C "$repo" rev-parse HEAD)}
out=${OUT_DIR:-/tmp/ci_install_cost}
mkdir -p "$out"
export PIP_NO_CACHE_DIR=1
unset DIGITS_JAX_TEST_DATA_DIR
for variant in without_tf with_tf; do
  dir=$out/$variant
  rm -rf "$dir" && git clone -q "$repo" "$dir" && git -C "$dir" checkout -q "$rev"
  if [ $variant = with_tf ]; then
    sed -i 's|  "importlib_resources>=6",|  "tensorflow-cpu>=2.21; sys_platform == '"'"'linux'"'"' and platform_machine == '"'"'x86_64'"'"'",\n  "importlib_resources>=6",|' "$dir/pyproject.toml"
  fi
  start=$(date +%s)
  (cd "$dir" && bash .ci/run) > "$out/$variant.log" 2>&1
  rc=$?
  end=$(date +%s)
  site=$(du -sm "$dir"/.ci-venv/lib/python*/site-packages | cut -f1)
  tf=$("$dir/.ci-venv/bin/python" -c "import importlib.metadata as m; print(m.version('tensorflow-cpu'))" 2>/dev/null || echo none)
  echo "$variant rev=$rev rc=$rc wall_s=$((end-start)) site_packages_MB=$site tensorflow=$tf $(tail -1 "$out/$variant.log")"
done
