"""The index folder: exact search against brute force, approximate recall, persistence, incremental add,
recovery from an interrupted add, and the embedder-mismatch error."""

from __future__ import annotations

import json

import numpy as np
import pytest

from longreach.errors import InputError
from longreach.rag.chunk import Chunk
from longreach.rag.index import IndexConfig, VectorIndex

DIM = 32
INFO = {"spec": "test", "name": "test-embedder", "fingerprint": "abc123", "convention": "e5", "dim": DIM}
CHUNKING = {"chunk_tokens": 300, "overlap": 0, "overlap_unit": "tokens", "tokenizer": "t", "tokenizer_hash": "h"}


def clustered(n: int, seed: int = 0) -> np.ndarray:
    """Normalised vectors around 50 centres (real embeddings cluster; uniform noise is unrealistically hard)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(50, DIM))
    x = centres[rng.integers(0, 50, n)] + 0.6 * rng.normal(size=(n, DIM))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def chunks_for(n: int, start: int = 0) -> list[Chunk]:
    return [Chunk(doc=f"doc{(start + i) // 10}", source="s", start=start + i, end=start + i + 5, text=f"chunk {start + i}",
                  n_tokens=7) for i in range(n)]


def brute(vecs, q, k):
    s = q @ vecs.T
    return np.argsort(-s, axis=1, kind="stable")[:, :k]


def test_exact_search_matches_brute_force_across_blocks(tmp_path):
    vecs, q = clustered(1000), clustered(5, seed=1)
    idx = VectorIndex.create(tmp_path / "ix", INFO, CHUNKING, IndexConfig(block_rows=128))
    idx.add(chunks_for(1000), vecs)
    idx.commit()
    scores, ids = idx.search(q, 10)
    np.testing.assert_array_equal(ids, brute(vecs, q, 10))
    np.testing.assert_allclose(scores, np.take_along_axis(q @ vecs.T, ids, 1), rtol=1e-5)
    assert [c.text for c in idx.chunks(ids[0][:3])] == [f"chunk {i}" for i in ids[0][:3]]
    # more than there are: padded with -1
    small = VectorIndex.create(tmp_path / "small", INFO, CHUNKING)
    small.add(chunks_for(3), vecs[:3])
    small.commit()
    s, i = small.search(q[:1], 5)
    assert list(i[0][3:]) == [-1, -1] and np.isneginf(s[0][3:]).all()


def test_persisted_and_incremental_add_equals_one_build(tmp_path):
    vecs, q = clustered(600), clustered(4, seed=2)
    one = VectorIndex.create(tmp_path / "one", INFO, CHUNKING)
    one.add(chunks_for(600), vecs)
    one.commit()
    inc = VectorIndex.create(tmp_path / "inc", INFO, CHUNKING)
    inc.add(chunks_for(250), vecs[:250])
    inc.commit()
    inc = VectorIndex.open(tmp_path / "inc")  # reopen from disk, then add more
    inc.add(chunks_for(350, start=250), vecs[250:])
    inc.commit()
    inc = VectorIndex.open(tmp_path / "inc")
    assert len(inc) == 600 and inc.docs == one.docs and inc.docs["doc0"] == 10
    for a, b in zip(one.search(q, 8), inc.search(q, 8)):
        np.testing.assert_array_equal(a, b)
    assert [c.to_dict() for c in inc.chunks([0, 599])] == [c.to_dict() for c in one.chunks([0, 599])]
    meta = json.loads((tmp_path / "inc" / "meta.json").read_text())
    assert meta["count"] == 600 and meta["embedder"] == INFO and meta["chunking"] == CHUNKING


def test_uncommitted_add_is_dropped_on_open(tmp_path):
    vecs = clustered(20)
    idx = VectorIndex.create(tmp_path / "ix", INFO, CHUNKING)
    idx.add(chunks_for(10), vecs[:10])
    idx.commit()
    idx.add(chunks_for(10, start=10), vecs[10:])  # "crash" before commit
    again = VectorIndex.open(tmp_path / "ix")
    assert len(again) == 10 and (tmp_path / "ix" / "embeddings.f32").stat().st_size == 10 * DIM * 4
    again.add(chunks_for(10, start=10), vecs[10:])
    again.commit()
    assert [c.text for c in VectorIndex.open(tmp_path / "ix").chunks([19])] == ["chunk 19"]


@pytest.fixture
def one_faiss_thread():
    """faiss's OpenMP threads spin badly on a shared 2-core machine (HNSW build 4x slower with 2 threads)."""
    import faiss

    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(before)


@pytest.mark.parametrize("kind", ["hnsw", "ivf"])
def test_approximate_recall_against_exact(tmp_path, kind, one_faiss_thread):
    vecs, q = clustered(3000), clustered(50, seed=3)
    idx = VectorIndex.create(tmp_path / kind, INFO, CHUNKING, IndexConfig(kind=kind, ivf_probe=8))
    idx.add(chunks_for(2500), vecs[:2500])
    idx.commit()
    assert (tmp_path / kind / "ann.faiss").exists()
    # rows added without updating the approximate index are still found (exact search over the tail)
    idx.add(chunks_for(500, start=2500), vecs[2500:])
    idx.commit(update_ann=False)
    idx = VectorIndex.open(tmp_path / kind)
    assert idx.meta["ann_count"] == 2500
    _, ann = idx.search(q, 10)
    _, exact = idx.search(q, 10, exact=True)
    np.testing.assert_array_equal(exact, brute(vecs, q, 10))
    recall = np.mean([len(set(a) & set(e)) / 10 for a, e in zip(ann, exact)])
    assert recall >= 0.9, recall
    assert (ann >= 2500).any()  # tail rows took part
    idx.commit()
    assert idx.meta["ann_count"] == 3000


def test_mismatched_embedder_and_chunking_are_clear_errors(tmp_path):
    idx = VectorIndex.create(tmp_path / "ix", INFO, CHUNKING)
    idx.check_embedder(dict(INFO))
    with pytest.raises(InputError, match=r"built with embedder 'test-embedder'.*dim 32.*dim 384"):
        idx.check_embedder({**INFO, "name": "other", "fingerprint": "zzz", "dim": 384})
    with pytest.raises(InputError, match="fingerprint"):
        idx.check_embedder({**INFO, "fingerprint": "zzz"})
    with pytest.raises(InputError, match="chunk_tokens"):
        idx.check_chunking({**CHUNKING, "chunk_tokens": 600})
    with pytest.raises(InputError, match="dimension"):
        idx.search(np.zeros((1, 5), np.float32), 3)
    with pytest.raises(InputError, match="already exists"):
        VectorIndex.create(tmp_path / "ix", INFO, CHUNKING)
    with pytest.raises(InputError, match="not an index"):
        VectorIndex.open(tmp_path)
    with pytest.raises(InputError, match="kind"):
        VectorIndex.create(tmp_path / "bad", INFO, CHUNKING, IndexConfig(kind="lsh"))
