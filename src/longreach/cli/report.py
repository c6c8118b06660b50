"""`longreach report`: one page (Markdown + HTML + PNGs) from every result in a run folder.

    longreach report runs/demo --out runs/demo/report
"""

from __future__ import annotations

import json

import typer

from longreach.cli.apps import app


@app.command("report")
def report(
    run_dir: str = typer.Argument(..., help="run folder to gather results.json / score files from"),
    out: str = typer.Option(..., help="output folder for report.md, report.html and figures"),
) -> None:
    """Gather NIAH heatmaps, perplexity curves and benchmark scores into one page. Prints the paths as JSON."""
    from longreach.eval.report import build

    md = build(run_dir, out)
    print(json.dumps({"markdown": str(md), "html": str(md.with_suffix(".html"))}))
