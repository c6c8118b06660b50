#!/usr/bin/env bash
# Split the SmolLM2 GGUF (98 MB) into parts that fit one device call (64 MiB carried per call).
# Run here:   bash scripts/gpu/stage_gguf.sh            -> .stage/gguf/part-aa, part-ab, SHA256
# On the GPU: bash scripts/gpu/stage_gguf.sh put PART   -> appends nothing; copies PART to /root/stage
#             bash scripts/gpu/stage_gguf.sh join       -> /root/stage/smollm2.gguf, checked by sha256
# .stage/ is ignored by git (.git/info/exclude) and named in the device call's `carry`.
set -euo pipefail
cmd=${1:-split}
case "$cmd" in
  split)
    src=$(.venv/bin/python -c "from longreach import assets; print(assets.smollm2_gguf())")
    mkdir -p .stage/gguf-a .stage/gguf-b
    sha256sum "$src" | cut -d' ' -f1 > .stage/SHA256
    half=$(( ($(stat -c %s "$src") + 1) / 2 ))
    head -c "$half" "$src" > .stage/gguf-a/part-aa
    tail -c +"$((half + 1))" "$src" > .stage/gguf-b/part-ab
    cp .stage/SHA256 .stage/gguf-a/ && cp .stage/SHA256 .stage/gguf-b/
    ls -l .stage/gguf-a .stage/gguf-b ;;
  put)
    mkdir -p /root/stage && cp "$2"/part-* /root/stage/ && cp "$2"/SHA256 /root/stage/ && ls -l /root/stage ;;
  join)
    cd /root/stage
    [ -f smollm2.gguf ] && echo "$(cat SHA256)  smollm2.gguf" | sha256sum -c --quiet && { echo "joined already"; exit 0; }
    cat part-aa part-ab > smollm2.gguf
    echo "$(cat SHA256)  smollm2.gguf" | sha256sum -c ;;
esac
