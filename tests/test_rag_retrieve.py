"""Building (batched, resumable after a crash, incremental) and retrieval by token budget, with a cheap
deterministic embedder (hashed bag of words) so the logic is tested without a neural model."""

from __future__ import annotations

import hashlib
import itertools

import numpy as np
import pytest

from longreach.data.readers import Document
from longreach.rag.build import build_index
from longreach.rag.chunk import Chunk, ChunkConfig
from longreach.rag.embed import Embedder
from longreach.rag.index import VectorIndex
from longreach.rag.retrieve import Hit, Retriever, format_context, order_hits, select_by_budget
from test_eval_backends import tiny_tokenizer


class BagOfWords(Embedder):
    """Sum of a fixed random vector per lower-cased word, normalised; can be told to fail after n batches."""

    def __init__(self, fail_after: int | None = None):
        super().__init__(None)
        self.name, self.fingerprint, self.convention, self.spec = "bow", "bow-1", "test", "bow"
        self.batch_size, self.fail_after, self.batches = 8, fail_after, 0
        self._dim = 64

    def _encode(self, texts, role):
        if self.fail_after is not None and self.batches >= self.fail_after:
            raise RuntimeError("simulated crash")
        self.batches += 1
        out = np.zeros((len(texts), 64), np.float32)
        for i, t in enumerate(texts):
            for w in t.lower().replace(".", " ").split():
                seed = int.from_bytes(hashlib.sha256(w.encode()).digest()[:4], "little")
                out[i] += np.random.default_rng(seed).standard_normal(64)
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-9)


def corpus(n: int = 12) -> list[Document]:
    return [Document(text=" ".join(f"Document {d} sentence {s} talks about topic{d} and thing{s}."
                                   for s in range(12)), source="t", doc_id=f"d{d:02d}.txt") for d in range(n)]


def rows(index: VectorIndex) -> list[dict]:
    return [c.to_dict() for c in index.chunks(range(len(index)))]


def test_interrupted_build_resumes_to_the_same_index(tmp_path):
    tok, cfg = tiny_tokenizer(), ChunkConfig(chunk_tokens=40)
    whole, stats = build_index(corpus(), tmp_path / "whole", BagOfWords(), tok, cfg, batch_chunks=10, log=False)
    assert stats.docs_added == 12 and stats.chunks_added == len(whole) > 24
    with pytest.raises(RuntimeError, match="simulated crash"):
        build_index(corpus(), tmp_path / "resumed", BagOfWords(fail_after=5), tok, cfg, batch_chunks=10, log=False)
    partial = VectorIndex.open(tmp_path / "resumed")
    assert 0 < len(partial) < len(whole) and 0 < len(partial.docs) < 12
    resumed, stats = build_index(corpus(), tmp_path / "resumed", BagOfWords(), tok, cfg, batch_chunks=10, log=False)
    assert stats.docs_skipped == len(partial.docs) and stats.docs_added == 12 - len(partial.docs)
    assert rows(resumed) == rows(whole)
    np.testing.assert_array_equal(np.asarray(resumed.vectors()), np.asarray(whole.vectors()))


def test_retrieve_fills_the_budget_in_rank_order_and_orders_by_position(tmp_path):
    emb = BagOfWords()
    index, _ = build_index(corpus(), tmp_path / "ix", emb, tiny_tokenizer(), ChunkConfig(chunk_tokens=40),
                           log=False)
    r = Retriever(index, emb)
    ranked = r.search("topic3 thing7 thing8 thing2", 50)
    assert [h.rank for h in ranked] == list(range(len(ranked)))
    assert ranked[0].chunk.doc == "d03.txt" and all(a.score >= b.score for a, b in itertools.pairwise(ranked))
    for budget in (30, 100, 400, 10_000):
        got = r.retrieve("topic3 thing7 thing8 thing2", budget)
        assert sum(h.chunk.n_tokens for h in got) <= budget
        assert [h.rank for h in got] == list(range(len(got)))  # a prefix of the ranking
        if got and len(got) < len(index):
            assert sum(h.chunk.n_tokens for h in got) + ranked[len(got)].chunk.n_tokens > budget
    assert len(r.retrieve("topic3", 10_000)) == len(index)  # the search widens until the index runs out
    by_pos = r.retrieve("topic3 thing7 thing8 thing2", 400, order="position")
    firsts = list(dict.fromkeys(h.chunk.doc for h in sorted(by_pos, key=lambda h: h.rank)))
    assert [h.chunk.doc for h in by_pos] == sorted((h.chunk.doc for h in by_pos), key=firsts.index)
    for a, b in itertools.pairwise(by_pos):
        if a.chunk.doc == b.chunk.doc:
            assert a.chunk.start < b.chunk.start


def test_select_order_and_context_format():
    def hit(doc, start, n, rank):
        return Hit(Chunk(doc=f"/data/{doc}", source="s", start=start, end=start + 3, text=f"{doc}@{start}",
                         n_tokens=n), 1.0 - rank / 10, rank)

    hits = [hit("b.txt", 50, 10, 0), hit("a.txt", 9, 10, 1), hit("b.txt", 5, 10, 2), hit("a.txt", 1, 30, 3)]
    assert [h.rank for h in select_by_budget(hits, 25)] == [0, 1]
    assert [h.rank for h in select_by_budget(hits, 30)] == [0, 1, 2]
    assert select_by_budget(hits, 5) == []
    assert [(h.chunk.doc[-5:], h.chunk.start) for h in order_hits(hits, "position")] == [
        ("b.txt", 5), ("b.txt", 50), ("a.txt", 1), ("a.txt", 9)]
    assert format_context([h.chunk for h in hits[:2]]) == \
        "title: b.txt, source: b.txt@50\n\ntitle: a.txt, source: a.txt@9"
