#!/usr/bin/env bash
# Issue 2 on a GPU: variants of `longreach demo` (the CPU demo's recipe) side by side, one process each, to choose
# a recipe in minutes rather than hours of the 2-core CPU. Both stages train in fp32 as on the CPU; the committed
# base's extension gave on an H200 exactly the CPU's NIAH (0.52 beyond L, every length equal, docs/LOG.md), so a
# GPU variant predicts its CPU run. The chosen recipe is still re-run with `make demo` on the CPU.
#   bash scripts/gpu/demo_sweep.sh OUT NAME:KEY=VALUE,KEY=VALUE ... NAME ...
# A variant with base.* fields first trains a base (`--stage base` with all its fields), then extends it with
# the same fields; one without extends the committed base (or base_model=FOLDER). NAME alone: the shipped recipe.
# Each variant writes OUT/NAME/{base.log,extend.log,summary.json}; OUT/NAME/.done when it ends.
set -uo pipefail
cd "$(dirname "$0")/../.."
out=$1; shift
mkdir -p "$out"
export PYTHONPATH="$PWD/src:/tmp/site${PYTHONPATH:+:$PYTHONPATH}" OMP_NUM_THREADS=${OMP_NUM_THREADS:-2} \
  HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
PY=${PY:-python3}
variant() {
  local name=${1%%:*} spec= sets=() kv d
  [[ $1 == *:* ]] && spec=${1#*:}
  d=$out/$name
  mkdir -p "$d"
  for kv in ${spec//,/ }; do sets+=(--set "$kv"); done
  if [[ ",$spec" == *",base."* ]]; then
    $PY -m longreach.cli demo --stage base --out "$d" ${sets[@]+"${sets[@]}"} > "$d/base.log" 2>&1 \
      || { echo "base failed" >> "$d/base.log"; touch "$d/.done"; return; }
    sets+=(--set "base_model=$d/base")
  fi
  $PY -m longreach.cli demo --out "$d/ext" ${sets[@]+"${sets[@]}"} > "$d/extend.log" 2>&1
  cp "$d/ext/summary.json" "$d/summary.json" 2>/dev/null
  touch "$d/.done"
}
for v in "$@"; do variant "$v" & done
wait
