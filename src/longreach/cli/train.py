"""`longreach train`: continued pretraining (and any stage) on packed shards through the one training loop."""

from __future__ import annotations

import json
from typing import Optional

import typer

from longreach.cli.apps import app


@app.command("train")
def train(
    config: Optional[str] = typer.Option(None, "--config", "-c", help="YAML file overriding TrainConfig defaults"),
    set_: list[str] = typer.Option([], "--set", help="override a field: --set lr=1e-4 (repeatable)"),
    model: Optional[str] = typer.Option(None, help="start model (HF folder or .gguf); overrides the config"),
    data: Optional[str] = typer.Option(None, help="packed shards folder; overrides the config"),
    out: Optional[str] = typer.Option(None, help="run folder; overrides the config"),
) -> None:
    """Train (or resume) a run. Prints a JSON summary on stdout."""
    from longreach import config as config_io
    from longreach.train.config import TrainConfig
    from longreach.train.loop import train as run

    overrides = list(set_) + [f"{k}={v}" for k, v in (("model", model), ("data", data), ("out", out)) if v]
    cfg = config_io.load(TrainConfig, config, overrides)
    print(json.dumps(run(cfg)))
