"""`longreach eval infinitebench` end to end on hand-made files in the official data format.

Proves: gold answers through the whole pipeline score 100 on all seven tasks; the written preds file is in the
official results format and `eval score` re-scores it to exactly results.json's number; prompts are the official
templates cut in the middle to the window minus the official max new tokens (completion and chat styles); a run
stopped by Ctrl-C resumes without redoing finished examples and ends with the uninterrupted run's files and
score; --limit then a full run resumes; resuming with other settings is refused; a served model
(`longreach serve`) gives the same predictions as the same model run locally.
"""

from __future__ import annotations

import json
import threading

import pytest

from longreach.eval import infinitebench, runners
from test_eval_backends import tiny_backend, tiny_tokenizer
from test_runners_common import DATA, Counting, Interrupting, Oracle, invoke, json_out, tiny_model_dir

IB = DATA / "infinitebench"


def _examples(official: str) -> list[dict]:
    return infinitebench.load_examples(IB / f"{official}.jsonl", official)


def _gold(official: str, ex: dict) -> str:
    label = infinitebench.label_of(official, ex)
    return label if isinstance(label, str) else label[0]


def _oracle(official: str, max_length: int = 4096, chat_template: bool = False) -> Oracle:
    """Markers: the question (QA/MC/kv), the answer itself where it is in the context (passkey/number), the
    reference summary's example (by a context-specific phrase) and the dialogue's names."""
    answers = {}
    for ex in _examples(official):
        gold = _gold(official, ex)
        if official in ("passkey", "number_string"):
            answers[f"is {gold}. Remember"] = f"{gold}."
        elif official == "longbook_sum_eng":
            answers["\n\nPrologue." if ex["context"].startswith("Prologue.") else "\n\nChapter one."] = gold
        elif official == "longdialogue_qa_eng":
            answers[f"You are a good boy.\n{gold}:"] = gold.title()
        elif official == "longbook_choice_eng":
            answers[ex["input"]] = "ABCD"[ex["options"].index(gold)]
        else:
            answers[ex["input"]] = gold
    return Oracle(answers, max_length=max_length, chat_template=chat_template)


@pytest.mark.parametrize("official", sorted(infinitebench.MAX_NEW_TOKENS))
def test_gold_answers_score_100_and_eval_score_agrees(tmp_path, official):
    oracle = _oracle(official)
    cfg = runners.BenchConfig(model="oracle", out=str(tmp_path))
    entry = runners.run_infinitebench(cfg, official, IB / f"{official}.jsonl", backend=oracle)
    n = len(_examples(official))
    assert entry == {"benchmark": "infinitebench", "task": infinitebench.short_name(official), "n": n,
                     "score": 100.0}
    assert json.loads((tmp_path / "results.json").read_text()) == entry
    preds = [json.loads(line) for line in (tmp_path / f"preds_{official}.jsonl").read_text().splitlines()]
    assert [p["id"] for p in preds] == [ex["id"] for ex in _examples(official)]
    assert all(set(p) == {"id", "prediction", "ground_truth"} for p in preds)
    rescored = json_out(invoke("eval", "score", "--benchmark", "infinitebench", "--task", official,
                               "--predictions", tmp_path / f"preds_{official}.jsonl"))
    assert rescored["score"] == entry["score"] and rescored["n"] == n
    assert all(isinstance(p, str) for p in oracle.prompts)  # a tokenizer without chat template: completion


def test_prompts_are_the_official_templates_cut_in_the_middle(tmp_path):
    official, window = "longbook_qa_eng", 300
    ex = _examples(official)[1]
    assert len(tiny_tokenizer().encode(ex["context"], add_special_tokens=False)) > window
    for chat in (False, True):
        oracle = _oracle(official, max_length=window, chat_template=chat)
        cfg = runners.BenchConfig(model="oracle", out=str(tmp_path / f"chat{chat}"))
        entry = runners.run_infinitebench(cfg, official, IB / f"{official}.jsonl", backend=oracle)
        assert entry["score"] == 100.0  # the question survives the cut
        for prompt in oracle.prompts:
            # The whole prompt plus the official 40 new tokens fits the window, and only just.
            assert window - 8 <= oracle.count_tokens(prompt) + 40 <= window
        p = oracle.prompts[1]
        if chat:  # the official GPT-4 template and system message
            assert p[0] == {"role": "system", "content": runners.GPT4_SYSTEM}
            text = p[1]["content"]
            assert text.startswith("Read the book below and answer a question.\n\nChapter one.")
            assert text.endswith(f"Question: {ex['input']}\n\nBe very concise.")
        else:  # the official template for open models
            text = p
            assert text.startswith("Read the book and answer the question. Be very concise in your answer.\n\n"
                                   "Chapter one. Mara kept")
            assert text.endswith(f"Question: {ex['input']}\nAnswer:")
        # Cut in the middle: the start and the end of the book are there, most of its middle is not.
        assert "kept only the lamp. \n\nQuestion:" in text
        assert text.count("Mara") < ex["context"].count("Mara") / 2


def test_a_run_stopped_by_ctrl_c_resumes_to_the_uninterrupted_result(tmp_path):
    official = "number_string"
    data = IB / f"{official}.jsonl"
    cfg_a = runners.BenchConfig(model="tiny", out=str(tmp_path / "a"))
    full = runners.run_infinitebench(cfg_a, official, data, backend=tiny_backend())
    cfg_b = runners.BenchConfig(model="tiny", out=str(tmp_path / "b"))
    with pytest.raises(KeyboardInterrupt):
        runners.run_infinitebench(cfg_b, official, data, backend=Interrupting(tiny_backend(), k=1))
    records = tmp_path / "b" / "records" / f"infinitebench_{official}.jsonl"
    assert len(records.read_text().splitlines()) == 1  # the finished example was kept
    assert not (tmp_path / "b" / "results.json").exists()
    again = Counting(tiny_backend())
    resumed = runners.run_infinitebench(cfg_b, official, data, backend=again)
    assert again.prompts == 2  # only the two unfinished examples were generated
    assert resumed == full
    name = f"preds_{official}.jsonl"
    assert (tmp_path / "b" / name).read_text() == (tmp_path / "a" / name).read_text()


def test_cli_limit_then_full_run_resumes_and_rescores(tmp_path, tmp_path_factory):
    from longreach.errors import InputError

    model, out = tiny_model_dir(tmp_path_factory), tmp_path / "out"
    args = ["eval", "infinitebench", "--model", model, "--task", "passkey", "--data", IB, "--out", out, "--no-chat"]
    assert json_out(invoke(*args, "--limit", "1"))["n"] == 1
    result = invoke(*args)
    full = json_out(result)
    assert full["n"] == 3 and "1 of 3 done" in result.stderr
    assert json.loads((out / "results.json").read_text()) == full
    rescored = json_out(invoke("eval", "score", "--benchmark", "infinitebench", "--task", "passkey",
                               "--predictions", out / "preds_passkey.jsonl"))
    assert rescored == full
    with pytest.raises(InputError, match="other settings"):  # a resume may not mix two prompt budgets
        invoke(*args, "--max-length", "100")


def test_a_served_model_gives_the_local_predictions(tmp_path, tmp_path_factory):
    from longreach.eval.backends import LocalHF
    from longreach.serve import make_server

    model = tiny_model_dir(tmp_path_factory)
    server = make_server(LocalHF(str(model), device="cpu"), port=0, quiet=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        args = ["eval", "infinitebench", "--model", model, "--task", "passkey", "--data", IB, "--limit", "2"]
        served = json_out(invoke(*args, "--out", tmp_path / "http", "--base-url", url))
    finally:
        server.shutdown()
    local = json_out(invoke(*args, "--out", tmp_path / "local"))
    assert served == local
    name = "preds_passkey.jsonl"
    assert (tmp_path / "http" / name).read_text() == (tmp_path / "local" / name).read_text()
