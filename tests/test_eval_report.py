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
    (run / "ppl-ctx").mkdir()  # the control of "extended" (eval ppl --context 256): its curve over it, per bucket
    (run / "ppl-ctx" / "results.json").write_text(json.dumps({"length": 1024, "buckets": 2, "context": 256, "models": [
        {"model": "extended", "ppl": 4.05, "curve": [{**b, "ppl": b["ppl"] / r} for b, r in zip(curve(0.9), (2, 4))]}]}))
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
    (run / "train").mkdir()  # a training log, as `longreach train` writes it (any file name)
    (run / "train" / "cpt-metrics.jsonl").write_text("".join(json.dumps(
        {"step": k, "loss": 3.0 - 0.1 * k, "lr": 1e-4, "tokens": 100, "tokens_per_s": 1000.0 * k,
         "step_time_s": 9.0 if k == 1 else 0.5 + 0.1 * k, "peak_mem_gib": 1.0 + k}) + "\n" for k in range(1, 13)))
    (run / "attn").mkdir()  # an attention probe's results.json (eval attention)
    (run / "attn" / "results.json").write_text(json.dumps({"model": "sft", "retrieval_heads": [[3, 1]], "summary": [
        {"length": 4096, "depth": 50.0, "needle": 0.25, "sink": 0.5, "recent": 0.9, "margin": 1.5,
         "best_needle": 0.4}], "cells": []}))
    (run / "broken.json").write_text("{oops")
    (run / "config.json").write_text(json.dumps({"lr": 1e-4}))  # not a result: ignored

    out = run / "report"
    r = CliRunner().invoke(app, ["report", str(run), "--out", str(out), "--meta", "card=H100 80GB",
                                 "--meta", "command=make x=1"])
    assert r.exit_code == 0, r.output
    md = (out / "report.md").read_text()
    html = (out / "report.html").read_text()
    assert "## Needle in a haystack" in md and "niah/base/results.json: base.gguf" in md
    assert "| 50 | 1.00 | 1.00 |" in md  # the depth-50 row: 2K and 4K
    assert "| mean | 0.67 | 0.50 |" in md  # per length
    assert "| base | 9.50 | 7.39 | 12.18 |" in md and "0-512" in md
    assert "| ppl/results.json | extended | 256 | 2.00 | 2.00 | 4.00 |" in md and "base | 256" not in md
    assert (out / "ppl_ratio_to_control.png").read_bytes()[:4] == b"\x89PNG"
    assert "| infinitebench | en_qa | 10 | 12.50 | 43.51 | 48.22 | 19.29 | 38.49 |" in md  # beside the paper
    assert "| InfiniteBench >100K (En.Sum, En.QA, En.MC, En.Dia) | 20.62 | 35.59 |" in md  # all 4 present
    assert "1/6 tasks" in md  # the 32K suite is incomplete: no average
    assert "| ruler | niah_single_1 @ 8192 | 2 | 50.00 |" in md
    assert "broken.json" in md and "lr" not in md
    # the training log: 12 steps, step 1's warm-up left out of the medians (steps 2-12: 0.7..1.7 s, 2K..12K tok/s)
    assert "| train/cpt-metrics.jsonl | 12 | 1.80 | 2.25 | 1.20 | 7000 | 13.00 |" in md
    summary = json.loads((out / "summary.json").read_text())
    assert summary["meta"] == {"card": "H100 80GB", "command": "make x=1"}
    (niah,) = summary["niah"]
    assert niah["file"] == "niah/base/results.json" and niah["per_length"] == {"2000": 2 / 3, "4000": 0.5}
    assert niah["cells"][2] == [2000, 100.0, 0]
    lo, hi = niah["mean_ci95"]  # stratified bootstrap: 2K draws from {1, 1, 0}, 4K from {0.5, 1, 0}
    assert 0.0 < lo < niah["mean"] < hi < 1.0 and f"(95% interval {lo:.2f}-{hi:.2f}" in md
    assert summary["ppl"][0]["context"] is None
    assert summary["ppl"][0]["models"][1] == {"model": "extended", "path": None, "ppl": 8.1,
                                              "buckets": [[0, 512, 7.39 * 0.9], [512, 1024, 12.18 * 0.9]]}
    (ratio,) = summary["ppl_ratios"]
    assert ratio["control"] == "ppl-ctx/results.json" and ratio["buckets"] == [[0, 512, 2.0], [512, 1024, 4.0]]
    (t,) = summary["train"]
    assert t["steps"] == 12 and abs(t["step_time_s_median"] - 1.2) < 1e-9 and t["peak_mem_gib"] == 13.0
    assert len(summary["scores"]) == 7
    assert "## Attention on the needle" in md and "| 4K | 50 | 0.25 | 0.50 | 0.90 | 1.50 | 0.40 |" in md
    assert summary["probe"][0]["retrieval_heads"] == [[3, 1]] and len(summary["niah"]) == 1
    for png in ("niah_niah_base_results.png", "ppl_ppl_results.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG" and f'src="{png}"' in html
    assert "<table>" in html and "en_dia" in html


def test_report_on_an_empty_folder_and_a_missing_one(tmp_path):
    r = CliRunner().invoke(app, ["report", str(tmp_path), "--out", str(tmp_path / "r")])
    assert r.exit_code == 0 and "No results found" in (tmp_path / "r" / "report.md").read_text()
    r = CliRunner().invoke(app, ["report", str(tmp_path / "nope"), "--out", str(tmp_path / "r2")])
    assert r.exit_code != 0
    r = CliRunner().invoke(app, ["report", str(tmp_path), "--out", str(tmp_path / "r3"), "--meta", "card"])
    assert r.exit_code != 0 and "--meta" in str(r.exception) and "KEY=VALUE" in str(r.exception)


def test_report_ratio_tables_follow_each_bucket_layout(tmp_path):
    """Long curves of two lengths (2 and 3 buckets), each with its control: one ratio table per layout, each row
    under its own headings; the control with no long curve of its model pairs with nothing."""
    def result(length, n, k, context=None, model="m"):
        step = length // n
        curve = [{"start": i * step, "end": (i + 1) * step, "loss": 1.0, "ppl": 10.0 * k} for i in range(n)]
        return {"length": length, "buckets": n, "context": context,
                "models": [{"model": model, "path": f"/runs/{model}", "ppl": 10.0 * k, "curve": curve}]}

    for name, r in {"a": result(1024, 2, 3.0), "a-ctx": result(1024, 2, 2.0, context=256),
                    "b": result(3072, 3, 1.5), "b-ctx": result(3072, 3, 1.0, context=512),
                    "c-ctx": result(3072, 3, 1.0, context=512, model="other")}.items():
        (tmp_path / "run" / name).mkdir(parents=True)
        (tmp_path / "run" / name / "results.json").write_text(json.dumps(r))
    out = tmp_path / "report"
    r = CliRunner().invoke(app, ["report", str(tmp_path / "run"), "--out", str(out)])
    assert r.exit_code == 0, r.output
    md = (out / "report.md").read_text()
    assert "| curve | model | W | overall | 0-512 | 512-1K |" in md and "| a/results.json | m | 256 | 1.50 | 1.50 | 1.50 |" in md
    assert "| curve | model | W | overall | 0-1K | 1K-2K | 2K-3K |" in md
    assert "| b/results.json | m | 512 | 1.50 | 1.50 | 1.50 | 1.50 |" in md
    assert len(json.loads((out / "summary.json").read_text())["ppl_ratios"]) == 2


def test_report_pairs_results_on_the_same_grid(tmp_path):
    """Two results on one grid get a paired comparison; a third on another grid pairs with nothing."""
    run = tmp_path / "run"
    for name, scores in {"a": [1, 1, 1, 1, 1, 0], "b": [1, 0, 0, 0, 1, 0]}.items():
        (run / name).mkdir(parents=True)
        (run / name / "results.json").write_text(json.dumps(niah_result(name, scores)))
    (run / "c").mkdir()
    other = {"model": "c", "cells": [{"length": 8000, "depth": 0.0, "score": 1.0}], "mean": 1.0}
    (run / "c" / "results.json").write_text(json.dumps(other))
    out = tmp_path / "report"
    r = CliRunner().invoke(app, ["report", str(run), "--out", str(out)])
    assert r.exit_code == 0, r.output
    (pair,) = json.loads((out / "summary.json").read_text())["niah_pairs"]
    assert (pair["a"], pair["b"]) == ("a/results.json", "b/results.json")
    assert (pair["a_better"], pair["b_better"]) == (3, 0) and abs(pair["difference"] - 0.5) < 1e-9
    assert pair["sign_test_p"] == 0.25  # 3 of 3 differing cells one way: 2 x (1/2)^3
    md = (out / "report.md").read_text()
    assert "### Pairs on the same grid" in md and "| a/results.json | b/results.json | 0.83 | 0.33 | +0.50 [" in md
    assert "not training" in md  # what the intervals leave out
    assert "| 3 / 0 | 0.25 |" in md


def test_report_pairs_a_soup_with_its_runs_and_only_grids_of_one_test(tmp_path, monkeypatch):
    """A soup's grid (its results.json names the runs it averages) against its runs' grids, with the two readings
    of `eval compare A B1 B2`; a grid with the same cells but another needle and haystack (an unseen grid) pairs with
    none of them; a run's result from before haystack_sha256 existed still pairs; a run named by a relative path is
    found by the absolute one the soup records."""
    run = tmp_path / "run"
    test = {"needle": "N.", "question": "Q?", "haystack_sha256": "h1"}
    unseen = {"needle": "Other.", "question": "Other?", "haystack_sha256": "h2"}
    sources = [str(tmp_path / "m" / "r1"), str(tmp_path / "m" / "r2"), str(tmp_path / "m" / "r3")]
    grids = {"r1": ([1, 1, 1, 1, 1, 0], test, "m/r1", None),
             "r2": ([1, 0, 0, 1, 1, 0], {"needle": "N.", "question": "Q?"}, str(tmp_path / "m" / "r2"), None),
             "soup": ([1, 1, 1, 1, 1, 1], test, "m/soup", sources),  # r3's grid is not in the folder
             "soup-unseen": ([0, 0, 0, 0, 0, 0], unseen, "m/soup", sources)}
    for name, (scores, fields, model, srcs) in grids.items():
        (run / name).mkdir(parents=True)
        result = {**niah_result(model, scores), **fields, "model_sources": srcs}
        (run / name / "results.json").write_text(json.dumps(result))
    monkeypatch.chdir(tmp_path)  # where the relative model paths were written
    out = tmp_path / "report"
    r = CliRunner().invoke(app, ["report", str(run), "--out", str(out)])
    assert r.exit_code == 0, r.output
    summary = json.loads((out / "summary.json").read_text())
    assert [(p["a"], p["b"]) for p in summary["niah_pairs"]] == [
        ("r1/results.json", "r2/results.json"), ("r1/results.json", "soup/results.json"),
        ("r2/results.json", "soup/results.json")] and summary["niah_pairs_left_out"] == []
    (soup,) = summary["niah_soups"]  # the unseen grid has no run on its test
    assert soup["soup"] == "soup/results.json" and soup["sources"] == 3 and soup["a_above_every_b"]
    assert [(row["b"], row["a_better"], row["b_better"]) for row in soup["pairs"]] == [
        ("r1/results.json", 1, 0), ("r2/results.json", 3, 0)]
    assert soup["summed"] == {"cell_comparisons": 12, "a_better": 4, "b_better": 0, "sign_test_p": 0.125}
    assert (soup["against_mean"]["a_better"], soup["against_mean"]["b_better"]) == (3, 0)
    assert summary["niah"][0]["needle"] == "N." and summary["niah"][2]["model_sources"] == sources
    md = (out / "report.md").read_text()
    assert "### Soup against its runs: soup/results.json" in md and "averages 3 runs; 2 of their grids" in md
    assert "Summed over the Bs (12 cell comparisons" in md and "| r2/results.json | 1.00 | 0.50 |" in md


def test_report_keeps_logprob_grids_of_different_distractors_apart(tmp_path):
    run = tmp_path / "run"
    for name, strict in (("lenient", False), ("strict", True)):
        (run / name).mkdir(parents=True)
        result = {**niah_result(name, [1, 1, 1, 1, 1, 0]), "mode": "logprob", "distractors_in_context": strict}
        (run / name / "results.json").write_text(json.dumps(result))
    out = tmp_path / "report"
    assert CliRunner().invoke(app, ["report", str(run), "--out", str(out)]).exit_code == 0
    assert json.loads((out / "summary.json").read_text())["niah_pairs"] == []


def test_report_names_results_left_out_of_the_pairs(tmp_path):
    run = tmp_path / "run"
    for i in range(7):
        (run / f"m{i}").mkdir(parents=True)
        (run / f"m{i}" / "results.json").write_text(json.dumps(niah_result(f"m{i}", [1, 1, 1, 1, 1, i % 2])))
    out = tmp_path / "report"
    assert CliRunner().invoke(app, ["report", str(run), "--out", str(out)]).exit_code == 0
    summary = json.loads((out / "summary.json").read_text())
    assert len(summary["niah_pairs"]) == 15 and summary["niah_pairs_left_out"] == ["m6/results.json"]
    assert "Not paired (more than six results on one grid" in (out / "report.md").read_text()
