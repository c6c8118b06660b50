"""Metric primitives against the libraries whose semantics they reproduce."""

from __future__ import annotations

import json
import random
import subprocess
import sys
import warnings

import pytest

from longreach.eval.metrics import (
    first_int_match,
    fuzz_ratio,
    normalize_answer,
    rouge_l_longbench,
    rouge_lsum,
)


def _random_text(rng: random.Random, words: list[str], n_max: int) -> str:
    seps = [" ", " ", " ", "\n", ", ", "!\n", " - ", "\n\n"]
    return "".join(rng.choice(words) + rng.choice(seps) for _ in range(rng.randint(0, n_max)))


def test_rouge_lsum_equals_rouge_score_library():
    from rouge_score import rouge_scorer

    # InfiniteBench's scorer asks for all four types; score_multi picks the best reference per type, so the
    # rougeLsum value does not depend on the others.
    scorer = rouge_scorer.RougeScorer(["rougeLsum"], use_stemmer=False)
    rng = random.Random(0)
    words = ["the", "cat", "sat", "on", "a", "mat", "dog", "ran", "far", "away", "Über", "café", "naïve", "x",
             "42", "it's"]
    for _ in range(80):
        refs = [_random_text(rng, words, 30) for _ in range(rng.randint(1, 3))]
        pred = _random_text(rng, words, 30)
        assert rouge_lsum(refs, pred) == scorer.score_multi(refs, pred)["rougeLsum"].fmeasure, (refs, pred)
    assert rouge_lsum("a b c", "a b c") == 1.0  # a plain string is one reference, not a list of characters


def test_fuzz_ratio_equals_fuzzywuzzy_pure_python():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Using slow pure-python SequenceMatcher"
        from fuzzywuzzy import fuzz
    if fuzz.SequenceMatcher.__module__ != "difflib":
        pytest.skip("python-Levenshtein is installed: fuzzywuzzy is not on its difflib path")
    rng = random.Random(1)
    for _ in range(300):
        a = "".join(rng.choice("ab c(d)") for _ in range(rng.randint(0, 12)))
        b = "".join(rng.choice("ab c(d)") for _ in range(rng.randint(0, 12)))
        assert fuzz_ratio(a, b) == fuzz.ratio(a, b), (a, b)
    assert fuzz_ratio("", "") == 100 and fuzz_ratio("", "x") == 0 and fuzz_ratio(None, "x") == 0


def test_small_helpers():
    assert normalize_answer("The  Eiffel-Tower, an icon!") == "eiffeltower icon"
    assert first_int_match("pass key: 0012 and 34") == "0012" and first_int_match("none") == ""


# The call structure of LongBench's `python eval.py` (module -> scorer -> rouge_score -> Rouge.get_scores), so
# the package's recursive LCS read-out meets the recursion limit exactly where it does in the official run.
_OFFICIAL_SHAPE_METRIC = '''
from rouge import Rouge

def rouge_score(prediction, ground_truth, **kwargs):
    rouge = Rouge()
    try:
        scores = rouge.get_scores([prediction], [ground_truth], avg=True)
    except:  # noqa: E722
        return 0.0
    return scores["rouge-l"]["f"]
'''
_OFFICIAL_SHAPE_EVAL = '''
import json, sys
from lb_metric import rouge_score

def scorer(pairs):
    scores = []
    for p, r in pairs:  # a loop, not a comprehension: a comprehension is one more frame on CPython < 3.12
        scores.append(rouge_score(p, r))
    return scores

print(json.dumps(scorer(json.load(open(sys.argv[1])))))
'''


def test_rouge_l_longbench_matches_the_official_run_at_the_recursion_limit(tmp_path):
    rng = random.Random(2)
    pairs = [("c " + " ".join(f"p{i}" for i in range(n)), "c r0 r1 r2") for n in (980, 986, 987, 995)]
    vocab = [f"w{i}" for i in range(200)]
    for n, m in ((440, 480), (520, 560), (560, 600), (300, 300)):  # LCS read-outs of ~850-1100 frames
        pairs.append((" ".join(rng.choices(vocab, k=n)), " ".join(rng.choices(vocab, k=m))))
    pairs.append(("a b. c d", "c d. a b"))
    (tmp_path / "lb_metric.py").write_text(_OFFICIAL_SHAPE_METRIC)
    (tmp_path / "lb_eval.py").write_text(_OFFICIAL_SHAPE_EVAL)
    (tmp_path / "pairs.json").write_text(json.dumps(pairs))
    run = subprocess.run([sys.executable, "lb_eval.py", "pairs.json"], cwd=tmp_path, capture_output=True,
                         text=True, check=True)
    official = json.loads(run.stdout)
    ours = [rouge_l_longbench(p, r) for p, r in pairs]
    assert ours == official
    assert official[1] > 0 and official[2] == 0.0  # the limit sits between these two
    assert any(x == 0.0 for x in official[4:8]) and any(x > 0 for x in official[4:8])
