"""RULER-style tasks: lengths hit in tokens of a real tokenizer, answers present, determinism, metrics."""

from __future__ import annotations

import re
from collections import Counter

import pytest

from longreach.errors import InputError
from longreach.eval import ruler

LENGTH = 2000


@pytest.fixture(scope="module")
def tok():
    from transformers import AutoTokenizer

    from longreach import assets

    return AutoTokenizer.from_pretrained(str(assets.llama3_tokenizer()))


@pytest.fixture(scope="module")
def examples(tok) -> dict[str, list[dict]]:
    return {task: ruler.generate(task, LENGTH, tok, num_samples=2, seed=7) for task in ruler.TASKS}


def test_every_task_hits_the_length_and_contains_its_answers(examples, tok):
    n_outputs = {"niah_multivalue": 4, "niah_multiquery": 4, "vt": 5, "cwe": 10, "fwe": 3}
    for task, exs in examples.items():
        assert [e["id"] for e in exs] == [f"{task}-{LENGTH}-0", f"{task}-{LENGTH}-1"]
        for e in exs:
            total = len(tok.encode(e["input"] + e["answer_prefix"], add_special_tokens=False))
            assert total == e["tokens"] and e["max_new_tokens"] == ruler.TOKENS_TO_GENERATE[task]
            assert 0.95 * LENGTH <= total + e["max_new_tokens"] <= LENGTH, (task, total)
            assert e["task"] == task and e["length"] == LENGTH
            assert len(e["outputs"]) == n_outputs.get(task, 1), task
            assert all(o in e["input"] for o in e["outputs"]), task
        assert exs[0]["input"] != exs[1]["input"]


def test_needles_and_queries(examples):
    for task in ("niah_single_1", "niah_single_2", "niah_multikey_2", "niah_multikey_3"):
        e = examples[task][0]
        (value,) = e["outputs"]
        assert e["input"].count(value) == 1, task
        key = re.search(r"for (\S+) mentioned", e["answer_prefix"]).group(1)
        assert f"for {key} is: {value}." in e["input"], task
        assert e["input"].count(key) == 2, task  # the needle and the question; distractors use other keys
    assert examples["niah_single_1"][0]["input"].count(ruler.NOISE) > 10
    assert examples["niah_single_3"][0]["outputs"][0].count("-") == 4  # a uuid
    mq = examples["niah_multiquery"][0]
    assert mq["answer_prefix"].startswith(" The special magic numbers for ") and ", and " in mq["answer_prefix"]


def test_vt_cwe_fwe_answers_are_right(examples):
    vt = examples["vt"][0]
    value = re.search(r"assigned the value (\d+)", vt["answer_prefix"]).group(1)
    first, *rest = vt["outputs"]
    assert vt["input"].count(f"VAR {first} = {value}") == 1
    assert all(f"VAR {b} = VAR {a}" in vt["input"] for a, b in zip(vt["outputs"], rest))
    assert vt["input"].count("Memorize and track the chain(s)") == 2  # the worked example first
    cwe = examples["cwe"][0]
    main_list = cwe["input"].split("\n")[-2]  # the shot comes first, then the list being asked about
    counts = Counter(re.findall(r"\d+\. (\S+)", main_list))
    top = sorted(counts.values(), reverse=True)
    assert all(counts[w] == top[0] for w in cwe["outputs"]) and top[0] > top[10]
    fwe = examples["fwe"][0]
    coded = Counter(w for w in fwe["input"].split("\n")[0].split()[20:] if re.fullmatch(r"[a-z]{6}", w))
    assert sorted(fwe["outputs"]) == sorted(w for w, _ in coded.most_common(3))


def test_deterministic_per_seed_and_custom_haystack(tok):
    a = ruler.generate("niah_single_1", 600, tok, seed=3)
    assert a == ruler.generate("niah_single_1", 600, tok, seed=3)
    assert a != ruler.generate("niah_single_1", 600, tok, seed=4)
    text = "Lighthouses guide ships at night. Their lamps turn slowly. " * 50
    (e,) = ruler.generate("niah_single_2", 600, tok, haystack_text=text)
    assert "Their lamps turn slowly." in e["input"] and e["outputs"][0] in e["input"]
    with pytest.raises(InputError, match="too short"):
        ruler.generate("niah_single_1", 100, tok)
    with pytest.raises(InputError, match="unknown RULER task"):
        ruler.generate("qa_3", 600, tok)


def test_metrics():
    assert ruler.string_match_all("The numbers are 123 and 456", ["123", "456", "789"]) == pytest.approx(2 / 3)
    assert ruler.string_match_all("ALPHA-beta", ["alpha-BETA"]) == 1.0
    assert ruler.string_match_part("it is Paris", ["London", "paris"]) == 1.0
    assert ruler.string_match_part("it is Rome", ["London", "paris"]) == 0.0
    assert ruler.postprocess("  a\tb\x00c \n") == "a\nb\nc"
    assert ruler.score("vt", " AAAAA, BBBBB\n", ["aaaaa", "bbbbb", "ccccc", "ddddd"]) == 0.5
    assert ruler.score("qa_1", "paris", ["Paris", "x"]) == 1.0
    assert ruler.aggregate([1.0, 0.5, 0.0]) == 50.0 and ruler.aggregate([1.0, 1.0, 0.0]) == 66.67
