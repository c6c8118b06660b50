"""Query log-scaling by position (model/logscale.py): the formula, an exact reference, the KV cache, saved models."""

from __future__ import annotations

import inspect
import json
import math

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
    assert logscale.factor_at(131071, 8192, 0.1) == pytest.approx(1 + 0.1 * math.log(17))


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
    with torch.no_grad():
        greedy = model.generate(ids[:, :9], max_new_tokens=6, do_sample=False, use_cache=True, pad_token_id=0)
    assert greedy.shape == (1, 15)


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
