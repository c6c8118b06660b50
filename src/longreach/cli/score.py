"""`longreach eval score`: score a predictions file the way a benchmark's official code does (CPU, seconds).

    longreach eval score --benchmark infinitebench --task en_qa --predictions preds_longbook_qa_eng.jsonl
    longreach eval score --benchmark longbench --task qasper --predictions qasper.jsonl --per-example s.jsonl

Prints one JSON object {"benchmark", "task", "n", "score"} on stdout, score on 0-100 (InfiniteBench: not
rounded, as its official code; LongBench: rounded to 2 decimals, as its official code).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from longreach.cli.apps import eval_app
from longreach.errors import InputError


@eval_app.command("score")
def score(
    benchmark: Annotated[str, typer.Option(help="infinitebench or longbench")],
    task: Annotated[str, typer.Option(help="InfiniteBench task (en_sum, en_qa, en_mc, en_dia, passkey, "
                                           "number_string, kv_retrieval, or an official file name such as "
                                           "longbook_qa_eng) or LongBench dataset (qasper, hotpotqa, ...)")],
    predictions: Annotated[Path, typer.Option(help="predictions .jsonl in the benchmark's own format")],
    per_example: Annotated[Path | None, typer.Option(help="write each record's score (0-1) to this .jsonl")] = None,
) -> None:
    """Score predictions with the official metric of the benchmark; print {"benchmark","task","n","score"}."""
    if not predictions.is_file():
        raise InputError("no such file", path=str(predictions))
    if benchmark == "infinitebench":
        from longreach.eval import infinitebench

        name = infinitebench.short_name(task)
        value, records = infinitebench.score_file(name, predictions)
        rows = [{"line": r["line"], "id": r["id"], "score": r["score"], "prediction": r["prediction"],
                 "label": r["label"]} for r in records]
    elif benchmark == "longbench":
        from longreach.eval import longbench

        name = longbench.check_dataset(task)
        value, records = longbench.score_file(name, predictions)
        rows = [{"line": r["line"], "id": r["id"], "score": r["score"], "prediction": r["prediction"],
                 "answers": r["answers"]} for r in records]
    else:
        raise InputError(f"unknown benchmark '{benchmark}' (infinitebench or longbench)", field="benchmark")
    if per_example is not None:
        per_example.parent.mkdir(parents=True, exist_ok=True)
        tmp = per_example.with_name(per_example.name + ".tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            f.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
        tmp.replace(per_example)
    print(json.dumps({"benchmark": benchmark, "task": name, "n": len(rows), "score": value}))
