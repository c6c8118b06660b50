"""Training configuration: every default lives here; YAML files and --set flags override it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class TrainConfig:
    model: str = ""  # start: HF folder (weights, or config.json only for a random init) or a .gguf file
    data: str = ""  # packed shards folder written by `longreach data prepare` (or the SFT packer)
    out: str = "runs/train"  # run folder: checkpoints/, metrics.jsonl, config.yaml
    stage: str = "pretrain"  # name recorded in checkpoint metadata: pretrain, sft1, sft2, sft3, ...
    max_steps: int = 100  # optimizer steps
    micro_batch: int = 1  # sequences per forward pass (per data-parallel rank)
    grad_accum: int = 1  # micro-batches per optimizer step
    lr: float = 3e-5  # peak learning rate (ChatQA 2 continued pretraining: 3e-5)
    min_lr: float = 0.0  # floor of the cosine schedule
    warmup_steps: int = 0  # linear warm-up steps
    schedule: str = "cosine"  # cosine (warm-up then cosine to min_lr) or constant (after warm-up)
    weight_decay: float = 0.1  # AdamW decay on matrices (not on norms or biases)
    beta1: float = 0.9  # AdamW beta1
    beta2: float = 0.95  # AdamW beta2
    grad_clip: float = 1.0  # max global gradient norm (0 = off)
    seed: int = 0  # data order and random initialisation
    finish_on: str = ""  # "" (seeded order) | short_docs | long_docs: of the first epoch's visited sequences,
    # those with the least / most tokens in long documents go last, each group in its seeded order (why: LOG s23)
    finish_sequences: int = 0  # how many go last (with finish_on)
    long_doc_tokens: int = 32768  # a one-document stretch at least this long counts as a long document
    precision: str = "auto"  # auto: bf16 autocast + fp32 master weights on GPU, fp32 on CPU; or fp32 / bf16
    attn: str = "sdpa"  # attention implementation (sdpa picks cuDNN/flash on H100 with is_causal; longreach_flex;
    # longreach_fa4: FlashAttention 4's kernels, plain causal, needs flash-attn-4: train/attention.py)
    activation_checkpointing: str = "off"  # off | full | attn (keep attention output) | mlp | every:K
    offload_activations: bool = False  # keep checkpointed layer inputs in pinned CPU memory (one GPU, longest runs)
    loss_impl: str = "chunked"  # chunked (ours) or liger (fused linear + cross-entropy, needs liger-kernel)
    loss_chunk_tokens: int = 4096  # tokens per chunk of the output projection + cross-entropy
    loss_weighting: str = ""  # "" (plain mean) | longce: weigh tokens the far context helps (train/longce.py)
    longce_window: int = 4096  # LongCE's short view: at least this many tokens before each target
    longce_stride: int = 1024  # targets scored per short window (of window + stride tokens, without gradient)
    longce_gamma: float = 5.0  # the cap on a token's weight (the paper's code: 5)
    longce_floor: float = 0.0  # the least weight (the paper: none; 1: only tokens the far context helps count more)
    doc_mask: bool = False  # attention isolated per packed document (positions restart); off as in ChatQA 2
    context_parallel: int = 1  # ranks that split one sequence (torch context parallel); 1 = off
    compile: bool = False  # torch.compile each decoder layer
    deterministic: bool = False  # torch's deterministic algorithms (train/loop.py deterministic_mode), so a re-run
    # aims to repeat its losses; cost and effect on a GPU not measured yet (why: docs/RESULTS.md session 22)
    save_every: int = 100  # checkpoint every N steps (and always at the end)
    keep_checkpoints: int = 2  # newest checkpoints kept; older ones deleted after a newer one is complete
    log_every: int = 1  # steps between metric lines
    resume: bool = True  # continue from the run folder's newest checkpoint if there is one
    progress: bool = True  # progress bar on stderr
    stall_report_s: float = 300.0  # a step (with its checkpoint) still running after this many seconds prints
    # every thread's Python stack to stderr, once, and the run goes on: where a stalled run waits (0 = off;
    # under NCCL stay below its 10-minute collective timeout)
    stall_exit_s: float = 0.0  # a step still running after this many seconds prints the stacks and ends the
    # process with status 75 (the same command resumes from the last checkpoint; a hung kernel cannot be undone
    # in-process; a process's first step, which may be compiling, is exempt); 0 = never
