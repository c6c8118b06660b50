"""Is one NIAH result better than another, or inside the grid's noise? A paired comparison on the shared cells.

    longreach eval compare runs/a/niah/results.json runs/b/niah/results.json
    longreach eval compare docs/data/x.json:llama6 docs/data/y.json:replay_plain --from-length 32000

A grid of 9 lengths x 10 depths with one prompt per cell scores each cell 0 or 1 (or a fraction): its mean moves
by several hundredths between runs that differ in nothing that matters. Two ways to tell:
- a 95% interval for each mean and for the paired difference, by a bootstrap stratified by length (the depths
  of each length are redrawn with replacement, the lengths stay as designed, so a grid that is all 1.00 up to
  16K adds no spurious noise there);
- an exact two-sided sign test on the cells that differ (ties dropped): the chance of a split at least this
  uneven if neither model were better.
The lengths are treated as fixed: a length with one depth, or with every depth scoring the same, adds no width,
and with few depths per length the percentile interval runs somewhat narrow (about sqrt((n-1)/n)); the sign test
makes no such assumption, so read the two together.

A result is any JSON object with "cells" (a list of {"length", "depth", "score"} or [length, depth, score]): an
`eval niah` results.json, or one found inside a `longreach report` summary.json or a hand-written docs/data file.
`FILE:NAME` picks the one whose label (a summary entry's "file", or the dotted key path) is NAME, or else contains it.

Several Bs (`several`: a soup against the runs it averages, say): A against each B, then against the Bs' mean
cell by cell (one vote per cell), and the cells each side won summed over the Bs (A's cells counted once per B).
Two results are on one grid (`same_grid`, what a report pairs) when their cells and the test they ran agree
(TEST_FIELDS: needle, question, haystack, ... where both record them); `eval compare` only notes a difference.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from longreach.errors import InputError

Cells = dict[tuple[int, float], float]  # (length, depth) -> score


def cells_of(obj: dict[str, Any]) -> Cells | None:
    """The (length, depth) -> score map of a result object, or None if it is not one."""
    raw = obj.get("cells")
    if not isinstance(raw, list) or not raw:
        return None
    out: Cells = {}
    for c in raw:
        try:
            if isinstance(c, dict) and {"length", "depth", "score"} <= set(c):
                key, score = (int(c["length"]), float(c["depth"])), float(c["score"])
            elif isinstance(c, list) and len(c) == 3:
                key, score = (int(c[0]), float(c[1])), float(c[2])
            else:
                return None
        except (TypeError, ValueError):  # a score of null or text: not a NIAH result
            return None
        if key in out:  # one score per cell (trials are averaged into it)
            return None
        out[key] = score
    return out


def find_results(data: Any, label: str = "") -> list[tuple[str, dict[str, Any]]]:
    """Every NIAH result object inside a JSON value, with a label: a summary entry's "file", else its dotted key
    path."""
    found: list[tuple[str, dict[str, Any]]] = []
    if isinstance(data, dict):
        if cells_of(data) is not None:
            return [(str(data.get("file") or label or "result"), data)]
        for k, v in data.items():
            found += find_results(v, f"{label}.{k}" if label else str(k))
    elif isinstance(data, list):
        for i, v in enumerate(data):
            found += find_results(v, f"{label}[{i}]")
    return found


def load(spec: str) -> tuple[str, Cells]:
    """The label and cells of `load_result(spec)`."""
    label, result = load_result(spec)
    return label, cells_of(result)


def load_result(spec: str) -> tuple[str, dict[str, Any]]:
    """One result object from `FILE` (it must hold exactly one) or `FILE:NAME` (the one labelled NAME, or else the
    one whose label contains it), with its label: the FILE as given for a lone results.json, else FILE's name and
    the result's label."""
    path, name = Path(spec), None
    if not path.is_file() and ":" in spec:
        head, _, name = spec.rpartition(":")
        path = Path(head)
    if not path.is_file():
        raise InputError("no such file" + (f" (read as FILE:NAME, FILE {str(path)!r})" if name is not None else ""),
                         path=spec)
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise InputError(f"not JSON: {e.msg}", path=str(path), line=e.lineno) from None
    results = find_results(data)
    if not results:
        raise InputError("no NIAH result in it (an object with \"cells\")", path=str(path))
    picked = [r for r in results if name is None or name == r[0]] or [r for r in results if name in r[0]]
    if len(picked) != 1:
        labels = ", ".join(label for label, _ in results)
        what = f"none matches {name!r}" if not picked else f"{len(picked)} match {name!r}" if name else \
            f"{len(picked)} results"
        raise InputError(f"{what}; pick one with FILE:NAME, NAME a part of one of: {labels}", path=str(path))
    label = picked[0][0]
    return (spec if name is None and label == "result" else f"{path.name}:{label}"), picked[0][1]


def _strata(keys: list[tuple[int, float]], lo: int, hi: int | None) -> dict[int, list[tuple[int, float]]]:
    by: dict[int, list[tuple[int, float]]] = {}
    for k in sorted(keys):
        if k[0] >= lo and (hi is None or k[0] <= hi):
            by.setdefault(k[0], []).append(k)
    return by


def _by_length(cells: Cells, strata: dict[int, list[tuple[int, float]]]) -> dict[int, np.ndarray]:
    """The scores of each length's cells, in the strata's order (so two results line up cell by cell)."""
    return {n: np.array([cells[k] for k in ks]) for n, ks in strata.items()}


def bootstrap_interval(values: dict[int, np.ndarray], draws: int = 10_000, seed: int = 0) -> tuple[float, float]:
    """95% interval of the mean over all values, each length's values redrawn with replacement (stratified)."""
    rng = np.random.default_rng(seed)
    total = sum(len(v) for v in values.values())
    sums = np.zeros(draws)
    for v in values.values():
        sums += v[rng.integers(0, len(v), size=(draws, len(v)))].sum(axis=1)
    lo, hi = np.quantile(sums / total, [0.025, 0.975])
    return float(lo), float(hi)


def sign_test(wins: int, losses: int) -> float:
    """Exact two-sided sign test: P(a split at least this uneven | each differing cell a fair coin)."""
    n = wins + losses
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(min(wins, losses) + 1)) / 2 ** n
    return min(1.0, 2 * tail)


def compare(a: Cells, b: Cells, from_length: int = 0, to_length: int | None = None, draws: int = 10_000,
            seed: int = 0) -> dict[str, Any]:
    """Means, 95% intervals, the paired difference (a - b) and the sign test over the cells both share."""
    strata = _strata([k for k in a if k in b], from_length, to_length)
    if not strata:
        raise InputError("the two results share no (length, depth) cell in the range asked",
                         field="--from-length/--to-length")

    va, vb = _by_length(a, strata), _by_length(b, strata)
    diff = {n: va[n] - vb[n] for n in strata}
    n_cells = sum(len(ks) for ks in strata.values())

    def mean(v: dict[int, np.ndarray]) -> float:
        return float(sum(x.sum() for x in v.values()) / n_cells)

    wins = int(sum((d > 0).sum() for d in diff.values()))
    losses = int(sum((d < 0).sum() for d in diff.values()))
    per_length = [{"length": n, "cells": len(strata[n]), "a": float(va[n].mean()), "b": float(vb[n].mean()),
                   "a_better": int((diff[n] > 0).sum()), "b_better": int((diff[n] < 0).sum())} for n in strata]
    return {"cells": n_cells, "lengths": list(strata), "a_mean": mean(va), "b_mean": mean(vb),
            "a_ci95": bootstrap_interval(va, draws, seed), "b_ci95": bootstrap_interval(vb, draws, seed),
            "difference": mean(diff), "difference_ci95": bootstrap_interval(diff, draws, seed),
            "a_better": wins, "b_better": losses, "sign_test_p": sign_test(wins, losses),
            "per_length": per_length, "draws": draws, "seed": seed}


def mean_interval(cells: Cells, draws: int = 10_000, seed: int = 0) -> tuple[float, float]:
    """95% interval of one result's mean (stratified bootstrap over its cells)."""
    return bootstrap_interval(_by_length(cells, _strata(list(cells), 0, None)), draws, seed)


# What the intervals and the sign test do not cover, said wherever they are printed.
TRAINING_NOISE_NOTE = ("They cover where the needle sits, not training: on one corpus, three data orders of one "
                       "recipe's 128K stage differed by at most 0.03 of mean, but another build of the corpus moved "
                       "the same recipes by ~0.1, and one recipe run twice on the same data moved its 128K cells by "
                       "up to 0.2 (SmolLM2-135M at 128K, docs/RESULTS.md sessions 11-12 and 22), so compare recipes "
                       "trained on the same data, and more than one run each where you can.")


def to_markdown(label_a: str, label_b: str, r: dict[str, Any], note: bool = True) -> str:
    """The comparison as a short Markdown page: the verdict line, then one row per length (`note`: with
    TRAINING_NOISE_NOTE)."""
    def ci(x: tuple[float, float]) -> str:
        return f"[{x[0]:.2f}, {x[1]:.2f}]"

    verdict = (f"{r['cells']} shared cells at {len(r['lengths'])} lengths: A {r['a_mean']:.3f} {ci(r['a_ci95'])}, "
               f"B {r['b_mean']:.3f} {ci(r['b_ci95'])}; A - B {r['difference']:+.3f} {ci(r['difference_ci95'])} "
               f"(95%, depths redrawn within each length, {r['draws']} draws); cells A better {r['a_better']}, "
               f"B better {r['b_better']}, sign test p = {r['sign_test_p']:.3g}")
    lines = [f"A: {label_a}", f"B: {label_b}", "", verdict, ""] + ([TRAINING_NOISE_NOTE, ""] if note else []) + [
        "| length | cells | A | B | A better | B better |", "|---|---|---|---|---|---|"]
    lines += [f"| {p['length']} | {p['cells']} | {p['a']:.2f} | {p['b']:.2f} | {p['a_better']} | {p['b_better']} |"
              for p in r["per_length"]]
    return "\n".join(lines) + "\n"


def several(a: Cells, bs: list[tuple[str, Cells]], from_length: int = 0, to_length: int | None = None,
            draws: int = 10_000, seed: int = 0) -> dict[str, Any]:
    """One A against several Bs (a soup against each of its runs, say): `compare` against each B, then two
    readings of them together. "summed": the cells each side won, summed over the Bs, with the sign test on the
    sums; A's cells count once per B, so its p is that of cell comparisons, not of independent cells.
    "against_mean": A against the Bs' mean in each cell the Bs all share, one vote per cell (the stricter test)."""
    rows = []
    for label, b in bs:
        try:
            rows.append({"b": label, **compare(a, b, from_length, to_length, draws, seed)})
        except InputError as e:
            raise InputError(f"A and B {label}: {e.reason}", field=e.field) from None
    shared = set.intersection(*(set(b) for _, b in bs))
    if not shared:
        raise InputError("the Bs share no (length, depth) cell, so they have no mean to compare A with")
    mean = {k: sum(b[k] for _, b in bs) / len(bs) for k in shared}
    wins, losses = sum(r["a_better"] for r in rows), sum(r["b_better"] for r in rows)
    summed = {"cell_comparisons": sum(r["cells"] for r in rows), "a_better": wins, "b_better": losses,
              "sign_test_p": sign_test(wins, losses)}
    against = compare(a, mean, from_length, to_length, draws, seed)
    return {"pairs": rows, "a_above_every_b": all(r["difference"] > 0 for r in rows), "summed": summed,
            "against_mean": {k: against[k] for k in ("cells", "a_mean", "b_mean", "difference", "difference_ci95",
                                                      "a_better", "b_better", "sign_test_p")}}


def several_line(r: dict[str, Any]) -> str:
    """The two readings of `several` in one sentence."""
    s, m = r["summed"], r["against_mean"]
    return (f"A against the {len(r['pairs'])} Bs' mean, cell by cell ({m['cells']} cells): A - mean "
            f"{m['difference']:+.3f} [{m['difference_ci95'][0]:+.3f}, {m['difference_ci95'][1]:+.3f}], A better "
            f"{m['a_better']}, the mean better {m['b_better']}, sign test p = {m['sign_test_p']:.3g}. Summed over the "
            f"Bs ({s['cell_comparisons']} cell comparisons, each of A's cells once per B): A better {s['a_better']}, "
            f"B better {s['b_better']}, sign test p = {s['sign_test_p']:.3g}. A's mean above every B's: "
            f"{'yes' if r['a_above_every_b'] else 'no'}.")


# The fields of an `eval niah` results.json that name the test it ran, each with the value a result written
# before the field existed ran with (None: not known). Two results ran one test where every field both record (or
# imply) agrees: an issue grid and a grid with another needle in another haystack share every (length, depth)
# and nothing else. Not recorded, so not checked: logprob mode's distractor lists and digits.
TEST_FIELDS: dict[str, Any] = {"needle": None, "question": None, "answer": None, "mode": None, "chat": None,
                               "trials": 1, "haystack_starts": None, "haystack_sha256": None, "drop_sentences": "",
                               "distractors_in_context": False}


def differing_test_fields(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """The TEST_FIELDS in which two results differ, among those both record or imply."""
    out = []
    for k, default in TEST_FIELDS.items():
        va, vb = a.get(k, default), b.get(k, default)
        if va is not None and vb is not None and va != vb:
            out.append(k)
    return out


def same_grid(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Two result objects on one grid: the same (length, depth) cells and the same test (`differing_test_fields`)."""
    return set(cells_of(a)) == set(cells_of(b)) and not differing_test_fields(a, b)


def same_grid_pairs(results: list[tuple[str, dict[str, Any]]], limit: int = 6
                    ) -> tuple[list[dict[str, Any]], list[str]]:
    """Every pair among result objects on one grid (`same_grid` with the first of its group), compared: the rows
    of a report's pair table. At most `limit` results per grid are paired, the first ones; the labels of those
    left out come back second, for the report to name."""
    grids: list[list[tuple[str, dict[str, Any]]]] = []
    for label, r in results:
        group = next((g for g in grids if same_grid(g[0][1], r)), None)
        if group is None:
            grids.append(group := [])
        group.append((label, r))
    rows, left_out = [], []
    for members in grids:
        left_out += [label for label, _ in members[limit:]]
        members = members[:limit]
        for i, (la, a) in enumerate(members):
            for lb, b in members[i + 1:]:
                rows.append({"a": la, "b": lb, **compare(cells_of(a), cells_of(b))})
    return rows, left_out
