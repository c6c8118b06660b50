"""The one evaluation shape: build prompts -> run the backend -> score, one jsonl record per example.

    records = task.run(examples, build_prompt, backend, score, "out/predictions.jsonl", max_new_tokens=64)

Each finished example is appended to `out_path` (flushed and synced) as {"id", "prompt_tokens", "prediction",
"score", ...}. Restarting with `resume=True` skips ids already in the file, so a stopped run continues where it
stopped and ends with the same records (and the same aggregate) as an uninterrupted one.

With `choices`, an example is scored by log-probability instead of generation: its prediction is the list of
teacher-forced log-probs of the `choices(example, prompt)` continuations of its prompt.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from longreach.errors import InputError


def read_records(path: str | Path) -> dict[str, dict[str, Any]]:
    """Records of a predictions file by id. A torn last line (a run killed mid-write) is dropped."""
    path = Path(path)
    if not path.exists():
        return {}
    records: dict[str, dict[str, Any]] = {}
    lines = path.read_text().splitlines(keepends=True)
    for n, line in enumerate(lines, 1):
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            if n == len(lines) and not line.endswith("\n"):
                # Cut the torn line off, so the next append starts on a fresh line.
                with open(path, "r+") as f:
                    f.truncate(sum(len(x.encode()) for x in lines[:-1]))
                break
            raise InputError("not a JSON record", path=str(path), line=n) from None
        if not isinstance(rec, dict) or "id" not in rec:
            raise InputError("record has no 'id'", path=str(path), line=n)
        records[str(rec["id"])] = rec
    return records


def run(examples: Iterable[dict[str, Any]], build_prompt: Callable[[dict[str, Any]], Any], backend: Any,
        score: Callable[[dict[str, Any], Any], float | dict[str, Any]], out_path: str | Path,
        max_new_tokens: int = 64, resume: bool = True, batch_size: int = 8, stop: list[str] | None = None,
        choices: Callable[[dict[str, Any], Any], list[str]] | None = None, log: bool = True) -> list[dict[str, Any]]:
    """Evaluate `examples` (dicts with a unique "id"); returns every record in example order.

    `build_prompt(example)` is called only for examples not already finished. `score(example, prediction)`
    returns a float, or a dict with "score" plus extra fields for the record.
    """
    examples = list(examples)
    ids = [str(ex["id"]) for ex in examples]
    if len(set(ids)) != len(ids):
        raise InputError("example ids are not unique")
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    if not resume and out_path.exists():
        out_path.unlink()
    done = read_records(out_path)
    todo = [ex for ex in examples if str(ex["id"]) not in done]
    if log and done:
        print(f"resuming {out_path}: {len(examples) - len(todo)} of {len(examples)} done", file=sys.stderr)
    start = time.time()
    with open(out_path, "a") as f:
        for b in range(0, len(todo), batch_size):
            batch = todo[b:b + batch_size]
            prompts = [build_prompt(ex) for ex in batch]
            if choices is None:
                predictions: list[Any] = backend.generate(prompts, max_new_tokens, stop=stop)
            else:
                options = [choices(ex, p) for ex, p in zip(batch, prompts)]
                flat = backend.logprob([p for p, opts in zip(prompts, options) for _ in opts],
                                       [o for opts in options for o in opts])
                predictions, k = [], 0
                for opts in options:
                    predictions.append(flat[k:k + len(opts)])
                    k += len(opts)
            for ex, prompt, pred in zip(batch, prompts, predictions):
                scored = score(ex, pred)
                extra = dict(scored) if isinstance(scored, dict) else {"score": float(scored)}
                rec = {"id": str(ex["id"]), "prompt_tokens": backend.count_tokens(prompt), "prediction": pred,
                       **extra}
                done[rec["id"]] = rec
                f.write(json.dumps(rec) + "\n")
            f.flush()
            os.fsync(f.fileno())  # a finished example survives a crash of the machine, not only of the run
            if log:
                n = b + len(batch)
                print(f"{n}/{len(todo)} examples, {time.time() - start:.0f}s", file=sys.stderr)
    return [done[i] for i in ids]


def mean_score(records: list[dict[str, Any]]) -> float:
    return sum(float(r["score"]) for r in records) / len(records) if records else 0.0
