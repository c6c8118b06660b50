"""LongBench v1 metrics against hand-computed cases, one per metric type and per quirk of the official code."""

from __future__ import annotations

import json
import sys

import pytest

from longreach.errors import InputError
from longreach.eval import longbench as lb


def _rouge_f(lcs: int, hyp_words: int, ref_words: int) -> float:
    """The `rouge` package's F: 2 * (P * R) / (P + R + 1e-8)."""
    p, r = lcs / hyp_words, lcs / ref_words
    return 2.0 * ((p * r) / (p + r + 1e-8))


def test_qa_f1_removes_only_ascii_punctuation():
    assert lb.score_example("hotpotqa", "The Eiffel Tower!", ["eiffel tower"]) == 1.0
    # an em dash is not ASCII punctuation: one token "eiffel—tower" shares nothing with "eiffel", "tower"
    assert lb.score_example("hotpotqa", "Eiffel—Tower", ["eiffel tower"]) == 0.0
    # best over the answers; P = 1/2, R = 1
    assert lb.score_example("musique", "an old Paris", ["London", "Paris"]) == pytest.approx(2 / 3)
    assert lb.score_example("qasper", "", ["yes"]) == 0.0


def test_first_line_cut_only_for_four_datasets_and_only_leading_newlines():
    assert lb.score_example("triviaqa", "\n\nParis\nLondon", ["Paris"]) == 1.0
    assert lb.score_example("narrativeqa", "\n\nParis\nLondon", ["Paris"]) == pytest.approx(2 / 3)
    classes = ["Human", "Location"]
    assert lb.score_example("trec", "\n\nLocation\nHuman", ["Location"], classes) == 1.0
    assert lb.score_example("trec", " \nLocation", ["Location"], classes) == 0.0  # first line is " "
    assert lb.score_example("samsum", "\nthe cat sat\nmore", ["the cat sat"]) == pytest.approx(0.999999995)


def test_rouge_package_semantics():
    assert lb.rouge_score("the cat sat", "the cat sat") == pytest.approx(0.999999995, abs=1e-15)
    assert lb.rouge_score("The cat", "the cat") == pytest.approx(_rouge_f(1, 2, 2), abs=1e-15)  # case-sensitive
    # sentences split on "." (summary-level LCS): reordered sentences still match ...
    assert lb.rouge_score("a b. c d", "c d. a b") == pytest.approx(0.999999995, abs=1e-15)
    # ... but newlines are just whitespace: one sentence each, LCS 2 of 4
    assert lb.rouge_score("a b\nc d", "c d\na b") == pytest.approx(_rouge_f(2, 4, 4), abs=1e-15)
    assert lb.rouge_score("", "a b") == 0.0  # the package raises on an empty hypothesis: scored 0
    assert lb.rouge_score("...", "a b") == 0.0
    # a very long sentence pair overflows the package's recursive LCS read-out in the official run: 0
    long_pred = "c " + " ".join(f"w{i}" for i in range(1200))
    assert lb.rouge_score(long_pred, "c r0 r1") == 0.0
    assert lb.rouge_score(long_pred.replace(" w600", ". w600"), "c r0 r1") > 0.0  # split in two sentences


def test_classification_substrings_and_list_mutation_quirk():
    classes = ["Human", "Human being", "Location"]
    assert lb.score_example("trec", "Human being", ["Human being"], classes) == 1.0  # "Human" dropped
    assert lb.score_example("trec", "Location or Human being", ["Location"], classes) == pytest.approx(1 / 3)
    assert lb.score_example("trec", "human being", ["Human being"], classes) == 0.0  # case-sensitive
    # Removing "Ani" while iterating skips "An", which stays: 1 / len(["An", "Animal"]).
    assert lb.classification_score("Animal", "Animal", all_classes=["Ani", "An", "Animal", "Dog"]) == 0.5
    assert lb.classification_score("Animal", "Animal", all_classes=["Ani", "Dog", "An", "Animal"]) == 0.5
    assert lb.classification_score("Animal", "Animal", all_classes=["Ani", "Dog", "Animal", "An"]) == 1.0


def test_retrieval_and_count_score_the_share_of_number_runs():
    assert lb.score_example("passage_retrieval_en", "Paragraph 12", ["Paragraph 12"]) == 1.0
    assert lb.score_example("passage_retrieval_en", "Paragraph 12, not Paragraph 3", ["Paragraph 12"]) == 0.5
    assert lb.score_example("passage_retrieval_en", "Paragraph 12 or ١٢", ["Paragraph 12"]) == 0.5  # \d: Unicode
    assert lb.score_example("passage_retrieval_en", "none", ["Paragraph 12"]) == 0.0
    assert lb.score_example("passage_retrieval_zh", "答案是段落5", ["段落5"]) == 1.0
    assert lb.score_example("passage_count", "There are 3 unique, 3.", [3]) == 1.0
    assert lb.score_example("passage_count", "3 or 4", ["3"]) == 0.5


def test_code_similarity_first_clean_line_and_fuzz_rounding():
    assert lb.score_example("lcc", "```python\n# comment\nx = foo(1)\n", ["x = foo(1)"]) == 1.0
    assert lb.score_example("repobench-p", "// only a comment", ["x = 1"]) == 0.0  # no clean line: ""
    # difflib ratio 14/16 = 0.875 -> round(87.5) = 88 (round half to even)
    assert lb.score_example("lcc", "\n\nreturn a", ["return b"]) == 0.88


def test_chinese_metrics_segment_with_jieba():
    # jieba: 我/爱/北京/天安门 vs 我/爱/北京 -> P 3/4, R 1
    assert lb.score_example("multifieldqa_zh", "我爱北京天安门。", ["我爱北京"]) == pytest.approx(6 / 7)
    assert lb.score_example("dureader", "我爱北京天安门", ["我爱北京"]) == pytest.approx(_rouge_f(3, 4, 3))
    assert lb.score_example("lsht", "体育新闻", ["体育"], ["体育", "财经"]) == 1.0


def test_file_scoring_last_line_all_classes_and_rounding(tmp_path):
    p = tmp_path / "trec.jsonl"
    lines = [{"pred": "Location", "answers": ["Location"], "all_classes": ["X"], "length": 10},
             {"pred": "Human", "answers": ["Location"], "all_classes": ["X"]},
             {"pred": "none", "answers": ["Location"], "all_classes": ["Human", "Location"]}]
    p.write_text("".join(json.dumps(x) + "\n" for x in lines))
    value, rows = lb.score_file("trec", p)
    assert [r["score"] for r in rows] == [1.0, 0.0, 0.0]  # the last line's classes apply to the first line
    assert value == 33.33
    p.write_text(json.dumps({"pred": "x", "answers": ["y"]}) + "\n")
    with pytest.raises(InputError, match=":1: field 'all_classes'"):
        lb.score_file("trec", p)
    with pytest.raises(InputError, match="unknown LongBench dataset"):
        lb.score_file("qmsum_zh", p)


QUALITY_ARTICLE = {
    "article_id": "52995", "set_unique_id": "52995", "source": "Gutenberg", "title": "Spaceman on a Spree",
    "article": "Si retired. Gubelin was upset.\n",
    "questions": [
        {"question": "Why is Gubelin upset? ", "question_unique_id": "52995_1",
         "options": ["Money", "Si retired", "Rain", "Food"], "writer_label": 2, "gold_label": 2, "difficult": 0},
        {"question": "Who retired?", "question_unique_id": "52995_2",
         "options": ["Gubelin", "Nobody", "Si", "Both"], "writer_label": 3, "gold_label": 3, "difficult": 1},
    ],
}


def test_quality_official_format_and_accuracy(tmp_path):
    src = tmp_path / "QuALITY.v1.0.1.htmlstripped.dev"
    src.write_text(json.dumps(QUALITY_ARTICLE) + "\n")
    exs = lb.load_quality(src)
    assert [e["answers"] for e in exs] == [["B"], ["C"]] and exs[0]["_id"] == "52995_1"
    assert exs[0]["input"] == "Question: Why is Gubelin upset?\n\nOptions:\n(A) Money\n(B) Si retired\n(C) Rain\n(D) Food"
    assert lb.quality_choice("(B) Si retired") == "B" and lb.quality_choice("Answer: C.") == "C"
    assert lb.quality_choice("none of them") is None
    preds = tmp_path / "quality.jsonl"
    preds.write_text(json.dumps({"pred": " B", "answers": ["B"]}) + "\n"
                     + json.dumps({"pred": "I think (A)", "answers": ["C"]}) + "\n")
    assert lb.score_file("quality", preds)[0] == 50.0
    test_split = {**QUALITY_ARTICLE, "questions": [{k: v for k, v in q.items() if k != "gold_label"}
                                                   for q in QUALITY_ARTICLE["questions"]]}
    src.write_text(json.dumps(test_split) + "\n")
    with pytest.raises(InputError, match="gold_label"):
        lb.load_quality(src)
    assert [e["answers"] for e in lb.load_quality(src, require_gold=False)] == [[], []]
    assert set(lb.SUITE_32K) <= set(lb.DATASET2METRIC)


def _run_cli(args: list[str], capsys) -> tuple[int, str, str]:
    from longreach.cli import main

    old = sys.argv
    sys.argv = ["longreach", *args]
    try:
        main()
        code = 0
    except SystemExit as e:
        code = e.code or 0
    finally:
        sys.argv = old
    out = capsys.readouterr()
    return code, out.out, out.err


def test_cli_longbench(tmp_path, capsys):
    p = tmp_path / "hotpotqa.jsonl"
    p.write_text(json.dumps({"pred": "Paris", "answers": ["Paris"], "all_classes": None}) + "\n"
                 + json.dumps({"pred": "Lyon", "answers": ["Paris"], "all_classes": None}) + "\n"
                 + json.dumps({"pred": "Paris x", "answers": ["Paris"], "all_classes": None}) + "\n")
    per = tmp_path / "per.jsonl"
    args = ["eval", "score", "--benchmark", "longbench", "--task", "hotpotqa", "--predictions", str(p)]
    code, out, err = _run_cli([*args, "--per-example", str(per)], capsys)
    assert code == 0, err
    assert json.loads(out) == {"benchmark": "longbench", "task": "hotpotqa", "n": 3, "score": 55.56}
    assert [json.loads(x)["score"] for x in per.read_text().splitlines()] == [1.0, 0.0, pytest.approx(2 / 3)]
    p.write_text('{"pred": "x", "answers": "Paris", "all_classes": null}\n')
    code, out, err = _run_cli(args, capsys)
    assert code == 2 and out == "" and f"{p}:1: field 'answers'" in err
    code, out, err = _run_cli([*args[:2], "--benchmark", "scrolls", *args[4:]], capsys)
    assert code == 2 and "unknown benchmark" in err


def test_prompts_follow_the_official_templates():
    class Words:  # one token per character keeps the arithmetic visible
        def encode(self, text, add_special_tokens=False):
            return list(text)

        def decode(self, ids, skip_special_tokens=True):
            return "".join(ids)

    ex = {"context": "C" * 50, "input": "Q?"}
    full = lb.build_prompt("qasper", ex, Words(), 10_000)
    assert full.startswith("You are given a scientific article and a question.")
    assert "Article: " + "C" * 50 + "\n\n Answer the question based on the above article" in full
    assert full.endswith("Question: Q?\n\nAnswer:")
    cut = lb.build_prompt("qasper", ex, Words(), 100)
    assert cut == full[:50] + full[-50:]
    assert lb.MAX_NEW_TOKENS["qmsum"] == 512 and lb.MAX_NEW_TOKENS["hotpotqa"] == 32
    assert set(lb.PROMPTS) == set(lb.DATASET2METRIC) == set(lb.MAX_NEW_TOKENS)
