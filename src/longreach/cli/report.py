"""`longreach report`: one page (Markdown + HTML + PNGs) from every result in a run folder.

    longreach report runs/demo --out runs/demo/report
    longreach report /root/work/eval --out report --meta card="H100 80GB" --meta date=2026-11-26
"""

from __future__ import annotations

import json
from typing import Annotated

import typer

from longreach.cli.apps import app
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
