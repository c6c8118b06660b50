#!/usr/bin/env bash
# Every RoPE scheme applied to one model without training, then the perplexity of each by position on one long
# text: which extension keeps the model, before any continued pretraining (docs/RESULTS.md session 8).
#   MODEL=/path/smollm2.gguf TEXT=/path/PaulGrahamEssays TARGET=16384 BASE=1e6 OUT=/tmp/tf \
#     bash scripts/cpu/training_free_schemes.sh
# BASE: one more theta row at this base (beside the bound's), e.g. 1e6 = SmolLM2's 1e5 x 10.
# TARGET: the window to reach (sequences of that many tokens are scored, one by default: SEQUENCES). On the dev
# CPU (2 cores) SmolLM2-135M at 16K took 19 min for the 7 models. Outputs: OUT/m-SCHEME (the extended models,
# ~0.5 GB each in fp32) and OUT/ppl/results.json + ppl.png.
set -euo pipefail
: "${MODEL:?the model to extend (HF folder or .gguf)}" "${TEXT:?held-out text, file or folder}"
TARGET=${TARGET:-16384} OUT=${OUT:-/tmp/training-free} SEQUENCES=${SEQUENCES:-1}
LR=${LR:-longreach}
mkdir -p "$OUT"
models=("$MODEL")
while read -r name flags; do
  [ -n "$name" ] || continue
  # shellcheck disable=SC2086  # flags are words
  $LR extend --model "$MODEL" --out "$OUT/m-$name" --target-len "$TARGET" --dtype fp32 $flags \
    > "$OUT/m-$name.log" 2>&1 < /dev/null || { echo "extend $name failed: see $OUT/m-$name.log" >&2; exit 1; }
  models+=("$OUT/m-$name")
done <<SCHEMES
${BASE:+theta-$BASE --scheme theta --base $BASE}
theta-bound --scheme theta
pi --scheme pi
ntk --scheme ntk
yarn --scheme yarn
llama3 --scheme llama3
SCHEMES
args=()
for m in "${models[@]}"; do args+=(--model "$m"); done
$LR eval ppl "${args[@]}" --text "$TEXT" --length "$TARGET" --sequences "$SEQUENCES" --buckets 8 --out "$OUT/ppl"
