"""`longreach average`: weight averaging of models fine-tuned from one start (tiny Llama models on CPU)."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from conftest import with_extra_token, word_tokenizer
from longreach.cli.apps import app
from longreach.errors import InputError
from longreach.eval import niah
from longreach.model import tiny
from longreach.model.average import average_models, normalized_weights
from longreach.model.load import load_model, save_model

VOCAB = 64


def _save(tmp_path, name, seed=0, tok=None, extra=None, **config):
    cfg = tiny.tiny_llama_config(VOCAB, max_position=256, **config)
    return save_model(tiny.tiny_llama(cfg, seed=seed), tok or word_tokenizer(VOCAB), tmp_path / name, extra=extra)


def _weights(path):
    model, _ = load_model(path)
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_the_average_of_two_runs_is_their_mean_and_a_working_model(tmp_path):
    a, b = _save(tmp_path, "a", seed=0), _save(tmp_path, "b", seed=1, extra={"stage": "sft", "seed": 1})
    summary = average_models([a, b], tmp_path / "soup")
    wa, wb, ws = _weights(a), _weights(b), _weights(tmp_path / "soup")
    for name, t in ws.items():
        torch.testing.assert_close(t, (wa[name] + wb[name]) / 2, rtol=0, atol=1e-7)
    assert not torch.equal(ws["model.layers.0.self_attn.q_proj.weight"], wa["model.layers.0.self_attn.q_proj.weight"])
    # the spread from its definition: sqrt(sum_i w_i |t_i - avg|^2) / |avg| over the float tensors (ties once)
    names = [n for n in ws if n != "lm_head.weight"]
    dev = sum(0.5 * float((w[n].double() - ws[n].double()).pow(2).sum()) for w in (wa, wb) for n in names)
    norm = sum(float(ws[n].double().pow(2).sum()) for n in names)
    assert summary["spread"] == pytest.approx((dev / norm) ** 0.5, rel=1e-4) and summary["spread"] > 0.05
    record = json.loads((tmp_path / "soup" / "longreach.json").read_text())
    assert record["stage"] == "average" and record["sources"] == [str(a), str(b)] and record["weights"] == [0.5, 0.5]
    assert record["tokenizer_hash"] is not None and record["parents"] == [None, {"stage": "sft", "seed": 1}]
    # what a NIAH result of the soup records, for a report to pair it with its runs' results
    assert niah.model_sources(str(tmp_path / "soup")) == [str(a), str(b)] and niah.model_sources(str(b)) is None
    model, tok = load_model(tmp_path / "soup")
    ids = torch.tensor([tok("w1 w2 w3").input_ids])
    with torch.no_grad():
        assert torch.isfinite(model(ids).logits).all()


def test_a_model_averaged_with_itself_is_unchanged(tmp_path):
    a = _save(tmp_path, "a", seed=3)
    summary = average_models([a, a, a], tmp_path / "soup")
    assert summary["spread"] == pytest.approx(0, abs=1e-6)
    ids = torch.tensor([[1, 4, 5, 6, 7]])
    m1, _ = load_model(a)
    m2, _ = load_model(tmp_path / "soup")
    with torch.no_grad():
        torch.testing.assert_close(m1(ids).logits, m2(ids).logits, rtol=0, atol=1e-6)


def test_the_spread_of_runs_that_barely_moved_apart(tmp_path):
    # three runs ~1e-4 apart (fine-tuning from one start): the spread must not drown in float32 rounding
    a = _save(tmp_path, "a", seed=0)
    model, tok = load_model(a)
    runs = [a]
    for k in (1, 2):
        torch.manual_seed(k)
        with torch.no_grad():
            moved = {n: t + 1e-4 * torch.randn_like(t) for n, t in _weights(a).items()}
            model.load_state_dict(moved)
        runs.append(save_model(model, tok, tmp_path / f"r{k}"))
    summary = average_models(runs, tmp_path / "soup")
    ws = [{n: t.double() for n, t in _weights(r).items()} for r in runs]
    names = [n for n in ws[0] if n != "lm_head.weight"]  # tied to the embeddings: counted once
    avg = {n: sum(w[n] for w in ws) / 3 for n in names}
    dev = sum(float((w[n] - avg[n]).pow(2).sum()) for w in ws for n in names) / 3
    norm = sum(float(avg[n].pow(2).sum()) for n in names)
    assert summary["spread"] == pytest.approx((dev / norm) ** 0.5, rel=1e-3)
    soup = _weights(tmp_path / "soup")
    for n in names:
        torch.testing.assert_close(soup[n].double(), avg[n], rtol=0, atol=1.2e-7)  # float32 rounding at 1


def test_weights_are_scaled_to_sum_one(tmp_path):
    a, b = _save(tmp_path, "a", seed=0), _save(tmp_path, "b", seed=1)
    summary = average_models([a, b], tmp_path / "soup", weights=[3, 1])
    assert summary["weights"] == [0.75, 0.25]
    wa, wb, ws = _weights(a), _weights(b), _weights(tmp_path / "soup")
    name = "model.layers.1.mlp.down_proj.weight"
    torch.testing.assert_close(ws[name], 0.75 * wa[name] + 0.25 * wb[name], rtol=0, atol=1e-7)


def test_the_first_models_dtype_is_kept_unless_asked(tmp_path):
    cfg = tiny.tiny_llama_config(VOCAB, max_position=256)
    a = save_model(tiny.tiny_llama(cfg, seed=0, dtype=torch.bfloat16), word_tokenizer(VOCAB), tmp_path / "a")
    b = save_model(tiny.tiny_llama(cfg, seed=1, dtype=torch.bfloat16), word_tokenizer(VOCAB), tmp_path / "b")
    assert average_models([a, b], tmp_path / "s16")["dtype"] == "bfloat16"
    assert load_model(tmp_path / "s16")[0].dtype == torch.bfloat16
    assert average_models([a, b], tmp_path / "s32", dtype="fp32")["dtype"] == "float32"
    # summed in float32: the fp32 soup is the exact mean of the bf16 inputs, which bf16 would round
    wa, wb, ws = _weights(a), _weights(b), _weights(tmp_path / "s32")
    name = "model.layers.0.mlp.up_proj.weight"
    torch.testing.assert_close(ws[name], (wa[name].float() + wb[name].float()) / 2, rtol=0, atol=1e-7)


def test_models_that_differ_are_refused_by_name_and_field(tmp_path):
    a = _save(tmp_path, "a")
    other_base = _save(tmp_path, "base", rope_theta=5e5)
    with pytest.raises(InputError) as e:
        average_models([a, other_base], tmp_path / "soup")
    assert e.value.path == str(other_base) and e.value.field in ("rope_parameters", "rope_theta")
    wider = _save(tmp_path, "wide", hidden=128, heads=8, kv_heads=4)
    with pytest.raises(InputError) as e:
        average_models([a, wider], tmp_path / "soup")
    assert e.value.path == str(wider) and e.value.field in ("hidden_size", "head_dim")
    other_tok = _save(tmp_path, "tok", tok=with_extra_token(word_tokenizer(VOCAB)))
    with pytest.raises(InputError) as e:
        average_models([a, other_tok], tmp_path / "soup")
    assert e.value.field == "tokenizer"
    assert not (tmp_path / "soup").exists()


def test_bad_weights_and_arguments_are_refused(tmp_path):
    with pytest.raises(InputError, match="at least two"):
        normalized_weights(1, None)
    with pytest.raises(InputError) as e:
        normalized_weights(2, [1.0])
    assert e.value.field == "weight"
    for bad in ([1.0, 0.0], [1.0, -2.0], [1.0, float("nan")]):
        with pytest.raises(InputError, match="positive"):
            normalized_weights(2, bad)
    a = _save(tmp_path, "a")
    for out in (a, a.parent):  # the output folder (replaced when saved) is, or holds, a model to average
        with pytest.raises(InputError) as e:
            average_models([a, a], out)
        assert e.value.field == "out"
    assert (a / "model.safetensors").exists()
    with pytest.raises(InputError, match="unknown dtype"):
        average_models([a, a], tmp_path / "soup", dtype="int3")


def test_cli_prints_the_summary(tmp_path):
    a, b = _save(tmp_path, "a", seed=0), _save(tmp_path, "b", seed=1)
    result = CliRunner().invoke(app, ["average", str(a), str(b), "--out", str(tmp_path / "soup"),
                                      "--weight", "1", "--weight", "1"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["out"] == str(tmp_path / "soup") and summary["weights"] == [0.5, 0.5]
    assert (tmp_path / "soup" / "model.safetensors").exists()


def test_sources_are_recorded_absolute_and_read_back_by_niah(tmp_path, monkeypatch, capsys):
    """Runs named relative to the working folder are recorded as absolute paths, so a report run from elsewhere
    still finds the runs' NIAH results; a model that is no soup, a .gguf file or an unreadable record gives None."""
    _save(tmp_path, "a", seed=0), _save(tmp_path, "b", seed=1)
    monkeypatch.chdir(tmp_path)
    average_models(["a", "./b/"], "soup")
    assert niah.model_sources("soup") == [str(tmp_path / "a"), str(tmp_path / "b")]
    assert niah.model_sources(str(tmp_path / "a" / "model.safetensors")) is None  # a file, like a .gguf
    assert niah.model_sources("HuggingFaceTB/SmolLM2-135M-Instruct") is None and niah.model_sources(None) is None
    (tmp_path / "soup" / "longreach.json").write_text("{not json")
    assert niah.model_sources("soup") is None and "cannot be read" in capsys.readouterr().err
