"""Where attention goes in a needle-in-a-haystack prompt: for every layer and head, the share of the attention
from the question's tokens that lands on the needle, on the first tokens (the attention sink), and on the last
`recent` tokens before the question; and the needle's logit margin (its best key's logit minus the best other
key's).

    longreach eval attention --model runs/sft --lengths 16000,64000,128000 --depths 0,50,100 --out runs/attn

NIAH says whether the answer came out; this says why not: whether the heads that fetch the needle at short
lengths still put their attention on it at long ones (so the failure is after attention), or spread it thin over
the many keys (dilution: the needle's share falls while its margin holds), or rank other keys above it (the
margin turns negative: positions or content win). The prompt is NIAH's own (same haystack, needle, template,
exact token length). Retrieval heads are the `top` heads with the most needle attention at the shortest length,
averaged over depths; the summary follows them across lengths. The shares overlap where the regions do (a needle
within `recent` of the question counts in both; so does the sink in a short prompt), and the best other key in
the margin is often the sink.

The probe runs the model's normal prefill with an attention function that computes SDPA as usual and, on the
side, the question rows' softmax over all keys in float32 ([heads x question tokens x length] per layer, a few
hundred MB at 128K); no weights change.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from longreach.errors import InputError
from longreach.eval.backends import LocalHF, encode, render
from longreach.eval.niah import DEFAULT_NEEDLE, DEFAULT_QUESTION, Haystack, read_haystack

PROBE_NAME = "longreach_probe"
SINK = 4  # keys counted as the attention sink: the first few positions
STATS = ("needle", "sink", "recent", "margin")  # per layer and head, in each cell


@dataclass
class ProbeConfig:
    model: str = ""  # HF folder or .gguf file
    haystack: str | None = None  # .txt file or folder; None: the Paul Graham essays
    needle: str = DEFAULT_NEEDLE
    question: str = DEFAULT_QUESTION
    lengths: list[int] = field(default_factory=lambda: [4000, 16000])  # whole-prompt tokens
    depths: list[float] = field(default_factory=lambda: [0.0, 50.0, 100.0])  # % of the context
    recent: int = 8192  # keys just before the question counted as "recent"
    top: int = 8  # retrieval heads followed across lengths
    chat: bool | None = None  # None: the chat template when the tokenizer has one
    out: str = "runs/attention"  # results.json, probe.png
    dtype: str | None = None
    device: str | None = None


class _Recorder:
    """Filled by the probe attention during one prefill: per layer, [heads] tensors of each statistic."""

    def __init__(self) -> None:
        self.active = False
        self.needle = (0, 0)  # key span [a, b)
        self.queries = (0, 0)  # query rows [a, b): the question and what follows it
        self.recent = (0, 0)
        self.layers: dict[int, dict[str, Any]] = {}

    def record(self, layer: int, query: Any, key: Any, scaling: float) -> None:
        import torch

        qa, qb = self.queries
        na, nb = self.needle
        q = query[0, :, qa:qb].float()  # [H, m, d]
        k = key[0].float()  # [KV, L, d]
        if k.shape[0] != q.shape[0]:  # grouped-query attention: each KV head serves H / KV query heads
            k = k.repeat_interleave(q.shape[0] // k.shape[0], dim=0)
        logits = torch.einsum("hmd,hld->hml", q, k) * scaling  # [H, m, L]
        rows = torch.arange(qa, qb, device=q.device)[:, None]
        logits = logits.masked_fill(torch.arange(k.shape[1], device=q.device)[None, :] > rows, float("-inf"))
        probs = logits.softmax(-1)
        ra, rb = self.recent
        stats = {"needle": probs[..., na:nb].sum(-1), "sink": probs[..., :SINK].sum(-1),
                 "recent": probs[..., ra:rb].sum(-1)}
        best_needle = logits[..., na:nb].amax(-1)
        logits[..., na:nb] = float("-inf")  # what is left: every other key (no copy of the [H, m, L] logits)
        stats["margin"] = best_needle - logits.amax(-1)
        self.layers[layer] = {name: stats[name].mean(-1).cpu() for name in STATS}


RECORDER = _Recorder()


def probe_attention_forward(module: Any, query: Any, key: Any, value: Any, attention_mask: Any,
                            dropout: float = 0.0, scaling: float | None = None, **kwargs: Any):
    """SDPA as transformers runs it, plus the recorder's statistics during a probed prefill."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if RECORDER.active and query.shape[2] > 1:
        RECORDER.record(module.layer_idx, query, key, scaling if scaling is not None else query.shape[-1] ** -0.5)
    return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                  **kwargs)


def register() -> None:
    """Make "longreach_probe" a valid config._attn_implementation, with SDPA's masks (padding, sliding windows)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(PROBE_NAME, probe_attention_forward)
    AttentionMaskInterface.register(PROBE_NAME, sdpa_mask)


def spans(tokenizer: Any, text: str, needle: str, question: str) -> tuple[list[int], tuple[int, int],
                                                                           tuple[int, int]]:
    """The prompt's token ids, the needle's token span and the question's (from its first token to the end)."""
    needle, question = needle.strip(), question.strip()
    at, q_at = text.find(needle), text.rfind(question) if question else -1
    if at < 0:
        raise InputError("the needle is not in the prompt", field="needle")
    if text.count(needle) > 1:
        raise InputError("the needle occurs more than once in the prompt (the haystack holds it too)",
                         field="needle")
    if q_at <= at:  # the probe reads the attention of the question's rows: without them it measures nothing
        raise InputError("the question is empty or not found after the needle", field="question")
    ids = encode(tokenizer, text)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    offsets = enc["offset_mapping"]
    extra = len(ids) - len(enc["input_ids"])  # special tokens the tokenizer puts in front

    def first_token(char: int) -> int:
        return extra + next(i for i, (_, end) in enumerate(offsets) if end > char)

    needle_span = (first_token(at), first_token(at + len(needle) - 1) + 1)
    return ids, needle_span, (first_token(q_at), len(ids))


def probe_prompt(backend: LocalHF, ids: list[int], needle: tuple[int, int], queries: tuple[int, int],
                 recent: int) -> dict[int, dict[str, Any]]:
    """One prefill of `ids` with the recorder on: {layer: {statistic: [heads] tensor}}."""
    import torch

    RECORDER.needle, RECORDER.queries = needle, queries
    RECORDER.recent = (max(0, queries[0] - recent), queries[0])
    RECORDER.layers, RECORDER.active = {}, True
    try:
        with torch.inference_mode():
            backend._forward(torch.tensor([ids], device=backend.device))
    finally:
        RECORDER.active = False
    if not RECORDER.layers:
        raise InputError("the model's attention never reached the probe (not a transformers attention model?)",
                         field="model")
    return dict(RECORDER.layers)


def retrieval_heads(cells: list[dict[str, Any]], length: int, top: int) -> list[tuple[int, int]]:
    """(layer, head) of the `top` heads with the most needle attention at `length`, averaged over depths."""
    import torch

    at = [c["needle"] for c in cells if c["length"] == length]
    mean = torch.tensor(at).mean(0)  # [layers, heads]
    order = mean.flatten().argsort(descending=True)[:top].tolist()
    return [(i // mean.shape[1], i % mean.shape[1]) for i in order]


def run(cfg: ProbeConfig, backend: LocalHF | None = None) -> dict[str, Any]:
    """Probe every (length, depth); writes results.json and probe.png into cfg.out and returns the results."""
    import torch

    from longreach.eval.plots import probe_lines

    if not cfg.lengths or not cfg.depths or cfg.top < 1 or cfg.recent < 1:
        raise InputError("need lengths, depths, top >= 1 and recent >= 1", field="lengths")
    register()
    backend = backend or LocalHF(cfg.model, dtype=cfg.dtype, device=cfg.device)
    before = backend.model.config._attn_implementation
    backend.model.config._attn_implementation = PROBE_NAME
    chat = cfg.chat if cfg.chat is not None else bool(getattr(backend.tokenizer, "chat_template", None))
    hay = Haystack(backend, read_haystack(cfg.haystack), max(cfg.lengths), chat)
    cells = []
    try:
        for length in sorted(cfg.lengths):
            for depth in cfg.depths:
                prompt = hay.build(length, float(depth), cfg.needle, cfg.question, None)
                ids, needle, queries = spans(backend.tokenizer, render(backend.tokenizer, prompt), cfg.needle,
                                             cfg.question)
                layers = probe_prompt(backend, ids, needle, queries, cfg.recent)
                grid = {s: torch.stack([layers[i][s] for i in sorted(layers)]).tolist() for s in STATS}
                cells.append({"length": length, "depth": float(depth), "tokens": len(ids),
                              "needle_span": list(needle), "question_span": list(queries), **grid})
                best = max(max(row) for row in grid["needle"])
                print(f"L{length} D{depth:g}: best head's needle share {best:.3f}", file=sys.stderr)
    finally:
        backend.model.config._attn_implementation = before
    heads = retrieval_heads(cells, min(cfg.lengths), cfg.top)
    summary = []
    for c in cells:
        summary.append({"length": c["length"], "depth": c["depth"],
                        **{s: sum(c[s][ly][h] for ly, h in heads) / len(heads) for s in STATS},
                        "best_needle": max(max(row) for row in c["needle"])})
    results = {"model": cfg.model, "chat": chat, "needle": cfg.needle, "question": cfg.question,
               "recent": cfg.recent, "sink": SINK, "retrieval_heads": [list(h) for h in heads],
               "summary": summary, "cells": cells}
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results) + "\n")
    probe_lines(results, out / "probe.png")
    return results
