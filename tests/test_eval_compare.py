"""`longreach eval compare`: two NIAH results told apart from the grid's noise (bootstrap intervals, sign test)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from longreach.cli import app
from longreach.errors import InputError
from longreach.eval.compare import (
    bootstrap_interval,
    compare,
    differing_test_fields,
    find_results,
    load,
    mean_interval,
    same_grid,
    several,
    sign_test,
)

DATA = Path(__file__).resolve().parents[1] / "docs" / "data"
SLOWDIMS = DATA / "smollm2-128k-slowdims-h100x2-2026-11-26.json"  # a `longreach report` summary (session 10)
SESSION6 = DATA / "smollm2-128k-h100x2-2026-11-26.json"  # a hand-written docs/data file (session 6)


def grid(scores: dict[int, list[float]]) -> dict[tuple[int, float], float]:
    return {(n, 10.0 * i): s for n, v in scores.items() for i, s in enumerate(v)}


@pytest.mark.parametrize("wins,losses", [(0, 0), (0, 12), (8, 1), (3, 3), (13, 8), (1, 9)])
def test_sign_test_is_the_exact_binomial_test(wins, losses):
    n = wins + losses  # by its definition: every split of n fair coins at least as far from n/2 as this one
    expected = sum(math.comb(n, k) for k in range(n + 1) if abs(k - n / 2) >= abs(wins - n / 2)) / 2 ** n
    assert math.isclose(sign_test(wins, losses), expected, rel_tol=1e-12)
    assert sign_test(wins, losses) == sign_test(losses, wins)


def test_bootstrap_keeps_the_lengths_as_designed():
    # one length all 1, one all 0: redrawing depths within a length cannot move the mean; redrawing over the
    # pooled cells would (the stratification is the point)
    assert bootstrap_interval({1000: np.ones(10), 2000: np.zeros(10)}) == (0.5, 0.5)
    # one length of binary cells: close to the normal interval p +- 1.96 sqrt(p (1 - p) / n)
    v = np.array([1.0] * 120 + [0.0] * 80)
    lo, hi = bootstrap_interval({1: v}, draws=20_000, seed=1)
    half = 1.96 * math.sqrt(0.6 * 0.4 / 200)
    assert abs(lo - (0.6 - half)) < 0.01 and abs(hi - (0.6 + half)) < 0.01
    assert bootstrap_interval({1: v}, seed=3) == bootstrap_interval({1: v}, seed=3)  # seeded: reproducible


def test_compare_is_paired_and_antisymmetric():
    a = grid({1000: [1, 1, 1, 1], 8000: [1, 1, 1, 0], 32000: [1, 0, 1, 0]})
    b = grid({1000: [1, 1, 1, 1], 8000: [0, 0, 0, 0], 32000: [1, 0, 1, 1], 64000: [0, 0, 0, 0]})  # 64K: B only
    r = compare(a, b)
    assert r["cells"] == 12 and r["lengths"] == [1000, 8000, 32000]
    assert math.isclose(r["a_mean"], 9 / 12) and math.isclose(r["b_mean"], 7 / 12)
    assert math.isclose(r["difference"], 2 / 12) and (r["a_better"], r["b_better"]) == (3, 1)
    assert r["sign_test_p"] == sign_test(3, 1) and r["difference_ci95"][0] < 2 / 12 < r["difference_ci95"][1]
    assert r["per_length"][1] == {"length": 8000, "cells": 4, "a": 0.75, "b": 0.0, "a_better": 3, "b_better": 0}
    back = compare(b, a)
    assert math.isclose(back["difference"], -r["difference"]) and (back["a_better"], back["b_better"]) == (1, 3)
    same = compare(a, a)
    assert same["difference"] == 0 and same["difference_ci95"] == (0.0, 0.0) and same["sign_test_p"] == 1.0
    ranged = compare(a, b, from_length=8000, to_length=8000)
    assert ranged["cells"] == 4 and ranged["lengths"] == [8000] and math.isclose(ranged["difference"], 0.75)
    with pytest.raises(InputError, match="share no"):
        compare(a, b, from_length=100_000)


def test_load_finds_results_in_summaries_and_hand_written_files():
    label, cells = load(f"{SLOWDIMS}:llama6")
    assert label.endswith("llama6-72-generate/results.json") and len(cells) == 90
    assert math.isclose(sum(cells.values()) / 90, 0.7587301587301588)  # the mean `eval niah` wrote
    label, cells = load(f"{SESSION6}:replay_plain")
    assert label.endswith("niah_generate.replay_plain_72_steps") and len(cells) == 90
    assert len(find_results(json.loads(SLOWDIMS.read_text()))) == 2
    with pytest.raises(InputError, match="2 results"):  # two in the file: which one?
        load(str(SLOWDIMS))
    with pytest.raises(InputError, match="none matches 'nope'.*llama6"):
        load(f"{SLOWDIMS}:nope")
    with pytest.raises(InputError, match="no such file"):
        load("/nonexistent/results.json")


def test_an_exact_label_wins_over_labels_that_contain_it(tmp_path):
    f = tmp_path / "two.json"
    cells = lambda s: [[1000, 0.0, s], [1000, 50.0, s]]
    f.write_text(json.dumps({"af-1.1": {"cells": cells(1.0)}, "af-1.15": {"cells": cells(0.0)}}))
    assert load(f"{f}:af-1.1")[1] == {(1000, 0.0): 1.0, (1000, 50.0): 1.0}
    assert load(f"{f}:af-1.15")[1][(1000, 0.0)] == 0.0
    with pytest.raises(InputError, match="2 match 'af-1'"):
        load(f"{f}:af-1")
    with pytest.raises(InputError, match="read as FILE:NAME") as e:
        load(f"{tmp_path / 'nope.json'}:af")
    assert e.value.path.endswith("nope.json:af")


def test_load_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"cells": [1, 2,\n oops]}')
    with pytest.raises(InputError) as e:
        load(str(bad))
    assert e.value.path == str(bad) and e.value.line == 2
    other = tmp_path / "other.json"
    for cells in ([{"length": 1}], [[1000, 0, None]], [[1000, 0, "x"]], [[1000, 0, 1.0], [1000, 0, 0.0]]):
        other.write_text(json.dumps({"cells": cells, "mean": 0.5}))  # no score, not a number, a cell twice
        with pytest.raises(InputError, match="no NIAH result"):
            load(str(other))


def test_mean_interval_of_a_real_result_holds_its_mean():
    _, cells = load(f"{SLOWDIMS}:yarn6")
    lo, hi = mean_interval(cells)
    assert lo < sum(cells.values()) / len(cells) < hi and hi - lo < 0.2


def test_compare_command_on_the_recorded_runs(tmp_path):
    one = tmp_path / "results.json"  # an `eval niah` results.json: one result, no NAME needed
    one.write_text(json.dumps({"cells": [{"length": n, "depth": d, "score": s} for n, d, s in
                                         json.loads(SLOWDIMS.read_text())["niah"][0]["cells"]], "mean": 0.76}))
    r = CliRunner().invoke(app, ["eval", "compare", str(one), f"{SESSION6}:replay_plain", "--from-length", "96000",
                                 "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    assert out["cells"] == 20 and out["lengths"] == [96000, 128000] and out["a_better"] > out["b_better"]
    assert out["b"].endswith("replay_plain_72_steps") and out["sign_test_p"] == sign_test(out["a_better"],
                                                                                        out["b_better"])
    r = CliRunner().invoke(app, ["eval", "compare", f"{SLOWDIMS}:llama6", f"{SLOWDIMS}:yarn6"])
    assert r.exit_code == 0 and "| 96000 | 10 | 0.60 | 0.20 |" in r.output and "sign test p =" in r.output
    assert "not training" in r.output  # the intervals say what they leave out
    r = CliRunner().invoke(app, ["eval", "compare", str(one), str(one), "--draws", "5"])
    assert r.exit_code != 0 and "--draws" in str(r.exception)


def test_a_against_several_results(tmp_path):
    """A soup against each of its runs, then against their mean cell by cell (one vote per cell), and the cells
    summed over the runs: on the command line, `eval compare A B1 B2`."""
    a = grid({1000: [1, 1, 1, 0], 2000: [1, 1, 0, 0]})
    b1 = grid({1000: [1, 0, 1, 1], 2000: [0, 0, 0, 0]})  # A better in 3 cells, B1 in 1
    b2 = grid({1000: [0, 0, 1, 0], 2000: [1, 1, 0, 0]})  # A better in 2 cells, B2 in none
    r = several(a, [("b1", b1), ("b2", b2)], draws=200)
    assert [row["b"] for row in r["pairs"]] == ["b1", "b2"] and r["a_above_every_b"]
    assert r["summed"] == {"cell_comparisons": 16, "a_better": 5, "b_better": 1, "sign_test_p": sign_test(5, 1)}
    # the mean of B1 and B2 per cell: 1000: .5 0 1 .5, 2000: .5 .5 0 0; A better in 4 cells, the mean in 1
    m = r["against_mean"]
    assert (m["cells"], m["a_better"], m["b_better"], m["sign_test_p"]) == (8, 4, 1, sign_test(4, 1))
    assert math.isclose(m["difference"], 5 / 8 - 3 / 8)
    assert not several(a, [("b1", b1), ("a", a)], draws=200)["a_above_every_b"]
    with pytest.raises(InputError, match="A and B far: .*share no"):
        several(a, [("b1", b1), ("far", {(64000, 0.0): 1.0})], draws=200)
    with pytest.raises(InputError, match="the Bs share no"):
        several(a, [("b1", {(1000, 0.0): 1.0}), ("b2", {(1000, 10.0): 1.0})], draws=200)
    paths = []
    for name, cells in {"a": a, "b1": b1, "b2": b2}.items():
        paths.append(tmp_path / name / "results.json")
        paths[-1].parent.mkdir()
        paths[-1].write_text(json.dumps({"cells": [[n, d, v] for (n, d), v in cells.items()]}))
    r = CliRunner().invoke(app, ["eval", "compare", *map(str, paths), "--draws", "200", "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    assert [row["b"] for row in out["pairs"]] == [str(paths[1]), str(paths[2])] and out["a"] == str(paths[0])
    assert (out["summed"]["a_better"], out["against_mean"]["a_better"]) == (5, 4)
    r = CliRunner().invoke(app, ["eval", "compare", *map(str, paths), "--draws", "200"])
    assert r.exit_code == 0 and r.output.count("sign test p =") == 4 and r.output.count("not training") == 1
    assert "A against the 2 Bs' mean, cell by cell (8 cells)" in r.output and "every B's: yes" in r.output
    assert "Summed over the Bs (16 cell comparisons, each of A's cells once per B): A better 5, B better 1" in r.output


def test_two_results_ran_one_test_where_what_both_record_agrees():
    """Grids with the same cells in another haystack or with another needle are not one grid; a field one result
    does not record is read as its old default (trials 1, no sentences dropped, ...) or, where none, not checked."""
    cells = [[1000, 0.0, 1.0], [1000, 50.0, 0.0]]
    issue = {"cells": cells, "needle": "N1.", "question": "Q1?", "mode": "generate", "haystack_sha256": "h1",
             "trials": 1, "drop_sentences": "", "distractors_in_context": False}
    assert same_grid(issue, {**issue, "model": "other", "mean": 0.5}) and not differing_test_fields(issue, issue)
    assert differing_test_fields(issue, {**issue, "needle": "N2.", "haystack_sha256": "h2"}) == ["needle",
                                                                                              "haystack_sha256"]
    old = {k: v for k, v in issue.items() if k not in ("haystack_sha256", "drop_sentences", "trials")}
    assert same_grid(issue, old)  # written before those fields existed: the same test
    assert not same_grid(issue, {**old, "trials": 3})
    assert differing_test_fields({**issue, "mode": "logprob"}, {**issue, "mode": "logprob",
                                                           "distractors_in_context": True}) == ["distractors_in_context"]
    assert not same_grid(issue, {**issue, "cells": cells[:1]})
