"""RoPE schemes: our frequencies vs transformers' own RoPE initialisation, for every scheme; guards; the bound."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaForCausalLM
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

from longreach.errors import InputError
from longreach.model import rope, tiny

# (scheme, kwargs, rope_type written into the config)
SCHEMES = [
    ("theta", {"base": 2.5e6}, "default"),
    ("pi", {}, "linear"),
    ("ntk", {}, "default"),
    ("ntk", {"dynamic": True}, "dynamic"),
    ("yarn", {}, "yarn"),
    ("llama3", {}, "llama3"),
]


def _config(head_dim: int = 64, window: int = 512, base: float = 10000.0):
    # head dim 64 with base 1e4 and a 512 window puts wavelengths on both sides of every threshold
    # (YaRN's 1 and 32 turns, Llama 3's window/4 and window), so all branches of each formula are exercised.
    return tiny.tiny_llama_config(vocab_size=32, hidden=2 * head_dim, heads=2, kv_heads=1, max_position=window,
                                  rope_theta=base)


@pytest.mark.parametrize("scheme,kwargs,rope_type", SCHEMES)
def test_inv_freq_matches_transformers_for_every_scheme(scheme, kwargs, rope_type):
    config = _config()
    before = rope.inv_freq(config)
    summary = rope.apply_scheme(config, scheme, target_len=8192, verbose=False, **kwargs)
    assert config.rope_parameters["rope_type"] == rope_type
    ours = rope.inv_freq(config)
    assert ours.dtype == torch.float32 and ours.shape == (32,)
    if rope_type != "default":
        ref, scale = ROPE_INIT_FUNCTIONS[rope_type](config, None)
        torch.testing.assert_close(ours, ref, rtol=1e-6, atol=0)
        assert rope.attention_scaling(config) == pytest.approx(scale, rel=1e-9)
    # and the model transformers builds from this config uses the same frequencies and scaling
    module = rope.rotary_module(LlamaForCausalLM(config))
    torch.testing.assert_close(ours, module.inv_freq, rtol=1e-6, atol=0)
    assert module.attention_scaling == pytest.approx(rope.attention_scaling(config), rel=1e-9)
    # the scheme changed the frequencies (dynamic NTK only once the input outgrows the original window)
    assert not torch.allclose(rope.inv_freq(config, seq_len=8192), before)
    expected_window = 512 if kwargs.get("dynamic") else 8192
    assert config.max_position_embeddings == summary["max_position_embeddings"] == expected_window


def test_scheme_formulas_by_hand():
    config = _config()
    rope.apply_scheme(config, "ntk", 8192, verbose=False)
    assert config.rope_parameters["rope_theta"] == pytest.approx(1e4 * 16 ** (64 / 62))
    config = _config()
    rope.apply_scheme(config, "yarn", 8192, verbose=False)
    assert rope.attention_scaling(config) == pytest.approx(0.1 * math.log(16) + 1)
    p = config.rope_parameters
    assert (p["beta_fast"], p["beta_slow"], p["original_max_position_embeddings"]) == (32, 1, 512)
    config = _config()
    rope.apply_scheme(config, "pi", 8192, factor=4, verbose=False)
    torch.testing.assert_close(rope.inv_freq(config), rope.inv_freq(_config()) / 4)
    config = _config()
    rope.apply_scheme(config, "llama3", 8192, verbose=False)
    freq, orig = rope.inv_freq(config), rope.inv_freq(_config())
    assert freq[0] == orig[0] and freq[-1] == pytest.approx(orig[-1] / 16)  # fast kept, slow divided


def test_dynamic_ntk_grows_with_length_like_transformers():
    config = _config()
    rope.apply_scheme(config, "ntk", 8192, dynamic=True, verbose=False)
    for seq_len in (100, 512, 3000, 9000):
        ref, _ = ROPE_INIT_FUNCTIONS["dynamic"](config, None, seq_len=seq_len)
        torch.testing.assert_close(rope.inv_freq(config, seq_len=seq_len), ref, rtol=1e-6, atol=0)
    assert rope.inv_freq(config, seq_len=3000)[-1] < rope.inv_freq(config, seq_len=512)[-1]


def test_default_rope_matches_the_model_module_at_other_head_dims():
    for hd, base in ((16, 1e4), (128, 5e5)):
        config = _config(head_dim=hd, base=base)
        module = rope.rotary_module(LlamaForCausalLM(config))
        torch.testing.assert_close(rope.inv_freq(config), module.inv_freq, rtol=1e-6, atol=0)


@pytest.mark.parametrize("autocast", [False, True])
def test_rotary_angles_are_fp32_at_large_positions(autocast):
    config = _config(window=8192)
    rope.apply_scheme(config, "theta", 131072, base=5e6, verbose=False)
    module = rope.rotary_module(LlamaForCausalLM(config))
    pos = torch.tensor([[0, 1000, 65535, 131071]])
    x = torch.zeros(1, 4, 64, dtype=torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        cos, _ = module(x, pos)
    freq64 = 1.0 / 5e6 ** (torch.arange(0, 64, 2, dtype=torch.float64) / 64)
    want = torch.cos(pos[0, :, None].double() * freq64)
    # fp32 angles: error = fp32 angle rounding (<0.01 rad at 131K) + bf16 rounding of cos; bf16 angles: O(1)
    err = (cos[0, :, :32].double() - want).abs().max().item()
    assert err < 0.02, err


def test_check_rotary_raises_when_the_model_ignores_the_config():
    config = _config()
    model = LlamaForCausalLM(config)
    rope.check_rotary(model)
    rope.apply_scheme(model.config, "theta", 8192, base=1e6, verbose=False)  # config only, module stale
    with pytest.raises(RuntimeError, match="does not use the configured RoPE"):
        rope.check_rotary(model)
    rope.refresh_rotary(model)  # rebuilding the module from the config fixes it
    rope.check_rotary(model)
    torch.testing.assert_close(rope.rotary_module(model).inv_freq, rope.inv_freq(model.config))


def test_check_rotary_catches_a_bf16_cast_and_refresh_restores_fp32():
    model = tiny.tiny_llama(_config(head_dim=16), seed=0).to(torch.bfloat16)  # .to casts inv_freq too
    with pytest.raises(RuntimeError, match="not float32"):
        rope.check_rotary(model)
    rope.refresh_rotary(model)
    assert rope.rotary_module(model).inv_freq.dtype == torch.float32
    assert model.model.layers[0].self_attn.q_proj.weight.dtype == torch.bfloat16


def test_extend_model_changes_the_forward_pass():
    torch.manual_seed(0)
    model = tiny.tiny_llama(_config(head_dim=16), seed=0)
    ids = torch.randint(0, 32, (1, 64))
    with torch.no_grad():
        before = model(ids).logits
        rope.extend_model(model, "theta", 8192, base=1e6, verbose=False)
        after = model(ids).logits
        fresh = tiny.tiny_llama(model.config, seed=0)(ids).logits
    assert not torch.allclose(before, after)
    torch.testing.assert_close(after, fresh)  # same as a model built from the extended config


def test_theta_keeps_an_existing_scaling_and_other_schemes_refuse_to_compose():
    config = _config()
    rope.apply_scheme(config, "llama3", 4096, verbose=False)
    rope.apply_scheme(config, "theta", 16384, base=1e6, verbose=False)
    p = config.rope_parameters
    assert p["rope_type"] == "llama3" and p["rope_theta"] == 1e6 and p["factor"] == 8
    with pytest.raises(InputError, match="do not compose"):
        rope.apply_scheme(config, "yarn", 32768, verbose=False)
    with pytest.raises(InputError, match="unknown RoPE scheme"):
        rope.apply_scheme(_config(), "alibi", 4096, verbose=False)


def test_yarn_on_a_yarn_model_rescales_its_original_window():
    """8K -> 32K by YaRN, then YaRN to 128K: the config YaRN x16 gives from the unscaled model (the YaRN paper's
    s=16 -> s=32); the second step's own window (32K) is not mistaken for the original."""
    twice, once = _config(window=512), _config(window=512)
    rope.apply_scheme(twice, "yarn", 2048, verbose=False)
    summary = rope.apply_scheme(twice, "yarn", 8192, verbose=False)
    rope.apply_scheme(once, "yarn", 8192, verbose=False)
    assert twice.rope_parameters == once.rope_parameters and twice.max_position_embeddings == 8192
    assert summary["factor"] == 16 and summary["original_len"] == 512
    assert twice.rope_parameters["attention_factor"] == pytest.approx(0.1 * math.log(16) + 1)
    with pytest.raises(InputError, match="do not compose"):
        rope.apply_scheme(twice, "pi", 16384, verbose=False)
    with pytest.raises(InputError, match="shrink the window"):  # below the original 512, even from an 8192 model
        rope.apply_scheme(twice, "yarn", 256, verbose=False)
    # a model's own YaRN settings survive the re-scale (here gpt-oss-like: no truncation, other ramp bounds)
    own = _config(window=512)
    rope.apply_scheme(own, "yarn", 2048, verbose=False)
    own.rope_parameters.update(truncate=False, beta_fast=16.0)
    rope.apply_scheme(own, "yarn", 8192, verbose=False)
    assert own.rope_parameters["truncate"] is False and own.rope_parameters["beta_fast"] == 16.0
    assert own.rope_parameters["factor"] == 16

def test_attention_factor_sharpens_attention_without_changing_frequencies(tmp_path):
    from longreach.model.extend import extend_checkpoint
    from longreach.model.load import save_model

    plain, sharp = _config(), _config()
    rope.apply_scheme(plain, "theta", 8192, base=1e6, verbose=False)
    summary = rope.apply_scheme(sharp, "theta", 8192, base=1e6, attention_factor=1.2, verbose=False)
    p = sharp.rope_parameters
    assert (p["rope_type"], p["factor"], p["rope_theta"], p["attention_factor"]) == ("yarn", 1.0, 1e6, 1.2)
    assert summary["attention_scaling"] == 1.2 and summary["max_position_embeddings"] == 8192
    ref, scale = ROPE_INIT_FUNCTIONS["yarn"](sharp, None)  # transformers' own reading of the config
    torch.testing.assert_close(ref, rope.inv_freq(plain), rtol=1e-6, atol=0)
    assert scale == pytest.approx(1.2)
    # cos/sin, hence q and k after RoPE, are 1.2x those of the plain model: logits 1.44x
    x, pos = torch.zeros(1, 5, 8), torch.arange(5)[None] * 1000
    cos_p, sin_p = rope.rotary_module(LlamaForCausalLM(plain))(x, pos)
    cos_s, sin_s = rope.rotary_module(LlamaForCausalLM(sharp))(x, pos)
    torch.testing.assert_close(cos_s, 1.2 * cos_p)
    torch.testing.assert_close(sin_s, 1.2 * sin_p)
    # again, to a longer window: new base and factor, still no interpolation (the temperature follows the window)
    rope.apply_scheme(sharp, "theta", 16384, base=2e6, attention_factor=1.3, verbose=False)
    p = sharp.rope_parameters
    assert (p["rope_theta"], p["factor"], p["original_max_position_embeddings"]) == (2e6, 1.0, 16384)
    ref, scale = ROPE_INIT_FUNCTIONS["yarn"](sharp, None)
    torch.testing.assert_close(ref, torch.tensor(rope._base_inv_freq(2e6, 64), dtype=torch.float32))
    assert scale == rope.attention_scaling(sharp) == 1.3
    # yarn's own default (0.1 ln s + 1) replaced
    yarn = _config()
    rope.apply_scheme(yarn, "yarn", 8192, attention_factor=1.5, verbose=False)
    assert rope.attention_scaling(yarn) == 1.5
    # through a saved checkpoint: the library call, and `longreach extend --attention-factor`; both read back
    from typer.testing import CliRunner

    from longreach.cli.apps import app

    src = tmp_path / "src"
    save_model(tiny.tiny_llama(_config(head_dim=16), seed=0), None, src)
    out = extend_checkpoint(src, tmp_path / "out", 4096, base=1e5, attention_factor=1.1)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    assert out["attention_scaling"] == rope.rotary_module(loaded).attention_scaling == pytest.approx(1.1)
    result = CliRunner().invoke(app, ["extend", "--model", str(src), "--out", str(tmp_path / "cli"),
                                      "--target-len", "4096", "--base", "1e5", "--attention-factor", "1.25"])
    assert result.exit_code == 0, result.output
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "cli")
    assert rope.rotary_module(loaded).attention_scaling == pytest.approx(1.25)
    torch.testing.assert_close(rope.rotary_module(loaded).inv_freq,
                               torch.tensor(rope._base_inv_freq(1e5, 16), dtype=torch.float32))
    # bad uses
    for scheme, kwargs, match in (("pi", {"attention_factor": 1.1}, "goes with"),
                                  ("theta", {"attention_factor": 0.0}, "must be positive")):
        with pytest.raises(InputError, match=match) as e:
            rope.apply_scheme(_config(), scheme, 8192, verbose=False, **kwargs)
        assert e.value.field == "attention_factor"
    llama3 = _config()
    rope.apply_scheme(llama3, "llama3", 4096, verbose=False)
    with pytest.raises(InputError, match="no attention factor"):
        rope.apply_scheme(llama3, "theta", 8192, attention_factor=1.1, verbose=False)


def test_saved_config_reads_back_in_transformers_and_carries_legacy_fields(tmp_path):
    model = LlamaForCausalLM(_config(head_dim=16))
    rope.extend_model(model, "yarn", 4096, verbose=False)
    model.save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg.update(rope.legacy_fields(model.config))  # what save_model writes for transformers 4.x
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    assert cfg["rope_theta"] == 1e4 and cfg["rope_scaling"]["rope_type"] == "yarn"
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert loaded.config.max_position_embeddings == 4096
    rope.check_rotary(loaded, expected=rope.inv_freq(model.config))
    assert rope.rotary_module(loaded).attention_scaling == pytest.approx(0.1 * math.log(8) + 1)


def _first_negative_direct(base, head_dim, max_len):
    theta = 1.0 / base ** (np.arange(0, head_dim, 2) / head_dim)
    b = np.cos(np.outer(np.arange(max_len + 1), theta)).sum(axis=1)
    neg = np.flatnonzero(b < 0)
    return int(neg[0]) if neg.size else None


def test_men_bound_condition_matches_the_direct_sum():
    for base, hd, n in ((1e4, 128, 65536), (3e6, 128, 65536), (4.169e6, 128, 65536), (1e8, 128, 65536),
                        (2e5, 64, 8192), (1e6, 16, 5000)):
        assert rope.first_negative_position(base, hd, n) == _first_negative_direct(base, hd, n)
    assert rope.first_negative_position(1e4, 128, 65536) < 20000  # small base: B_m turns negative early
    assert rope.first_negative_position(1e8, 128, 65536) is None
    bound = rope.base_lower_bound(8192, 128)
    assert rope.first_negative_position(bound, 128, 8192) is None
    assert rope.first_negative_position(bound / 10 ** (1 / 50), 128, 8192) is not None


def test_bound_reach_of_every_scheme_matches_the_direct_sum(capsys):
    # SmolLM2's shape (head dim 64, base 1e5, 8K): the frequencies each scheme writes, checked where B_m first
    # turns negative against the plain sum over positions (docs/RESULTS.md session 9 uses these numbers)
    def reach(*steps):
        config = tiny.shape_config("smollm2-135m", layers=1)
        for scheme, length, kw in steps:
            summary = rope.apply_scheme(config, scheme, length, verbose=True, **kw)
        theta = rope.inv_freq(config, seq_len=steps[-1][1]).double().numpy()
        b = np.cos(np.outer(np.arange(steps[-1][1] + 1), theta)).sum(axis=1)
        neg = np.flatnonzero(b < 0)
        assert summary["bound_reach"] == rope.bound_reach(config, steps[-1][1]) == (int(neg[0]) if neg.size
                                                                                     else None)
        return summary["bound_reach"]

    theta32 = ("theta", 32768, {"base": 1.6e7})
    assert reach(theta32) is None
    assert "warning" not in capsys.readouterr().err
    assert reach(theta32, ("theta", 131072, {"base": 3.2e8})) is None  # the bound for 128K
    assert 40000 < reach(theta32, ("theta", 131072, {"base": 3e7})) < 50000  # x300: fails at ~45.7K
    assert "fail the Men et al. condition" in capsys.readouterr().err
    assert 15000 < reach(("yarn", 32768, {}), ("yarn", 131072, {})) < 25000  # YaRN x16 from 1e5: ~19.4K
    assert reach(("pi", 16384, {})) < 16384 and reach(("ntk", 16384, {"dynamic": True})) < 16384


# RECIPE.md section 4, head dim 128
RECIPE_BASES = {65536: 4.5e6, 131072: 1.9e7, 262144: 4.9e7, 524288: 1.8e8, 1048576: 1.2e9}


@pytest.mark.parametrize("target_len", [65536, 262144, 524288])
def test_recommended_base_matches_recipe_values(target_len):
    base = rope.recommended_base(target_len, 128, verbose=False)
    assert base == pytest.approx(RECIPE_BASES[target_len], rel=0.1)


def test_recommended_base_at_128k_is_above_recipe_because_recipe_value_fails():
    # The RECIPE lists 1.9e7; on our grid 2.19e7 and 3.16e7 still dip below zero (B_m about -1.4 at m = 129K
    # and -0.1 at m = 115K), so the safe value is higher.
    base = rope.recommended_base(131072, 128, verbose=False)
    assert 3.2e7 <= base <= 3.5e7
    for failing in (2.188e7, 3.162e7):
        assert _first_negative_direct(failing, 128, 131072) is not None


@pytest.mark.slow
def test_recommended_base_at_1m_is_below_recipe_and_nothing_above_fails():
    # The RECIPE lists 1.2e9; our scan finds the last failing grid base at 6.6e8. Check the grid above directly.
    base = rope.recommended_base(1048576, 128, verbose=False)
    assert 6.9e8 <= base <= 7.1e8
    assert rope.first_negative_position(6.607e8, 128, 1048576) is not None
    for k in range(int(50 * np.log10(base)) + 1, int(50 * np.log10(2 * RECIPE_BASES[1048576]))):
        assert rope.first_negative_position(10 ** (k / 50), 128, 1048576) is None, k


def test_recommended_base_prints_what_it_derived(capsys):
    rope.recommended_base(8192, 64)
    assert "Men et al." in capsys.readouterr().err


def test_plan_compares_the_schemes_without_changing_the_model(tmp_path):
    from typer.testing import CliRunner

    from longreach.cli.apps import app
    from longreach.model.load import save_model

    config = tiny.shape_config("smollm2-135m", layers=1)
    rope.apply_scheme(config, "theta", 32768, base=1.6e7, verbose=False)  # milestone A's 32K model
    before = rope.inv_freq(config)
    rows = {r["flags"]: r for r in rope.plan(config, 131072)}
    torch.testing.assert_close(rope.inv_freq(config), before, rtol=0, atol=0)
    assert config.max_position_embeddings == 32768
    assert list(rows) == ["--scheme theta --base 3.2e+08", "--scheme pi", "--scheme ntk",
                          "--scheme yarn --factor 4", "--scheme yarn --factor 6", "--scheme yarn --factor 8",
                          "--scheme llama3 --factor 4", "--scheme llama3 --factor 6", "--scheme llama3 --factor 8"]
    bound, yarn4, yarn6 = (rows[k] for k in ("--scheme theta --base 3.2e+08", "--scheme yarn --factor 4",
                                              "--scheme yarn --factor 6"))
    assert bound["bound_reach"] is None and bound["unchanged"] == 1 and bound["max_slowdown"] == pytest.approx(
        (3.2e8 / 1.6e7) ** (62 / 64))  # the slowest of 32: base^(-62/64)
    assert yarn4["bound_reach"] == 89576 and yarn4["unchanged"] == 10 and yarn4["max_slowdown"] == pytest.approx(4)
    assert yarn6["bound_reach"] is None and yarn6["attention_scaling"] == pytest.approx(0.1 * math.log(6) + 1)
    assert rows["--scheme llama3 --factor 6"]["unchanged"] == 14
    # each row's flags, given to extend, give that row's frequencies and reach
    again = tiny.shape_config("smollm2-135m", layers=1)
    rope.apply_scheme(again, "theta", 32768, base=1.6e7, verbose=False)
    assert rope.apply_scheme(again, "yarn", 131072, factor=6, verbose=False)["bound_reach"] is None
    # on a model that already uses a scaling, the schemes that do not compose are reported as refused
    scaled = tiny.shape_config("smollm2-135m", layers=1)
    rope.apply_scheme(scaled, "llama3", 32768, verbose=False)
    assert "error" in {r["flags"]: r for r in rope.plan(scaled, 131072)}["--scheme pi"]
    # the command, on a saved tiny model
    src = tmp_path / "m"
    save_model(tiny.tiny_llama(_config(head_dim=16), seed=0), None, src)
    result = CliRunner().invoke(app, ["rope-plan", "--model", str(src), "--target-len", "4096", "--factor", "8"])
    assert result.exit_code == 0, result.output
    assert "| --scheme yarn --factor 8 |" in result.output and "| --scheme pi |" in result.output
    result = CliRunner().invoke(app, ["rope-plan", "--model", str(src), "--target-len", "4096", "--json"])
    assert result.exit_code == 0 and len(json.loads(result.output)) == 9
