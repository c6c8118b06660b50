"""The training loop: continued pretraining and every SFT stage (reads top to bottom).

    data -> forward -> loss -> step -> log -> checkpoint

Run:
    longreach train --config configs/demo-cpu.yaml            # CPU or one GPU
    torchrun --nproc-per-node 2 -m longreach.cli train --config FILE   # FSDP2 (+ context_parallel: 2)

Stopping early without losing steps: create the file STOP in the run's folder, or send SIGTERM (a scheduler's
preemption): the step in progress finishes, a checkpoint is saved, and the run ends; resuming it later goes on
from that step. A STOP file holding a step number N ends the run after step N instead (the learning-rate
schedule stays that of max_steps). A STOP file left from an earlier stop is removed when a run starts.
Under torchrun prefer the STOP file: torchrun forwards SIGTERM to its workers but kills them 30 s later.
A step that runs past `stall_report_s` prints every thread's Python stack to stderr (the run's log) and goes on;
past `stall_exit_s` (off by default) the process ends with status 75, to be started again (it resumes).
"""

from __future__ import annotations

import itertools
import json
import math
import os
import signal
import socket
import sys
import threading
import time
import traceback
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch

from longreach import config as config_io
from longreach.errors import InputError, RunStopped, TrainingDiverged
from longreach.model import logscale
from longreach.train import attention, checkpoint, context_parallel, longce, parallel
from longreach.train.config import TrainConfig
from longreach.train.loss import IGNORE, chunked_cross_entropy, shift_labels, weighted_cross_entropy

# ----------------------------------------------------------------------------- model

def load_start(path: str, attn: str, seed: int):
    """Model + tokenizer to start from: weights if the folder has them, else a seeded random init."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    p = Path(path)
    if p.suffix == ".gguf" or (p.is_dir() and (any(p.glob("*.safetensors")) or (p / "pytorch_model.bin").exists())):
        from longreach.model.load import load_model  # checks the rotary frequencies match the config
        return load_model(path, dtype=torch.float32, device="cpu", attn_implementation=attn)
    if not (p / "config.json").is_file():
        raise InputError("neither model weights nor config.json found", path=str(p), field="model")
    cfg = AutoConfig.from_pretrained(p)
    cfg._attn_implementation = attn
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    logscale.install(model)  # as load_model does for a checkpoint
    return model, (AutoTokenizer.from_pretrained(p) if _has_tokenizer(p) else None)


def _has_tokenizer(p: Path) -> bool:
    return (p / "tokenizer_config.json").exists() or (p / "tokenizer.json").exists()


class CausalLMLoss(torch.nn.Module):
    """A causal LM whose forward returns the summed next-token loss, never the full logits.

    Wrapping (rather than calling `lm.model` from outside) keeps FSDP2's root hooks in charge of the
    embeddings, final norm and output layer. loss_impl: "chunked" (ours, train/loss.py) or "liger"
    (liger-kernel's fused linear cross-entropy, GPU only, when installed).
    """

    def __init__(self, lm: torch.nn.Module, chunk_tokens: int, loss_impl: str = "chunked",
                 weighting: longce.Settings | None = None):
        """weighting: LongCE's (window, stride, gamma, floor): each token's loss weighted
        (train/longce.py); the forward then returns the weighted sum and keeps it, the plain sum and the weights'
        sum in `self.parts`."""
        super().__init__()
        self.lm, self.chunk_tokens, self.loss_impl = lm, chunk_tokens, loss_impl
        self.weighting = weighting
        self.parts: dict[str, torch.Tensor] = {}
        if loss_impl == "liger":
            from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss
            self._liger = LigerFusedLinearCrossEntropyLoss(reduction="sum", ignore_index=IGNORE)
        elif loss_impl != "chunked":
            raise InputError(f"unknown loss implementation {loss_impl!r}; known: chunked, liger", field="loss")

    def forward(self, input_ids, labels, position_ids=None, attention_mask=None) -> torch.Tensor:
        weight = self.lm.get_output_embeddings().weight
        w = self.weighting
        short_nll = None if w is None else longce.short_nll(
            self._hidden, input_ids, labels, position_ids, attention_mask, weight, w.window, w.stride, self.chunk_tokens)
        hidden = self._hidden(input_ids, labels, position_ids, attention_mask)
        if short_nll is not None:
            loss, plain, wsum = weighted_cross_entropy(hidden, weight, labels, short_nll, w.gamma, self.chunk_tokens,
                                                       floor=w.floor)
            self.parts = {"ce": plain.detach(), "loss_weighted": loss.detach(), "longce_weight_mean": wsum.detach()}
            return loss
        if self.loss_impl == "liger":
            # The fused kernel multiplies in its inputs' dtype: give it bf16 like autocast would.
            dt = torch.get_autocast_dtype(hidden.device.type) if torch.is_autocast_enabled(hidden.device.type) \
                else hidden.dtype
            return self._liger(weight.to(dt), hidden.reshape(-1, hidden.shape[-1]).to(dt),
                               labels.reshape(-1)).float()
        return chunked_cross_entropy(hidden, weight, labels, self.chunk_tokens)

    def _hidden(self, input_ids, labels, position_ids=None, attention_mask=None) -> torch.Tensor:
        if (attention_mask is None and position_ids is not None
                and self.lm.config._attn_implementation == attention.FLEX_NAME
                and not attention.targets_in_first_document(position_ids, labels)):
            # Packed documents (positions restart at 0): one sparse block mask per micro-batch, for all layers.
            # (Without one, as when only the first document of each row has targets, attention is plain causal.)
            attention_mask = attention.doc_block_mask(position_ids)
        return self.lm.model(input_ids=input_ids, position_ids=position_ids,
                             attention_mask=attention_mask).last_hidden_state


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    decay, no_decay = [], []
    for _, prm in model.named_parameters():
        if prm.requires_grad:
            (decay if prm.ndim >= 2 else no_decay).append(prm)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Learning rate for optimizer step `step` (0-based): linear warm-up, then cosine or constant."""
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return cfg.lr
    span = max(1, cfg.max_steps - cfg.warmup_steps)
    frac = min(1.0, (step - cfg.warmup_steps) / span)
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1 + math.cos(math.pi * frac))


# ----------------------------------------------------------------------------- data

FINISH_ON = {"short_docs": "low", "long_docs": "high"}  # TrainConfig.finish_on: whose long-document share goes last
ORDER_FIELDS = ("finish_on", "finish_sequences", "long_doc_tokens")  # TrainConfig fields that shape the data order


def check_finish(cfg: TrainConfig) -> None:
    """finish_on's fields on their own (before any run folder is written); Batches checks them against the data."""
    if cfg.finish_on and cfg.finish_on not in FINISH_ON:
        raise InputError(f"must be one of {', '.join(FINISH_ON)} or empty, got {cfg.finish_on!r}", field="finish_on")
    if cfg.finish_sequences < 0:
        raise InputError(f"must be >= 0, got {cfg.finish_sequences}", field="finish_sequences")
    if bool(cfg.finish_on) != (cfg.finish_sequences > 0):
        raise InputError(f"finish_on {cfg.finish_on!r} and finish_sequences {cfg.finish_sequences} go together: "
                         "set both (a count > 0) or neither", field="finish_sequences")
    if cfg.long_doc_tokens < 1:
        raise InputError(f"must be >= 1, got {cfg.long_doc_tokens}", field="long_doc_tokens")


def check_loss_weighting(cfg: TrainConfig) -> None:
    """LongCE's fields (before any run folder is written); the window is checked against the data in _train."""
    if cfg.loss_weighting not in ("", "longce"):
        raise InputError(f"must be longce or empty, got {cfg.loss_weighting!r}", field="loss_weighting")
    if not cfg.loss_weighting:
        return
    if cfg.longce_window < 1:
        raise InputError(f"must be >= 1, got {cfg.longce_window}", field="longce_window")
    if not 1 <= cfg.longce_stride <= cfg.longce_window:
        raise InputError(f"must be 1 to longce_window ({cfg.longce_window}), got {cfg.longce_stride}",
                         field="longce_stride")
    if not cfg.longce_gamma > 0:
        raise InputError(f"must be > 0, got {cfg.longce_gamma}", field="longce_gamma")
    if not 0 <= cfg.longce_floor <= cfg.longce_gamma:
        raise InputError(f"must be 0 to longce_gamma ({cfg.longce_gamma}), got {cfg.longce_floor}",
                         field="longce_floor")
    if cfg.loss_impl != "chunked":
        raise InputError(f"loss_weighting longce weighs the chunked loss's tokens; not with loss_impl "
                         f"{cfg.loss_impl!r}", field="loss_impl")
    if cfg.context_parallel > 1:
        raise InputError("loss_weighting longce needs each sequence whole on one rank (its short-window pass): "
                         "not with context_parallel > 1", field="loss_weighting")


class Batches:
    """Deterministic, resumable stream of micro-batches from packed shards.

    The position is a count of sequences consumed globally; sequence k of the stream is
    order(epoch = k // n)[k % n], the first epoch's order rearranged by finish_on (TrainConfig). A resumed run
    restores the position (and the order's settings, `resume_order`) and sees exactly the same batches.
    """

    def __init__(self, data_dir: str, seed: int, d: parallel.Dist, dense_doc_mask: bool = True,
                 finish_on: str = "", finish_sequences: int = 0, long_doc_tokens: int = 32768, visited: int = 0):
        """finish_on, finish_sequences, long_doc_tokens: TrainConfig's (checked by check_finish); visited: how
        many sequences the run reads (max_steps x sequences per step; capped at one epoch)."""
        from longreach.data.shards import PackedShards, epoch_order
        self.dense_doc_mask = dense_doc_mask  # False: doc_mask as position_ids only (FlexAttention block mask)
        self.shards = PackedShards(data_dir)
        self.n = len(self.shards)
        if self.n == 0:
            raise InputError("the shards hold no sequence", path=data_dir, field="data")
        self.seed, self.d, self._epoch_order = seed, d, epoch_order
        self._order_epoch, self._order = -1, None
        self.position = 0
        self.finish_on, self.finish_sequences, self.long_doc_tokens = finish_on, finish_sequences, long_doc_tokens
        self.visited = min(visited, self.n)
        if finish_on and long_doc_tokens > self.shards.seq_len:
            raise InputError(f"{long_doc_tokens} is longer than the shards' sequences ({self.shards.seq_len} "
                             "tokens): no sequence could hold a long document", field="long_doc_tokens")

    def check_visited(self) -> None:
        """finish_sequences against the sequences a new run visits in its first epoch."""
        if self.finish_sequences > self.visited:
            raise InputError(f"{self.finish_sequences} is more than the {self.visited} sequences the run visits in "
                             "its first epoch", field="finish_sequences")

    def order_spec(self) -> dict[str, Any]:
        """What the first epoch's order depends on beyond the seed (kept in each checkpoint)."""
        return {**{field: getattr(self, field) for field in ORDER_FIELDS}, "visited": self.visited}

    def resume_order(self, saved: dict[str, Any] | None, position: int) -> None:
        """Continue the order a checkpoint began (saved: its order_spec; None from before finish_on, a random
        order). Inside the first epoch another finish_on would read some sequences twice and skip others: refused.
        The number visited is the saved one, so a changed max_steps keeps the order."""
        if position >= self.n:
            return  # the first epoch is over; later epochs are random
        saved = saved or {"finish_on": "", "finish_sequences": 0}
        for field in ORDER_FIELDS:
            if field == "long_doc_tokens" and not self.finish_on:
                continue
            if saved.get(field) != getattr(self, field):
                raise InputError(f"the run began its first epoch with {field} {saved.get(field)!r}; {field} "
                                 f"{getattr(self, field)!r} would change its order at sequence {position} of "
                                 f"{self.n} (resume with the same value, or start a new run)", field=field)
        self.visited = saved.get("visited", self.visited)
        if self.visited > self.n:
            raise InputError(f"the run's order was made for {self.visited} sequences; these shards hold {self.n}",
                             field="data")

    def _index(self, k: int) -> int:
        epoch = k // self.n
        if epoch != self._order_epoch:
            order = self._epoch_order(self.n, self.seed, epoch)
            if epoch == 0 and self.finish_on:
                order = self._finish(order)
            self._order, self._order_epoch = order, epoch
        return int(self._order[k % self.n])

    def _finish(self, order: np.ndarray) -> np.ndarray:
        """The first epoch's order with finish_on's sequences last among those the run visits."""
        from longreach.data.shards import finish_order, long_document_share
        share = np.array([long_document_share(self.shards.doc_starts(int(i)), self.shards.seq_len,
                                              self.long_doc_tokens) for i in order[:self.visited]])
        new = finish_order(order, self.visited, self.finish_sequences, share, FINISH_ON[self.finish_on])
        if self.d.main:
            last = share[np.isin(order[:self.visited], new[self.visited - self.finish_sequences:self.visited])]
            print(f"data order: the {self.finish_sequences} of the {self.visited} sequences of the first epoch "
                  f"with the {'least' if self.finish_on == 'short_docs' else 'most'} tokens in documents of >= "
                  f"{self.long_doc_tokens} go last (their share {last.mean():.3f}; all {share.mean():.3f})",
                  file=sys.stderr)
        return new

    def next_step(self, micro_batch: int, grad_accum: int, doc_mask: bool) -> list[dict[str, torch.Tensor]]:
        """All micro-batches of one optimizer step for this rank; advances the global position."""
        per_step = micro_batch * grad_accum * self.d.dp
        base = self.position
        self.position += per_step
        out = []
        for a in range(grad_accum):
            rows = [self._index(base + (a * self.d.dp + self.d.dp_rank) * micro_batch + b)
                    for b in range(micro_batch)]
            out.append(self._collate(rows, doc_mask))
        return out

    def _collate(self, rows: list[int], doc_mask: bool) -> dict[str, torch.Tensor]:
        items = [self.shards[i] for i in rows]
        ids = torch.from_numpy(np.stack([it["input_ids"] for it in items])).long()
        mask = None
        if "loss_mask" in items[0]:
            mask = torch.from_numpy(np.stack([it["loss_mask"] for it in items]))
        batch = {"input_ids": ids, "labels": shift_labels(ids, mask)}
        if doc_mask:
            starts = [self.shards.doc_starts(i) for i in rows]
            batch.update(document_positions(ids.shape[1], starts, dense_mask=self.dense_doc_mask))
            # A target in the next document is not predictable from this one: drop it from the loss.
            first = torch.zeros_like(ids, dtype=torch.bool)
            for r, s in enumerate(starts):
                s = [x for x in s if 0 < x < ids.shape[1]]
                first[r, [x - 1 for x in s]] = True
            batch["labels"] = batch["labels"].masked_fill(first, IGNORE)
        # Context parallel: each rank of a group keeps its two chunks of the sequence (labels already shifted).
        return context_parallel.shard_batch(batch, self.d.cp, self.d.cp_rank)


def document_positions(seq_len: int, doc_starts: list[np.ndarray], dense_mask: bool = True) -> dict[str, torch.Tensor]:
    """Positions restarting at each document and, with dense_mask, a block-diagonal causal mask [B, 1, T, T]
    (True = attend; for short sequences: at 128K it would be 16 GiB; FlexAttention needs only the positions)."""
    pos = torch.zeros(len(doc_starts), seq_len, dtype=torch.long)
    doc = torch.zeros(len(doc_starts), seq_len, dtype=torch.long)
    for r, starts in enumerate(doc_starts):
        bounds = sorted({0, *[int(s) for s in starts if 0 <= s < seq_len]}) + [seq_len]
        for j, (a, b) in enumerate(itertools.pairwise(bounds)):
            pos[r, a:b] = torch.arange(b - a)
            doc[r, a:b] = j
    if not dense_mask:
        return {"position_ids": pos}
    causal = torch.ones(seq_len, seq_len, dtype=torch.bool).tril()
    mask = (doc[:, :, None] == doc[:, None, :]) & causal
    return {"position_ids": pos, "attention_mask": mask[:, None]}


# ----------------------------------------------------------------------------- loop

def _precision(cfg: TrainConfig, device: torch.device):
    if cfg.precision == "fp32" or (cfg.precision == "auto" and device.type != "cuda"):
        return nullcontext
    return lambda: torch.autocast(device.type, dtype=torch.bfloat16)


def _metrics_restart(path: Path, step: int) -> None:
    """Keep the metric lines up to the checkpoint a resumed run starts from (no duplicated steps)."""
    if path.exists():
        keep = [ln for ln in path.read_text().splitlines() if ln.strip() and json.loads(ln)["step"] <= step]
        path.write_text("".join(ln + "\n" for ln in keep))


STOP_FILE = "STOP"


class StopRequest:
    """A request to end the run after the current step: the STOP file in the run folder, or SIGTERM."""

    def __init__(self, out: Path, d: parallel.Dist):
        self.file, self.d, self.signalled = out / STOP_FILE, d, False
        if d.main:  # a stale request from an earlier stop
            try:
                self.file.unlink(missing_ok=True)
            except OSError as e:
                raise InputError(f"cannot remove the stop request left by an earlier run: {e}",
                                 path=str(self.file)) from e
        try:
            self._old = signal.signal(signal.SIGTERM, self._on_signal)
        except ValueError:  # not the main thread: the STOP file only
            self._old = None

    def _on_signal(self, signum, frame) -> None:
        self.signalled = True

    def asked(self, step: int) -> bool:
        """This rank's view: SIGTERM, or a STOP file that is empty or names a step already reached."""
        if self.signalled:
            return True
        try:
            text = self.file.read_text().strip()
            return not text.isdecimal() or step >= int(text)
        except FileNotFoundError:
            return False
        except (OSError, ValueError):  # there but unreadable: still a request (and no rank may fail alone here)
            return True

    def __call__(self, step: int) -> bool:
        """Whether any rank was asked to stop (every rank gets the same answer, so all stop at one step)."""
        flag = torch.tensor(float(self.asked(step)), device=self.d.device)
        return parallel.all_reduce_sum(flag, self.d).item() > 0

    def close(self) -> None:
        if self._old is not None:
            signal.signal(signal.SIGTERM, self._old)


STALL_EXIT = 75  # the exit status of a run ended by `stall_exit_s` (EX_TEMPFAIL: run it again to resume)


class StallReport:
    """A watchdog for the step in progress. Past `report_s` (0: off) it prints every thread's Python stack to
    stderr, once per step, and the run goes on; past `exit_s` (0: off) it prints them again and ends the process
    with STALL_EXIT, so a wrapper (or torchrun's --max-restarts) can start it again from the last checkpoint.
    The stacks show where a run that stops moving waits: a CUDA sync, the data, a lock, a collective (under
    torchrun each rank reports its own; keep both below the process group's timeout, NCCL's 10 minutes, or the
    rank is aborted first). They are read under the GIL (sys._current_frames), never from a running thread's
    frames without it, as faulthandler's timer does (that crashed the run it reported on). So a thread stuck in C
    code that holds the GIL gets no report; torch's kernels, CUDA syncs and collectives release it. The first
    step's report may only be compilation, so the first step a process runs never ends it."""

    def __init__(self, report_s: float, exit_s: float = 0.0, rank: int = 0):
        self.report_s, self.exit_s, self.rank = report_s, exit_s, rank
        self._cv = threading.Condition()
        self._start: float | None = None
        self._step = 0
        self._reported = False
        self._may_end = False
        self._closed = False
        self._thread = None
        if report_s > 0 or exit_s > 0:
            self._thread = threading.Thread(target=self._watch, name="longreach-stall-report", daemon=True)
            self._thread.start()

    def arm(self, step: int, may_end: bool = True) -> None:
        """Start the clock of `step` (1-based), replacing the last step's; `may_end` False: exit_s does not apply."""
        with self._cv:
            self._start, self._step, self._reported, self._may_end = time.monotonic(), step, False, may_end
            self._cv.notify()

    def close(self) -> None:
        with self._cv:
            self._closed = True
            self._cv.notify()
        if self._thread is not None:
            self._thread.join(timeout=5)  # a report blocked on a full stderr pipe must not hold the run's end

    def _due(self) -> float | None:
        """Seconds into the step of the next action, None when none is left for it."""
        due = [t for t, on in ((self.report_s, not self._reported), (self.exit_s, self._may_end)) if t > 0 and on]
        return min(due) if due else None

    def _watch(self) -> None:
        while True:
            with self._cv:
                while True:  # until an action is due (or the run is over)
                    if self._closed:
                        return
                    due = None if self._start is None else self._due()
                    left = None if due is None else self._start + due - time.monotonic()
                    if left is not None and left <= 0:
                        break
                    self._cv.wait(left)
                ending = self._may_end and self.exit_s > 0 and due >= self.exit_s
                self._reported, step, start = True, self._step, self._start
            # outside the lock: reading source lines or a slow stderr never blocks arm()
            print(self._stacks(step, due, ending), file=sys.stderr, flush=True)
            if ending:
                with self._cv:  # still that step, still running: the main thread is stuck, no cleanup can run
                    if not self._closed and (self._step, self._start) == (step, start):
                        os._exit(STALL_EXIT)  # checkpoints are atomic: the last one stands

    def _stacks(self, step: int, after: float, ending: bool) -> str:
        names = {t.ident: t.name for t in threading.enumerate()}
        then = (f"; ending the process (exit {STALL_EXIT}): the same command resumes from the last checkpoint"
                if ending else "")
        head = (f"longreach: step {step} still running after {after:g} s (rank {self.rank}, pid "
                f"{os.getpid()}, {socket.gethostname()}){then}; every thread's stack (most recent call last):")
        parts = [head]
        for ident, frame in sys._current_frames().items():
            if ident != threading.get_ident():
                parts.append(f"--- thread {names.get(ident, '?')} ({ident})\n"
                             + "".join(traceback.format_stack(frame)).rstrip())
        return "\n".join(parts)


def train_to_end(cfg: TrainConfig) -> dict[str, Any]:
    """train() for callers that go on to use the model: a run stopped on request raises RunStopped."""
    summary = train(cfg)
    if summary["stopped"]:
        raise RunStopped(f"{cfg.out}: stopped on request at step {summary['step']} of {cfg.max_steps} "
                         f"(saved: {summary['checkpoint']}); run the same command again to resume")
    return summary


@contextmanager
def deterministic_mode(on: bool):
    """With `on`, torch's deterministic algorithms (and cuDNN's) for the block, the previous settings restored
    after it (tests train in one process). cuBLAS reads CUBLAS_WORKSPACE_CONFIG when it starts: set here if unset,
    it holds for a process whose first GPU matmul is in the block, as a training command's is."""
    if not on:
        yield
        return
    saved = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
             torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(saved[0], warn_only=saved[1])
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = saved[2], saved[3]


def train(cfg: TrainConfig) -> dict[str, Any]:
    """Run (or resume) a training run; returns a summary with the final loss and the last checkpoint."""
    if not cfg.model or not cfg.data:
        raise InputError("both `model` and `data` must be set", field="model" if not cfg.model else "data")
    check_finish(cfg)
    check_loss_weighting(cfg)
    if cfg.deterministic and cfg.attn == attention.FA4_NAME:
        raise InputError(f"attn {attention.FA4_NAME}'s backward is not run in a deterministic mode here: use sdpa "
                         "with deterministic: true", field="deterministic")
    with deterministic_mode(cfg.deterministic):
        return _train(cfg)


def _train(cfg: TrainConfig) -> dict[str, Any]:
    d = parallel.setup(cfg.context_parallel)
    out = Path(cfg.out)
    resume_from = checkpoint.latest(out) if cfg.resume else None

    # --- data, checked before the run folder is written
    batches = Batches(cfg.data, cfg.seed, d, dense_doc_mask=cfg.attn != attention.FLEX_NAME,
                      finish_on=cfg.finish_on, finish_sequences=cfg.finish_sequences,
                      long_doc_tokens=cfg.long_doc_tokens,
                      visited=cfg.max_steps * cfg.micro_batch * cfg.grad_accum * d.dp)
    if resume_from is None:
        batches.check_visited()  # a resumed run keeps the number its order was made for (resume_order)
    seq_len = batches.shards.seq_len
    parallel.check_seq_len(seq_len, d.cp)
    if cfg.loss_weighting and cfg.longce_window + cfg.longce_stride > seq_len:
        raise InputError(f"longce_window + longce_stride ({cfg.longce_window} + {cfg.longce_stride}) must fit the "
                         f"data's {seq_len}-token sequences (a short window longer than them weighs every token 1)",
                         field="longce_window")
    if cfg.doc_mask and d.cp > 1:
        raise InputError("doc_mask is not supported with context_parallel > 1", field="doc_mask")
    if cfg.attn == attention.FA4_NAME and (d.cp > 1 or cfg.doc_mask):
        raise InputError(f"attn {attention.FA4_NAME} runs plain causal attention on one sequence: not with "
                         "context_parallel > 1 (that path has its own attention) nor doc_mask", field="attn")
    if d.main:
        out.mkdir(parents=True, exist_ok=True)
        checkpoint.clean_partial(out)

    # --- model, optimizer; resume
    attention.register()  # makes "longreach_flex" and "longreach_fa4" valid attn values
    attention.prepare(cfg.attn)
    lm, tok = load_start(str(resume_from or cfg.model), cfg.attn, cfg.seed)
    lm.config._attn_implementation = cfg.attn
    tok_hash = _tokenizer_hash(tok)
    check_data_matches_model(batches.shards.manifest, lm, tok_hash, cfg)
    start_meta = checkpoint.read_meta(resume_from or cfg.model)
    lm.config.use_cache = False
    parallel.configure_layers(lm, checkpointing=cfg.activation_checkpointing, compile=cfg.compile,
                              offload=cfg.offload_activations)
    if d.cp > 1:
        context_parallel.enable(lm, d.cp_group)
    weighting = (longce.Settings(cfg.longce_window, cfg.longce_stride, cfg.longce_gamma, cfg.longce_floor)
                 if cfg.loss_weighting == "longce" else None)
    model = CausalLMLoss(lm, cfg.loss_chunk_tokens, cfg.loss_impl, weighting).to(d.device)
    model = parallel.shard_model(model, d)
    opt = torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2),
                            fused=d.device.type == "cuda")
    step = 0
    if resume_from is not None:
        state = checkpoint.load_trainer_state(resume_from)
        _load_optimizer(model, opt, state["optimizer"], d)
        step, batches.position = state["step"], state["data_position"]
        batches.resume_order(state.get("data_order"), batches.position)
        checkpoint.set_rng_state(state["rng"])
        if d.main:
            print(f"resuming from {resume_from} (step {step})", file=sys.stderr)
            _metrics_restart(out / "metrics.jsonl", step)
    if d.main:
        config_io.dump(cfg, out / "config.yaml")  # after a resume's checks: a refused one leaves the run's own
    autocast = _precision(cfg, d.device)
    lineage = list(start_meta.get("lineage", [])) if resume_from is None else start_meta.get("lineage", [])
    if resume_from is None:
        lineage = lineage + [{"stage": start_meta.get("stage", "start"), "path": str(cfg.model),
                              "step": start_meta.get("step")}]
    meta = {"stage": cfg.stage, "config": config_io.to_dict(cfg), "tokenizer_hash": tok_hash,
            "seq_len": seq_len, "data_manifest": batches.shards.manifest.get("config"), "lineage": lineage}

    bar = _progress(cfg, d, step)
    log = (out / "metrics.jsonl").open("a") if d.main else None
    last_loss = float("nan")
    stop, stopped = StopRequest(out, d), False
    model.train()
    stall = None
    try:
        stall = StallReport(cfg.stall_report_s, cfg.stall_exit_s, d.rank)
        first = step
        while step < cfg.max_steps:
            stall.arm(step + 1, may_end=step > first)  # this process's first step may be compiling
            t0 = time.perf_counter()
            # --- data: every micro-batch of the step, so the loss can be normalised by the step's token count
            micro = batches.next_step(cfg.micro_batch, cfg.grad_accum, cfg.doc_mask)
            n_tokens = torch.tensor(float(sum(int((m["labels"] != IGNORE).sum()) for m in micro)), device=d.device)
            n_tokens = parallel.all_reduce_sum(n_tokens, d)
            if n_tokens.item() == 0:
                raise InputError(f"step {step} has no token with a loss (all labels masked)", path=cfg.data)
            # --- forward, loss, backward
            sums: dict[str, torch.Tensor] = {}
            loss_sum = forward_backward(model, micro, n_tokens, autocast, d, sums)
            loss_val = parallel.all_reduce_sum(loss_sum, d).item() / n_tokens.item()
            # --- step
            gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip if cfg.grad_clip > 0
                                                   else float("inf"))
            gnorm = float(gnorm.full_tensor() if hasattr(gnorm, "full_tensor") else gnorm)
            if not (math.isfinite(loss_val) and math.isfinite(gnorm)):
                last = checkpoint.latest(out)
                raise TrainingDiverged(f"loss {loss_val} / gradient norm {gnorm} at step {step + 1}; "
                                       f"the weights were not updated; last good checkpoint: {last or 'none'}")
            lr = lr_at(step, cfg)
            for g in opt.param_groups:
                g["lr"] = lr
            opt.step()
            opt.zero_grad(set_to_none=True)
            step += 1
            last_loss = loss_val
            # --- log
            if d.device.type == "cuda":
                torch.cuda.synchronize()
            dt = time.perf_counter() - t0
            rec = {"step": step, "loss": loss_val, "lr": lr, "grad_norm": gnorm, "tokens": int(n_tokens.item()),
                   "tokens_per_s": micro_tokens(micro) * d.world / dt, "step_time_s": dt,
                   "data_position": batches.position}
            for key, value in sums.items():  # LongCE: the weighted loss trained on, the mean weight
                rec[key] = parallel.all_reduce_sum(value, d).item() / n_tokens.item()
            if d.device.type == "cuda":
                rec["peak_mem_gib"] = torch.cuda.max_memory_allocated() / 2**30
            if log is not None and (step % cfg.log_every == 0 or step == cfg.max_steps):
                log.write(json.dumps(rec) + "\n")
                log.flush()
            if bar is not None:
                bar.set_postfix(loss=f"{loss_val:.4f}", tok_s=f"{rec['tokens_per_s']:.0f}")
                bar.update(1)
            # --- checkpoint (and an early stop, asked for by the STOP file or SIGTERM)
            stopped = step < cfg.max_steps and stop(step)
            if step % cfg.save_every == 0 or step == cfg.max_steps or stopped:
                _save(out, step, model, tok, opt, batches, meta, cfg, d)
            if stopped:
                if d.main:
                    print(f"stopped on request after step {step} of {cfg.max_steps}; checkpoint saved, "
                          "run again to resume", file=sys.stderr)
                break
        stopped = stopped or stop.signalled  # a SIGTERM during the last step or save: callers must stop too
    finally:
        if stall is not None:
            stall.close()  # first: a stall exit decided during the last step's report is called off
        stop.close()  # SIGTERM acts as before once the run is over
    if bar is not None:
        bar.close()
    if log is not None:
        log.close()
    final = checkpoint.latest(out)
    parallel.teardown()
    return {"run": str(out), "step": step, "loss": last_loss, "checkpoint": str(final) if final else None,
            "stopped": stopped}


def forward_backward(model: torch.nn.Module, micro: list[dict[str, torch.Tensor]], n_tokens: torch.Tensor,
                     autocast, d: parallel.Dist, sums: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
    """Forward and backward of every micro-batch of one step; returns this rank's summed cross-entropy (detached).
    Under LongCE the gradient is the weighted loss's; `sums` (when given) collects this rank's sums of the
    weighted loss and of the weights, under the keys the loop logs them by (each divided by the tokens).

    The benchmark (benchmarks/train_throughput.py) times this same function."""
    loss_sum = torch.zeros((), device=d.device)
    for m in micro:
        m = {k: v.to(d.device, non_blocking=True) for k, v in m.items()}
        with autocast():
            loss = model(**m)
        # Gradients are averaged over ranks, so scale by the world size to get the global token mean.
        (loss * d.world / n_tokens).backward()
        parts = getattr(model, "parts", None)
        loss_sum += parts["ce"] if parts else loss.detach()
        if parts and sums is not None:
            for key in ("loss_weighted", "longce_weight_mean"):
                sums[key] = sums.get(key, 0) + parts[key]
    return loss_sum


def micro_tokens(micro: list[dict[str, torch.Tensor]]) -> int:
    return sum(int(m["input_ids"].numel()) for m in micro)


def _progress(cfg: TrainConfig, d: parallel.Dist, step: int):
    if not (cfg.progress and d.main):
        return None
    from tqdm import tqdm
    return tqdm(total=cfg.max_steps, initial=step, desc=f"train[{cfg.stage}]", file=sys.stderr,
                dynamic_ncols=True)


def check_data_matches_model(manifest: dict[str, Any], lm: Any, tok_hash: str | None, cfg: TrainConfig) -> None:
    """Shards tokenized by another tokenizer train on garbage without any error: refuse them up front.

    The check uses what the manifest records: the tokenizer hash (data prepare) and the vocabulary size (every
    writer). Ids at or beyond the model's embedding rows would fail deep inside the forward pass instead."""
    rows = lm.get_input_embeddings().num_embeddings
    vocab = manifest.get("vocab_size")
    if vocab is not None and vocab > rows:
        raise InputError(f"the shards' vocabulary ({vocab} ids) is larger than the model's embedding ({rows} rows): "
                         f"they were tokenized for another model", path=str(cfg.data), field="vocab_size")
    want, got = (manifest.get("tokenizer") or {}).get("hash"), tok_hash
    if want and got and want != got:
        raise InputError(f"the shards were tokenized by another tokenizer (hash {want[:12]}, path "
                         f"{manifest['tokenizer'].get('path')}) than the model's ({got[:12]}, {cfg.model}); "
                         f"re-run `longreach data prepare --tokenizer {cfg.model}`", path=str(cfg.data),
                         field="tokenizer")


def _tokenizer_hash(tok) -> str | None:
    from longreach.model.load import tokenizer_hash
    return tokenizer_hash(tok)


def _save(out: Path, step: int, model, tok, opt, batches: Batches, meta: dict, cfg: TrainConfig,
          d: parallel.Dist) -> None:
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
        get_optimizer_state_dict,
    )
    opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
    model_state = {k.removeprefix("lm."): v for k, v in get_model_state_dict(model, options=opts).items()}
    optim_state = get_optimizer_state_dict(model, opt, options=opts)
    if d.main:
        state = {"step": step, "data_position": batches.position, "data_order": batches.order_spec(),
                 "optimizer": optim_state, "rng": checkpoint.rng_state()}
        checkpoint.save(out, step, model_state, model.lm, tok, state, meta, keep=cfg.keep_checkpoints)
    if d.world > 1:
        torch.distributed.barrier()


def _load_optimizer(model, opt, optim_state: dict, d: parallel.Dist) -> None:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict
    opts = StateDictOptions(full_state_dict=True, broadcast_from_rank0=d.world > 1)
    set_optimizer_state_dict(model, opt, optim_state_dict=optim_state, options=opts)
