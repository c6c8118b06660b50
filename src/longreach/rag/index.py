"""A vector index persisted to a folder: exact search by default, faiss HNSW / IVF for large corpora.

Folder layout:
    meta.json        embedder (spec, name, fingerprint, convention, dim), chunking, index settings, counts
    chunks.jsonl     one chunk per line (doc, source, start, end, text, n_tokens, index)
    chunks.offsets   int64 byte offset of each line (read one chunk without loading the store)
    embeddings.f32   float32 [count, dim], appended in batches and memory-mapped for search
    docs.jsonl       documents already indexed (an incremental run skips them)
    ann.faiss        the approximate index (hnsw / ivf) over the first `ann_count` rows

`add` appends to the files; `commit` makes it durable by writing meta.json last (atomically), so an interrupted
build leaves the last committed state, and opening the folder cuts off anything appended after it. Exact
search streams the memory-mapped matrix in blocks, so a million chunks never need to sit in RAM at once.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from longreach.errors import InputError
from longreach.rag.chunk import Chunk

FORMAT = "longreach-rag-index/1"
KINDS = ("flat", "hnsw", "ivf")


@dataclass
class IndexConfig:
    kind: str = "flat"  # flat = exact inner product; hnsw / ivf = approximate (faiss), for large corpora
    hnsw_m: int = 32  # HNSW neighbours per node: more = better recall, more memory
    hnsw_ef_construction: int = 80  # HNSW build beam width
    hnsw_ef_search: int = 128  # HNSW search beam width (recall against latency)
    ivf_lists: int = 0  # IVF cells; 0 = sqrt(rows) at the first build (1,000 cells at 1M rows)
    ivf_probe: int = 16  # IVF cells visited per query
    block_rows: int = 65536  # rows per block of exact search over the memory-mapped matrix


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


class VectorIndex:
    """Chunks, their embeddings and an optional approximate index, in one folder."""

    def __init__(self, root: Path, meta: dict[str, Any]):
        self.root, self.meta = root, meta
        self.cfg = IndexConfig(**meta["index"])
        self.dim = int(meta["embedder"]["dim"])
        self.docs: dict[str, int] = {}
        docs_path = root / "docs.jsonl"
        if docs_path.exists():
            for line in docs_path.read_text().splitlines():
                d = json.loads(line)
                self.docs[d["doc"]] = d["chunks"]
        self._ann: Any = None
        self._vectors: np.ndarray | None = None

    # ---- creating and opening

    @classmethod
    def create(cls, root: str | Path, embedder_info: dict[str, Any], chunking: dict[str, Any],
               cfg: IndexConfig | None = None) -> VectorIndex:
        cfg = cfg or IndexConfig()
        if cfg.kind not in KINDS:
            raise InputError(f"index kind must be one of {KINDS}, got {cfg.kind!r}", field="index")
        root = Path(root)
        if (root / "meta.json").exists():
            raise InputError("an index already exists here; open it to add to it", path=str(root))
        root.mkdir(parents=True, exist_ok=True)
        for name in ("chunks.jsonl", "chunks.offsets", "embeddings.f32", "docs.jsonl"):
            (root / name).write_bytes(b"")
        meta = {"format": FORMAT, "embedder": dict(embedder_info), "chunking": dict(chunking),
                "index": asdict(cfg), "count": 0, "chunks_bytes": 0, "ann_count": 0,
                "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
        index = cls(root, meta)
        index.commit()
        return index

    @classmethod
    def open(cls, root: str | Path) -> VectorIndex:
        root = Path(root)
        meta_path = root / "meta.json"
        if not meta_path.exists():
            raise InputError("not an index folder (no meta.json); build one with `longreach rag index`",
                             path=str(root))
        meta = json.loads(meta_path.read_text())
        if meta.get("format") != FORMAT:
            raise InputError(f"unknown index format {meta.get('format')!r}, expected {FORMAT}",
                             path=str(meta_path))
        index = cls(root, meta)
        index._drop_uncommitted()
        return index

    def _drop_uncommitted(self) -> None:
        """Cut the stores back to the committed count (an interrupted `add` may have appended more)."""
        n = self.meta["count"]
        sizes = {"chunks.jsonl": self.meta["chunks_bytes"], "chunks.offsets": 8 * n,
                 "embeddings.f32": 4 * self.dim * n}
        for name, size in sizes.items():
            path = self.root / name
            if path.stat().st_size > size:
                with path.open("r+b") as f:
                    f.truncate(size)
            elif path.stat().st_size < size:
                raise InputError(f"{name} is shorter than meta.json says ({path.stat().st_size} < {size} "
                                 "bytes): the index is damaged, rebuild it", path=str(path))

    # ---- checks

    def check_embedder(self, info: dict[str, Any]) -> None:
        """Raise a clear error when `info` (Embedder.info()) is not the embedder that built the index."""
        built = self.meta["embedder"]
        if built["fingerprint"] != info["fingerprint"] or int(built["dim"]) != int(info["dim"]):
            raise InputError(
                f"index was built with embedder '{built['name']}' ({built['convention']}, dim {built['dim']}, "
                f"fingerprint {built['fingerprint']}) but the embedder given is '{info['name']}' "
                f"({info['convention']}, dim {info['dim']}, fingerprint {info['fingerprint']}): use "
                f"--embedder {built['spec']} or rebuild the index", path=str(self.root / "meta.json"))

    def check_chunking(self, chunking: dict[str, Any]) -> None:
        built = self.meta["chunking"]
        if built != chunking:
            diff = {k: (built.get(k), chunking.get(k)) for k in set(built) | set(chunking)
                    if built.get(k) != chunking.get(k)}
            raise InputError(f"chunking differs from the index's (index, now): {diff}; add with the same "
                             "settings or build a new index", path=str(self.root / "meta.json"))

    # ---- writing

    def __len__(self) -> int:
        return self.meta["count"]

    def add(self, chunks: list[Chunk], vectors: np.ndarray) -> None:
        """Append chunks and their embeddings (durable after `commit`)."""
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.shape != (len(chunks), self.dim):
            raise InputError(f"expected vectors of shape ({len(chunks)}, {self.dim}), got {vectors.shape}")
        offsets = np.empty(len(chunks), dtype=np.int64)
        pos = self.meta["chunks_bytes"]
        lines = []
        for i, c in enumerate(chunks):
            line = (json.dumps(c.to_dict(), ensure_ascii=False) + "\n").encode()
            offsets[i] = pos
            pos += len(line)
            lines.append(line)
            self.docs[c.doc] = self.docs.get(c.doc, 0) + 1
        with (self.root / "chunks.jsonl").open("ab") as f:
            f.write(b"".join(lines))
        with (self.root / "chunks.offsets").open("ab") as f:
            f.write(offsets.tobytes())
        with (self.root / "embeddings.f32").open("ab") as f:
            f.write(vectors.tobytes())
        self.meta["count"] += len(chunks)
        self.meta["chunks_bytes"] = pos
        self._vectors = None

    def commit(self, update_ann: bool = True) -> None:
        """Make added chunks durable; bring the approximate index up to date unless `update_ann` is False
        (search covers rows the approximate index lacks by exact search, so builds update it once at the end).
        """
        if update_ann and self.cfg.kind != "flat" and self.meta["ann_count"] < self.meta["count"]:
            # IVF cells trained on a small first batch fit a grown corpus badly: retrain past 4x growth
            if self.cfg.kind == "ivf" and self.meta["count"] > 4 * self.meta.get("ann_trained_on", 0):
                self._ann, self.meta["ann_count"] = None, 0
            self._update_ann()
        self.meta["updated"] = time.strftime("%Y-%m-%dT%H:%M:%S")
        _write_atomic(self.root / "docs.jsonl",
                      "".join(json.dumps({"doc": d, "chunks": n}) + "\n" for d, n in self.docs.items()))
        _write_atomic(self.root / "meta.json", json.dumps(self.meta, indent=1, ensure_ascii=False) + "\n")

    def _update_ann(self) -> None:
        import faiss

        ann = self._load_ann() if self.meta["ann_count"] else None
        vecs, n = self.vectors(), self.meta["count"]
        if ann is None:
            if self.cfg.kind == "hnsw":
                ann = faiss.IndexHNSWFlat(self.dim, self.cfg.hnsw_m, faiss.METRIC_INNER_PRODUCT)
                ann.hnsw.efConstruction = self.cfg.hnsw_ef_construction
            else:
                nlist = self.cfg.ivf_lists or max(1, int(np.sqrt(n)))
                nlist = max(1, min(nlist, n // 39))  # faiss wants >= 39 training points per cell
                ann = faiss.IndexIVFFlat(faiss.IndexFlatIP(self.dim), self.dim, nlist, faiss.METRIC_INNER_PRODUCT)
                # 64 points per cell train k-means well enough; all 1M rows would take many minutes on a CPU
                rng = np.random.default_rng(0)
                sample = np.sort(rng.choice(n, size=min(n, 64 * nlist), replace=False))
                ann.train(np.ascontiguousarray(vecs[sample]))
                self.meta["ann_trained_on"] = n
        for b in range(ann.ntotal, n, self.cfg.block_rows):
            ann.add(np.ascontiguousarray(vecs[b:min(n, b + self.cfg.block_rows)]))
        tmp = self.root / "ann.faiss.tmp"
        faiss.write_index(ann, str(tmp))
        os.replace(tmp, self.root / "ann.faiss")
        self.meta["ann_count"] = int(ann.ntotal)
        self._ann = ann

    def _load_ann(self) -> Any:
        if self._ann is None and self.meta["ann_count"] > 0:
            import faiss

            self._ann = faiss.read_index(str(self.root / "ann.faiss"))
        return self._ann

    # ---- reading

    def vectors(self) -> np.ndarray:
        """The embeddings as a read-only memory map [count, dim]."""
        if self._vectors is None or len(self._vectors) != self.meta["count"]:
            n = self.meta["count"]
            self._vectors = (np.memmap(self.root / "embeddings.f32", dtype=np.float32, mode="r",
                                       shape=(n, self.dim)) if n else np.zeros((0, self.dim), np.float32))
        return self._vectors

    def chunks(self, ids: list[int] | np.ndarray) -> list[Chunk]:
        """Chunks by row id, read by seeking into the chunk store."""
        offsets = np.memmap(self.root / "chunks.offsets", dtype=np.int64, mode="r", shape=(len(self),)) \
            if len(self) else np.zeros(0, np.int64)
        out = []
        with (self.root / "chunks.jsonl").open("rb") as f:
            for i in ids:
                f.seek(int(offsets[int(i)]))
                out.append(Chunk(**json.loads(f.readline())))
        return out

    def search(self, queries: np.ndarray, k: int, exact: bool | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (scores, row ids) per query by inner product, best first; ids are -1 past the index size.

        `exact=None` uses the index's kind; True forces exact search (the reference for recall).
        """
        q = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        if q.shape[1] != self.dim:
            raise InputError(f"query vectors have dimension {q.shape[1]}, the index {self.dim}",
                             path=str(self.root / "meta.json"))
        n = len(self)
        use_ann = not exact and self.cfg.kind != "flat" and self.meta["ann_count"] > 0
        if not use_ann:
            return self._exact(q, k, 0, n)
        ann = self._load_ann()
        if self.cfg.kind == "hnsw":
            ann.hnsw.efSearch = max(self.cfg.hnsw_ef_search, k)
        else:
            ann.nprobe = self.cfg.ivf_probe
        scores, ids = ann.search(q, k)
        scores = np.where(ids < 0, -np.inf, scores).astype(np.float32)
        if self.meta["ann_count"] < n:  # rows added since the last update of the approximate index
            tail_s, tail_i = self._exact(q, k, self.meta["ann_count"], n)
            scores, ids = _merge_top(np.concatenate([scores, tail_s], 1), np.concatenate([ids, tail_i], 1), k)
        return scores, ids

    def _exact(self, q: np.ndarray, k: int, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray]:
        vecs = self.vectors()
        best_s = np.full((len(q), 0), -np.inf, np.float32)
        best_i = np.full((len(q), 0), -1, np.int64)
        for b in range(lo, hi, self.cfg.block_rows):
            s = q @ np.asarray(vecs[b:min(hi, b + self.cfg.block_rows)]).T
            kk = min(k, s.shape[1])
            part = np.argpartition(-s, kk - 1, axis=1)[:, :kk]
            best_s = np.concatenate([best_s, np.take_along_axis(s, part, 1)], 1)
            best_i = np.concatenate([best_i, part + b], 1)
            if best_s.shape[1] > k:
                best_s, best_i = _merge_top(best_s, best_i, k)
        return _merge_top(best_s, best_i, k)


def _merge_top(scores: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k best (score, id) per row, sorted best first, padded with (-inf, -1)."""
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    s, i = np.take_along_axis(scores, order, 1), np.take_along_axis(ids, order, 1)
    if s.shape[1] < k:
        pad = k - s.shape[1]
        s = np.concatenate([s, np.full((len(s), pad), -np.inf, np.float32)], 1)
        i = np.concatenate([i, np.full((len(i), pad), -1, np.int64)], 1)
    return s.astype(np.float32), i.astype(np.int64)
