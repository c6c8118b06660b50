"""Retrieval by a total token budget, and the ChatQA context format.

ChatQA 2 compares RAG settings by the total number of retrieved tokens (top-k x chunk size: 3K ... 24K) and
finds RAG overtakes full long context from ~12K retrieved tokens. `retrieve` takes chunks in retriever rank
order until the budget is full, then orders them by rank (the paper's choice) or by document position.
"""

from __future__ import annotations

from dataclasses import dataclass

from longreach.errors import InputError
from longreach.rag.chunk import Chunk
from longreach.rag.embed import Embedder
from longreach.rag.index import VectorIndex


@dataclass
class Hit:
    chunk: Chunk
    score: float  # inner product of the query and chunk embeddings (cosine for normalised embedders)
    rank: int  # 0 = best

    def to_dict(self) -> dict:
        """The `longreach rag search` record (DESIGN.md contract) plus where the chunk sits."""
        c = self.chunk
        return {"doc": c.doc, "start": c.start, "end": c.end, "score": self.score, "text": c.text,
                "source": c.source, "n_tokens": c.n_tokens, "rank": self.rank}


class Retriever:
    """An index together with the embedder that built it (checked to be the same one)."""

    def __init__(self, index: VectorIndex, embedder: Embedder):
        index.check_embedder(embedder.info())
        self.index, self.embedder = index, embedder

    def search(self, query: str, top_k: int, exact: bool | None = None) -> list[Hit]:
        q = self.embedder.embed_queries([query])
        self.index.check_embedder(self.embedder.info())  # an HTTP embedder learns its dimension only now
        scores, ids = self.index.search(q, top_k, exact=exact)
        keep = [(float(s), int(i)) for s, i in zip(scores[0], ids[0]) if i >= 0]
        chunks = self.index.chunks([i for _, i in keep])
        return [Hit(c, s, r) for r, (c, (s, _)) in enumerate(zip(chunks, keep))]

    def retrieve(self, query: str, budget_tokens: int, order: str = "rank") -> list[Hit]:
        """Chunks in rank order while their tokens fit `budget_tokens`, then ordered by `order`."""
        total = len(self.index)
        mean_tokens = max(1, self.index.meta["chunking"].get("chunk_tokens", 300) // 2)
        k = min(total, budget_tokens // mean_tokens + 8)
        while True:  # widen the search until the budget fills or the index runs out
            hits = self.search(query, k)
            chosen = select_by_budget(hits, budget_tokens)
            if len(chosen) < len(hits) or k >= total:
                return order_hits(chosen, order)
            k = min(total, 2 * k)


def select_by_budget(hits: list[Hit], budget_tokens: int) -> list[Hit]:
    """The best-ranked hits whose token counts add up to at most `budget_tokens` (stops at the first that
    does not fit, so the selection is always a rank prefix)."""
    chosen, used = [], 0
    for h in hits:
        if used + h.chunk.n_tokens > budget_tokens:
            break
        chosen.append(h)
        used += h.chunk.n_tokens
    return chosen


def order_hits(hits: list[Hit], order: str) -> list[Hit]:
    """"rank": best first (ChatQA 2's prompt order); "position": documents by their best hit, and chunks
    within a document by their place in it, so neighbouring chunks read in order."""
    if order == "rank":
        return sorted(hits, key=lambda h: h.rank)
    if order == "position":
        first = {}
        for h in sorted(hits, key=lambda h: h.rank):
            first.setdefault(h.chunk.doc, len(first))
        return sorted(hits, key=lambda h: (first[h.chunk.doc], h.chunk.start))
    raise InputError(f"order must be 'rank' or 'position', got {order!r}")


def format_context(chunks: list[Chunk]) -> str:
    """ChatQA's RAG context: one "title: ..., source: ..." block per chunk, joined by blank lines."""
    return "\n\n".join(f"title: {c.title}, source: {c.text}" for c in chunks)
