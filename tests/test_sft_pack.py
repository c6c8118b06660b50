"""Packing SFT samples: every sample exactly once with its mask, document starts at each sample, padding out of
the loss, and a packed run with the document mask giving the same loss and gradient as one sample per sequence."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from longreach.sft.format import Encoded
from longreach.sft.pack import PackStats, pack, write_shards

pytestmark = pytest.mark.usefixtures("one_thread")


def _samples(n=30, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for k in range(n):
        length = int(rng.integers(3, 40))
        ids = [int(x) for x in rng.integers(3, 60, size=length)]
        ids[0] = 1  # BOS-like start of a sample
        mask = [False] * length
        for i in range(length // 2, length):
            mask[i] = True
        out.append(Encoded(ids, mask))
    return out


def test_pack_places_each_sample_once_with_its_mask_and_starts():
    samples = _samples()
    seqs = list(pack(iter(samples), seq_len=64, pad_id=0))
    found = []
    for ids, mask, starts in seqs:
        assert ids.shape == mask.shape == (64,)
        bounds = list(starts) + [64]
        assert bounds[0] == 0
        for a, b in itertools.pairwise(bounds):
            if ids[a] == 1:  # a sample
                found.append((tuple(ids[a:b]), tuple(mask[a:b])))
            else:  # the padding tail: pad ids, never a target
                assert b == 64 and (ids[a:b] == 0).all() and not mask[a:b].any()
    assert sorted(found) == sorted((tuple(e.ids), tuple(e.mask)) for e in samples)
    used = sum(len(e.ids) for e in samples)
    assert len(seqs) <= used // 64 + 3  # first-fit fills sequences well
    assert list(pack(iter(samples), 64, 0, packed=False)).__len__() == len(samples)
    with pytest.raises(ValueError, match="exceeds"):
        list(pack([Encoded([1] * 65, [True] * 65)], 64, 0))


def test_plain_text_samples_get_a_sequence_of_their_own():
    qa = [Encoded(list(range(1, 11)), [False] * 8 + [True] * 2) for _ in range(4)]
    text = Encoded(list(range(20, 50)), [True] * 30, alone=True)
    seqs = list(pack([qa[0], text, qa[1], qa[2], qa[3]], seq_len=64, pad_id=0))
    alone = [s for s in seqs if 20 in s[0]]
    assert len(alone) == 1 and list(alone[0][2]) == [0, 30]  # the text, then padding: nothing shares it
    assert sum(int(s[1].sum()) for s in seqs) == 4 * 2 + 30 and len(seqs) == 2


def test_write_shards_counts_and_manifest(tmp_path):
    from longreach.data.shards import PackedShards

    stats = PackStats()
    samples = _samples()
    m = write_shards(iter(samples), tmp_path / "s", 64, 64, 0, stats, manifest_extra={"sft": {"fingerprint": "x"}})
    ds = PackedShards(tmp_path / "s")
    assert len(ds) == stats.sequences == m["sequences"] and stats.samples == len(samples)
    assert stats.target_tokens == sum(sum(e.mask) for e in samples) == sum(int(ds[i]["loss_mask"].sum())
                                                                           for i in range(len(ds)))
    assert m["sft"]["fingerprint"] == "x" and m["sft"]["samples"] == len(samples) and 0 < m["sft"]["fill"] <= 1


def test_packed_with_doc_mask_equals_unpacked(tmp_path, tiny_model):
    """Same samples, packed (document mask on) vs one per sequence: equal loss sum, token count, gradient."""
    from transformers import AutoModelForCausalLM

    from longreach.train import parallel
    from longreach.train.loop import Batches, CausalLMLoss
    from longreach.train.loss import IGNORE

    samples = _samples(8, seed=1)
    lm = AutoModelForCausalLM.from_pretrained(tiny_model, attn_implementation="sdpa").float()
    model = CausalLMLoss(lm, chunk_tokens=32)
    results = []
    for packed in (True, False):
        out = tmp_path / f"p{packed}"
        write_shards(iter(samples), out, 64, 64, 0, PackStats(), packed=packed)
        b = Batches(str(out), 0, parallel.setup(1))
        lm.zero_grad()
        loss, n = torch.zeros(()), 0
        for i in range(b.n):
            batch = b._collate([i], doc_mask=True)
            n += int((batch["labels"] != IGNORE).sum())
            batch_loss = model(**batch)
            batch_loss.backward()
            loss = loss + batch_loss.detach()
        results.append((b.n, loss, n, torch.cat([p.grad.flatten().clone() for p in lm.parameters()])))
    (n_packed, loss_p, tok_p, g_p), (n_single, loss_s, tok_s, g_s) = results
    assert n_packed < n_single == len(samples)
    # every answer token counts, except a sample's first token if it were a target (nothing precedes it)
    assert tok_p == tok_s == sum(sum(e.mask[1:]) for e in samples)
    assert torch.allclose(loss_p, loss_s, atol=1e-4) and torch.allclose(g_p, g_s, atol=1e-5)
