#!/usr/bin/env bash
# One device call's worth of waiting and collecting while background chains run on the GPU host
# (scripts/gpu/milestone_b.sh, demo_sweep.sh in their own process sessions):
#   bash scripts/gpu/collect.sh SECONDS MARKER DIR...
# waits until MARKER exists or SECONDS pass, then packs DIR... (logs, results; no weights) into $OUT/all.tgz,
# and each demo base model found under them (a few MB of safetensors) into $OUT/base-NAME.tgz.
# SHOW="GLOB..." prints the last line of each matching log first (progress bars split at carriage returns); name
# the training logs still being written there too (e.g. /root/work/train128*.log: a run's log reaches eval/ only
# when it ends), and their DIR... to pack them.
set -uo pipefail
wait_s=$1 marker=$2; shift 2
t0=$SECONDS
until [ -e "$marker" ] || [ $((SECONDS - t0)) -ge "$wait_s" ]; do sleep 10; done
echo "waited $((SECONDS - t0)) s; marker $marker: $([ -e "$marker" ] && echo present || echo absent)"
for f in ${SHOW:-}; do
  [ -f "$f" ] && echo "$f: $(tr '\r' '\n' < "$f" | grep -v '^[[:space:]]*$' | tail -n 1 | cut -c1-300)"
done
nvidia-smi --query-gpu=name,memory.used,utilization.gpu --format=csv,noheader 2>/dev/null || true
# which process holds each GPU, how long it has run and what it is (a run that stalls shows here: session 19)
declare -A gpu_index
while IFS=', ' read -r i u; do
  gpu_index[$u]=$i
done < <(nvidia-smi --query-gpu=index,uuid --format=csv,noheader 2>/dev/null)
while IFS=', ' read -r u pid mem; do
  echo "GPU ${gpu_index[$u]:-?} pid $pid $mem: $(ps -o etime=,args= -p "$pid" 2>/dev/null | cut -c1-240)"
done < <(nvidia-smi --query-compute-apps=gpu_uuid,pid,used_memory --format=csv,noheader 2>/dev/null)
# and longreach's own processes by ps (a container may not see the PIDs nvidia-smi reports)
ps -eo pid,etime,args 2>/dev/null | grep -E 'longreach\.cli (train|sft|eval)' | grep -v grep | cut -c1-240 || true
tar -czf "$OUT/all.tgz" --exclude='*.safetensors' --exclude='*.pt' --exclude='*.gguf' --exclude='*.bin' \
  --exclude='*/data/*' --exclude='*/base-data/*' --exclude='*/corpus/*' --exclude='*/shards/*' "$@" 2>/dev/null
for b in $(find "$@" -maxdepth 2 -name base -type d 2>/dev/null); do
  [ -f "$b/model.safetensors" ] && tar -czf "$OUT/base-$(basename "$(dirname "$b")").tgz" -C "$(dirname "$b")" base
done
ls -la "$OUT"
