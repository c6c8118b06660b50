"""`longreach eval longbench` (LongBench v1 datasets, QuALITY, the paper's 32K suite) on hand-made files.

Proves: gold answers through the pipeline score 100 on the six 32K-suite datasets (QuALITY from its official
release file) and on TREC; the written files are LongBench's pred format and `eval score` re-scores each to
results.json's number; the suite prints a table with the average beside the paper's; the chat template is
left out for the few-shot datasets as the official pred.py does; prompts are cut in the middle to
--max-length; the tiny model runs through the CLI end to end.
"""

from __future__ import annotations

import json

from longreach.eval import longbench, runners
from test_runners_common import DATA, Oracle, copy_data, invoke, json_out, mute_model_dir, tiny_model_dir

LB = DATA / "longbench"


def _oracle(datasets, chat_template: bool = False, max_length: int = 4096, trec_answer: str = "{gold}") -> Oracle:
    answers = {}
    for d in datasets:
        if d == "quality":
            for ex in longbench.load_quality(LB / "QuALITY.v1.0.1.htmlstripped.dev"):
                answers[ex["input"]] = f"({ex['answers'][0]})"
            continue
        for ex in longbench.load_examples(LB / f"{d}.jsonl"):
            gold = ex["answers"][0]
            answers[ex["input"]] = trec_answer.format(gold=gold) if d == "trec" else gold
    return Oracle(answers, max_length=max_length, chat_template=chat_template)


def test_the_32k_suite_from_a_folder_scores_100_and_eval_score_agrees(tmp_path, capsys):
    data = copy_data("longbench", tmp_path / "data")
    cfg = runners.BenchConfig(model="oracle", out=str(tmp_path / "out"))
    got = runners.run_longbench_tasks(cfg, list(longbench.SUITE_32K), data, backend=_oracle(longbench.SUITE_32K))
    assert got["scores"] == {d: 100.0 for d in longbench.SUITE_32K} and got["average"] == 100.0
    table = capsys.readouterr().err
    assert "average (6 tasks)" in table and "39.41" in table  # ChatQA-2-8B's 32K average from the paper
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert sorted(r["task"] for r in results) == sorted(longbench.SUITE_32K)
    for r in results:
        pred_file = tmp_path / "out" / f"{r['task']}.jsonl"
        lines = [json.loads(x) for x in pred_file.read_text().splitlines()]
        assert all({"pred", "answers", "all_classes", "length"} <= set(x) for x in lines)
        rescored = json_out(invoke("eval", "score", "--benchmark", "longbench", "--task", r["task"],
                                   "--predictions", pred_file))
        assert rescored == {k: r[k] for k in ("benchmark", "task", "n", "score")}
    quality = [json.loads(x) for x in (tmp_path / "out" / "quality.jsonl").read_text().splitlines()]
    assert [q["answers"] for q in quality] == [["B"], ["C"]]  # gold_label 2 and 3 as letters


def test_no_chat_template_for_few_shot_datasets_and_first_line_rule(tmp_path):
    oracle = _oracle(["trec", "qasper"], chat_template=True, trec_answer="{gold}\nQuestion: more text")
    cfg = runners.BenchConfig(model="oracle", out=str(tmp_path))
    got = runners.run_longbench_tasks(cfg, ["trec", "qasper"], LB, backend=oracle)
    assert got["scores"] == {"trec": 100.0, "qasper": 100.0}  # trec counts the first line only
    trec, qasper = oracle.prompts[:2], oracle.prompts[2:]
    assert all(isinstance(p, str) for p in trec)  # raw text, as the official pred.py for trec
    assert trec[0].startswith("Please determine the type of the question below.")
    assert all(isinstance(p, list) and p[0]["role"] == "user" for p in qasper)
    assert qasper[0][0]["content"].startswith("You are given a scientific article and a question.")
    lines = [json.loads(x) for x in (tmp_path / "trec.jsonl").read_text().splitlines()]
    assert lines[-1]["all_classes"][0] == "Location"


def test_max_length_cuts_the_middle_like_the_official_pred_py(tmp_path):
    oracle = _oracle(["hotpotqa"])
    cfg = runners.BenchConfig(model="oracle", out=str(tmp_path), max_length=120)
    assert runners.run_longbench(cfg, "hotpotqa", LB / "hotpotqa.jsonl", backend=oracle)["score"] == 100.0
    for p in oracle.prompts:
        assert 110 <= oracle.count_tokens(p) <= 120  # BOS included, as the official tokenizer() call counts
        assert p.startswith("Answer the question based on the given passages.")
        assert p.endswith("\nAnswer:")
    records = (tmp_path / "records" / "longbench_hotpotqa.jsonl").read_text().splitlines()
    assert [json.loads(x)["prompt_tokens"] <= 120 for x in records] == [True, True]


def test_cli_tiny_model_single_dataset_and_suite(tmp_path, tmp_path_factory):
    model = tiny_model_dir(tmp_path_factory)
    out = tmp_path / "out"
    one = json_out(invoke("eval", "longbench", "--model", model, "--task", "hotpotqa", "--data",
                          LB / "hotpotqa.jsonl", "--out", out))
    assert one["benchmark"] == "longbench" and one["n"] == 2 and 0 <= one["score"] <= 100
    rescored = json_out(invoke("eval", "score", "--benchmark", "longbench", "--task", "hotpotqa",
                               "--predictions", out / "hotpotqa.jsonl"))
    assert rescored["score"] == one["score"]
    result = invoke("eval", "longbench", "--model", mute_model_dir(tmp_path_factory), "--suite", "32k", "--data",
                    LB, "--out", tmp_path / "suite", "--limit", "1")
    suite = json_out(result)
    assert suite["scores"] == {d: 0.0 for d in longbench.SUITE_32K} and suite["average"] == 0.0
    assert "average (6 tasks)" in result.stderr
