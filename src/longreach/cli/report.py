"""`longreach report`: one page (Markdown + HTML + PNGs) from every result in a run folder; `longreach eval
compare`: whether one NIAH result beats another (or several others: a soup against its runs) by more than the
grid's noise.

    longreach report runs/demo --out runs/demo/report
    longreach report /root/work/eval --out report --meta card="H100 80GB" --meta date=2026-11-26
    longreach eval compare runs/a/results.json docs/data/x.json:llama6 --from-length 32000
    longreach eval compare soup/results.json run1/results.json run2/results.json --from-length 90000
"""

from __future__ import annotations

import json
import sys
from typing import Annotated

import typer

from longreach.cli.apps import app, eval_app
from longreach.errors import InputError


@app.command("report")
def report(
    run_dir: str = typer.Argument(..., help="run folder to gather results.json / score files from"),
    out: str = typer.Option(..., help="output folder for report.md, report.html, summary.json and figures"),
    meta: Annotated[list[str] | None, typer.Option(
        help="KEY=VALUE written at the top of summary.json (card, date, command); repeat for more")] = None,
) -> None:
    """Gather NIAH heatmaps, perplexity curves, benchmark scores and training logs into one page and one
    summary.json. Prints the paths as JSON."""
    from longreach.eval.report import build

    pairs = {}
    for m in meta or []:
        key, eq, value = m.partition("=")
        if not eq or not key:
            raise InputError(f"expected KEY=VALUE, got {m!r}", field="--meta")
        pairs[key] = value
    md = build(run_dir, out, pairs)
    print(json.dumps({"markdown": str(md), "html": str(md.with_suffix(".html")),
                      "summary": str(md.with_name("summary.json"))}))


@eval_app.command("compare")
def compare(
    a: Annotated[str, typer.Argument(help="NIAH result A: a results.json, or FILE:NAME for one result inside a "
                                          "summary.json / docs/data file")],
    b: Annotated[list[str], typer.Argument(help="NIAH result B, the same way; several: A against each, then "
                                                "against their mean and their cells summed (a soup against its "
                                                "runs)")],
    from_length: int = typer.Option(0, help="only cells at this context length or longer"),
    to_length: int | None = typer.Option(None, help="only cells at this context length or shorter"),
    draws: int = typer.Option(10_000, help="bootstrap draws"),
    seed: int = typer.Option(0, help="bootstrap seed"),
    as_json: bool = typer.Option(False, "--json", help="print JSON instead of Markdown"),
) -> None:
    """Paired comparison on the cells both results share: each mean with a 95% interval, the difference A - B
    with its interval (depths redrawn within each length), and an exact sign test on the cells that differ.
    Several Bs: A against each, then against their mean cell by cell, and the cells summed over them (--json: an
    object with "pairs", "against_mean" and "summed"). Both cover where the needle sits, not training: compare
    recipes trained on the same data. A note on stderr names test fields (needle, haystack, ...) that differ."""
    from longreach.eval import compare as cmp

    if draws < 100:
        raise InputError("use at least 100 draws", field="--draws")
    label_a, result_a = cmp.load_result(a)
    bs = [cmp.load_result(spec) for spec in b]
    for label_b, result_b in bs:
        differ = cmp.differing_test_fields(result_a, result_b)
        if differ:
            print(f"note: A and {label_b} ran different tests ({', '.join(differ)} differ): their cells are not "
                  "the same questions", file=sys.stderr)
    if len(bs) == 1:
        (label_b, result_b), = bs
        row = {"a": label_a, "b": label_b,
               **cmp.compare(cmp.cells_of(result_a), cmp.cells_of(result_b), from_length, to_length, draws, seed)}
        print(json.dumps(row) if as_json else cmp.to_markdown(label_a, label_b, row).rstrip("\n"))
        return
    r = cmp.several(cmp.cells_of(result_a), [(label, cmp.cells_of(x)) for label, x in bs], from_length, to_length,
                    draws, seed)
    if as_json:
        print(json.dumps({"a": label_a, **r}))
        return
    for row in r["pairs"]:
        print(cmp.to_markdown(label_a, row["b"], row, note=False))
    print(cmp.TRAINING_NOISE_NOTE + "\n")
    print(cmp.several_line(r))
