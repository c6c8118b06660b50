"""`longreach train`: continued pretraining (and any stage) on packed shards through the one training loop."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from longreach.cli.apps import app


@app.command("train")
def train(
    config: Annotated[str | None, typer.Option("--config", "-c", help="YAML file overriding TrainConfig")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="override a field: --set lr=1e-4")] = None,
    model: Annotated[str | None, typer.Option(help="start model (HF folder or .gguf); overrides the config")] = None,
    data: Annotated[str | None, typer.Option(help="packed shards folder; overrides the config")] = None,
    out: Annotated[str | None, typer.Option(help="run folder; overrides the config")] = None,
) -> None:
    """Train (or resume) a run. Prints a JSON summary on stdout."""
    from longreach import config as config_io
    from longreach.train.config import TrainConfig
    from longreach.train.loop import train as run

    overrides = list(set_ or []) + [f"{k}={v}" for k, v in (("model", model), ("data", data), ("out", out)) if v]
    cfg = config_io.load(TrainConfig, config, overrides)
    print(json.dumps(run(cfg)))
