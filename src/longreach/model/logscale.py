"""Query log-scaling by position: a sharper attention softmax only where the context is long.

    longreach extend --model runs/sft-128k --out runs/sft-128k-ls --target-len 131072 --base 3.2e8 \
        --query-log-scale 0.1 --query-log-floor 8192

The query of the token at position p is multiplied by

    s(p) = 1 + scale * ln(floor((p + 1) / floor_len) + 1)

(Llama 4's attention temperature tuning, which Llama 4 applies on its layers without RoPE only; here every
layer; the same idea as scalable softmax, logits growing with log n so the softmax over n keys does not flatten
as n grows). The first floor_len - 1 positions keep s = 1; from the floor_len-th token on (p >= floor_len - 1)
the queries sharpen. A uniform attention factor (`--attention-factor`, cos/sin x F, logits x
F^2) sharpens every position alike; docs/RESULTS.md session 7 found that it trades retrieval at 64K for 128K.

The setting lives in config.json under CONFIG_KEY ({"floor": ..., "scale": ...}); `install` hooks every
attention layer of a loaded model (load_model does it), whatever its attention implementation (SDPA, flex,
context parallel): a scalar per position commutes with RoPE's rotation, so the hook scales the q_proj output
before RoPE, with the positions the layer is called with (the KV cache's decoding positions included).
Models that normalize the q_proj output (q_norm: Qwen3, OLMo2, Gemma3) would undo the scale and are refused.
With torch.compile and activation checkpointing, train/parallel.py lets the compiler keep the hook's one side
effect (the positions handed to q_proj) out of the recomputation. Only longreach's loader applies it: a plain
`AutoModelForCausalLM.from_pretrained` or another runtime (vLLM) ignores the key and runs the model without it.
"""

from __future__ import annotations

import math
from typing import Any

from longreach.errors import InputError

CONFIG_KEY = "longreach_query_log_scale"
DEFAULT_FLOOR = 8192  # Llama 4's floor_scale


def factor(positions, floor: int, scale: float):
    """s(p) for a tensor of positions (same shape, float32)."""
    import torch

    p = positions.to(torch.float32)
    return 1.0 + scale * torch.log(torch.floor((p + 1.0) / floor) + 1.0)


def settings(config) -> dict[str, Any] | None:
    """The model's {"floor", "scale"} or None."""
    value = getattr(config, CONFIG_KEY, None)
    return dict(value) if value else None


def check(scale: float, floor: int) -> None:
    if not math.isfinite(scale) or scale < 0:
        raise InputError(f"query log scale must be >= 0 (0 switches it off), got {scale}", field="query_log_scale")
    if int(floor) != floor or floor < 1:
        raise InputError(f"query log floor must be a whole number of tokens >= 1, got {floor}",
                         field="query_log_floor")


def configure(config, scale: float, floor: int = DEFAULT_FLOOR) -> dict[str, Any] | None:
    """Write the setting into a config (scale 0 removes it); returns what the config now holds."""
    check(scale, floor)
    value = {"floor": int(floor), "scale": float(scale)} if scale > 0 else None
    setattr(config, CONFIG_KEY, value)
    return value


def _layers(model) -> list:
    return [m for m in model.modules() if hasattr(m, "q_proj") and hasattr(m, "layer_idx")]


def uninstall(model) -> None:
    for handle in getattr(model, "_longreach_logscale_hooks", []):
        handle.remove()
    model._longreach_logscale_hooks = []


def install(model) -> bool:
    """Hook the model's attention layers per its config's setting (replacing earlier hooks). True if hooked."""
    uninstall(model)
    cfg = settings(model.config)
    if cfg is None:
        return False
    floor, scale = cfg["floor"], cfg["scale"]
    layers = _layers(model)
    if not layers:
        raise InputError(f"{type(model).__name__} has no attention layers with q_proj to scale",
                         field=CONFIG_KEY)
    if any(hasattr(attn, "q_norm") for attn in layers):
        raise InputError(f"{type(model).__name__} normalizes its queries (q_norm), which would undo the query "
                         "log scale", field=CONFIG_KEY)

    def keep_positions(attn, args, kwargs):  # the attention layer's positions, handed to its q_proj
        positions = kwargs.get("position_ids")
        if positions is None:
            raise RuntimeError(f"{CONFIG_KEY}: attention layer {attn.layer_idx} was called without "
                               "position_ids (this transformers version does not pass them on)")
        attn.q_proj._longreach_positions = positions

    def scale_query(q_proj, args, output):
        s = factor(q_proj._longreach_positions, floor, scale).to(output.device)  # (batch or 1, seq), fp32
        return (output * s.unsqueeze(-1)).to(output.dtype)

    handles = []
    for attn in layers:
        handles.append(attn.register_forward_pre_hook(keep_positions, with_kwargs=True))
        handles.append(attn.q_proj.register_forward_hook(scale_query))
    model._longreach_logscale_hooks = handles
    return True


def installed(model) -> bool:
    return bool(getattr(model, "_longreach_logscale_hooks", None))
