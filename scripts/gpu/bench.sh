#!/usr/bin/env bash
# Training-throughput runs on lent GPUs: issue 3 (one H100) and issue 8 (two H100s). benchmarks/README.md
# explains the variants and the FLOP formula.
#
# Here, once (the GPU machine has no liger-kernel; the wheel travels in .whl/, which .gitignore ignores, so
# the device call names it in `carry`):
#   bash scripts/gpu/bench.sh fetch-wheels
# There, from the repository root, one plan per device call; each stays under 9 minutes (every benchmark
# invocation has its own --budget-s) and writes $OUT/<plan>.json (all results) and $OUT/<plan>.log:
#   bash scripts/gpu/bench.sh smollm2     # 1 x H100: GPU tests, SmolLM2-135M table and what each option gives
#   bash scripts/gpu/bench.sh llama       # 1 x H100: Llama-3.2-1B shape table, 8B shape (4 layers) at 32K
#   bash scripts/gpu/bench.sh longest     # 1 x H100: longest sequence per shape (and per 8B layer count)
#   bash scripts/gpu/bench.sh two-gpu     # 2 x H100: FSDP2 at 32K, context parallel at 128K/256K, vs one GPU
#   bash scripts/gpu/bench.sh two-gpu-8b  # 2 x H100: 8B shape on two GPUs, longest with context parallel
#   bash scripts/gpu/bench.sh core        # 1 or 2 x H100: the headline rows of all of the above in one call
#   bash scripts/gpu/bench.sh two-gpu-long  # 2 x H100: what `core` left: cp2 at 256K, longest on 2 GPUs (1B, 8B)
#   bash scripts/gpu/bench.sh longest-8b    # 1 GPU: longest sequence per 8B layer count (2, 4, 8)
#   bash scripts/gpu/bench.sh compile-long  # 1 GPU: torch.compile at SmolLM2 128K and 1B 64K, each with its baseline
#   bash scripts/gpu/bench.sh mfu-1b        # 1 GPU: the 1B shape at 64K, compile with less recomputation / liger / flash
#   bash scripts/gpu/bench.sh profile       # 1 GPU: where the best 1B 64K and SmolLM2 128K steps spend their time
#   bash scripts/gpu/bench.sh fa4-stage     # each call carrying a part of FlashAttention 4 (stage_assets.sh fa4)
#   bash scripts/gpu/bench.sh fa4           # 1 GPU: FlashAttention 4's kernels against cuDNN, profiled
#   bash scripts/gpu/bench.sh fa4-more      # 1 GPU: the same on the 8B (32K), 1B (128K) and SmolLM2 (16K, 64K) rows
# (one-GPU plans may run beside other work on a 2-GPU host: CUDA_VISIBLE_DEVICES=1 bash scripts/gpu/bench.sh ...)
# DRY=1 prints each invocation's jobs instead of running them (works on CPU).
set -euo pipefail
cd "$(dirname "$0")/../.."
plan=${1:?usage: bench.sh fetch-wheels|fa4-stage|smollm2|llama|longest|two-gpu|two-gpu-8b|core|two-gpu-long|longest-8b|compile-long|mfu-1b|profile|fa4|fa4-more}
PY=${PY:-python3}

if [ "$plan" = fa4-stage ]; then  # FlashAttention 4 (`bash scripts/gpu/stage_assets.sh fa4` here): in each call
  # that carries one of .stage/fa4-w, fa4-a, fa4-b (in any order); once all three are on the host, the libraries
  # are joined (sha256-checked) and everything is installed into /tmp/fa4site, which the plans then put on the path
  F=/root/stage/fa4
  mkdir -p "$F"
  if ls .stage/fa4-w/*.whl >/dev/null 2>&1; then cp .stage/fa4-w/*.whl "$F"/; fi
  for d in .stage/fa4-a .stage/fa4-b; do [ -d "$d" ] && STAGE=$F bash scripts/gpu/stage_split.sh put "$d" > /dev/null; done
  if [ -d /tmp/fa4site/flash_attn ]; then echo "fa4-stage: installed already"; exit 0; fi  # (a plan may be using it)
  libs=$(cd "$F" && ls ./*.whl.sha256 2>/dev/null | head -1 || true); libs=${libs%.sha256}; libs=${libs#./}
  rc=0; [ -n "$libs" ] && { STAGE=$F bash scripts/gpu/stage_split.sh join "$libs" || rc=$?; } || rc=3
  if [ "$rc" = 1 ]; then echo "fa4-stage: $libs does not match its sha256" >&2; exit 1; fi
  if [ "$rc" != 0 ] || ! ls "$F"/flash_attn_4-*.whl >/dev/null 2>&1; then
    echo "fa4-stage: not all parts here yet: $(ls "$F" | tr '\n' ' ')"; exit 0
  fi
  rm -rf /tmp/fa4site.new  # one pip call: several wheels share the nvidia_cutlass_dsl folder
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/fa4site.new "$F"/*.whl
  rm -rf /tmp/fa4site && mv /tmp/fa4site.new /tmp/fa4site
  PYTHONPATH=/tmp/fa4site:/tmp/fa4site/nvidia_cutlass_dsl/dsl_packages $PY -c \
    "import flash_attn.cute.interface, importlib.metadata as m; print('flash-attn-4', m.version('flash-attn-4'), 'installed')"
  exit 0
fi

if [ "$plan" = fetch-wheels ]; then
  $PY -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .whl liger-kernel==0.8.5
  exit 0
fi

OUT=${OUT:-out/bench}
mkdir -p "$OUT"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
if [ -z "${DRY:-}" ] && ls .whl/liger_kernel-*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    .whl/liger_kernel-*.whl && export PYTHONPATH="$PYTHONPATH:/tmp/site"
elif [ -d /tmp/site/liger_kernel ]; then  # installed by an earlier call (run from a copy of the tree without .whl/)
  export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
if [ -d /tmp/fa4site/flash_attn ]; then  # FlashAttention 4, installed by `bench.sh fa4-stage` (the .pth that finds
  # the CuTe DSL is not read from a PYTHONPATH folder, so its package folder goes on the path too)
  export PYTHONPATH="$PYTHONPATH:/tmp/fa4site:/tmp/fa4site/nvidia_cutlass_dsl/dsl_packages"
fi
dry=${DRY:+--dry-run}

# One invocation failing as a whole (it should not: each configuration's failure is a row) skips only itself.
bench() { $PY benchmarks/train_throughput.py --append --out "$OUT/$plan.json" $dry "$@" || echo "bench failed: $*" >&2; }
gpu_tests() {
  [ -n "${DRY:-}" ] && return 0
  nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,power.limit --format=csv || true
  timeout 45 $PY -m pytest -q -p no:cacheprovider -m gpu tests/test_parallel_layers.py 2>&1 | tail -4 || true
}

case "$plan" in
  smollm2)  # ~8.5 min: the issue-3 targets (>= 65K tok/s at 32K, >= 23K at 128K) and the HF baseline;
            # cheap variants first: a budget that runs out cuts the compile rows, not the others
    gpu_tests
    bench --shapes smollm2-135m --lengths 16k,32k,64k,128k --variants "hf;ours;ours:ac=attn" --budget-s 150
    bench --shapes smollm2-135m --lengths 32k --budget-s 110 \
      --variants "ours:ac=off;ours:ac=attn,loss=liger;ours:ac=attn,sdpa=flash;ours:ac=attn,compile=1;ours:ac=off,compile=1"
    bench --shapes smollm2-135m --lengths 128k --budget-s 170 \
      --variants "ours:ac=attn,sdpa=flash;ours:ac=attn,loss=liger;ours:ac=attn,compile=1;ours:ac=attn,attn=flex,docs=8192"
    ;;
  llama)  # ~8.5 min: 1B trains at 128K, MFU at 64K; 8B shape (4 of 32 layers) MFU at 32K
    bench --shapes llama3.2-1b --lengths 16k,32k,64k,128k --variants "hf;ours;ours:ac=attn" --budget-s 260
    bench --shapes llama3.2-1b --lengths 64k --variants "ours:ac=attn,compile=1;ours:ac=attn,loss=liger" \
      --budget-s 120
    bench --shapes llama3-8b --layers 4 --lengths 32k --variants "hf;ours;ours:ac=attn" --budget-s 110
    ;;
  longest)  # ~8.5 min: memory-guided growth from two table lengths, then the 8K grain; least-memory setting
    one=(--warmup 0 --steps 1 --longest --variants "ours:offload=1" --longest-variant "ours:offload=1")
    bench --shapes llama3.2-1b --lengths 64k,128k "${one[@]}" --budget-s 150
    bench --shapes smollm2-135m --lengths 64k,128k "${one[@]}" --budget-s 110
    for layers in 2 4 8; do
      bench --shapes llama3-8b --layers $layers --lengths 16k,32k "${one[@]}" --longest-start 64k --budget-s 80
    done
    ;;
  two-gpu)  # ~8.5 min: issue 8, 1B shape; every 2-GPU row has its one-GPU row from the same machine
    bench --shapes llama3.2-1b --lengths 32k --layouts "1;dp2" --variants "ours:ac=attn,seqs=2" --budget-s 100
    bench --shapes llama3.2-1b --lengths 128k --layouts "1;cp2" --variants "ours:ac=attn" --budget-s 110
    bench --shapes llama3.2-1b --lengths 256k --layouts "cp2;1" --variants "ours:ac=attn" --steps 1 --budget-s 110
    bench --shapes llama3.2-1b --lengths 256k --layouts cp2 --variants "ours" --warmup 0 --steps 1 --longest \
      --longest-layouts cp2 --longest-growth 1.5 --longest-step 64k --budget-s 170
    ;;
  two-gpu-8b)  # ~8 min: 8B shape (4 layers) on two GPUs: FSDP2 at 32K, longest with context parallel
    bench --shapes llama3-8b --layers 4 --lengths 32k --layouts "1;dp2" --variants "ours:ac=attn,seqs=2" \
      --budget-s 120
    bench --shapes llama3-8b --layers 4 --lengths 128k --layouts cp2 --variants "ours" --warmup 0 --steps 1 --longest \
      --longest-layouts cp2 --longest-growth 1.5 --longest-step 32k --budget-s 330
    ;;
  core)  # ~8.5 min on a 2-GPU machine (one-GPU rows use GPU 0): the headline rows of issues 3 and 8 in one call
    gpu_tests
    bench --shapes smollm2-135m --lengths 16k,32k,64k,128k --variants "ours:ac=attn;hf" --budget-s 130
    bench --shapes smollm2-135m --lengths 32k --variants "ours:ac=off;ours:ac=attn,compile=1;ours:ac=attn,loss=liger" \
      --budget-s 60
    bench --shapes llama3.2-1b --lengths 32k,64k,128k --variants "ours:ac=attn;hf" --steps 2 --budget-s 100
    bench --shapes llama3-8b --layers 4 --lengths 32k --variants "ours:ac=attn" --steps 2 --budget-s 40
    if [ "$(nvidia-smi -L 2>/dev/null | wc -l)" -ge 2 ] || [ -n "${DRY:-}" ]; then
      bench --shapes llama3.2-1b --lengths 32k --layouts "dp2" --variants "ours:ac=attn" --steps 2 --budget-s 40
      bench --shapes llama3.2-1b --lengths 128k,256k --layouts "cp2" --variants "ours:ac=attn" --steps 2 --budget-s 100
    fi
    ;;
  two-gpu-long)  # ~7.5 min: issue 8's rows that `core` did not reach
    gpu_tests
    bench --shapes llama3.2-1b --lengths 256k --layouts "cp2;1" --variants "ours:ac=attn" --steps 1 --budget-s 110
    bench --shapes llama3.2-1b --lengths 256k --layouts cp2 --variants "ours" --warmup 0 --steps 1 --longest \
      --longest-layouts cp2 --longest-start 384k --longest-growth 1.5 --longest-step 64k --budget-s 170
    bench --shapes llama3-8b --layers 4 --lengths 128k --layouts cp2 --variants "ours" --warmup 0 --steps 1 --longest \
      --longest-layouts cp2 --longest-start 256k --longest-growth 1.5 --longest-step 64k --budget-s 150
    ;;
  longest-8b)  # ~8 min: longest sequence on one GPU per 8B layer count (two table lengths: memory-guided search).
    # 75 s per layer count (sessions 3 and 11) stopped every search on time before memory: offload probes take
    # 16-20 s at 128K-208K. The table lengths are 64K and 128K, so that the memory guess starts from long rows.
    for layers in 2 4 8; do
      bench --shapes llama3-8b --layers $layers --lengths 64k,128k --warmup 0 --steps 1 --longest --variants "ours:offload=1" \
        --longest-variant "ours:offload=1" --longest-start 192k --longest-growth 1.5 --longest-step 16k --budget-s 155
    done
    ;;
  compile-long)  # ~4.5 min: does compile reach the 128K target (>= 23K tok/s) and 45% MFU at 64K for 1B?
    bench --shapes smollm2-135m --lengths 128k --variants "ours:ac=attn;ours:ac=attn,compile=1" --steps 2 --budget-s 130
    bench --shapes llama3.2-1b --lengths 64k --variants "ours:ac=attn;ours:ac=attn,compile=1" --steps 2 --budget-s 130
    ;;
  mfu-1b)  # ~6 min: the 1B shape at 64K (MFU target 45%; compile gave 38.1% on an H200): less recomputation,
           # the fused loss, flash instead of cuDNN attention, each on top of compile; the baseline row first,
           # the rows likeliest to run out of memory (every:2, off: only after compiling) last
    bench --shapes llama3.2-1b --lengths 64k --steps 2 --budget-s 330 --variants \
      "ours:ac=attn,compile=1;ours:ac=mlp,compile=1;ours:ac=attn,compile=1,loss=liger;ours:ac=attn,compile=1,sdpa=flash;ours:ac=every:2,compile=1;ours:ac=off,compile=1"
    ;;
  profile)  # ~4 min: one more step of the best settings under torch.profiler (kernel time by group, top kernels):
            # what separates the 1B shape's 40% MFU at 64K from the 45% target, and SmolLM2's 128K step from its floor
    bench --shapes llama3.2-1b --lengths 64k --steps 2 --profile --budget-s 130 \
      --variants "ours:ac=attn,compile=1,loss=liger;ours:ac=attn"
    bench --shapes smollm2-135m --lengths 128k --steps 2 --profile --budget-s 100 --variants "ours:ac=attn,compile=1"
    ;;
  fa4)  # ~6 min after `fa4-stage`: FlashAttention 4's Hopper kernels (attn=fa4) against cuDNN (the default), each
        # row profiled so that its attention kernels' TFLOP/s can be set against cuDNN's ~440 at head dim 64;
        # first the GPU test that FA4 gives SDPA's loss and gradients. The first FA4 step compiles its kernels.
    [ -n "${DRY:-}" ] || timeout 240 $PY -m pytest -q -p no:cacheprovider -m gpu -k fa4 tests/test_parallel_layers.py \
      2>&1 | tail -4 || true
    bench --shapes smollm2-135m --lengths 32k,128k --steps 2 --profile --budget-s 150 \
      --variants "ours:ac=attn,compile=1;ours:ac=attn,compile=1,attn=fa4"
    bench --shapes llama3.2-1b --lengths 64k --steps 2 --profile --budget-s 150 \
      --variants "ours:ac=attn,compile=1,loss=liger;ours:ac=attn,compile=1,loss=liger,attn=fa4"
    ;;
  fa4-more)  # ~7 min after `fa4-stage`: FA4 against cuDNN (both compiled) where `fa4` did not look: the 8B shape's
             # MFU at 32K (4 layers), the 1B shape at 128K, SmolLM2 at 16K and 64K; no profiles
    bench --shapes llama3-8b --layers 4 --lengths 32k --steps 2 --budget-s 120 \
      --variants "ours:ac=attn,compile=1,loss=liger;ours:ac=attn,compile=1,loss=liger,attn=fa4"
    bench --shapes llama3.2-1b --lengths 128k --steps 2 --budget-s 170 \
      --variants "ours:ac=attn,compile=1,loss=liger;ours:ac=attn,compile=1,loss=liger,attn=fa4"
    bench --shapes smollm2-135m --lengths 16k,64k --budget-s 120 \
      --variants "ours:ac=attn,compile=1;ours:ac=attn,compile=1,attn=fa4"
    ;;
  *) echo "unknown plan $plan" >&2; exit 2 ;;
esac
