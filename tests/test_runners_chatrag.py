"""`longreach eval chatrag`: ChatRAG Bench files laid out as the release's data/ folder, the ChatQA prompt,
F1 (exact match for ConvFinQA), DoQA as the mean of its three domains.

Proves: gold answers score 100 (F1 and ConvFinQA's EM); examples without a usable reference are left out as
the official code does; the prompt is the ChatQA prompt and fits the official 4096-token limit (or
--max-length) with the answer; the written predictions re-score to results.json's number; the tiny model
runs through the CLI.
"""

from __future__ import annotations

import json

from longreach.eval import chatrag, runners
from test_runners_common import DATA, Oracle, invoke, json_out, mute_model_dir

CR = DATA / "chatrag"


def _oracle(datasets, chat_template: bool = False, max_length: int = 4096) -> Oracle:
    answers = {}
    for d in datasets:
        for item in chatrag.load_examples(CR / runners.CHATRAG_FILES[d]):
            gold = str(item["exe_answer"]) if d == "convfinqa" else chatrag.answers_of(item)[0]
            answers[f"{item['messages'][-1]['content']}\n\nAssistant:"] = gold
    return Oracle(answers, max_length=max_length, chat_template=chat_template)


def test_gold_answers_score_100_and_doqa_is_the_mean_of_its_domains(tmp_path, capsys):
    datasets = runners.chatrag_datasets("doc2dial,coqa,convfinqa,doqa")
    oracle = _oracle(datasets)
    got = runners.run_chatrag_tasks(runners.BenchConfig(model="oracle", out=str(tmp_path)), datasets, CR,
                                    backend=oracle)
    assert got["scores"] == {"doc2dial": 100.0, "coqa": 100.0, "convfinqa": 100.0, "doqa": 100.0}
    assert got["average"] is None  # not all nine columns
    results = {r["task"]: r for r in json.loads((tmp_path / "results.json").read_text())}
    assert results["coqa"]["n"] == 2  # the example with an empty reference is not counted
    assert results["convfinqa"]["metric"] == "em" and results["doqa"]["score"] == 100.0
    for d in datasets:  # the predictions file re-scores to the same number
        preds = [json.loads(x) for x in (tmp_path / f"preds_{d}.jsonl").read_text().splitlines()]
        items = chatrag.load_examples(CR / runners.CHATRAG_FILES[d])
        again = chatrag.aggregate([chatrag.score(d, p["prediction"], it) for p, it in zip(preds, items)])
        assert again == results[d]["score"]
    p = oracle.prompts[1]  # doc2dial, a second turn: the instruction goes on the first user turn
    assert p.startswith(f"System: {chatrag.SYSTEM}\n\ntitle: Renewing a passport, source: You can renew")
    assert f"User: {chatrag.DEFAULT_INSTRUCTION} Can I renew online?" in p
    assert "dataset" in capsys.readouterr().err


def test_the_context_is_cut_to_fit_the_limit_with_the_answer(tmp_path):
    oracle = _oracle(["doc2dial"], chat_template=True)
    item = chatrag.load_examples(CR / "doc2dial" / "test.json")[0]
    full = oracle.count_tokens([{"role": "user", "content": chatrag.build_prompt("doc2dial", item, oracle.tokenizer,
                                                                                10**6)}])
    limit = full + chatrag.MAX_NEW_TOKENS - 30  # 30 tokens too many: the end of the context must go
    cfg = runners.BenchConfig(model="oracle", out=str(tmp_path), max_length=limit)
    assert runners.run_chatrag(cfg, "doc2dial", CR / "doc2dial" / "test.json", backend=oracle)["score"] == 100.0
    p = oracle.prompts[0]
    assert p[0]["role"] == "user" and p[0]["content"].startswith("System: ")  # one user message for chat models
    bos = 1  # the official limit counts the text, not BOS
    assert limit - 8 <= oracle.count_tokens(p) - bos + chatrag.MAX_NEW_TOKENS <= limit
    assert "Lost passport" in item["ctxs"][1]["title"] and "embassy" not in p[0]["content"]


def test_cli_runs_a_dataset(tmp_path, tmp_path_factory):
    got = json_out(invoke("eval", "chatrag", "--model", mute_model_dir(tmp_path_factory), "--data", CR,
                          "--dataset", "coqa", "--out", tmp_path))
    assert got == {"benchmark": "chatrag", "task": "coqa", "n": 2, "score": 0.0, "metric": "f1"}
    assert len((tmp_path / "preds_coqa.jsonl").read_text().splitlines()) == 3
