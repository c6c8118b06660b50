"""Context extension of a checkpoint: load, rewrite the RoPE fields, save, verify (behind `longreach extend`).

    longreach extend --model SmolLM2-135M-Instruct.Q4_1.gguf --out runs/smollm2-32k --target-len 32768
    longreach extend --model runs/base --out runs/yarn-32k --target-len 32768 --scheme yarn

The output is a plain Hugging Face folder; `AutoModelForCausalLM.from_pretrained(out)` gets the new window and
frequencies. longreach.json records what was done (stage "extend", scheme, bases, factor, source, tokenizer hash).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from longreach.errors import InputError
from longreach.model import logscale, rope
from longreach.model.load import load_model, read_record, save_model, tokenizer_hash


def verify_saved_rope(out_dir: str | Path, expected_inv_freq, expected_window: int) -> None:
    """Rebuild the rotary module from the saved config.json the way transformers does and compare.

    Catches a transformers version that drops the RoPE fields when reading config.json (no weights loaded)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(out_dir)
    if config.max_position_embeddings != expected_window:
        raise RuntimeError(f"{out_dir}: max_position_embeddings reads back as {config.max_position_embeddings}, "
                           f"expected {expected_window}")
    with torch.device("meta"):  # shapes only: the rotary buffers are made on CPU below
        skeleton = AutoModelForCausalLM.from_config(config)
    module = rope.rotary_module(skeleton)
    probe = torch.nn.Module()
    probe.config = config
    probe.rotary = type(module)(config=module.config).to("cpu")
    rope.check_rotary(probe, expected=expected_inv_freq)


def extend_checkpoint(model_path: str | Path, out_dir: str | Path, target_len: int, scheme: str = "theta",
                      base: float | None = None, factor: float | None = None, dynamic: bool = False,
                      dtype: str | None = None, attention_factor: float | None = None,
                      query_log_scale: float | None = None,
                      query_log_floor: int = logscale.DEFAULT_FLOOR) -> dict[str, Any]:
    """Load `model_path` (folder or .gguf), apply `scheme` for `target_len` tokens, save to `out_dir`.

    query_log_scale: set (> 0) or remove (0) the query log-scaling by position (model/logscale.py); None keeps
    the model's own."""
    if scheme not in rope.SCHEMES:  # before a possibly long load
        raise InputError(f"unknown RoPE scheme {scheme!r}; choose one of {rope.SCHEMES}", field="scheme")
    if query_log_scale is not None:  # before the load too
        logscale.check(query_log_scale, query_log_floor)
    model, tok = load_model(model_path, dtype=dtype)
    summary = rope.extend_model(model, scheme, target_len, base=base, factor=factor, dynamic=dynamic,
                                attention_factor=attention_factor)
    if query_log_scale is not None:  # a config field: the saved model gets it; this one is only saved
        logscale.configure(model.config, query_log_scale, query_log_floor)
    summary["query_log_scale"] = logscale.settings(model.config)
    record = {"stage": "extend", **summary, "source": str(model_path),
              "tokenizer_hash": tokenizer_hash(tok), "dtype": str(model.dtype).removeprefix("torch."),
              "parent": read_record(model_path) or None}
    save_model(model, tok, out_dir, extra=record)
    verify_saved_rope(out_dir, rope.inv_freq(model.config), model.config.max_position_embeddings)
    return {**record, "out": str(out_dir), "parent": None if record["parent"] is None else "(in longreach.json)"}

