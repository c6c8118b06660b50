#!/usr/bin/env bash
# Issue 4's milestone B (8K -> 32K -> 128K) as one chain on one GPU, after `smollm2_pipeline.sh setup stage-a`
# and `stage-b corpus` (the GGUF joined and the corpus unpacked in /root/stage). Started in its own process
# session, the chain outlives the device call, so the GPU never waits between calls; run it from a copy of the
# repository (a later call re-copies the tree under a running chain):
#   rm -rf /root/rB && mkdir /root/rB && cp -r src scripts configs /root/rB && cd /root/rB &&
#   (setsid nohup bash scripts/gpu/milestone_b.sh > /root/outB.txt 2>&1 < /dev/null &)
# and later calls `bash scripts/gpu/collect.sh 540 /root/work/eval/ppl128-long.log /root/work/eval ...`.
# SFT_RECIPE picks the 128K SFT config (default configs/smollm2-135m-128k-sft.yaml). Its logs go to MB_OUT
# (default /root/outB), never to the call's $OUT, which is emptied before each call.
# Steps, all longreach's own commands (docs/RESULTS.md, milestone B, measured this way on an H200, 2026-11-26):
#   CPU, beside the 32K training: the corpus packed at 128K; the 128K SFT data (configs/smollm2-135m-128k-sft.yaml)
#   GPU: prepare32 extend train32 (milestone A's recipe) -> extend128 (base to the 128K bound) -> train128 ->
#        long-context SFT at 128K, one sequence per step on a 106-step schedule (two passes), stopped once the
#        step-SFT_STOP checkpoint exists (81: what a 30-minute hold allows with the evaluations; SFT_STOP=106
#        runs it out), NIAH of the 128K continued-pretraining model and of the step-54 checkpoint beside it ->
#        NIAH 1K-128K of the stopped SFT model -> perplexity: short essays (retention) and by position over 128K.
set -uo pipefail
cd "$(dirname "$0")/../.."
P=scripts/gpu/smollm2_pipeline.sh
O=${MB_OUT:-/root/outB}
W=${WORK:-/root/work}
C=${SFT_RECIPE:-configs/smollm2-135m-128k-sft.yaml}
SFT_STEPS=${SFT_STEPS:-106}  # two passes of 53 sequences (the -replay recipe: 59, so 118)
SFT_STOP=${SFT_STOP:-81}
L128=${LENGTHS128:-1000,4000,8000,16000,32000,48000,64000,96000,128000}
D=${MB_DEPTHS:-0,11,22,33,44,56,67,78,89,100}
GGUF=${ORIG_MODEL:-/root/stage/smollm2.gguf}
PY=${PY:-python3}
SFT_SAVE=${SFT_SAVE:-27} SFT_HALF=${SFT_HALF:-54}  # checkpoint interval; the interim NIAH's checkpoint
PPL_SHORT=${PPL_SHORT:-4096} PPL_LONG=${PPL_LONG:-131072}
# A CPU smoke run at toy sizes (docs/LOG.md): SMOKE=1 SEQ32=1024 SEQ128=2048 STAGE=... WORK=... PY=python
# ORIG_MODEL=SRC_MODEL=<gguf> LENGTHS128=400,600 MB_DEPTHS=0,100 SFT_STEPS=4 SFT_SAVE=1 SFT_HALF=2 SFT_STOP=3
# PPL_SHORT=256 PPL_LONG=1024 MB_OUT=... bash scripts/gpu/milestone_b.sh
export WORK=$W PYTHONPATH="$PWD/src:/tmp/site" HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
mkdir -p "$O" "$W/eval"
LR() { $PY -m longreach.cli "$@"; }
niah_gen() {  # MODEL NAME: the default needle, 9 lengths x 10 depths, greedy generation
  LR eval niah --model "$1" --out "$W/eval/$2-generate" --lengths $L128 --depths $D \
    --mode generate --batch-size "${3:-8}" > "$W/eval/$2-generate.log" 2>&1 || echo "niah $2 failed" >> "$O/gpu.txt"
}
T=${C##*/}; T=${T%.yaml}  # outputs named after the SFT recipe: another recipe never resumes this one's run
[ "$T" = smollm2-135m-128k-sft ] && T=sft128  # the measured run's names
latest() { ls -d "$1"/checkpoints/step-* 2>/dev/null | sort | tail -1; }  # RUN: its newest checkpoint, or ""
newest() {  # the newest SFT checkpoint's step, 0 before the first
  local m; m=$(latest "$W/$T/sft3")
  if [ -n "$m" ]; then echo $((10#${m##*-})); else echo 0; fi
}

(OUT=$O/cpu bash $P prepare128; SFT_CONFIG=$C SFTDATA_OUT=$W/data-$T OUT=$O/cpu bash $P sftdata) > "$O/cpu.txt" 2>&1 &
cpu=$!
OUT=$O/gpu bash $P prepare32 extend train32 extend128 > "$O/gpu.txt" 2>&1
wait $cpu
OUT=$O/gpu bash $P train128 >> "$O/gpu.txt" 2>&1
NIAH_BATCH=4 OUT=$O/eval bash $P eval128 > "$O/eval.txt" 2>&1 &  # the 128K continued-pretraining model
SFT_CONFIG=$C SFT_DATA=$W/data-$T SFT_FROM=$W/cpt-128k SFT=$W/$T SFT_NAME=$T \
  SFT_SET="--set train.grad_accum=1 --set train.save_every=$SFT_SAVE --set stages.sft3.train.max_steps=$SFT_STEPS" \
  OUT=$O/gpu setsid bash $P sft3 >> "$O/gpu.txt" 2>&1 &  # its own process group: stopped as one below
sft=$!
half=
while kill -0 $sft 2>/dev/null; do  # an interim NIAH at the first checkpoint >= SFT_HALF; stop at >= SFT_STOP
  n=$(newest)
  if [ -z "$half" ] && [ "$n" -ge "$SFT_HALF" ]; then
    half=$W/$T-$n; cp -r "$W/$T/sft3/checkpoints/$(printf 'step-%06d' "$n")" "$half" && niah_gen "$half" "$T-$n" &
  fi
  [ "$n" -ge "$SFT_STOP" ] && { kill -TERM -- -$sft 2>/dev/null; break; }  # the hold's limit
  sleep 5
done
wait
n=$(newest); m=$W/$T/sft3/checkpoints/$(printf 'step-%06d' "$n")
[ "$n" -gt 0 ] && niah_gen "$m" "$T-$n" 16 || m=
# retention (short essays) and the whole window (perplexity by position over 128K tokens)
essays=$($PY -c "from longreach import assets; print(assets.paul_graham_essays())")
c=$(latest "$W/cpt-128k")
LR eval ppl --model "$GGUF" ${c:+--model $c} ${m:+--model $m} \
  --text "$essays" --length "$PPL_SHORT" --sequences 8 --out "$W/eval/ppl128-short" > "$W/eval/ppl128-short.log" 2>&1
LR eval ppl ${c:+--model $c} ${m:+--model $m} --text "$essays" --length "$PPL_LONG" \
  --sequences 1 --buckets 16 --out "$W/eval/ppl128-long" > "$W/eval/ppl128-long.log" 2>&1
cp "$W"/train32.log "$W"/train128.log "$W/$T.log" "$W/eval/" 2>/dev/null
touch "$O/.done"
