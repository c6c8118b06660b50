"""ChatRAG Bench: the ChatQA prompt, the official per-dataset prompt rules and the official metrics."""

from __future__ import annotations

import json

import pytest

from longreach.errors import InputError
from longreach.eval import chatrag


class Chars:
    """One token per character: truncation arithmetic is visible in the text."""

    def encode(self, text, add_special_tokens=False):
        return list(text)

    def decode(self, ids, skip_special_tokens=True):
        return "".join(ids)


def test_chatqa_prompt_format():
    turns = [{"role": "user", "content": "Q1"}, {"role": "assistant", "content": "A1"},
             {"role": "user", "content": "Q2"}]
    assert chatrag.chatqa_prompt("S.", "CTX", turns, "Inst.") == (
        "System: S.\n\nCTX\n\nUser: Inst. Q1\n\nAssistant: A1\n\nUser: Q2\n\nAssistant:")
    assert chatrag.chatqa_prompt("S.", "", turns[2:]) == "System: S.\n\nUser: Q2\n\nAssistant:"
    with pytest.raises(InputError, match="last turn"):
        chatrag.chatqa_prompt("S.", "", turns[:2])
    assert chatrag.DEFAULT_INSTRUCTION == "Please give a full and complete answer for the question."


def _dialogue(n_user: int) -> list[dict]:
    turns = []
    for k in range(n_user):
        turns.append({"role": "user", "content": f"q{k}"})
        if k < n_user - 1:
            turns.append({"role": "assistant", "content": f"a{k}"})
    return turns


def test_build_prompt_keeps_7_turns_and_places_the_instruction_per_dataset():
    item = {"messages": _dialogue(5), "answers": ["x"],
            "ctxs": [{"title": f"T{k}", "text": f"text {k}"} for k in range(7)]}
    p = chatrag.build_prompt("doc2dial", item, Chars(), max_tokens=10_000)
    ctx = "\n\n".join(f"title: T{k}, source: text {k}" for k in range(5))  # only the first 5
    # 9 turns -> the last 7 (q1 ... q4); the instruction goes on the first user turn kept
    assert p == (f"System: {chatrag.SYSTEM}\n\n{ctx}\n\nUser: {chatrag.DEFAULT_INSTRUCTION} q1\n\n"
                 "Assistant: a1\n\nUser: q2\n\nAssistant: a2\n\nUser: q3\n\nAssistant: a3\n\nUser: q4\n\n"
                 "Assistant:")
    p = chatrag.build_prompt("coqa", item, Chars(), max_tokens=10_000)
    assert "q0" not in p and "User: q1\n\n" in p and p.endswith(
        "User: Answer the following question with a short span. The answer needs to be just in a few words. q4"
        "\n\nAssistant:")
    assert item["messages"][-1]["content"] == "q4"  # the item itself is not modified
    full = chatrag.build_prompt("sqa", item, Chars(), max_tokens=10_000)
    cut = chatrag.build_prompt("sqa", item, Chars(), max_tokens=len(full) + 64 - 20, max_new_tokens=64)
    assert len(cut) == len(full) - 20
    assert "title: T4, source: te" not in cut and "title: T0, source: text 0" in cut  # cut from the end
    with pytest.raises(InputError, match="unknown ChatRAG dataset"):
        chatrag.build_prompt("squad", item, Chars())


def test_f1_normalises_like_the_official_code():
    # punctuation becomes a space (ParlAI), not removed (SQuAD): "well-known" == "well known"
    assert chatrag.score("doc2dial", "It is well-known.", {"answers": ["well known it is"]}) == 1.0
    assert chatrag.score("coqa", "The red one", {"answers": ["a red one", "blue"]}) == 1.0
    assert chatrag.score("coqa", "red car", {"answers": ["red"]}) == pytest.approx(2 / 3)
    assert chatrag.score("coqa", "", {"answers": ["red"]}) == 0.0
    assert chatrag.score("coqa", "red", {"answers": ["", "  "]}) is None  # not counted
    assert chatrag.score("topiocqa", "red</s>", {"answer": "red"}) == 1.0
    assert chatrag.aggregate([1.0, None, 0.5]) == 75.0


def test_unanswerable_mapping_and_inscit_references():
    no = {"answers": [chatrag.NO_ANSWER]}
    assert chatrag.score("quac", "Sorry, I cannot find that in the text.", no) == 1.0
    assert chatrag.score("doqa_cooking", "There is no mention of it", no) == 1.0
    assert chatrag.score("doc2dial", "Sorry, I cannot find that in the text.", no) < 1.0  # no mapping
    inscit = {"answers": [chatrag.NO_ANSWER, "Paris"]}
    assert chatrag.score("inscit", "Paris", inscit) == 1.0
    assert chatrag.score("inscit", chatrag.NO_ANSWER, inscit) == 0.0  # the added no-answer reference is dropped


def test_convfinqa_exact_match_rules():
    def item(gold, formula="5 - 3", question="what was the change?"):
        return {"exe_answer": gold, "answers": [formula], "messages": [{"role": "user", "content": question}]}

    assert chatrag.score("convfinqa", "It was 2.0 in total", item(2.0)) == 1.0
    assert chatrag.score("convfinqa", "it is 5 - 3", item(2.0)) == 1.0
    # commas are deleted from the prediction only, so a formula written with one never matches (official)
    assert chatrag.score("convfinqa", "subtract(5, 3)", item(2.0, formula="subtract(5, 3)")) == 0.0
    assert chatrag.score("convfinqa", "about 0.141", item(0.14136)) == 1.0  # rounded to 3 places
    assert chatrag.score("convfinqa", "14.1%", item(0.14136, question="what percent was it?")) == 1.0
    assert chatrag.score("convfinqa", "$1,000 million", item(1000.0)) == 1.0  # "1000"
    assert chatrag.score("convfinqa", "10 (2017) + 20 (2018)", item(30.0, formula="10 + 20")) == 1.0
    assert chatrag.score("convfinqa", "a decrease of 10.0", item(-10.0)) == 1.0
    assert chatrag.score("convfinqa", "an increase of 10.0", item(-10.0)) == 0.0


def test_load_examples(tmp_path):
    p = tmp_path / "test.json"
    p.write_text(json.dumps([{"messages": _dialogue(1), "ctxs": [], "answers": ["x"]},
                             {"messages": _dialogue(1), "answer": 5}]))
    items = chatrag.load_examples(p)
    assert [chatrag.answers_of(i) for i in items] == [["x"], ["5"]]
    p.write_text(json.dumps([{"messages": _dialogue(1)}]))
    with pytest.raises(InputError, match="answers"):
        chatrag.load_examples(p)
    p.write_text("[{")
    with pytest.raises(InputError, match="not valid JSON"):
        chatrag.load_examples(p)
