"""Query log-scaling by position (model/logscale.py): the formula, an exact reference, the KV cache, saved models."""

from __future__ import annotations

import inspect
import json
import math
from pathlib import Path

import pytest
import torch

from longreach.errors import InputError
from longreach.model import logscale, tiny

VOCAB = 40


def _model(seed: int = 0, layers: int = 2):
    return tiny.tiny_llama(tiny.tiny_llama_config(vocab_size=VOCAB, hidden=32, layers=layers, heads=4,
                                                  kv_heads=2, max_position=256), seed=seed)


def _logits(model, ids, positions=None):
    with torch.no_grad():
        return model(ids, position_ids=positions).logits


def test_factor_is_one_below_the_floor_and_grows_with_log_position():
    p = torch.arange(0, 100)
    s = logscale.factor(p, floor=10, scale=0.5)
    assert torch.all(s[:9] == 1.0)  # p + 1 < 10
    assert s[9].item() == pytest.approx(1 + 0.5 * math.log(2))  # p + 1 = 10
    assert s[99].item() == pytest.approx(1 + 0.5 * math.log(11))
    assert torch.all(s[1:] >= s[:-1])
    assert logscale.factor(torch.tensor(131071), 8192, 0.1).item() == pytest.approx(1 + 0.1 * math.log(17))


def test_no_change_inside_the_floor_and_a_change_past_it():
    ids = torch.randint(0, VOCAB, (2, 40), generator=torch.Generator().manual_seed(0))
    plain, scaled = _model(), _model()
    logscale.configure(scaled.config, 2.0, floor=20)
    assert logscale.install(scaled)
    a, b = _logits(plain, ids), _logits(scaled, ids)
    torch.testing.assert_close(a[:, :19], b[:, :19], rtol=0, atol=0)  # positions 0-18: s = 1, bit for bit
    assert (a[:, 19:] - b[:, 19:]).abs().amax() > 1e-4
    logscale.configure(scaled.config, 0.0)  # removed: the hooks go with it
    assert logscale.settings(scaled.config) is None and not logscale.install(scaled)
    torch.testing.assert_close(_logits(scaled, ids), a, rtol=0, atol=0)


def test_matches_a_model_whose_query_weights_carry_the_factor():
    # Positions F-1 .. 2F-2 all get s = 1 + scale ln 2; the same model with q_proj's weights multiplied by that
    # constant must give the same logits (a scalar commutes with RoPE): an independent reference.
    floor, scale, n = 16, 0.7, 16
    ids = torch.randint(0, VOCAB, (1, n), generator=torch.Generator().manual_seed(1))
    positions = torch.arange(floor - 1, floor - 1 + n)[None]
    hooked, reference = _model(seed=3), _model(seed=3)
    logscale.configure(hooked.config, scale, floor=floor)
    logscale.install(hooked)
    c = 1 + scale * math.log(2)
    with torch.no_grad():
        for layer in reference.model.layers:
            layer.self_attn.q_proj.weight.mul_(c)
    torch.testing.assert_close(_logits(hooked, ids, positions), _logits(reference, ids, positions),
                               rtol=1e-5, atol=1e-5)
    assert (_logits(hooked, ids, positions) - _logits(_model(seed=3), ids, positions)).abs().amax() > 1e-4


def test_decoding_with_the_kv_cache_matches_the_full_forward_pass():
    # decoding crosses the floor: each new token's query must get its own position's factor
    model = _model(seed=5)
    logscale.configure(model.config, 2.0, floor=12)
    logscale.install(model)
    ids = torch.randint(0, VOCAB, (1, 20), generator=torch.Generator().manual_seed(2))
    full = _logits(model, ids)
    cache = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"  # 5.24 / 5.17
    with torch.no_grad():
        out = model(ids[:, :8], use_cache=True)
        steps = [out.logits]
        for t in range(8, 20):
            out = model(ids[:, t:t + 1], use_cache=True, **{cache: out.past_key_values})
            steps.append(out.logits)
    torch.testing.assert_close(torch.cat(steps, dim=1), full, rtol=1e-5, atol=1e-6)
    with torch.no_grad():  # generate() with and without the cache: the same tokens
        greedy = [model.generate(ids[:, :9], max_new_tokens=6, do_sample=False, use_cache=c, pad_token_id=0)
                  for c in (True, False)]
    assert torch.equal(*greedy)


def test_each_row_of_a_batch_gets_its_own_positions():
    model = _model(seed=6)
    logscale.configure(model.config, 2.0, floor=16)
    logscale.install(model)
    ids = torch.randint(0, VOCAB, (2, 12), generator=torch.Generator().manual_seed(4))
    positions = torch.stack([torch.arange(12), torch.arange(30, 42)])  # row 0 below the floor, row 1 past it
    both = _logits(model, ids, positions)
    for r in range(2):
        torch.testing.assert_close(both[r:r + 1], _logits(model, ids[r:r + 1], positions[r:r + 1]),
                                   rtol=1e-5, atol=1e-6)


def test_training_uses_it_and_checkpoints_keep_it(tmp_path):
    from conftest import write_pattern_shards, write_tiny_llama
    from longreach.model.extend import extend_checkpoint
    from longreach.train.config import TrainConfig
    from longreach.train.loop import train

    shards = write_pattern_shards(tmp_path / "shards", seq_len=64)
    plain = write_tiny_llama(tmp_path / "plain")
    extend_checkpoint(plain, tmp_path / "scaled", 256, base=10000.0, query_log_scale=2.0, query_log_floor=16)
    write_tiny_llama(tmp_path / "config-only-plain", weights=False)  # a seeded random start, from config.json
    config_only = write_tiny_llama(tmp_path / "config-only", weights=False)
    cfg = json.loads((config_only / "config.json").read_text())
    (config_only / "config.json").write_text(json.dumps({**cfg, logscale.CONFIG_KEY: {"floor": 16, "scale": 2.0}}))
    losses = {}
    for name in ("plain", "scaled", "config-only-plain", "config-only"):
        out = train(TrainConfig(model=str(tmp_path / name), data=str(shards), out=str(tmp_path / f"run-{name}"),
                                max_steps=2, micro_batch=2, lr=1e-3, warmup_steps=1, progress=False))
        losses[name] = [json.loads(x)["loss"] for x in (tmp_path / f"run-{name}" / "metrics.jsonl").open()]
        saved = json.loads((Path(out["checkpoint"]) / "config.json").read_text()).get(logscale.CONFIG_KEY)
        assert saved == (None if name.endswith("plain") else {"floor": 16, "scale": 2.0}), name
    # same start, same data: only the scaling differs (the first step's loss already, on 64-token sequences)
    assert abs(losses["scaled"][0] - losses["plain"][0]) > 1e-4
    assert abs(losses["config-only"][0] - losses["config-only-plain"][0]) > 1e-4


def test_models_that_normalize_their_queries_are_refused():
    from transformers import Qwen3Config, Qwen3ForCausalLM

    model = Qwen3ForCausalLM(Qwen3Config(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                         num_attention_heads=4, num_key_value_heads=2, head_dim=8))
    logscale.configure(model.config, 0.1, floor=16)
    with pytest.raises(InputError, match="q_norm"):
        logscale.install(model)


def test_extend_saves_it_and_load_model_applies_it(tmp_path):
    from typer.testing import CliRunner

    from longreach.cli.apps import app
    from longreach.model.extend import extend_checkpoint
    from longreach.model.load import load_model, save_model

    src = tmp_path / "src"
    save_model(_model(seed=7), None, src)
    ids = torch.randint(0, VOCAB, (1, 60), generator=torch.Generator().manual_seed(3))
    plain, _ = load_model(src)
    out = extend_checkpoint(src, tmp_path / "ls", 256, base=10000.0, query_log_scale=0.4, query_log_floor=32)
    assert out["query_log_scale"] == {"floor": 32, "scale": 0.4}
    saved = json.loads((tmp_path / "ls" / "config.json").read_text())
    assert saved[logscale.CONFIG_KEY] == {"floor": 32, "scale": 0.4}
    loaded, _ = load_model(tmp_path / "ls")
    expect = _model(seed=7)
    logscale.configure(expect.config, 0.4, floor=32)
    logscale.install(expect)
    torch.testing.assert_close(_logits(loaded, ids), _logits(expect, ids))
    torch.testing.assert_close(_logits(loaded, ids)[:, :31], _logits(plain, ids)[:, :31])
    # a later extend keeps it unless told; --query-log-scale 0 removes it
    kept = extend_checkpoint(tmp_path / "ls", tmp_path / "kept", 256, base=10000.0)
    assert kept["query_log_scale"] == {"floor": 32, "scale": 0.4}
    result = CliRunner().invoke(app, ["extend", "--model", str(tmp_path / "ls"), "--out", str(tmp_path / "off"),
                                      "--target-len", "256", "--base", "1e4", "--query-log-scale", "0"])
    assert result.exit_code == 0, result.output
    off, _ = load_model(tmp_path / "off")
    assert logscale.settings(off.config) is None
    torch.testing.assert_close(_logits(off, ids), _logits(plain, ids))


@pytest.mark.parametrize("scale,floor,field", [(-0.1, 8192, "query_log_scale"), (float("nan"), 8192,
                         "query_log_scale"), (0.1, 0, "query_log_floor"), (0.1, 2.5, "query_log_floor")])
def test_bad_settings_name_their_field(tmp_path, scale, floor, field):
    from longreach.model.extend import extend_checkpoint

    with pytest.raises(InputError) as e:  # refused before the model is loaded (the path does not exist)
        extend_checkpoint(tmp_path / "missing", tmp_path / "out", 256, query_log_scale=scale, query_log_floor=floor)
    assert e.value.field == field
