"""`longreach report`: one page (Markdown + HTML + PNGs) from every result in a run folder; `longreach eval
compare`: whether one NIAH result beats another by more than the grid's noise.

    longreach report runs/demo --out runs/demo/report
    longreach report /root/work/eval --out report --meta card="H100 80GB" --meta date=2026-11-26
    longreach eval compare runs/a/results.json docs/data/x.json:llama6 --from-length 32000
"""

from __future__ import annotations

import json
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
    a: str = typer.Argument(..., help="NIAH result A: a results.json, or FILE:NAME for one result inside a "
                                      "summary.json / docs/data file"),
    b: str = typer.Argument(..., help="NIAH result B, the same way"),
    from_length: int = typer.Option(0, help="only cells at this context length or longer"),
    to_length: int | None = typer.Option(None, help="only cells at this context length or shorter"),
    draws: int = typer.Option(10_000, help="bootstrap draws"),
    seed: int = typer.Option(0, help="bootstrap seed"),
    as_json: bool = typer.Option(False, "--json", help="print JSON instead of Markdown"),
) -> None:
    """Paired comparison on the cells both results share: each mean with a 95% interval, the difference A - B
    with its interval (depths redrawn within each length), and an exact sign test on the cells that differ.
    Both cover where the needle sits, not training: compare recipes trained on the same data."""
    from longreach.eval import compare as cmp

    if draws < 100:
        raise InputError("use at least 100 draws", field="--draws")
    (label_a, cells_a), (label_b, cells_b) = cmp.load(a), cmp.load(b)
    result = cmp.compare(cells_a, cells_b, from_length, to_length, draws, seed)
    if as_json:
        print(json.dumps({"a": label_a, "b": label_b, **result}))
    else:
        print(cmp.to_markdown(label_a, label_b, result), end="")
