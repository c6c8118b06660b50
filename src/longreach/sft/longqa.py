"""Long-document QA evaluation: does a tuned model answer questions about long real documents?

Each example is a held-out real document (Gutenberg plays, Paul Graham essays: documents the `synth`
training split never uses) of a given length in the model's tokens, with SYNTHETIC key-value facts placed at
sentence boundaries: the asked fact at an evenly spread depth, plus other facts of the same kind with other
keys. The answer is the asked 4-digit value; a prediction is right when its first run of digits equals it
(other answers: the normalised answer appears in the normalised prediction). Greedy decoding.

    examples = build_long_qa_eval(docs, tokenizer, [8000, 16000], n=20, seed=1234)
    records = longreach.eval.task.run(examples, build_prompt, backend, score_long_qa, "preds.jsonl", 16)

Run:  longreach sft eval-long-qa --model PATH --lengths 8000,16000,32000 --n 20 --out DIR   (one GPU)
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from longreach.eval.metrics import first_int_match, normalize_answer
from longreach.sft.data import Sample
from longreach.sft.format import prompt_for
from longreach.sft.synth import SHORT_SPAN, DocPool, SynthConfig, load_docs, make_sample

MAX_NEW_TOKENS = 16  # a 4-digit answer, with room for a short phrase around it
EVAL_DOCS = ["gutenberg", "paul_graham"]


def build_long_qa_eval(docs: list[Any], tokenizer: Any, lengths: list[int], n: int, seed: int = 1234,
                       facts: int = 3) -> list[dict[str, Any]]:
    """n examples per length; example i of a length has its asked fact at depth i / (n - 1)."""
    pool = DocPool(docs, tokenizer)
    cfg = SynthConfig(qa="needle", construction="insert", facts=facts, seed=seed)
    out = []
    for length in lengths:
        for i in range(n):
            depth = i / (n - 1) if n > 1 else 0.5
            rec = make_sample(cfg, pool, length, np.random.default_rng([seed, length, i]), depth=depth)
            out.append({"id": f"{length}-{i}", "length": length, "target_depth": round(depth, 4), **rec})
    return out


def score_long_qa(example: dict[str, Any], prediction: str) -> dict[str, Any]:
    answer = example["answer"]
    if answer.isdigit():
        ok = first_int_match(prediction) == answer
    else:
        ok = normalize_answer(answer) in normalize_answer(prediction)
    return {"score": float(ok), "length": example["length"], "depth": example["gold"]["depth"],
            "answer": answer, "context_tokens": example["tokens"]}


def summarize(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Accuracy per length and per depth (fifths), and overall."""
    by_len: dict[int, list[float]] = defaultdict(list)
    by_depth: dict[str, list[float]] = defaultdict(list)
    for r in records:
        by_len[int(r["length"])].append(r["score"])
        by_depth[f"{min(4, int(r['depth'] * 5)) * 20}-{min(4, int(r['depth'] * 5)) * 20 + 20}%"].append(r["score"])
    return {"accuracy": {str(k): sum(v) / len(v) for k, v in sorted(by_len.items())},
            "n": {str(k): len(v) for k, v in sorted(by_len.items())},
            "by_depth": {k: sum(v) / len(v) for k, v in sorted(by_depth.items())},
            "mean": sum(r["score"] for r in records) / max(1, len(records))}


def run_long_qa_eval(backend: Any, out: str | Path, lengths: list[int], n: int, docs: list[str] | None = None,
                     split: str = "heldout", fmt: str = "chatqa", seed: int = 1234,
                     model: str = "") -> dict[str, Any]:
    """Evaluate `backend` (longreach.eval.backends) and write OUT/predictions.jsonl + OUT/results.json."""
    from longreach.eval.task import run

    out = Path(out)
    tok = backend.tokenizer
    examples = build_long_qa_eval(load_docs(docs or EVAL_DOCS, split), tok, lengths, n, seed)

    def build_prompt(ex: dict[str, Any]) -> Any:
        s = Sample(messages=[{"role": "user", "content": ex["question"]}], context=ex["context"],
                   instruction=SHORT_SPAN)
        return prompt_for(tok, s, fmt, None, None)

    records = run(examples, build_prompt, backend, score_long_qa, out / "predictions.jsonl",
                  max_new_tokens=MAX_NEW_TOKENS, batch_size=getattr(backend, "batch_size", 1), stop=["\n"])
    res = {"model": model, "format": fmt, "split": split, "seed": seed, **summarize(records)}
    (out / "results.json").write_text(json.dumps(res, indent=2) + "\n")
    return res
