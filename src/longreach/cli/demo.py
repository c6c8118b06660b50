"""`longreach demo`: the embedded CPU demo (tiny Llama, 128 -> 2,048 tokens) behind `make demo`.

Run: longreach demo --out runs/demo                    # extend the committed base, evaluate, report.md
     longreach demo --config configs/demo-cpu.yaml --set extend.steps=20
     longreach demo --stage base --out runs/demo-base  # re-make the base model (one GPU: minutes)
"""

from __future__ import annotations

import json
from typing import Annotated

import typer

from longreach.cli.apps import app


@app.command("demo")
def demo(
    config: Annotated[str | None, typer.Option("--config", "-c", help="YAML file overriding DemoConfig")
                      ] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="override a field: --set extend.steps=20 "
                                                   "(repeatable)")] = None,
    out: Annotated[str | None, typer.Option(help="output folder (report.md, PNGs, models, data)")] = None,
    stage: Annotated[str | None, typer.Option(help="extend (default) or base (pretrain a new base)")] = None,
) -> None:
    """Extend a tiny Llama 16x by the RoPE base change + continued pretraining; report NIAH and perplexity.
    Prints a JSON summary on stdout."""
    from longreach import config as config_io
    from longreach.demo import DemoConfig, run

    overrides = list(set_ or []) + [f"{k}={v}" for k, v in (("out", out), ("stage", stage)) if v]
    cfg = config_io.load(DemoConfig, config, overrides)
    print(json.dumps(run(cfg)))
