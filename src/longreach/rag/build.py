"""Documents -> chunks -> embeddings -> index folder, in bounded memory and resumable.

Chunks are embedded and appended in batches (`batch_chunks`), committed at document boundaries, so a build
of a million chunks holds one batch in memory, and a rerun on the same folder skips documents already in it
(incremental add; an interrupted build continues from its last commit).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from longreach.rag.chunk import Chunk, ChunkConfig, chunk_text
from longreach.rag.embed import Embedder
from longreach.rag.index import IndexConfig, VectorIndex


@dataclass
class BuildStats:
    docs_added: int = 0  # documents chunked and indexed by this run
    docs_skipped: int = 0  # documents already in the index
    chunks_added: int = 0
    chunks_total: int = 0  # chunks in the index after this run
    seconds: float = 0.0


def chunking_params(cfg: ChunkConfig, tokenizer: Any) -> dict[str, Any]:
    """What meta.json records about chunking; an incremental add must match it."""
    from longreach.model.load import tokenizer_hash

    return {**asdict(cfg), "tokenizer": Path(str(getattr(tokenizer, "name_or_path", ""))).name,
            "tokenizer_hash": tokenizer_hash(tokenizer)}


def open_or_create(out: str | Path, embedder: Embedder, chunking: dict[str, Any],
                   index_cfg: IndexConfig | None = None) -> VectorIndex:
    """The index in `out`, checked against this embedder and chunking, or a new one."""
    if (Path(out) / "meta.json").exists():
        index = VectorIndex.open(out)
        index.check_embedder(embedder.info())
        index.check_chunking(chunking)
        return index
    return VectorIndex.create(out, embedder.info(), chunking, index_cfg)


def build_index(docs: Iterable[Any], out: str | Path, embedder: Embedder, tokenizer: Any,
                chunk_cfg: ChunkConfig | None = None, index_cfg: IndexConfig | None = None,
                batch_chunks: int = 512, log: bool = True) -> tuple[VectorIndex, BuildStats]:
    """Index `docs` (longreach.data.readers.Document) into folder `out`, adding to it if it exists."""
    chunk_cfg = chunk_cfg or ChunkConfig()
    index = open_or_create(out, embedder, chunking_params(chunk_cfg, tokenizer), index_cfg)
    stats, t0 = BuildStats(), time.perf_counter()
    pending: list[Chunk] = []
    pending_docs: list[str] = []

    def flush() -> None:
        if pending:
            index.add(pending, embedder.embed_passages([c.text for c in pending]))
        for d in pending_docs:  # documents with no text are recorded too, so reruns skip them
            index.docs.setdefault(d, 0)
        index.commit(update_ann=False)  # the approximate index is brought up to date once, at the end
        stats.chunks_added += len(pending)
        stats.docs_added += len(pending_docs)
        pending.clear()
        pending_docs.clear()
        if log:
            rate = stats.chunks_added / max(time.perf_counter() - t0, 1e-9)
            print(f"rag index: {stats.docs_added} docs, {stats.chunks_added} chunks ({rate:.1f} chunks/s)",
                  file=sys.stderr, flush=True)

    for d in docs:
        if d.doc_id in index.docs or d.doc_id in pending_docs:
            stats.docs_skipped += 1
            continue
        pending.extend(chunk_text(d.text, tokenizer, chunk_cfg, doc=d.doc_id, source=d.source))
        pending_docs.append(d.doc_id)
        if len(pending) >= batch_chunks:
            flush()
    flush()
    index.commit()
    stats.chunks_total, stats.seconds = len(index), time.perf_counter() - t0
    return index, stats
