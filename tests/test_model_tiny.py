"""Tiny configs and the named model shapes."""

from __future__ import annotations

import pytest
import torch

from longreach.errors import InputError
from longreach.model import rope, tiny


def test_tiny_llama_is_small_seeded_and_runs():
    config = tiny.tiny_llama_config(vocab_size=64)
    assert (config.num_hidden_layers, config.hidden_size, rope.head_dim(config)) == (2, 64, 16)
    assert rope.rope_parameters(config)["rope_theta"] == 10000.0 and config.tie_word_embeddings
    a, b = tiny.tiny_llama(config, seed=3), tiny.tiny_llama(config, seed=3)
    assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters()))
    assert not torch.equal(a.model.embed_tokens.weight, tiny.tiny_llama(config, seed=4).model.embed_tokens.weight)
    logits = a(torch.randint(0, 64, (2, 10))).logits
    assert logits.shape == (2, 10, 64) and torch.isfinite(logits).all()
    with pytest.raises(InputError):
        tiny.tiny_llama_config(vocab_size=64, hidden=60, heads=7)


@pytest.mark.parametrize("name,params", [("smollm2-135m", 134.5e6), ("llama3.2-1b", 1.236e9),
                                         ("llama3-8b", 8.03e9)])
def test_named_shapes_have_the_real_parameter_counts(name, params):
    from transformers import LlamaForCausalLM

    with torch.device("meta"):
        model = LlamaForCausalLM(tiny.shape_config(name))
    n = sum(p.numel() for p in model.parameters())  # tied embeddings counted once
    assert n == pytest.approx(params, rel=0.01)


def test_shape_layer_override():
    config = tiny.shape_config("llama3-8b", layers=2, max_position=131072)
    assert config.num_hidden_layers == 2 and config.max_position_embeddings == 131072
    assert rope.head_dim(config) == 128 and not config.tie_word_embeddings
    with pytest.raises(InputError, match="unknown model shape"):
        tiny.shape_config("gpt-5")
