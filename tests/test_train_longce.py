"""LongCE (TrainConfig.loss_weighting): the short view equals the model run on the truncated context, the weights
and the weighted loss equal a full-logits reference, a window over the whole sequence changes nothing, and a run
with it logs its weights, resumes to the same losses and refuses bad settings by field."""

from __future__ import annotations

import json
import math
import shutil
from contextlib import nullcontext

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from longreach.errors import InputError
from longreach.train import attention, checkpoint, longce, parallel
from longreach.train.config import TrainConfig
from longreach.train.loop import CausalLMLoss, document_positions, forward_backward, train
from longreach.train.loss import IGNORE, longce_weights, shift_labels


def _lm(attn: str = "sdpa"):
    from longreach.model.tiny import tiny_llama, tiny_llama_config

    attention.register()
    lm = tiny_llama(tiny_llama_config(64, hidden=64, layers=2, heads=4, kv_heads=2), seed=0).train()
    lm.config.use_cache = False
    lm.config._attn_implementation = attn
    return lm


def _batch(seq_len: int = 40, doc_starts: list[int] | None = None, seed: int = 1, dense: bool = False):
    ids = torch.randint(0, 64, (1, seq_len), generator=torch.Generator().manual_seed(seed))
    batch = {"input_ids": ids, "labels": shift_labels(ids)}
    if doc_starts is not None:  # packed documents, as the loop's collate gives them
        batch.update(document_positions(seq_len, [np.array(doc_starts)], dense_mask=dense))
    return batch


def _truncated_nll(lm, ids, labels, window, stride, doc_starts=(0,)):
    """Reference short view, target by target: NaN for the first `window` targets; else the model run on the
    context the target gets alone (from the start of the window that scores its block of `stride` targets, or of
    its document if later), positions from 0."""
    t_len = ids.shape[1]
    out = torch.full((t_len,), float("nan"))
    with torch.no_grad():
        for t in range(window, t_len):
            if labels[0, t] == IGNORE:
                out[t] = 0.0
                continue
            end = min(t_len, window + ((t - window) // stride + 1) * stride)
            start = max(end - window - stride, max(s for s in doc_starts if s <= t))
            logits = lm(input_ids=ids[:, start:t + 1]).logits[0, -1].float()
            out[t] = F.cross_entropy(logits[None], labels[0, t:t + 1])
    return out


def _log_scaled(lm):
    """The query log scale on (floor 4, scale 0.5): the one part of the model that sees absolute positions."""
    from longreach.model import logscale

    logscale.configure(lm.config, 0.5, 4)
    logscale.install(lm)
    return lm


@pytest.mark.parametrize("attn,doc_starts,dense", [("sdpa", None, False), ("longreach_flex", [0, 17], False),
                                                   ("sdpa", [0, 5, 30], True)])
def test_the_short_view_is_the_model_on_the_truncated_context(attn, doc_starts, dense, monkeypatch):
    """Two rows, windows spread over several passes, the last window shorter than a stride from the end; packed
    documents by FlexAttention or by a dense mask, a window starting inside a document (positions restart)."""
    monkeypatch.setattr(longce, "WINDOWS_PER_PASS", 3)
    lm = _log_scaled(_lm(attn))
    rows = [_batch(seed=s, doc_starts=doc_starts, dense=dense) for s in (1, 2)]
    batch = {k: torch.cat([r[k] for r in rows]) for k in rows[0]}
    if doc_starts is not None:  # the loss leaves out targets in the next document, as the loop's collate does
        for s in doc_starts[1:]:
            batch["labels"][:, s - 1] = IGNORE
    weight = lm.get_output_embeddings().weight
    model = CausalLMLoss(lm, chunk_tokens=16)
    got = longce.short_nll(model._hidden, batch["input_ids"], batch["labels"], batch.get("position_ids"),
                           batch.get("attention_mask"), weight, 8, 3, 16).view(2, -1)
    assert len(longce.windows(40, 8, 3)) == 11  # 22 windows in passes of 3
    for r in range(2):
        ref = _truncated_nll(lm, batch["input_ids"][r:r + 1], batch["labels"][r:r + 1], 8, 3, doc_starts or [0])
        assert torch.allclose(got[r], ref, atol=1e-4, equal_nan=True), (r, (got[r] - ref).abs().nan_to_num().max())


def test_windows_cover_every_target_once():
    for t, window, stride in ((40, 8, 3), (40, 8, 4), (41, 8, 8), (12, 8, 4)):
        spans = longce.windows(t, window, stride)
        scored = [p for _, first, end in spans for p in range(first, end)]
        assert scored == list(range(window, t))
        assert all(end - start == window + stride and first - start >= window for start, first, end in spans)
    with pytest.raises(ValueError):
        longce.windows(11, 8, 4)


def test_weighted_loss_and_gradients_equal_a_full_logits_reference():
    batch = _batch()
    lm = _lm()
    model = CausalLMLoss(lm, chunk_tokens=16, weighting=longce.Settings(8, 4, 2.0))
    n = torch.tensor(float((batch["labels"] != IGNORE).sum()))
    sums = {}
    ce = forward_backward(model, [batch], n, nullcontext, parallel.Dist(), sums)
    got = {k: p.grad.clone() for k, p in lm.named_parameters()}

    ref_lm = _lm()
    short = _truncated_nll(ref_lm, batch["input_ids"], batch["labels"], 8, 4)
    logits = ref_lm(input_ids=batch["input_ids"]).logits[0].float()
    nll = F.cross_entropy(logits, batch["labels"][0], ignore_index=IGNORE, reduction="none")
    keep = batch["labels"][0] != IGNORE
    w = torch.minimum(torch.exp(short - nll.detach()), torch.tensor(2.0)).nan_to_num(1.0) * keep
    (w * nll).sum().div(n).backward()
    assert float(ce) == pytest.approx(float(nll.sum()), rel=1e-5)
    assert float(sums["loss_weighted"]) == pytest.approx(float((w * nll).sum()), rel=1e-4)
    assert float(sums["longce_weight_mean"]) == pytest.approx(float(w.sum()), rel=1e-4)
    assert w[:8].tolist() == [1.0] * 8  # the first `window` targets see their whole context either way
    assert float(w.sum()) != pytest.approx(float(keep.sum()), rel=1e-3)  # the weights are not all 1 here
    for k, p in ref_lm.named_parameters():
        assert torch.allclose(got[k], p.grad, atol=1e-5, rtol=1e-3), k


def test_weights_by_hand():
    long = torch.tensor([2.0, 2.0, 0.5, 3.0, 1.0])
    short = torch.tensor([2.0, 3.0, 6.0, 1.0, float("nan")])
    w = longce_weights(long, short, gamma=5.0)
    assert w.tolist() == pytest.approx([1.0, math.e, 5.0, math.exp(-2.0), 1.0])
    floored = longce_weights(long, short, gamma=5.0, floor=1.0)  # only tokens the far context helps count more
    assert floored.tolist() == pytest.approx([1.0, math.e, 5.0, 1.0, 1.0])


def _copy_shards(path, n_seq=8, seq_len=32):
    """Each sequence a random half and its copy: the second half is predictable only from 16 tokens back."""
    from longreach.data.shards import ShardWriter

    rng = np.random.default_rng(0)
    w = ShardWriter(path, seq_len=seq_len, vocab_size=64)
    for _ in range(n_seq):
        half = rng.integers(0, 64, seq_len // 2)
        w.add(np.concatenate([half, half]))
    w.close()
    return path


def _cfg(model, data, out, **kw) -> TrainConfig:
    base = {"model": str(model), "data": str(data), "out": str(out), "max_steps": 6, "micro_batch": 2, "lr": 3e-3,
            "warmup_steps": 2, "save_every": 3, "progress": False, "loss_weighting": "longce", "longce_window": 8,
            "longce_stride": 4}
    base.update(kw)
    return TrainConfig(**base)


def _records(run):
    return [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]


def test_a_longce_run_logs_its_weights_resumes_and_refuses_bad_settings(tiny_model, tmp_path):
    data = _copy_shards(tmp_path / "copy")
    train(_cfg(tiny_model, data, tmp_path / "full"))
    plain = train(_cfg(tiny_model, data, tmp_path / "plain", loss_weighting=""))
    recs = _records(tmp_path / "full")
    assert len(recs) == 6 and all("longce_weight_mean" in r and "loss_weighted" in r for r in recs)
    assert all(r["longce_weight_mean"] > 0 for r in recs)
    assert "longce_weight_mean" not in _records(tmp_path / "plain")[0]
    train(_cfg(tiny_model, data, tmp_path / "floored", longce_floor=1.0))  # no weight below 1
    assert all(r["longce_weight_mean"] >= 1 - 1e-6 for r in _records(tmp_path / "floored"))
    assert min(r["longce_weight_mean"] for r in recs) < 1  # while the paper's weights go below 1 here
    # the first step's reported loss is plain cross-entropy, the same as the plain run's; later ones differ
    assert recs[0]["loss"] == pytest.approx(_records(tmp_path / "plain")[0]["loss"], abs=1e-6)
    assert recs[-1]["loss"] != pytest.approx(plain["loss"], abs=1e-6)
    # resumed from step 3: the same losses and weights
    shutil.copytree(tmp_path / "full", tmp_path / "split")
    shutil.rmtree(checkpoint.latest(tmp_path / "split"))
    train(_cfg(tiny_model, data, tmp_path / "split"))
    again = _records(tmp_path / "split")
    for key in ("loss", "loss_weighted", "longce_weight_mean"):
        assert [r[key] for r in again] == pytest.approx([r[key] for r in recs], abs=1e-6), key
    for i, (bad, field) in enumerate((({"loss_weighting": "long"}, "loss_weighting"),
                                      ({"longce_window": 0}, "longce_window"),
                                      ({"longce_stride": 9}, "longce_stride"),
                                      ({"longce_gamma": 0.0}, "longce_gamma"),
                                      ({"longce_floor": 6.0}, "longce_floor"),
                                      ({"longce_window": 29}, "longce_window"),  # 29 + 4 > 32
                                      ({"loss_impl": "liger"}, "loss_impl"),
                                      ({"context_parallel": 2}, "loss_weighting"))):
        with pytest.raises(InputError) as e:
            train(_cfg(tiny_model, data, tmp_path / f"bad{i}", **bad))
        assert e.value.field == field, bad
        assert not (tmp_path / f"bad{i}").exists(), bad
