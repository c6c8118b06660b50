"""Self-describing, atomic checkpoints.

Layout of RUN/checkpoints/step-000123/:
    config.json, model.safetensors, tokenizer files   Hugging Face layout (any transformers user loads it)
    trainer_state.pt                                  optimizer, scheduler, data position, RNG states
    longreach.json                                    stage, step, config, tokenizer hash, lineage
A checkpoint is written into a hidden temporary folder and renamed into place only when complete, so a run
killed at any moment leaves the previous checkpoints intact and never a half-written one that looks whole.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from longreach.model.load import RECORD, read_record

STEP_DIR = re.compile(r"^step-(\d+)$")


def step_dir(run_dir: str | Path, step: int) -> Path:
    return Path(run_dir) / "checkpoints" / f"step-{step:06d}"


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first (a folder counts only once its longreach.json exists)."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if STEP_DIR.match(p.name) and (p / RECORD).is_file()]
    return sorted(found, key=lambda p: int(STEP_DIR.match(p.name).group(1)))


def latest(run_dir: str | Path) -> Path | None:
    ckpts = list_checkpoints(run_dir)
    return ckpts[-1] if ckpts else None


read_meta = read_record  # the longreach.json of a checkpoint or extended model folder ({} if it has none)


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save(run_dir: str | Path, step: int, model_state: dict[str, torch.Tensor], model, tokenizer,
         trainer_state: dict[str, Any], meta: dict[str, Any], keep: int = 2) -> Path:
    """Write checkpoint `step` atomically; then drop all but the newest `keep` checkpoints."""
    final = step_dir(run_dir, step)
    tmp = final.parent / f".tmp-{final.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    model.save_pretrained(tmp, state_dict=model_state, safe_serialization=True)
    from longreach.model.load import write_config_for_use
    write_config_for_use(tmp, model.config)
    if tokenizer is not None:
        tokenizer.save_pretrained(tmp)
    torch.save(trainer_state, tmp / "trainer_state.pt")
    meta = {**meta, "step": step, "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S")}
    (tmp / RECORD).write_text(json.dumps(meta, indent=2, default=str))
    _fsync_dir(tmp)
    if final.exists():  # a re-run of the same step replaces it, still without a moment of no checkpoint
        old = final.parent / f".old-{final.name}-{os.getpid()}"
        final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(final)
    _fsync_dir(final.parent)
    for stale in list_checkpoints(run_dir)[:-keep] if keep > 0 else []:
        shutil.rmtree(stale, ignore_errors=True)
    return final


def clean_partial(run_dir: str | Path) -> None:
    """Remove temporary folders left by a run killed while writing a checkpoint."""
    root = Path(run_dir) / "checkpoints"
    if root.is_dir():
        for p in root.iterdir():
            if p.name.startswith((".tmp-", ".old-")):
                shutil.rmtree(p, ignore_errors=True)


def load_trainer_state(path: str | Path) -> dict[str, Any]:
    return torch.load(Path(path) / "trainer_state.pt", map_location="cpu", weights_only=False)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass
