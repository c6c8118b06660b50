"""Weight averaging of models fine-tuned from one start (a model soup), behind `longreach average`.

    longreach average --out runs/soup runs/sft-s1/sft3/checkpoints/step-000072 runs/sft-s2/sft3/checkpoints/step-000072
    longreach average --out runs/soup A B --weight 3 --weight 1        # 0.75 A + 0.25 B

Runs of one recipe from the same starting model that differ only in data order or seed are averaged tensor by
tensor: Wortsman et al.'s uniform soup (2022), and the way Llama 3 combines its post-training runs. The models
must agree on their config (all but names, dtype and cache fields), tensor names and shapes, and tokenizer (by
hash); anything else is refused, naming the model and the field. Float tensors are averaged in float32, as the
first model plus the weighted sum of the others' differences from it, and stored in the first model's dtype (or
`dtype`); any other tensor must be equal in all models. Models are loaded one at a
time, so memory holds two models, the first one's float tensors in float32 and the float32 sum.

The summary's `spread` is each model's distance from the average, relative to the average's norm
(sqrt(sum_i w_i |t_i - avg|^2) / |avg| over the float tensors, a tied one once): near 0 when the runs barely moved
apart, and a large spread warns that averaging may land off both runs' paths. longreach.json records the sources
(absolute paths: `eval niah` copies them into its results.json, and a report pairs the soup with its runs by them),
weights, spread and the sources' own longreach.json.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

from longreach.errors import InputError
from longreach.model.load import load_model, read_record, resolve_dtype, save_model, tokenizer_hash

# config.json fields that may differ between models of one recipe without changing the network
IGNORED_CONFIG_KEYS = frozenset({"_name_or_path", "name_or_path", "transformers_version", "dtype", "torch_dtype",
                                 "use_cache", "_attn_implementation_autoset"})


def normalized_weights(n: int, weights: list[float] | None) -> list[float]:
    """`weights` (one per model, positive) scaled to sum 1; equal weights when None."""
    if n < 2:
        raise InputError(f"averaging needs at least two models, got {n}", field="models")
    if weights is None or len(weights) == 0:
        return [1.0 / n] * n
    if len(weights) != n:
        raise InputError(f"{len(weights)} weights for {n} models: give one per model, in order", field="weight")
    if any(not math.isfinite(w) or w <= 0 for w in weights):
        raise InputError(f"weights must be positive numbers, got {weights}", field="weight")
    total = float(sum(weights))
    return [float(w) / total for w in weights]


def _config_fields(config) -> dict[str, Any]:
    return {k: v for k, v in config.to_dict().items() if k not in IGNORED_CONFIG_KEYS}


def check_compatible(path: str, config, tok_hash: str | None, ref_path: str, ref_config,
                     ref_tok_hash: str | None) -> None:
    """Refuse a model whose config or tokenizer differs from the first model's, naming the first field."""
    mine, ref = _config_fields(config), _config_fields(ref_config)
    for key in sorted(set(mine) | set(ref)):
        if mine.get(key) != ref.get(key):
            raise InputError(f"config differs from {ref_path}: {mine.get(key)!r} here, {ref.get(key)!r} there",
                             path=path, field=key)
    if tok_hash != ref_tok_hash:
        raise InputError(f"tokenizer differs from {ref_path} (hash {tok_hash} here, {ref_tok_hash} there)",
                         path=path, field="tokenizer")


def _sq_norm(t) -> float:
    import torch

    return float(torch.linalg.vector_norm(t, dtype=torch.float64)) ** 2


def average_models(models: list[str | Path], out_dir: str | Path, weights: list[float] | None = None,
                   dtype: str | None = None) -> dict[str, Any]:
    """Average `models` (Hugging Face folders or .gguf files) with `weights`, save to `out_dir`; a summary.

    The sum runs over each model's difference from the first (avg = t_0 + sum_i w_i (t_i - t_0)): runs that moved
    little apart keep their differences' precision in float32, and the spread needs no cancellation."""
    import torch

    paths = [str(m) for m in models]
    w = normalized_weights(len(paths), weights)
    out_dtype = resolve_dtype(dtype)  # before the loads: a bad name fails fast
    out = Path(out_dir).resolve()
    for p in paths:  # save_model replaces the output folder: it must not hold a model to average
        if Path(p).resolve().is_relative_to(out):
            raise InputError(f"the output folder holds {p}, one of the models to average", path=str(out_dir),
                             field="out")
    first = ref_config = ref_hash = tok = None
    ref: dict[str, torch.Tensor] = {}  # the first model's float tensors, one name per storage (ties once)
    diff: dict[str, torch.Tensor] = {}  # sum_i w_i (t_i - t_0), float32
    sq_diff = 0.0  # sum_i w_i |t_i - t_0|^2 over float tensors, for the spread
    parents = []
    for i, (path, wi) in enumerate(zip(paths, w)):
        model, tokenizer = load_model(path)
        h = tokenizer_hash(tokenizer)
        state = model.state_dict()
        parents.append(read_record(path) or None)
        if i == 0:
            first, ref_config, ref_hash, tok, ref_state = model, model.config, h, tokenizer, state
            seen = set()
            for name, t in state.items():
                if t.is_floating_point() and t.data_ptr() not in seen:
                    seen.add(t.data_ptr())
                    ref[name] = t.detach().to(torch.float32)
                    diff[name] = torch.zeros_like(ref[name])
            continue
        check_compatible(path, model.config, h, paths[0], ref_config, ref_hash)
        if set(state) != set(ref_state):
            missing, extra = sorted(set(ref_state) - set(state)), sorted(set(state) - set(ref_state))
            raise InputError(f"tensors differ from {paths[0]}: missing {missing[:3]}, extra {extra[:3]}",
                             path=path, field="state_dict")
        for name, t in state.items():
            if t.shape != ref_state[name].shape:
                raise InputError(f"shape {tuple(t.shape)} here, {tuple(ref_state[name].shape)} in {paths[0]}",
                                 path=path, field=name)
            if name in ref:
                d = t.detach().to(torch.float32) - ref[name]
                sq_diff += wi * _sq_norm(d)
                diff[name].add_(d, alpha=wi)
            elif not t.is_floating_point() and not torch.equal(t, ref_state[name]):
                raise InputError(f"a non-float tensor differs from {paths[0]}", path=path, field=name)
        del model, state
    spread_sq = sq_diff - sum(_sq_norm(d) for d in diff.values())  # sum_i w_i |t_i - avg|^2
    avg = {name: ref[name].add_(d) for name, d in diff.items()}
    avg_sq = sum(_sq_norm(t) for t in avg.values())
    spread = math.sqrt(max(spread_sq, 0.0) / avg_sq) if avg_sq > 0 else 0.0
    del diff, ref_state
    if out_dtype is not None and out_dtype != first.dtype:  # the first model again, as the output's dtype
        del first
        first = load_model(paths[0], dtype=out_dtype)[0]
    own = first.state_dict()
    with torch.no_grad():  # into the model's own tensors (a tied one is shared by its names)
        for name, t in avg.items():
            own[name].copy_(t)
    sources = [os.path.normpath(os.path.abspath(x)) for x in paths]  # absolute: a report matches them to the runs'
    # NIAH results from any folder
    record = {"stage": "average", "sources": sources, "weights": w, "spread": spread,
              "dtype": str(first.dtype).removeprefix("torch."), "tokenizer_hash": ref_hash, "parents": parents}
    save_model(first, tok, out_dir, extra=record)
    return {**{k: v for k, v in record.items() if k != "parents"}, "out": str(out_dir),
            "parents": "(in longreach.json)"}

