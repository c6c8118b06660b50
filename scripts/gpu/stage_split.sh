#!/usr/bin/env bash
# A file larger than one device call may carry (64 MiB with the tree) travels in parts, one per call, and is
# joined and checked on the GPU host, where files outside the copied tree stay while the machine is warm.
#   here:        bash scripts/gpu/stage_split.sh split FILE NAME DIR...
#                  -> one part per DIR (DIR_1/NAME.part-aa, DIR_2/NAME.part-ab, ...), equal sizes, and beside
#                     each NAME.sha256 (FILE's) and NAME.parts (how many)
#   on the GPU:  bash scripts/gpu/stage_split.sh put DIR     -> DIR's parts and their files copied to $STAGE
#                bash scripts/gpu/stage_split.sh join NAME   -> $STAGE/NAME from all its parts, checked by sha256
# STAGE defaults to /root/stage. The DIRs live under .stage/ (ignored by git) and are named in the call's `carry`.
set -euo pipefail
STAGE=${STAGE:-/root/stage}
case "${1:-}" in
  split)
    src=$2 name=$3; shift 3
    dirs=("$@") n=$# size=$(stat -c %s "$src")
    tmp=$(mktemp -d) && trap 'rm -rf "$tmp"' EXIT
    split -a 2 -b $(( (size + n - 1) / n )) "$src" "$tmp/$name.part-"
    sum=$(sha256sum "$src" | cut -d' ' -f1)
    parts=("$tmp/$name".part-??)
    [ ${#parts[@]} -eq "$n" ] || { echo "split gave ${#parts[@]} parts, not $n" >&2; exit 2; }
    for i in "${!parts[@]}"; do
      d=${dirs[$i]}
      mkdir -p "$d" && mv "${parts[$i]}" "$d/" && echo "$sum" > "$d/$name.sha256" && echo "$n" > "$d/$name.parts"
    done
    ls -l "$@" ;;
  put)
    mkdir -p "$STAGE" && for f in "$2"/*.part-?? "$2"/*.sha256 "$2"/*.parts; do cp "$f" "$STAGE"/; done
    ls -l "$STAGE" ;;
  join)
    cd "$STAGE"
    [ -f "$2.sha256" ] && [ -f "$2.parts" ] || { echo "$2: no parts here" >&2; exit 3; }
    name=$2 want=$(cat "$2.sha256") n=$(cat "$2.parts")
    if [ -f "$name" ] && echo "$want  $name" | sha256sum -c --quiet 2>/dev/null; then echo "$name: joined already"; exit 0; fi
    parts=("$name".part-??)
    [ -e "${parts[0]}" ] || parts=()
    [ ${#parts[@]} -eq "$n" ] || { echo "$name: ${#parts[@]} of $n parts here" >&2; exit 3; }
    cat "${parts[@]}" > "$name.tmp"
    if echo "$want  $name.tmp" | sha256sum -c --quiet; then mv "$name.tmp" "$name" && echo "$name: OK"
    else rm -f "$name.tmp"; echo "$name: sha256 mismatch" >&2; exit 1; fi ;;
  *)
    echo "usage: stage_split.sh split FILE NAME DIR... | put DIR | join NAME" >&2; exit 2 ;;
esac
