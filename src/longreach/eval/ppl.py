"""Perplexity by position: does the model still predict well far into a long sequence?

    longreach eval ppl --model runs/base --model runs/extended --text held_out/ --length 16384 --out runs/ppl

The held-out text (documents read in sorted file order, joined by blank lines) is tokenised by each model's own
tokenizer and cut into `sequences` consecutive windows of `length` tokens (BOS first when the tokenizer adds
one). Each position's next-token loss is averaged into `buckets` equal position ranges; a model whose window
or RoPE cannot reach a position shows its perplexity rising there. The logits are never materialised for the
whole sequence: the loss is computed from the final hidden states `chunk_tokens` positions at a time.
Writes results.json and ppl.png (one line per model, so base / RoPE-changed / extended share one plot).

`context` W scores the same tokens with at most W tokens of context (windows of W moved by W/2, each token
scored once with between W/2 and W tokens before it; BOS first in each window when the sequences have one): the
text's own difficulty per bucket, the control for a long curve. A curve that rises with position while its
W-context control stays flat is the model getting worse far into the sequence; one that rises with it is harder
text there.
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from longreach.data.readers import iter_documents
from longreach.errors import InputError
from longreach.eval.backends import LocalHF, encode


@dataclass
class PplConfig:
    models: list[str] = field(default_factory=list)  # HF folders or .gguf files, one curve each
    text: str = ""  # held-out text: a file or folder (.txt/.md/.rst, .jsonl, .parquet)
    length: int = 4096  # tokens per sequence
    buckets: int = 8  # equal position ranges over the sequence
    sequences: int = 4  # windows of `length` tokens averaged per model
    context: int | None = None  # score each token with at most this many tokens of context (None: all before it)
    out: str = "runs/ppl"  # results.json and ppl.png
    dtype: str | None = None  # None: bfloat16 on GPU, float32 on CPU
    device: str | None = None  # None: cuda when available


def read_text(path: str | Path, max_chars: int) -> str:
    """Documents of a file or folder (sorted, any format `iter_documents` reads) joined by blank lines, until
    `max_chars` characters are read."""
    parts, size = [], 0
    for doc in iter_documents(path, on_error="skip"):
        parts.append(doc.text.strip())
        size += len(parts[-1])
        if size >= max_chars:
            break
    if not parts:
        raise InputError("no text found", path=str(path))
    return "\n\n".join(parts)


def bos_prefix(tokenizer: Any) -> list[int]:
    """[BOS] when the tokenizer puts one in front of a text, else []."""
    probe = encode(tokenizer, "a")
    return probe[:1] if tokenizer.bos_token_id is not None and probe[:1] == [tokenizer.bos_token_id] else []


def windows(tokenizer: Any, text: str, length: int, count: int) -> list[list[int]]:
    """Up to `count` consecutive windows of exactly `length` tokens."""
    ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    bos = bos_prefix(tokenizer)
    step = length - len(bos)
    n = min(count, len(ids) // step)
    if n == 0:
        raise InputError(f"the text has {len(ids)} tokens; one sequence needs {step}", field="length")
    return [bos + ids[i * step:(i + 1) * step] for i in range(n)]


def windowed_logprobs(backend: Any, ids: list[int], context: int, bos: list[int]) -> Any:
    """log p(ids[t] | at most `context` tokens before it) for t >= 1: windows of `context` tokens moved by half of
    it, each scoring the targets the previous window did not (the first window scores from t = 1), with `bos`
    put in front of every window but the first (which already starts with it when the sequence has one)."""
    import torch

    if context < 2 + len(bos):
        raise InputError(f"must be at least {2 + len(bos)}, got {context}", field="context")
    if bos and ids[:len(bos)] != bos:
        raise InputError("the sequence must start with the BOS it is scored with", field="context")
    out = torch.zeros(len(ids) - 1)
    done = 1  # targets 1..done-1 are scored
    while done < len(ids):
        end = min(len(ids), done + (context - len(bos)) // 2) if done > 1 else min(len(ids), context)
        start = max(0, end - context + len(bos))
        pre = bos if start > 0 else []
        lp, _ = backend.token_logprobs(pre + ids[start:end])
        # lp[j] is the target (pre + ids[start:end])[j + 1] = ids[start - len(pre) + j + 1]
        j0 = done - start + len(pre) - 1
        out[done - 1:end - 1] = lp[j0:]
        done = end
    return out


def bucket_losses(losses: list[Any], length: int, buckets: int) -> list[dict[str, float]]:
    """Mean loss of target positions 1..length-1 in `buckets` equal ranges of [0, length)."""
    import torch

    total = torch.stack([torch.as_tensor(x, dtype=torch.float64) for x in losses]).mean(0)  # [length-1]
    pos = torch.arange(1, length)
    out = []
    for b in range(buckets):
        lo, hi = b * length // buckets, (b + 1) * length // buckets
        sel = total[(pos >= lo) & (pos < hi)]
        loss = float(sel.mean())
        out.append({"start": lo, "end": hi, "loss": loss, "ppl": math.exp(loss)})
    return out


def labels(paths: list[str]) -> list[str]:
    """Shortest distinct path tails: runs/a/final, runs/b/final -> a/final, b/final."""
    parts = [Path(p).parts for p in paths]
    for k in range(1, max(len(x) for x in parts) + 1):
        names = ["/".join(x[-k:]) for x in parts]
        if len(set(names)) == len(names):
            return names
    return list(paths)


def run(cfg: PplConfig, backends: list[Any] | None = None) -> dict[str, Any]:
    """Per-model overall and per-bucket perplexity; `backends` (LocalHF) replace loading `cfg.models`."""
    from longreach.eval.plots import ppl_curves

    if not cfg.models and not backends:
        raise InputError("give at least one --model", field="models")
    if cfg.length < 2 or not 1 <= cfg.buckets < cfg.length or cfg.sequences < 1:
        raise InputError("need length >= 2, 1 <= buckets < length, sequences >= 1", field="length")
    text = read_text(cfg.text, max_chars=12 * cfg.length * cfg.sequences)  # >= 4 chars/token is typical
    names = labels(cfg.models) if cfg.models else [f"model{i}" for i in range(len(backends or []))]
    models = []
    for i, name in enumerate(names):
        backend = backends[i] if backends else LocalHF(cfg.models[i], dtype=cfg.dtype, device=cfg.device)
        reach = cfg.context or cfg.length
        if reach > backend.max_length:
            print(f"note: {name}: {reach} tokens exceed its window ({backend.max_length})", file=sys.stderr)
        seqs = windows(backend.tokenizer, text, cfg.length, cfg.sequences)
        bos = bos_prefix(backend.tokenizer)
        losses = []
        for k, ids in enumerate(seqs):
            lp = backend.token_logprobs(ids)[0] if cfg.context is None \
                else windowed_logprobs(backend, ids, cfg.context, bos)
            losses.append(-lp)
            print(f"{name}: sequence {k + 1}/{len(seqs)} loss {float(-lp.mean()):.3f}", file=sys.stderr)
        curve = bucket_losses(losses, cfg.length, cfg.buckets)
        loss = sum(float(x.double().mean()) for x in losses) / len(losses)
        models.append({"model": name, "path": cfg.models[i] if cfg.models else name, "loss": loss,
                       "ppl": math.exp(loss), "sequences": len(seqs), "window": backend.max_length,
                       "curve": curve})
        del backend
    results = {"text": cfg.text, "length": cfg.length, "buckets": cfg.buckets, "context": cfg.context,
               "models": models}
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    ppl_curves(results, out / "ppl.png")
    return results
