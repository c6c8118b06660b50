"""Perplexity by position: bucket means equal a direct full-logits computation; several models, one plot."""

from __future__ import annotations

import json
import math

import pytest
import torch

from longreach.errors import InputError
from longreach.eval import ppl
from longreach.eval.backends import LocalHF
from test_eval_backends import tiny_backend, tiny_model, tiny_tokenizer


def test_bucket_perplexities_equal_direct_computation(tmp_path):
    from longreach import assets

    text = sorted(assets.paul_graham_essays().glob("*.txt"))[5]
    small_chunks = LocalHF(tiny_model(1), tiny_tokenizer(), device="cpu", chunk_tokens=7)
    cfg = ppl.PplConfig(text=str(text), length=96, buckets=4, sequences=3, out=str(tmp_path / "p"))
    res = ppl.run(cfg, backends=[tiny_backend(0), small_chunks])
    assert json.loads((tmp_path / "p" / "results.json").read_text()) == res
    assert (tmp_path / "p" / "ppl.png").read_bytes()[:4] == b"\x89PNG"
    seqs = ppl.windows(tiny_tokenizer(), ppl.read_text(text, 10**6), 96, 3)
    assert len(seqs) == 3 and all(len(s) == 96 and s[0] == tiny_tokenizer().bos_token_id for s in seqs)
    for m, backend in zip(res["models"], [tiny_backend(0), small_chunks]):
        with torch.no_grad():
            losses = torch.stack([torch.nn.functional.cross_entropy(
                backend.model(torch.tensor([s])).logits[0, :-1], torch.tensor(s[1:]), reduction="none")
                for s in seqs]).mean(0)  # target positions 1..95
        assert [b["start"] for b in m["curve"]] == [0, 24, 48, 72]
        for b in m["curve"]:
            want = losses[max(b["start"], 1) - 1:b["end"] - 1].mean()
            assert b["loss"] == pytest.approx(float(want), abs=1e-4)
            assert b["ppl"] == pytest.approx(math.exp(b["loss"]))
        assert m["loss"] == pytest.approx(float(losses.mean()), abs=1e-4)
    assert res["models"][0]["loss"] != res["models"][1]["loss"]  # two different models, two curves


def test_labels_and_bad_input(tmp_path):
    assert ppl.labels(["runs/a/final", "runs/b/final"]) == ["a/final", "b/final"]
    assert ppl.labels(["base", "x/extended"]) == ["base", "extended"]
    (tmp_path / "t.txt").write_text("too short.")
    with pytest.raises(InputError, match="tokens"):
        ppl.windows(tiny_tokenizer(), "too short.", 64, 1)
    with pytest.raises(InputError):
        ppl.run(ppl.PplConfig(text=str(tmp_path / "t.txt"), length=64), backends=[])


def test_short_context_control_scores_each_token_once_with_half_to_full_context(tmp_path):
    from longreach import assets

    backend = tiny_backend(0)
    tok = backend.tokenizer
    text = ppl.read_text(sorted(assets.paul_graham_essays().glob("*.txt"))[5], 10**5)
    (ids,) = ppl.windows(tok, text, 40, 1)
    bos = ppl.bos_prefix(tok)
    assert bos == [tok.bos_token_id] and ids[0] == bos[0]
    full = backend.token_logprobs(ids)[0]
    assert torch.allclose(ppl.windowed_logprobs(backend, ids, 64, bos), full, atol=1e-5)  # W >= length: same
    w = 10
    got = ppl.windowed_logprobs(backend, ids, w, bos)
    assert torch.allclose(got[:w - 1], full[:w - 1], atol=1e-5)  # the first window: as the full sequence
    for t in range(w, len(ids)):  # each later target: BOS, then between W/2 - 1 and W - 1 tokens before it
        options = [float(backend.token_logprobs(bos + ids[t - c:t + 1])[0][-1]) for c in range(w // 2 - 1, w)]
        assert min(abs(float(got[t - 1]) - o) for o in options) < 1e-5, t
    assert not torch.allclose(got, full, atol=1e-3)  # the context did shrink
    with pytest.raises(InputError, match="at least"):
        ppl.windowed_logprobs(backend, ids, 2, bos)

    cfg = ppl.PplConfig(text=str(sorted(assets.paul_graham_essays().glob("*.txt"))[5]), length=40, buckets=2,
                        sequences=1, context=w, out=str(tmp_path / "c"))
    res = ppl.run(cfg, backends=[backend])
    assert res["context"] == w
    assert res["models"][0]["loss"] == pytest.approx(float(-got.double().mean()), abs=1e-5)
