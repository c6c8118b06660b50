#!/usr/bin/env bash
# Issue 4's milestone B (8K -> 32K -> 128K) as one chain, after `smollm2_pipeline.sh setup stage-a` and
# `stage-b corpus` (the GGUF joined and the corpus unpacked in /root/stage). Started in its own process session,
# the chain outlives the device call, so the GPU never waits between calls; run it from a copy of the repository
# (a later call re-copies the tree under a running chain):
#   rm -rf /root/rB && mkdir /root/rB && cp -r src scripts configs /root/rB && cd /root/rB &&
#   (setsid nohup bash scripts/gpu/milestone_b.sh > /root/outB.txt 2>&1 < /dev/null &)
# and later calls `bash scripts/gpu/collect.sh 540 /root/outB/.done /root/work/eval ...`.
# Its logs go to MB_OUT (default /root/outB), never to the call's $OUT, which is emptied before each call.
#
# SFT_RECIPES: the 128K SFT runs, "CONFIG[:STEPS]" each (STEPS absent: the config's one pass), all from the same
# 128K continued-pretraining model; run i trains on GPU i mod NGPU (more recipes than GPUs share them; the
# perplexity of the model they start from runs beside them on its GPU). Outputs are named after the config.
# NGPU=2: the 32K stage runs FSDP2 data parallel (2 GPUs x 2 micro-batches = the config's 4 x 32K per step, the
# same sequences in the same steps) and the 128K stage context parallel (one 128K sequence split over 2 GPUs);
# then each GPU trains one SFT recipe.
# Steps, all longreach's own commands (docs/RESULTS.md, milestone B):
#   CPU, beside the 32K training: the corpus packed at 128K (per variant); each recipe's SFT data
#   GPU: prepare32 extend train32 (milestone A's recipe) -> per variant: extend128 (base 1e9, ROPE_BASE128 of
#        smollm2_pipeline.sh, or the variant's extend flags) -> train128 -> per recipe: long-context SFT at
#        128K, one sequence per step, stopped early (the STOP file: the step in progress is saved) after step
#        SFT_STOP (0: never) or SFT_DEADLINE_S seconds after the chain started (0: never) -> NIAH 1K-128K of
#        its last checkpoint (and again with an unseen needle in an unseen haystack: UNSEEN_HAYSTACK) ->
#        perplexity: short essays (retention) and by position over 128K, and again with at most PPL_CONTEXT
#        tokens of context (the control) -> the attention probe (PROBE_LENGTHS) -> log-prob NIAH
#        (LOGPROB_LENGTHS) -> NIAH at sharper attention (ATTN_FACTORS, QUERY_LOG_SCALES).
#   Beside the SFT: NIAH of the 128K continued-pretraining model (EVAL_CPT=1), the perplexity of the original
#   and the continued-pretraining models, and the latter's attention probe (CPT_PPL=0 skips these two).
# EVAL32=1: NIAH of the 32K model (milestone A's grid, both scorings) beside the 128K stages.
# CPT128_SET: more `--set` for the 128K continued pretraining (e.g. "--set max_steps=90", session 6).
# ATTN_FACTORS="1.1 1.2": each final SFT model is also evaluated (NIAH) with sharper attention, by `longreach
# extend --attention-factor F` on it (a config change: RoPE's cos/sin x F, attention logits x F^2; no training).
# CPT128_VARIANTS="NAME[:PREPARE_ARGS[:EXTEND_ARGS[:TRAIN_ARGS]]];...": several 128K continued pretrainings side
# by side, each on NGPU / (number of variants) GPUs of its own (variant i on GPUs i*k .. i*k+k-1; at most NGPU
# variants; on k > 1 GPUs as CPT128_PARALLEL says), each on the corpus packed
# with its own `data prepare` flags, from the 32K model extended with its own `longreach extend` flags, and
# trained with its own `--set` flags after CPT128_SET's, the last flag given winning (the ablations:
# "sep;boseos:--sep-mode bos_eos", "b1e9;bound::--base 3.2e8" (the bound: the default of sessions 4-14),
# "theta;yarn::--scheme yarn", "t1;t12::--attention-factor 1.2"; a replicate with another data order:
# "b1e9s2:::--set seed=2"; training sequences longer than the 128K tested: "len160k:--seq-len 163840:--target-len
# 163840:--set max_steps=64"); every SFT recipe then trains from every variant, on its GPU.
# Outputs carry "-NAME" (smollm2-128k-base-NAME, cpt-128k-NAME, RECIPE-NAME, ...).
# VARIANT_RECIPES="NAME=RECIPES;...": the named variant trains these SFT recipes (SFT_RECIPES' form) instead of
# SFT_RECIPES, so two levers can share a hold (e.g. two 192K variants with the classic SFT, two 160K ones with
# another SFT). "NAME=" (nothing after it): that variant trains no SFT (its model only feeds CPT_SOUPS).
# CPT_SOUPS="NAME=VARIANT+VARIANT[+...];...": once the named variants' 128K stages have ended, their final
# checkpoints averaged (`longreach average`: a soup of data orders before the SFT, as Llama 3 averages checkpoints
# of its long-context annealing; stages that ended at different steps are not averaged) into
# $WORK/cpt-128k-NAME, and every SFT_RECIPES run trains from it on GPU j mod NGPU for soup j, its outputs named
# RECIPE-NAME like a variant's (SOUPS may name them). Session 27's plan: four orders, the soups of their pairs and
# of all four, each on the GPU of a variant given no SFT by VARIANT_RECIPES.
# SOUPS="NAME=RUN+RUN[+...];...": once the named SFT runs (RECIPE-VARIANT, e.g.
# smollm2-135m-128k-sft-replay-l160s1) have ended, their final checkpoints averaged (`longreach average`, a model
# soup of data orders; runs that ended at different steps are not averaged) into $WORK/soup-NAME, then its issue
# grid and perplexity (GPU j mod NGPU for soup j) and its grid in UNSEEN_HAYSTACK (GPU NGPU - 1 - j mod NGPU):
# eval/soup-NAME-generate, soup-NAME-unseen-generate, ppl128-*-soup-NAME. SFT_EXTRA=0 leaves out the SFT models'
# own grids beyond the issue's (UNSEEN_HAYSTACK, CROSS_GRIDS, SCRUB), e.g. to give the soups' grids the time.
# CPT128_PARALLEL: how a 128K stage uses k > 1 GPUs: "cp" (default) context parallel, one sequence split over
# them (the one-GPU recipe's tokens per step); "dp" data parallel (FSDP2), one sequence per GPU per step, so k
# times the tokens in the same steps and about the same time (the tokens lever; the stream sees the one-GPU
# run's sequences and those after them, epochs repeating the corpus in a new order). A variant's SFT recipes
# train on its GPUs in turn; the work beside them (EVAL_CPT, CPT_PPL) runs on its last GPU, and, when a variant
# has at least twice as many GPUs as recipes, each SFT model's grids in UNSEEN_HAYSTACK run on a GPU of its own
# that trains no SFT, beside its other grids.
# Measured: session 4 (one H200): SFT_RECIPES=configs/smollm2-135m-128k-sft.yaml:106 SFT_STOP=81 SFT_HALF=54;
# session 5 (2 x H200): NGPU=2 SFT_DEADLINE_S=1080 SFT_RECIPES="configs/smollm2-135m-128k-sft-replay.yaml:118
# configs/smollm2-135m-128k-sft-long.yaml" (the 128K model 7.4 min after the start; SFT steps 6.9-7.5 s, so the
# deadline stopped them at 89 and 82; both were resumed to the end afterwards: docs/LOG.md). With ~28 minutes
# of hold, SFT_DEADLINE_S=1300 lets ~115 SFT steps finish and leaves ~4 minutes for the evaluations.
# Session 6 (2 x H100): NGPU=2 SFT_RECIPES=configs/smollm2-135m-128k-sft-replay.yaml:72 SFT_DEADLINE_S=1380
# CPT128_VARIANTS="plain;folders:--join-files folder" CPT128_SET="--set max_steps=90": 128K stages start 3.2 min
# after the chain, 90 steps take 9.3 min (5.95 s each), the 72 SFT steps 7.9 min (6.0 s median), the evaluations
# 2.4 min: `.done` 22.9 minutes after the start. Session 7 (2 x H100), the same with CPT128_VARIANTS="t1;t12::
# --attention-factor 1.2" ATTN_FACTORS="1.1 1.2" ATTN_LENGTHS=64000,128000: `.done` 26.8 minutes after the start
# (each factor's NIAH at 2 lengths ~65 s). Session 8 (2 x H100), CPT128_VARIANTS="x300::--base 3e7;yarn::--scheme
# yarn", no factors: `.done` after 24 min. The corpus now travels in its own call (carry .stage/corpus: `corpus`),
# since the tree, the GGUF's second half and the corpus together pass 64 MiB; then carry .stage/gguf-b: `stage-b`.
# All-YaRN (8K -> 32K -> 128K): EXTEND_ARGS="--scheme yarn" for the 32K step and "--scheme yarn" as the variant's
# extend flags (YaRN on a YaRN model re-scales from the original 8K window: factor 16).
set -uo pipefail
cd "$(dirname "$0")/../.."
P=scripts/gpu/smollm2_pipeline.sh
O=${MB_OUT:-/root/outB}
W=${WORK:-/root/work}
RECIPES=${SFT_RECIPES:-configs/smollm2-135m-128k-sft-replay.yaml:118}
VARIANT_RECIPES=${VARIANT_RECIPES:-}
NGPU=${NGPU:-1}
SFT_STOP=${SFT_STOP:-0}
SFT_HALF=${SFT_HALF:-0}  # > 0: an interim NIAH of the first checkpoint at or after this step, beside the SFT
SFT_SAVE=${SFT_SAVE:-27}
SFT_TRAIN_SET=${SFT_TRAIN_SET:-}  # more `--set` for every 128K SFT. A variant whose training flags (CPT128_SET and
# its third field) make its 128K stage deterministic ("--set deterministic=true"; the last such flag wins) trains its
# SFTs with "--set train.deterministic=true" too, as does a CPT soup of such variants only: deterministic from the
# shared 32K model on (that stage is not), so two such variants of one seed in one hold should repeat each other
SFT_DEADLINE_S=${SFT_DEADLINE_S:-0}
EVAL_CPT=${EVAL_CPT:-0}
CPT_PPL=${CPT_PPL:-1}  # 0: no perplexity (nor probe) of the 128K continued-pretraining models beside the SFT
L128=${LENGTHS128:-1000,4000,8000,16000,32000,48000,64000,96000,128000}
ATTN_LENGTHS=${ATTN_LENGTHS:-$L128}
DEPTHS=${MB_DEPTHS:-0,11,22,33,44,56,67,78,89,100}
S=${STAGE:-/root/stage}
GGUF=${ORIG_MODEL:-$S/smollm2.gguf}
IFS=';' read -ra VARIANTS <<< "${CPT128_VARIANTS:-}"
[ ${#VARIANTS[@]} -gt 0 ] || VARIANTS=("")  # one 128K run, named as before
PY=${PY:-python3}
PPL_SHORT=${PPL_SHORT:-4096} PPL_LONG=${PPL_LONG:-131072}
PROBE_LENGTHS=${PROBE_LENGTHS-16000,64000,96000,128000}  # `eval attention` of each 128K and SFT model at these
# lengths (depths PROBE_DEPTHS): the retrieval heads' share of attention on the needle ("" skips it; < 1 min)
PROBE_DEPTHS=${PROBE_DEPTHS:-0,50,90}
UNSEEN_HAYSTACK=${UNSEEN_HAYSTACK:-}  # e.g. /root/stage/haystack/jargon-lexicon.txt (carried .stage/haystack, the
# `corpus` step): each final SFT model's NIAH again with a needle and a haystack it never saw (RING of needles.sh
# in that text; ~2 min on an H100), into eval/NAME-STEP-unseen-generate
CROSS_GRIDS=${CROSS_GRIDS:-0}  # 1 (with UNSEEN_HAYSTACK): also the two halves of the unseen grid, which of the
# needle and the haystack makes the difference: RING in the essays (eval/NAME-STEP-unseen-needle-generate) and
# the default needle in UNSEEN_HAYSTACK (eval/NAME-STEP-unseen-haystack-generate)
SCRUB=${SCRUB:-}  # e.g. "San Francisco|best thing": each final SFT model's issue grid again at SCRUB_LENGTHS, with the
# essays' sentences that match it left out (`eval niah --drop-sentences`), beside its grid in UNSEEN_HAYSTACK on the
# same GPU (eval/NAME-STEP-scrub-generate): do the essays themselves hold what draws the answer away?
SCRUB_LENGTHS=${SCRUB_LENGTHS:-96000,128000}
CPT128_PARALLEL=${CPT128_PARALLEL:-cp}
SOUPS=${SOUPS:-}
CPT_SOUPS=${CPT_SOUPS:-}
SFT_EXTRA=${SFT_EXTRA:-1}
LOGPROB_LENGTHS=${LOGPROB_LENGTHS:-}  # e.g. "32000,64000,96000,128000": NIAH scored by log-probability too
# (the answer against 5 distractors, each also a needle in the context), for each final SFT model
PPL_CONTEXT=${PPL_CONTEXT-4096}  # the by-position curves again with at most this many tokens of context per token
# (the same model on the same text: where the long curve rises above it, the long context hurts; "" skips it)
ATTN_FACTORS=${ATTN_FACTORS:-}  # e.g. "1.1 1.2": after each SFT's evaluations, NIAH at these attention factors
# (each at ATTN_LENGTHS, by default all of LENGTHS128: ~2 min on an H100; plan the SFT deadline for them)
QUERY_LOG_SCALES=${QUERY_LOG_SCALES:-}  # e.g. "65536:0.3 65536:0.6": the same with the query at position p
# x 1 + SCALE ln(floor((p+1)/FLOOR) + 1) (`longreach extend --query-log-scale`; the first FLOOR - 1 unchanged)
# A CPU smoke run at toy sizes (docs/LOG.md): SMOKE=1 SEQ32=1024 SEQ128=2048 STAGE=... WORK=... PY=python
# ORIG_MODEL=SRC_MODEL=<gguf> LENGTHS128=400,600 MB_DEPTHS=0,100 SFT_RECIPES="configs/smollm2-128k-sft-smoke.yaml:6"
# NGPU=2 SFT_SAVE=1 SFT_HALF=2 SFT_STOP=3 PPL_SHORT=256 PPL_LONG=1024 PPL_CONTEXT=256 PROBE_LENGTHS=400,600
# PROBE_DEPTHS=0,100 MB_OUT=... bash scripts/gpu/milestone_b.sh
. scripts/gpu/needles.sh  # RING
export WORK=$W PYTHONPATH="$PWD/src:/tmp/site" HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
mkdir -p "$O" "$W/eval"
t_start=$(date +%s)
LR() { $PY -m longreach.cli "$@"; }
niah_gen() {  # MODEL NAME [BATCH [LENGTHS [eval-niah flags...]]]: by default the default needle in the essays,
  # 9 lengths x 10 depths, greedy generation
  LR eval niah --model "$1" --out "$W/eval/$2-generate" --lengths "${4:-$L128}" --depths $DEPTHS \
    --mode generate --batch-size "${3:-8}" "${@:5}" > "$W/eval/$2-generate.log" 2>&1 \
    || echo "niah $2 failed" >> "$O/gpu.txt"
}
ppl() {  # NAME LENGTH SEQUENCES [BUCKETS] --model M...: perplexity of the essays (no model trained on them)
  local name=$1 len=$2 n=$3 b=$4; shift 4
  LR eval ppl "$@" --text "$essays" --length "$len" --sequences "$n" ${b:+--buckets $b} \
    --out "$W/eval/$name" > "$W/eval/$name.log" 2>&1 || echo "ppl $name failed" >> "$O/gpu.txt"
}
long_curves() {  # NAME MODEL: perplexity by position over PPL_LONG, and its PPL_CONTEXT control ("" skips it)
  ppl "ppl128-long-$1" "$PPL_LONG" 1 16 --model "$2"
  [ -z "$PPL_CONTEXT" ] || ppl "ppl128-long-ctx$PPL_CONTEXT-$1" "$PPL_LONG" 1 16 --model "$2" --context "$PPL_CONTEXT"
}
probe() {  # NAME MODEL: the attention probe at PROBE_LENGTHS x PROBE_DEPTHS into eval/NAME-attention ("" skips it)
  [ -z "$PROBE_LENGTHS" ] || LR eval attention --model "$2" --lengths "$PROBE_LENGTHS" --depths "$PROBE_DEPTHS" \
    --out "$W/eval/$1-attention" > "$W/eval/$1-attention.log" 2>&1 \
    || echo "attention probe of $1 failed" >> "$O/gpu.txt"
}
name_of() {  # CONFIG: the run's name (the session-4 run keeps its measured name)
  local t=${1##*/}; t=${t%.yaml}
  [ "$t" = smollm2-135m-128k-sft ] && t=sft128
  echo "$t"
}
latest() { ls -d "$1"/checkpoints/step-* 2>/dev/null | sort | tail -1; }  # RUN: its newest checkpoint, or ""
mark() { echo "$2" > "$1.tmp"; mv -f "$1.tmp" "$1"; }  # MARKER CHECKPOINT: written whole (a soup polls for it);
# moved in place whatever the write did (a full disk leaves it empty, and the soup gives up instead of waiting)
newest() {  # NAME: the newest SFT checkpoint's step, 0 before the first
  local m; m=$(latest "$W/$1/sft3")
  if [ -n "$m" ]; then echo $((10#${m##*-})); else echo 0; fi
}
ckpt() { echo "$W/$1/sft3/checkpoints/$(printf 'step-%06d' "$2")"; }  # NAME STEP

extra_grids() {  # MODEL NAME WHICH: the grids beyond the issue's, "hay": those in UNSEEN_HAYSTACK (RING there, and
  # with CROSS_GRIDS the default needle there) and, at the same time, the SCRUB grid; "needle": with CROSS_GRIDS,
  # RING in the essays
  if [ "$3" = hay ]; then
    local scrub=
    if [ -n "$SCRUB" ]; then
      niah_gen "$1" "$2-scrub" 16 "$SCRUB_LENGTHS" --drop-sentences "$SCRUB" & scrub=$!
    fi
    if [ -n "$UNSEEN_HAYSTACK" ]; then
      niah_gen "$1" "$2-unseen" 16 "$L128" "${RING[@]}" --haystack "$UNSEEN_HAYSTACK"
      [ "$CROSS_GRIDS" != 1 ] || niah_gen "$1" "$2-unseen-haystack" 16 "$L128" --haystack "$UNSEEN_HAYSTACK"
    fi
    [ -z "$scrub" ] || wait "$scrub"
  elif [ -n "$UNSEEN_HAYSTACK" ] && [ "$CROSS_GRIDS" = 1 ]; then
    niah_gen "$1" "$2-unseen-needle" 16 "$L128" "${RING[@]}"
  fi
}

sft_run() {  # CONFIG STEPS GPU SUFFIX [GPU2]: one 128K SFT (started once its data exist) from the continued
  # pretraining in $CPT128 (set by variant), its NIAH and perplexity; SUFFIX names its outputs; the extra grids
  # run on GPU2 (default: GPU) beside the issue's grid
  local C=$1 steps=$2 x=$4 g2=${5:-$3} T dn half= n m sft
  dn=$(name_of "$C"); T=$dn$x
  export CUDA_VISIBLE_DEVICES=$3
  until [ -e "$W/data-$dn/.done" ]; do  # its data; the job's exit marker without them: give up
    if [ -e "$O/cpu-$dn.exit" ] && [ ! -e "$W/data-$dn/.done" ]; then
      echo "no SFT data for $T (see $O/cpu-$dn.txt)" >> "$O/gpu.txt"; : > "$W/$T.final"; return
    fi
    sleep 5
  done
  local set="--set train.grad_accum=1 --set train.save_every=$SFT_SAVE $SFT_TRAIN_SET"
  [ -z "$steps" ] || set+=" --set stages.sft3.train.max_steps=$steps"
  SFT_CONFIG=$C SFT_DATA=$W/data-$dn SFT_FROM=$CPT128 SFT=$W/$T SFT_NAME=$T SFT_SET="$set" \
    OUT=$O/gpu-$T bash $P sft3 > "$O/gpu-$T.txt" 2>&1 &
  sft=$!
  local log=$W/$T/sft3/metrics.jsonl asked=
  local lines0; lines0=$(cat "$log" 2>/dev/null | wc -l)
  while kill -0 $sft 2>/dev/null; do  # the interim NIAH; the early stop (at a step, or by the hold's clock)
    n=$(newest "$T")
    if [ -z "$half" ] && [ "$SFT_HALF" -gt 0 ] && [ "$n" -ge "$SFT_HALF" ]; then
      half=$W/$T-$n; cp -r "$(ckpt "$T" "$n")" "$half" && niah_gen "$half" "$T-$n" &
    fi
    # the trainer's STOP file (train/loop.py), written once this run has logged a step (a file there before
    # its start is a stale one and removed): a step number ends it there; an empty file after the step in progress
    if [ "$(cat "$log" 2>/dev/null | wc -l)" -le "$lines0" ]; then sleep 5; continue; fi
    if [ -z "$asked" ] && [ "$SFT_STOP" -gt 0 ]; then
      echo "$SFT_STOP" > "$W/$T/sft3/STOP.tmp" && mv "$W/$T/sft3/STOP.tmp" "$W/$T/sft3/STOP"; asked=1
    fi
    if [ "$SFT_DEADLINE_S" -gt 0 ] && [ $(($(date +%s) - t_start)) -ge "$SFT_DEADLINE_S" ]; then
      echo "$T asked to stop at $(($(date +%s) - t_start)) s into the chain" >> "$O/gpu.txt"
      : > "$W/$T/sft3/STOP"; break
    fi
    sleep 5
  done
  wait
  m=$(latest "$W/$T/sft3")  # for SOUPS: its final checkpoint, or none
  mark "$W/$T.final" "$m"
  [ -n "$m" ] || return
  n=$((10#${m##*-}))
  echo "$T: NIAH and perplexity of step $n" >> "$O/gpu.txt"
  # the grids beside each other, on one GPU too, where they share it (a 135M model's prompts one at a time may
  # leave it idle at times; the gain is not measured: building a 128K prompt takes ~0.5 s of CPU, its cell ~3.7 s)
  [ "$SFT_EXTRA" = 0 ] || (CUDA_VISIBLE_DEVICES=$g2 extra_grids "$m" "$T-$n" hay) &
  niah_gen "$m" "$T-$n" 16
  [ "$SFT_EXTRA" = 0 ] || extra_grids "$m" "$T-$n" needle
  ppl "ppl128-short-$T-$n" "$PPL_SHORT" 8 "" --model "$m"
  long_curves "$T-$n" "$m"
  probe "$T-$n" "$m"
  [ -z "$LOGPROB_LENGTHS" ] || LR eval niah --model "$m" --out "$W/eval/$T-$n-logprob" --mode logprob \
    --lengths "$LOGPROB_LENGTHS" --depths $DEPTHS --batch-size 16 > "$W/eval/$T-$n-logprob.log" 2>&1 \
    || echo "logprob niah of $T failed" >> "$O/gpu.txt"
  cp "$W/$T.log" "$W/eval/" 2>/dev/null
  cp "$W/$T/sft3/metrics.jsonl" "$W/eval/$T-sft3-metrics.jsonl" 2>/dev/null
  local f a base win
  read -r base win < <($PY -c "import json, sys; c = json.load(open(sys.argv[1] + '/config.json'))
print(c['rope_theta'], c['max_position_embeddings'])" "$m")
  for f in $ATTN_FACTORS; do  # the same model with sharper attention (config only: logits x f^2), its NIAH
    sharper "$m" "$T-$n-attn$f" "$win" "$base" --attention-factor "$f"
  done
  for q in $QUERY_LOG_SCALES; do  # FLOOR:SCALE: queries sharpened by position (config only)
    sharper "$m" "$T-$n-qls${q/:/-}" "$win" "$base" --query-log-floor "${q%%:*}" --query-log-scale "${q#*:}"
  done
  wait  # the extra grids on GPU2
}
sharper() {  # MODEL NAME WINDOW BASE EXTEND_FLAGS...: the model with its attention sharpened by `longreach
  # extend` (same window and base, no training), then its NIAH at ATTN_LENGTHS
  local m=$1 name=$2 win=$3 base=$4 a=$W/$2; shift 4
  LR extend --model "$m" --target-len "$win" --base "$base" "$@" --out "$a" > "$a.log" 2>&1 \
    && niah_gen "$a" "$name" 16 "$ATTN_LENGTHS" \
    || echo "$name failed (see $a.log)" >> "$O/gpu.txt"
}

average_finals() {  # LABEL OUT LOG MARKER...: once every marker exists, the average of the checkpoints they name
  # into OUT (log LOG; OUT ending in "/": OUT/STEP, the checkpoints' own folder name); fails, with a line in gpu.txt,
  # if one names none or they end at different steps (e.g. one stopped by the deadline)
  local label=$1 out=$2 log=$3 k m ckpts=(); shift 3
  for k in "$@"; do
    until [ -e "$k" ]; do sleep 5; done
    m=$(cat "$k")
    if [ -z "$m" ]; then echo "$label: ${k##*/} names no final checkpoint" >> "$O/gpu.txt"; return 1; fi
    if [ ${#ckpts[@]} -gt 0 ] && [ "${m##*/}" != "${ckpts[0]##*/}" ]; then
      echo "$label: ${k##*/} names ${m##*/}, ${1##*/} ${ckpts[0]##*/}: not averaged" >> "$O/gpu.txt"; return 1
    fi
    ckpts+=("$m")
  done
  [[ $out != */ ]] || out+=${ckpts[0]##*/}
  echo "$label: averaging ${ckpts[*]}" >> "$O/gpu.txt"
  LR average "${ckpts[@]}" --out "$out" > "$log" 2>&1 \
    || { echo "$label failed (see ${log#"$W"/})" >> "$O/gpu.txt"; return 1; }
}
soup_run() {  # NAME RUNS GPU GPU2: once every SFT run in RUNS ("+"-joined) has ended, the average of their final
  # checkpoints, its issue grid and perplexity on GPU, its grid in UNSEEN_HAYSTACK on GPU2
  local name=$1 g=$3 g2=$4 r runs marks=() a=$W/soup-$1
  IFS=+ read -ra runs <<< "$2"
  for r in "${runs[@]}"; do marks+=("$W/$r.final"); done
  average_finals "soup $name" "$a" "$W/eval/soup-$name-average.log" "${marks[@]}" || return
  if [ -n "$UNSEEN_HAYSTACK" ]; then
    (CUDA_VISIBLE_DEVICES=$g2 niah_gen "$a" "soup-$name-unseen" 16 "$L128" "${RING[@]}" \
      --haystack "$UNSEEN_HAYSTACK") &
  fi
  export CUDA_VISIBLE_DEVICES=$g
  niah_gen "$a" "soup-$name" 16
  ppl "ppl128-short-soup-$name" "$PPL_SHORT" 8 "" --model "$a"
  long_curves "soup-$name" "$a"
  wait
  echo "soup $name: done" >> "$O/gpu.txt"
}
cpt_soup_run() {  # NAME VARIANTS GPU: once every 128K stage in VARIANTS ("+"-joined names) has ended, the average of
  # their final checkpoints, then every SFT_RECIPES run from it on GPU, named RECIPE-NAME
  local name=$1 g=$3 v vs marks=() r C st CPT128=$W/cpt-128k-$1  # sft_run starts from $CPT128's newest checkpoint
  IFS=+ read -ra vs <<< "$2"
  for v in "${vs[@]}"; do marks+=("$W/cpt-128k-$v.final"); done
  local SFT_TRAIN_SET=$SFT_TRAIN_SET$(det_sft_set "${vs[@]}")  # sft_run reads this one
  rm -rf "$CPT128"
  if ! average_finals "cpt soup $name" "$CPT128/checkpoints/" "$W/eval/cpt-soup-$name-average.log" "${marks[@]}"; then
    for r in $RECIPES; do mark "$W/$(name_of "${r%%:*}")-$name.final" ""; done  # a SOUPS entry of them gives up
    return
  fi
  for r in $RECIPES; do
    C=${r%%:*}; st=${r#"$C"}; st=${st#:}
    sft_run "$C" "$st" "$g" "-$name" &
  done
  wait
}

if [ ${#VARIANTS[@]} -gt "$NGPU" ]; then
  echo "CPT128_VARIANTS has ${#VARIANTS[@]} variants for NGPU=$NGPU: at least one GPU per variant" >&2; exit 2
fi
case $CPT128_PARALLEL in cp|dp) ;; *) echo "CPT128_PARALLEL=$CPT128_PARALLEL: cp or dp" >&2; exit 2 ;; esac
VG=$((NGPU / ${#VARIANTS[@]}))  # GPUs per variant
declare -A VARIANT_RECIPE  # "v:NAME" -> that variant's recipes, VARIANT_RECIPES read and checked once
names=" "
for e in "${VARIANTS[@]}"; do names+="${e%%:*} "; done
IFS=';' read -ra vr <<< "$VARIANT_RECIPES"
for e in "${vr[@]}"; do
  if [[ $e != *=* ]]; then
    echo "VARIANT_RECIPES entry '$e': NAME=CONFIG[:STEPS]... (or NAME= for none)" >&2; exit 2
  fi
  case $names in
    *" ${e%%=*} "*) VARIANT_RECIPE["v:${e%%=*}"]=${e#*=} ;;
    *) echo "VARIANT_RECIPES names ${e%%=*}, not a variant of CPT128_VARIANTS" >&2; exit 2 ;;
  esac
done
recipes_of() { echo "${VARIANT_RECIPE["v:$1"]-$RECIPES}"; }  # VARIANT_NAME: its SFT recipes
suffix() { local v=${1%%:*}; echo "${v:+-$v}"; }  # VARIANT: "-NAME" of its outputs ("" for the unnamed one)
ALL_RECIPES=
RUNS=" "  # every SFT run's name as sft_run gives it, RECIPE-VARIANT (SOUPS are checked against them)
for e in "${VARIANTS[@]}"; do
  rl=$(recipes_of "${e%%:*}"); ALL_RECIPES+=" $rl"
  for r in $rl; do RUNS+="$(name_of "${r%%:*}")$(suffix "$e") "; done
done
check_soups() {  # SETTING TAKEN KNOWN PART NOUN ENTRY...: each "NAME=PART+PART[+...]" entry of SETTING has a new
  # NAME (not in TAKEN, not twice) and at least two parts, each in KNOWN (a NOUN); exits 2 naming the entry otherwise
  local what=$1 taken=$2 known=$3 kind=$4 noun=$5 e p ps; shift 5
  for e in "$@"; do
    IFS=+ read -ra ps <<< "${e#*=}"
    if [[ ! ${e%%=*} =~ ^[A-Za-z0-9_.-]+$ || $e != *=* || ${#ps[@]} -lt 2 || $e == *+ ]]; then
      echo "$what entry '$e': NAME=$kind+$kind[+...] (NAME of letters, digits, _ . -)" >&2; exit 2
    fi
    case $taken in *" ${e%%=*} "*) echo "$what name ${e%%=*} is taken (by a variant or an earlier entry)" >&2; exit 2 ;; esac
    taken+="${e%%=*} "
    for p in "${ps[@]}"; do
      case $known in *" $p "*) ;; *) echo "$what names $p, not $noun:$known" >&2; exit 2 ;; esac
    done
  done
}
IFS=';' read -ra CPT_SOUP_LIST <<< "$CPT_SOUPS"
# a CPT soup's outputs are named like a variant's (RECIPE-NAME), so its name must be no variant's
check_soups CPT_SOUPS "$names" "$names" VARIANT "a variant of CPT128_VARIANTS" "${CPT_SOUP_LIST[@]}"
[ ${#CPT_SOUP_LIST[@]} -eq 0 ] || ALL_RECIPES+=" $RECIPES"  # the soups train SFT_RECIPES: their data are made
j=0
for e in "${CPT_SOUP_LIST[@]}"; do
  for r in $RECIPES; do RUNS+="$(name_of "${r%%:*}")-${e%%=*} "; done
  # soup j trains on GPU j mod NGPU: if a variant's SFT trains there too, both are slower (and may meet the
  # deadline); said, not refused
  g=$((j % NGPU)); k=$((g / VG))
  if [ "$k" -lt ${#VARIANTS[@]} ] && [ -n "$(recipes_of "${VARIANTS[$k]%%:*}")" ]; then
    echo "note: CPT soup ${e%%=*} trains on GPU $g beside the SFT of variant ${VARIANTS[$k]%%:*}" >&2
  fi
  j=$((j + 1))
done
IFS=';' read -ra SOUP_LIST <<< "$SOUPS"
check_soups SOUPS " " "$RUNS" RUN "an SFT run of this chain" "${SOUP_LIST[@]}"
# A variant with NR recipes and VG >= 2 NR GPUs is SPARE: each recipe j has a GPU of its own (NR + j) that trains
# no SFT for its extra grids, and the last GPU, where EVAL_CPT runs, trains none. (Written when a 128K grid at batch 16
# would hold ~48 GB of KV cache: 30 layers x 3 KV heads x 64 x 2 x 2 bytes x 131,072 tokens x 16. The backend now
# batches at most 32,768 padded tokens (eval/backends.py batch_tokens), so a 128K prompt runs alone, ~3 GB; the
# grids running beside each other after an SFT (sft_run) rely on that.)
ga=$($PY -c "import yaml; print(yaml.safe_load(open('configs/smollm2-135m-32k.yaml'))['grad_accum'])")
if [ $((ga % NGPU)) -ne 0 ]; then
  echo "grad_accum $ga of configs/smollm2-135m-32k.yaml is not divisible by NGPU=$NGPU" >&2; exit 2
fi
train_flags() { echo "${CPT128_SET:-} $(field "$1" 3)"; }  # VARIANT: its training flags, CPT128_SET's first
deterministic_of() {  # FLAGS: "1" if the last deterministic=V among them is true as TrainConfig reads it (true, 1,
  # yes, on, any case), else ""
  local w det= ws; read -ra ws <<< "$1"
  for w in "${ws[@]}"; do case $w in deterministic=*|--set=deterministic=*) det=${w#*deterministic=} ;; esac; done
  case ${det,,} in 1|true|yes|on) echo 1 ;; esac
}
field() {  # VARIANT N: its N-th ":" field (1: prepare flags, 2: extend flags, 3: train flags, the rest of the
  # entry: it may hold ":" itself, e.g. a path)
  local rest=${1#"${1%%:*}"} k; rest=${rest#:}
  for ((k = 1; k < $2; k++)); do [[ $rest == *:* ]] && rest=${rest#*:} || rest=; done
  if [ "$2" -ge 3 ]; then echo "$rest"; else echo "${rest%%:*}"; fi
}
for e in "${VARIANTS[@]}"; do  # `longreach extend` takes no --set: a variant that hands it one fails after the 32K
  # stage (session 25's smoke: "NAME::--set ..." is NAME, no prepare flags, extend flags "--set ...")
  case " $(field "$e" 2) " in
    *" --set "*) echo "CPT128_VARIANTS entry '${e%%:*}': --set among its extend flags (the second field); training" \
      "flags are the third: NAME:PREPARE_ARGS:EXTEND_ARGS:--set k=v" >&2; exit 2 ;;
  esac
done
declare -A DET  # "v:NAME" -> 1 when that variant's 128K stage is deterministic, read once
for e in "${VARIANTS[@]}"; do DET["v:${e%%:*}"]=$(deterministic_of "$(train_flags "$e")"); done
det_sft_set() {  # VARIANT_NAME...: the SFT flag if every named variant's 128K stage is deterministic (a variant's
  # SFTs, and a CPT soup's of such variants only, are deterministic too), else ""
  local v; for v in "$@"; do [ -n "${DET["v:$v"]-}" ] || return 0; done
  echo " --set train.deterministic=true"
}
rm -f "$O"/.prepare128* "$O/.done" "$W"/*.final  # markers of an earlier run
for e in "${VARIANTS[@]}"; do  # the corpus packed at 128K, once per variant (CPU only, beside the 32K stage)
  x=$(suffix "$e"); a=$(field "$e" 1)
  (SHARDS128=$S/shards-128k$x PACK_ARGS="$a" OUT=$O/cpu$x bash $P prepare128 > "$O/cpu$x.txt" 2>&1
   touch "$O/.prepare128$x") &
done
done_recipes=" "
for r in $ALL_RECIPES; do  # each recipe's SFT data, beside the GPU steps (CPU only)
  C=${r%%:*}; dn=$(name_of "$C")
  case $done_recipes in *" $dn "*) continue ;; esac
  done_recipes+="$dn "
  rm -f "$O/cpu-$dn.exit"
  (SFT_CONFIG=$C SFTDATA_OUT=$W/data-$dn OUT=$O/cpu-$dn bash $P sftdata > "$O/cpu-$dn.txt" 2>&1
   touch "$O/cpu-$dn.exit") &
done
multi() {  # STEP K OUTDIR LOG SET SET1: a training step on the first K visible GPUs with SET (their split of the
  # work); should it fail there, again on one GPU with SET1 (the same steps), resuming its last checkpoint, which
  # holds the full, unsharded state. Only this call's log lines count (re-runs append). LOG: $W/LOG.log
  local n0; n0=$(cat "$3/pipeline.log" 2>/dev/null | wc -l)
  TRAIN_GPUS=$2 TRAIN_SET="$5" OUT=$3 bash $P "$1" >> "$3.txt" 2>&1
  if [ "$2" -gt 1 ] && tail -n +$((n0 + 1)) "$3/pipeline.log" | grep -q "FAILED $4"; then
    echo "$4 failed on $2 GPUs (log kept as $4-ngpu$2.log): again on one" >> "$3.txt"
    cp "$W/$4.log" "$W/$4-ngpu$2.log"
    TRAIN_SET="$6" OUT=${3}1 bash $P "$1" >> "$3.txt" 2>&1
  fi
}
OUT=$O/gpu bash $P prepare32 extend > "$O/gpu.txt" 2>&1
multi train32 "$NGPU" "$O/gpu" train32 "--set grad_accum=$((ga / NGPU))" ""
if [ "${EVAL32:-0}" = 1 ]; then  # milestone A's grid of the 32K model, beside the 128K stages: generation on the
  # first GPU, log-prob on the last (each variant's training shares its GPU with one of them)
  (CUDA_VISIBLE_DEVICES=0 OUT=$O/eval32g bash $P eval32-gen > "$O/eval32g.txt" 2>&1) &
  (CUDA_VISIBLE_DEVICES=$((NGPU - 1)) OUT=$O/eval32l bash $P eval32-logprob > "$O/eval32l.txt" 2>&1) &
fi
essays=$($PY -c "from longreach import assets; print(assets.paul_graham_essays())")
variant() {  # INDEX VARIANT: its 128K continued pretraining on its VG GPUs (i*VG ..), then every SFT recipe from
  # it (recipes_of: recipe j on its GPU j mod VG, its extra grids on GPU NR + j if SPARE), and beside them, on
  # its last GPU, the perplexity (and EVAL_CPT's NIAH) of the model they start from
  local i=$1 x c j=0 r C st g0=$((i * VG)) gl=$((i * VG + VG - 1)) gpus tset par rl nr spare
  x=$(suffix "$2"); rl=$(recipes_of "${2%%:*}"); nr=$(wc -w <<< "$rl"); spare=$((2 * nr <= VG))
  local BASE128=$W/smollm2-128k-base$x SHARDS128=$S/shards-128k$x CPT128=$W/cpt-128k$x TRAIN128_NAME=train128$x
  export BASE128 SHARDS128 CPT128 TRAIN128_NAME
  gpus=$(seq -s, "$g0" "$gl")
  EXTEND128_ARGS=$(field "$2" 2) OUT=$O/gpu$x bash $P extend128 >> "$O/gpu$x.txt" 2>&1
  until [ -e "$O/.prepare128$x" ]; do sleep 5; done
  tset=$(train_flags "$2")  # e.g. "--set max_steps=120"
  local SFT_TRAIN_SET=$SFT_TRAIN_SET$(det_sft_set "${2%%:*}")  # sft_run reads this one
  case $VG:$CPT128_PARALLEL in  # the set on VG GPUs, then the one-GPU fallback's (the same sequences per step)
    1:*) par=$tset ;;
    *:cp) par="--set context_parallel=$VG $tset" ;;
    *:dp) par=$tset; tset+=" --set grad_accum=$VG" ;;
  esac
  CUDA_VISIBLE_DEVICES=$gpus multi train128 "$VG" "$O/gpu$x" "$TRAIN128_NAME" "$par" "$tset"
  c=$(latest "$CPT128")  # for CPT_SOUPS: its final checkpoint, or none
  mark "$W/cpt-128k$x.final" "$c"
  for r in $rl; do
    C=${r%%:*}; st=${r#"$C"}; st=${st#:}
    sft_run "$C" "$st" $((g0 + j % VG)) "$x" $((spare ? g0 + nr + j : g0 + j % VG)) &
    j=$((j + 1))
  done
  ( export CUDA_VISIBLE_DEVICES=$gl CPT128_NAME=cpt128$x  # beside the SFT: the model it starts from
    [ "$EVAL_CPT" = 1 ] && NIAH_BATCH=$((spare ? 16 : 4)) OUT=$O/eval$x bash $P eval128 > "$O/eval$x.txt" 2>&1
    [ "$CPT_PPL" = 1 ] || exit 0
    c=$(latest "$CPT128")
    ppl ppl128-short-base$x "$PPL_SHORT" 8 "" --model "$GGUF" ${c:+--model $c}
    [ -z "$c" ] || { long_curves "cpt128$x" "$c"; probe "cpt128$x" "$c"; } ) &
  wait
  cp "$W/$TRAIN128_NAME.log" "$W/eval/" 2>/dev/null
  cp "$CPT128/metrics.jsonl" "$W/eval/cpt128$x-metrics.jsonl" 2>/dev/null
}
i=0
for e in "${VARIANTS[@]}"; do
  variant $i "$e" &
  i=$((i + 1))
done
i=0
for e in "${CPT_SOUP_LIST[@]}"; do  # each waits for its variants' 128K stages
  cpt_soup_run "${e%%=*}" "${e#*=}" $((i % NGPU)) &
  i=$((i + 1))
done
i=0
for e in "${SOUP_LIST[@]}"; do  # each waits for its runs' SFTs
  soup_run "${e%%=*}" "${e#*=}" $((i % NGPU)) $(((NGPU - 1 - i % NGPU) % NGPU)) &
  i=$((i + 1))
done
wait
cp "$W"/train32.log "$W/eval/" 2>/dev/null
cp "$W"/cpt-32k/metrics.jsonl "$W/eval/cpt32-metrics.jsonl" 2>/dev/null
touch "$O/.done"
