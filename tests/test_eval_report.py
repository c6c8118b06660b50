"""`longreach report`: NIAH, perplexity and benchmark results found anywhere in a run folder, one page."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from longreach.cli import app


def niah_result(model: str, scores: list[float]) -> dict:
    cells = [{"length": n, "depth": d, "score": s}
             for (n, d), s in zip([(n, d) for n in (2000, 4000) for d in (0.0, 50.0, 100.0)], scores)]
    return {"model": model, "cells": cells, "mean": sum(scores) / len(scores), "mode": "generate", "chat": True}


def test_report_gathers_every_result(tmp_path):
    run = tmp_path / "run"
    (run / "niah" / "base").mkdir(parents=True)
    (run / "niah" / "base" / "results.json").write_text(json.dumps(niah_result("base.gguf", [1, 1, 0, 0.5, 1, 0])))
    (run / "ppl").mkdir()
    curve = lambda k: [{"start": 0, "end": 512, "loss": 2.0 * k, "ppl": 7.39 * k},
                       {"start": 512, "end": 1024, "loss": 2.5 * k, "ppl": 12.18 * k}]
    (run / "ppl" / "results.json").write_text(json.dumps({"length": 1024, "buckets": 2, "models": [
        {"model": "base", "ppl": 9.5, "curve": curve(1)}, {"model": "extended", "ppl": 8.1, "curve": curve(0.9)}]}))
    (run / "scores").mkdir()
    for task_name, score in [("en_qa", 12.5), ("en_sum", 10.0), ("en_mc", 40.0)]:
        (run / "scores" / f"{task_name}.json").write_text(json.dumps(
            {"benchmark": "infinitebench", "task": task_name, "n": 10, "score": score}))
    (run / "scores" / "more.jsonl").write_text(
        json.dumps({"benchmark": "infinitebench", "task": "en_dia", "n": 5, "score": 20.0}) + "\n"
        + json.dumps({"benchmark": "longbench", "task": "qasper", "n": 3, "score": 30.0}) + "\n")
    (run / "ruler").mkdir()  # a runner's results.json: a list, RULER entries per length
    (run / "ruler" / "results.json").write_text(json.dumps([
        {"benchmark": "ruler", "task": "niah_single_1", "length": 4096, "n": 2, "score": 100.0},
        {"benchmark": "ruler", "task": "niah_single_1", "length": 8192, "n": 2, "score": 50.0}]))
    (run / "broken.json").write_text("{oops")
    (run / "config.json").write_text(json.dumps({"lr": 1e-4}))  # not a result: ignored

    out = run / "report"
    r = CliRunner().invoke(app, ["report", str(run), "--out", str(out)])
    assert r.exit_code == 0, r.output
    md = (out / "report.md").read_text()
    html = (out / "report.html").read_text()
    assert "## Needle in a haystack" in md and "niah/base/results.json: base.gguf" in md
    assert "| 50 | 1.00 | 1.00 |" in md  # the depth-50 row: 2K and 4K
    assert "| base | 9.50 | 7.39 | 12.18 |" in md and "0-512" in md
    assert "| infinitebench | en_qa | 10 | 12.50 | 43.51 | 48.22 | 19.29 | 38.49 |" in md  # beside the paper
    assert "| InfiniteBench >100K (En.Sum, En.QA, En.MC, En.Dia) | 20.62 | 35.59 |" in md  # all 4 present
    assert "1/6 tasks" in md  # the 32K suite is incomplete: no average
    assert "| ruler | niah_single_1 @ 8192 | 2 | 50.00 |" in md
    assert "broken.json" in md and "lr" not in md
    for png in ("niah_niah_base_results.png", "ppl_ppl_results.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG" and f'src="{png}"' in html
    assert "<table>" in html and "en_dia" in html


def test_report_on_an_empty_folder_and_a_missing_one(tmp_path):
    r = CliRunner().invoke(app, ["report", str(tmp_path), "--out", str(tmp_path / "r")])
    assert r.exit_code == 0 and "No results found" in (tmp_path / "r" / "report.md").read_text()
    r = CliRunner().invoke(app, ["report", str(tmp_path / "nope"), "--out", str(tmp_path / "r2")])
    assert r.exit_code != 0
