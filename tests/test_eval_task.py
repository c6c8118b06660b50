"""task.run: records appended as they finish; a run stopped half-way resumes to the same records and score."""

from __future__ import annotations

import json

import pytest

from longreach.errors import InputError
from longreach.eval import task
from test_eval_backends import tiny_backend

EXAMPLES = [{"id": f"ex{i}", "text": f"Sentence number {i} is about startups and"} for i in range(7)]


def score(ex, pred):
    return {"score": float(len(pred) % 3 == 0), "chars": len(pred)}


class Interrupt(Exception):
    pass


def test_resume_after_a_stop_equals_an_uninterrupted_run(tmp_path):
    b = tiny_backend()
    build = lambda ex: ex["text"]
    full = task.run(EXAMPLES, build, b, score, tmp_path / "full.jsonl", max_new_tokens=6, batch_size=2, log=False)

    seen = []

    def stopping_score(ex, pred):
        seen.append(ex["id"])
        if len(seen) == 4:  # dies in the middle of the second batch: its first record is already out
            raise Interrupt
        return score(ex, pred)

    path = tmp_path / "resumed.jsonl"
    with pytest.raises(Interrupt):
        task.run(EXAMPLES, build, b, stopping_score, path, max_new_tokens=6, batch_size=2, log=False)
    assert [json.loads(x)["id"] for x in path.read_text().splitlines()] == ["ex0", "ex1", "ex2"]

    built = []
    resumed = task.run(EXAMPLES, lambda ex: built.append(ex["id"]) or ex["text"], b, score, path,
                       max_new_tokens=6, batch_size=2, log=False)
    assert built == [f"ex{i}" for i in range(3, 7)]  # finished examples are not rebuilt or rerun
    assert resumed == full
    assert task.mean_score(resumed) == task.mean_score(full)
    assert all(r["prompt_tokens"] == b.count_tokens(ex["text"]) for r, ex in zip(full, EXAMPLES))
    assert len(path.read_text().splitlines()) == len(EXAMPLES)


def test_torn_last_line_is_dropped_and_no_resume_starts_over(tmp_path):
    b = tiny_backend()
    path = tmp_path / "p.jsonl"
    first = task.run(EXAMPLES[:2], lambda ex: ex["text"], b, score, path, max_new_tokens=4, log=False)
    with open(path, "a") as f:
        f.write('{"id": "ex2", "predic')  # a run killed while writing
    records = task.run(EXAMPLES[:3], lambda ex: ex["text"], b, score, path, max_new_tokens=4, log=False)
    assert records[:2] == first and records[2]["id"] == "ex2"
    assert [json.loads(x)["id"] for x in path.read_text().splitlines()] == ["ex0", "ex1", "ex2"]
    task.run(EXAMPLES[:1], lambda ex: ex["text"], b, score, path, max_new_tokens=4, resume=False, log=False)
    assert len(path.read_text().splitlines()) == 1


def test_choices_score_by_logprob_and_bad_input(tmp_path):
    b = tiny_backend()
    exs = [{"id": "q", "text": "The best thing to do is"}]
    recs = task.run(exs, lambda ex: ex["text"], b, lambda ex, lps: float(lps[0] > lps[1]), tmp_path / "c.jsonl",
                    choices=lambda ex, prompt: [" eat", " sleep"], log=False)
    assert recs[0]["prediction"] == pytest.approx(b.logprob([exs[0]["text"]] * 2, [" eat", " sleep"]))
    with pytest.raises(InputError):
        task.run(exs * 2, lambda ex: ex["text"], b, score, tmp_path / "d.jsonl", log=False)
    (tmp_path / "bad.jsonl").write_text("not json\n")
    with pytest.raises(InputError, match="bad.jsonl:1"):
        task.read_records(tmp_path / "bad.jsonl")
