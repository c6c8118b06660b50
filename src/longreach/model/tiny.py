"""Small Llama configs for tests and the CPU demo, plus the shapes of real models for benchmarks.

`tiny_llama(tiny_llama_config(vocab_size=64), seed=0)` builds a 2-layer, hidden-64 LlamaForCausalLM on CPU.
`shape_config("llama3-8b", layers=4)` gives a LlamaConfig with a real model's shapes (random weights) for
throughput and memory benchmarks, without downloading anything.
"""

from __future__ import annotations

from typing import Any

from longreach.errors import InputError

# Shapes of the models the recipe targets (from their config.json files); rope_theta and window included
# because the RoPE extension starts from them.
SHAPES: dict[str, dict[str, Any]] = {
    "smollm2-135m": {"num_hidden_layers": 30, "hidden_size": 576, "num_attention_heads": 9,
                     "num_key_value_heads": 3, "intermediate_size": 1536, "vocab_size": 49152,
                     "tie_word_embeddings": True, "rope_theta": 100000.0, "max_position_embeddings": 8192},
    "llama3.2-1b": {"num_hidden_layers": 16, "hidden_size": 2048, "num_attention_heads": 32,
                    "num_key_value_heads": 8, "intermediate_size": 8192, "vocab_size": 128256,
                    "tie_word_embeddings": True, "rope_theta": 500000.0, "max_position_embeddings": 8192},
    "llama3-8b": {"num_hidden_layers": 32, "hidden_size": 4096, "num_attention_heads": 32,
                  "num_key_value_heads": 8, "intermediate_size": 14336, "vocab_size": 128256,
                  "tie_word_embeddings": False, "rope_theta": 500000.0, "max_position_embeddings": 8192},
}


def _llama_config(shape: dict[str, Any]):
    from transformers import LlamaConfig

    shape = dict(shape)
    theta = shape.pop("rope_theta")
    # rope_parameters is the transformers-5 field; it holds the base (rope_theta moved inside it in 5.0).
    return LlamaConfig(**shape, rope_parameters={"rope_type": "default", "rope_theta": float(theta)},
                       rms_norm_eps=1e-5, attn_implementation="sdpa")


def tiny_llama_config(vocab_size: int, hidden: int = 64, layers: int = 2, heads: int = 4, kv_heads: int = 2,
                      intermediate: int | None = None, max_position: int = 2048, rope_theta: float = 10000.0,
                      tie_embeddings: bool = True):
    """A LlamaConfig small enough for unit tests on CPU (default: 2 layers, hidden 64, head dim 16)."""
    if hidden % heads or heads % kv_heads:
        raise InputError(f"hidden {hidden} must divide by heads {heads}, and heads by kv_heads {kv_heads}")
    return _llama_config({"num_hidden_layers": layers, "hidden_size": hidden, "num_attention_heads": heads,
                          "num_key_value_heads": kv_heads, "intermediate_size": intermediate or 2 * hidden,
                          "vocab_size": vocab_size, "tie_word_embeddings": tie_embeddings,
                          "rope_theta": rope_theta, "max_position_embeddings": max_position})


def shape_config(name: str, layers: int | None = None, max_position: int | None = None):
    """LlamaConfig with the shapes of a named model (see SHAPES); `layers` cuts depth for quick benchmarks."""
    if name not in SHAPES:
        raise InputError(f"unknown model shape {name!r}; known: {sorted(SHAPES)}", field="shape")
    shape = dict(SHAPES[name])
    if layers is not None:
        shape["num_hidden_layers"] = layers
    if max_position is not None:
        shape["max_position_embeddings"] = max_position
    return _llama_config(shape)


def tiny_llama(config, seed: int = 0, dtype=None):
    """A LlamaForCausalLM with seeded random weights, on CPU."""
    import torch
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    if dtype is not None:
        model = model.to(dtype)
    return model.eval()
