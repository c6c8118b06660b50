"""Retrieval speed and quality: embedding throughput, index build time, query latency, approximate recall.

    # CPU; the index part uses synthetic vectors (see below), the embedding part MiniLM on real essay chunks
    python benchmarks/retrieval.py --sizes 100000,1000000 --out benchmarks/results/retrieval.json
    # small and quick (what a test would run)
    python benchmarks/retrieval.py --sizes 20000 --embed-passages 16 --queries 20 --pg-chunks "" --out /tmp/r.json

Parts:
- embed: MiniLM (the offline default embedder) passages/s and tokens/s on this machine, for chunks of the Paul
  Graham essays cut at 300 Llama-3 tokens and at 60 (one batch of `--embed-passages` each, no cache).
- index, per size N: synthetic unit vectors of MiniLM's dimension (384) from a two-level Gaussian mixture
  (1,000 topics x 20,000 sub-topics; real embeddings cluster by topic, and uniform noise would make
  approximate search look worse than it is), appended to a
  VectorIndex folder in 50K-row batches (memory-mapped store; the vectors are generated beforehand into a
  file, so the time is the index's), then each kind built: flat (exact, nothing to
  build), hnsw, ivf. Single-query latency p50/p99 over `--queries` held-out vectors from the same clusters,
  and recall@10 of hnsw/ivf against exact search.
- pg: recall@1/5/10 of the gold chunk for the 28 hand-written questions over the 49 Paul Graham essays
  (longreach/rag/data/pg_essays_qa.jsonl), MiniLM, at each `--pg-chunks` size (embeddings cached).
Prints a table to stderr and writes all numbers as JSON to `--out`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

DIM = 384  # all-MiniLM-L6-v2


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def rss_anon_mb() -> float | None:
    """Anonymous resident memory now (Linux): what the process holds itself, without file-backed pages of
    memory-mapped files, which the kernel can drop at any time."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("RssAnon:"):
                return round(int(line.split()[1]) / 1024)
    except OSError:
        pass
    return None


def clustered(n: int, centres: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Unit vectors around `centres` (sub-topics of topics): cosine ~0.86 within a sub-topic, ~0.57 within a
    topic, ~0 across topics."""
    x = centres[rng.integers(0, len(centres), n)] + 0.5 * rng.standard_normal((n, DIM), dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def subtopics(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    topics = rng.standard_normal((1000, DIM), dtype=np.float32)
    return topics[rng.integers(0, 1000, 20000)] + 0.7 * rng.standard_normal((20000, DIM), dtype=np.float32)


def bench_embed(n_passages: int) -> dict:
    from longreach import assets
    from longreach.data.readers import iter_documents
    from longreach.model.load import load_tokenizer
    from longreach.rag.chunk import ChunkConfig, chunk_text
    from longreach.rag.embed import load_embedder

    emb = load_embedder("minilm")  # no cache: every passage is encoded
    tok = load_tokenizer(assets.llama3_tokenizer())
    docs = list(iter_documents(assets.paul_graham_essays()))
    out = {"model": "all-MiniLM-L6-v2", "device": "cpu", "threads": int(os.environ.get("OMP_NUM_THREADS", "0"))
           or os.cpu_count(), "batch_size": emb.batch_size}
    for size in (300, 60):
        chunks = [c for d in docs for c in chunk_text(d.text, tok, ChunkConfig(chunk_tokens=size))][:n_passages]
        emb.embed_passages([c.text for c in chunks[:4]])  # warm-up
        t = time.perf_counter()
        emb.embed_passages([c.text for c in chunks[4:]])
        dt = time.perf_counter() - t
        n, toks = len(chunks) - 4, sum(c.n_tokens for c in chunks[4:])
        out[f"chunks{size}"] = {"passages": n, "seconds": round(dt, 2), "passages_per_s": round(n / dt, 1),
                                "llama3_tokens_per_s": round(toks / dt)}
        log(f"embed: chunks of {size} tokens: {n / dt:.1f} passages/s ({toks / dt:.0f} tokens/s)")
    return out


def bench_index(n: int, queries: int, root: Path, kinds: list[str]) -> dict:
    from longreach.rag.chunk import Chunk
    from longreach.rag.index import IndexConfig, VectorIndex

    centres = subtopics()
    q = clustered(queries, centres, np.random.default_rng(1)).astype(np.float32)
    info = {"spec": "synthetic", "name": "synthetic", "fingerprint": "synthetic", "convention": "none", "dim": DIM}
    result: dict = {"n": n, "dim": DIM, "kinds": {}}
    # the vectors are made once, into a file, so that append times measure the index, not the generator
    source = np.lib.format.open_memmap(root / f"vectors-{n}.npy", mode="w+", dtype=np.float32, shape=(n, DIM))
    data_rng = np.random.default_rng(2)
    for b in range(0, n, 50_000):
        source[b:b + 50_000] = clustered(min(50_000, n - b), centres, data_rng)
    source.flush()
    exact_ids = None
    for kind in kinds:
        folder = root / f"{kind}-{n}"
        shutil.rmtree(folder, ignore_errors=True)
        ix = VectorIndex.create(folder, info, {}, IndexConfig(kind=kind))
        t = time.perf_counter()
        for b in range(0, n, 50_000):  # batches as `longreach rag index` appends them
            m = min(50_000, n - b)
            chunks = [Chunk(doc=f"d{(b + i) // 100}", source="s", start=0, end=1, text="x", n_tokens=1)
                      for i in range(m)]
            ix.add(chunks, np.asarray(source[b:b + m]))
            ix.commit(update_ann=False)
        append_s = time.perf_counter() - t
        anon_after_append = rss_anon_mb()
        t = time.perf_counter()
        ix.commit()  # builds the approximate index (nothing for flat)
        build_s = time.perf_counter() - t
        ix = VectorIndex.open(folder)
        ix.search(q[:1], 10)  # load / page in
        lat, ids = [], []
        for i in range(queries):
            t = time.perf_counter()
            _, found = ix.search(q[i:i + 1], 10)
            lat.append(time.perf_counter() - t)
            ids.append(found[0])
        ids = np.array(ids)
        row = {"append_s": round(append_s, 2), "rss_anon_mb_after_append": anon_after_append,
               "build_s": round(build_s, 2),
               "latency_ms_p50": round(1000 * float(np.percentile(lat, 50)), 2),
               "latency_ms_p99": round(1000 * float(np.percentile(lat, 99)), 2),
               "disk_mb": round(sum(p.stat().st_size for p in folder.iterdir()) / 2**20)}
        if kind == "flat":
            exact_ids = ids
        else:
            if exact_ids is None:
                _, exact_ids = ix.search(q, 10, exact=True)
            row["recall@10"] = round(float(np.mean([len(set(a) & set(e)) / 10 for a, e in zip(ids, exact_ids)])), 4)
            row["params"] = {k: v for k, v in ix.meta["index"].items() if k.startswith(kind)}
        row["rss_anon_mb_after_search"] = rss_anon_mb()  # the approximate index lives in anonymous memory
        # peak RSS also counts pages of memory-mapped files that were read (file-backed, evictable)
        row["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
        result["kinds"][kind] = row
        log(f"index {n}: {kind}: {row}")
        del ix
        shutil.rmtree(folder, ignore_errors=True)
    del source
    (root / f"vectors-{n}.npy").unlink()
    return result


def bench_pg(sizes: list[int], cache: str | None) -> list[dict]:
    from longreach import assets
    from longreach.data.readers import iter_documents
    from longreach.model.load import load_tokenizer
    from longreach.rag.build import build_index
    from longreach.rag.chunk import ChunkConfig
    from longreach.rag.embed import load_embedder
    from longreach.rag.recall import PG_QUESTIONS, load_questions, recall_at_k
    from longreach.rag.retrieve import Retriever

    emb = load_embedder("minilm", cache_dir=cache)
    tok = load_tokenizer(assets.llama3_tokenizer())
    docs = list(iter_documents(assets.paul_graham_essays()))
    texts = {Path(d.doc_id).name: d.text for d in docs}
    out = []
    for size in sizes:
        with tempfile.TemporaryDirectory() as tmp:
            ix, _ = build_index(docs, Path(tmp) / "ix", emb, tok, ChunkConfig(chunk_tokens=size))
            r = recall_at_k(Retriever(ix, emb), load_questions(PG_QUESTIONS), texts, ks=(1, 5, 10))
        row = {"chunk_tokens": size, "chunks": len(ix), **{k: v for k, v in r.items() if k != "per_question"},
               "missed_at_5": [p["id"] for p in r["per_question"] if p["gold_rank"] is None or p["gold_rank"] >= 5]}
        log(f"pg recall: {row}")
        out.append(row)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="100000,1000000", help="index sizes (rows), comma-separated")
    ap.add_argument("--kinds", default="flat,hnsw,ivf")
    ap.add_argument("--queries", type=int, default=200, help="single queries timed per index")
    ap.add_argument("--embed-passages", type=int, default=132, help="passages embedded per chunk size")
    ap.add_argument("--pg-chunks", default="300", help="chunk sizes for the PG recall part ('' = skip)")
    ap.add_argument("--cache", default=None, help="embedding cache folder for the PG part")
    ap.add_argument("--work", default=None, help="scratch folder for the index files (default: a temp dir)")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    results: dict = {"machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                                 "load_avg_at_start": os.getloadavg()}, "started": time.strftime("%Y-%m-%d %H:%M")}
    if a.embed_passages > 4:
        results["embed"] = bench_embed(a.embed_passages)
    work = Path(a.work or tempfile.mkdtemp(prefix="longreach-bench-"))
    results["index"] = [bench_index(int(float(n)), a.queries, work, a.kinds.split(","))
                        for n in a.sizes.split(",") if n]
    if a.pg_chunks:
        results["pg_recall"] = bench_pg([int(x) for x in a.pg_chunks.split(",")], a.cache)
    results["load_avg_at_end"] = os.getloadavg()
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(results, indent=1) + "\n")
    log("\n| N | kind | append s | build s | p50 ms | p99 ms | recall@10 | disk MB |\n|---|---|---|---|---|---|---|---|")
    for r in results["index"]:
        for kind, row in r["kinds"].items():
            log(f"| {r['n']} | {kind} | {row['append_s']} | {row['build_s']} | {row['latency_ms_p50']} | "
                f"{row['latency_ms_p99']} | {row.get('recall@10', 1.0)} | {row['disk_mb']} |")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
