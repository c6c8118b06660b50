"""Attention probe: the needle's share of attention per layer and head equals eager attention's own weights."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from longreach.errors import InputError
from longreach.eval import probe
from longreach.eval.backends import LocalHF
from test_eval_backends import tiny_model, tiny_tokenizer


def test_probe_matches_eager_attention_weights(tmp_path):
    backend = LocalHF(tiny_model(3), tiny_tokenizer(), device="cpu")
    cfg = probe.ProbeConfig(lengths=[160, 320], depths=[0.0, 100.0], recent=64, top=3, out=str(tmp_path / "a"))
    res = probe.run(cfg, backend=backend)
    assert backend.model.config._attn_implementation == "sdpa"  # the model's own attention again afterwards
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS

    assert probe.PROBE_NAME in ALL_MASK_ATTENTION_FUNCTIONS  # padding and sliding-window masks still apply
    assert json.loads((tmp_path / "a" / "results.json").read_text()) == res
    assert (tmp_path / "a" / "probe.png").read_bytes()[:4] == b"\x89PNG"
    assert [(c["length"], c["depth"]) for c in res["cells"]] == [(160, 0.0), (160, 100.0), (320, 0.0), (320, 100.0)]
    assert len(res["retrieval_heads"]) == 3 and len(res["summary"]) == 4

    model = backend.model
    n_layers, n_heads = model.config.num_hidden_layers, model.config.num_attention_heads
    hay = probe.Haystack(backend, probe.read_haystack(None), 320, True)
    starts = {}
    for c in res["cells"]:
        prompt = hay.build(c["length"], c["depth"], cfg.needle, cfg.question, None)
        text = probe.render(backend.tokenizer, prompt)
        ids, (na, nb), (qa, qb) = probe.spans(backend.tokenizer, text, cfg.needle, cfg.question)
        assert [na, nb] == c["needle_span"] and [qa, qb] == c["question_span"] and qb == len(ids) == c["tokens"]
        assert cfg.needle.strip() in backend.tokenizer.decode(ids[na:nb]).strip()
        assert cfg.question in backend.tokenizer.decode(ids[qa:qb])
        assert qa > nb
        starts[(c["length"], c["depth"])] = na
        model.config._attn_implementation = "eager"
        try:
            with torch.no_grad():
                att = model(torch.tensor([ids]), output_attentions=True).attentions  # [1, H, L, L] per layer
        finally:
            model.config._attn_implementation = probe.PROBE_NAME
        assert len(att) == n_layers
        for layer, a in enumerate(att):
            rows = a[0, :, qa:qb].double()  # [H, m, L]
            for name, want in (("needle", rows[..., na:nb].sum(-1).mean(-1)),
                               ("sink", rows[..., :probe.SINK].sum(-1).mean(-1)),
                               ("recent", rows[..., max(0, qa - 64):qa].sum(-1).mean(-1))):
                assert c[name][layer] == pytest.approx(want.tolist(), abs=1e-5), (name, layer)
        assert len(c["margin"]) == n_layers and len(c["margin"][0]) == n_heads
    assert starts[(160, 0.0)] < starts[(160, 100.0)] and starts[(320, 100.0)] > 200  # the needle moves with depth
    # the summary follows the retrieval heads: the heads with the most needle share at the shortest length
    short = torch.tensor([c["needle"] for c in res["cells"] if c["length"] == 160]).mean(0)
    assert short[tuple(res["retrieval_heads"][0])] == pytest.approx(float(short.max()))
    s = res["summary"][3]
    assert s["needle"] == pytest.approx(sum(res["cells"][3]["needle"][ly][h] for ly, h in res["retrieval_heads"]) / 3)


def test_probe_bad_input(tmp_path):
    tok = tiny_tokenizer()
    with pytest.raises(InputError, match="needle"):
        probe.spans(tok, "no needle here", "The best thing", "What?")
    with pytest.raises(InputError, match="more than once"):
        probe.spans(tok, "Eat. Eat. What?", "Eat.", "What?")
    for question in ("", "Where?"):  # no question rows: the probe would read the haystack's attention instead
        with pytest.raises(InputError, match="question"):
            probe.spans(tok, "text. The needle. more text. What?", "The needle.", question)
    ids, needle, queries = probe.spans(tok, "text. The needle. more text. What? ", "The needle. ", "What? ")
    assert tok.decode(ids[needle[0]:needle[1]]).strip() == "The needle." and queries[1] == len(ids)
    assert tok.decode(ids[queries[0]:]).strip() == "What?"
    with pytest.raises(InputError, match="lengths"):
        probe.run(probe.ProbeConfig(lengths=[], out=str(tmp_path)), backend=object())
    from longreach.cli import app

    r = CliRunner().invoke(app, ["eval", "attention", "--model", str(tmp_path / "missing"), "--out",
                                 str(tmp_path / "o"), "--lengths", "1k"])
    assert r.exit_code != 0 and "lengths" in str(r.exception)
