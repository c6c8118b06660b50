"""Shard store: fixed-length token sequences in memory-mapped files, written atomically.

Layout of a shard directory:
    manifest.json                written last; describes everything below (format_version 1)
    tokens-00000.bin ...         sequences x seq_len token ids, uint16 when the vocabulary fits, else uint32
    loss_mask-00000.bin ...      (optional) one byte per token, 1 = the token counts in the loss (SFT)
    doc_starts.bin               int32 offsets where documents begin, all sequences concatenated
    doc_starts_index.bin         int64 [sequences + 1]: sequence i's offsets are doc_starts[index[i]:index[i+1]]

`ShardWriter` writes into DIR.tmp-XXXX and renames it to DIR on `close`, so an interrupted run never leaves
a directory that looks complete. `PackedShards` opens any sequence by index without reading the others,
so a resumed training run can jump straight to where it stopped (see `epoch_order`).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from longreach.errors import InputError

if TYPE_CHECKING:
    from typing_extensions import Self

FORMAT = "longreach.shards"
FORMAT_VERSION = 1
SHARD_BYTES = 1 << 30  # bytes of token ids per shard file at most (whole sequences; at least one)


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 when every id fits (vocab_size <= 65536), else uint32."""
    return np.dtype(np.uint16 if vocab_size <= 1 << 16 else np.uint32)


def epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    """The order in which to visit n sequences in a given epoch: a permutation fixed by (seed, epoch).

    A resumed run recomputes the same permutation and skips the sequences it already consumed.
    """
    return np.random.default_rng([seed, epoch]).permutation(n)


def document_stretches(doc_starts: np.ndarray, seq_len: int) -> np.ndarray:
    """The stretches of a packed sequence that one document fills, in order (a document start counts its
    separator; a sequence that begins inside a document starts with that document's tail)."""
    return np.diff(np.unique(np.concatenate([[0], doc_starts, [seq_len]])))


def long_document_share(doc_starts: np.ndarray, seq_len: int, min_tokens: int) -> float:
    """The share of a packed sequence's tokens in stretches of one document at least min_tokens long."""
    stretches = document_stretches(doc_starts, seq_len)
    return float(stretches[stretches >= min_tokens].sum() / seq_len)


def finish_order(order: np.ndarray, visited: int, count: int, key: np.ndarray, last: str) -> np.ndarray:
    """`order` with `count` of its first `visited` entries moved to the end of those `visited`: the ones with the
    lowest `key` (last="low") or the highest (last="high"), ties going to the later entry (so equal keys move
    nothing). Both groups keep their order, and the entries after `visited` stay where they are: a run visits
    the same sequences in another order. key[j] belongs to order[j] for j < visited."""
    if last not in ("low", "high"):
        raise ValueError(f"last must be 'low' or 'high', got {last!r}")
    if not 0 <= count <= visited <= len(order):
        raise ValueError(f"need 0 <= count ({count}) <= visited ({visited}) <= {len(order)} entries")
    key = np.asarray(key, dtype=np.float64)[:visited]
    later_first = np.arange(visited)[::-1]  # a stable sort of the reversed entries: ties pick the later one
    ranked = later_first[np.argsort((key if last == "low" else -key)[later_first], kind="stable")]
    tail = np.zeros(visited, dtype=bool)
    tail[ranked[:count]] = True
    head = order[:visited]
    return np.concatenate([head[~tail], head[tail], order[visited:]])


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class ShardWriter:
    """Write sequences of exactly seq_len tokens (optionally a loss mask and document starts).

    Use as a context manager: an exception inside the block removes the temporary directory. Whether the
    shards carry a loss mask is decided by the first `add`.
    """

    def __init__(self, dir: str | Path, seq_len: int, vocab_size: int, shard_bytes: int = SHARD_BYTES,
                 overwrite: bool = False):
        self.dir = Path(dir)
        if self.dir.exists() and not overwrite:
            raise InputError("already exists (remove it, or overwrite)", path=str(self.dir))
        if seq_len < 1:
            raise InputError(f"must be >= 1, got {seq_len}", field="seq_len")
        self.seq_len, self.vocab_size, self.overwrite = seq_len, vocab_size, overwrite
        self.dtype = token_dtype(vocab_size)
        self.per_shard = max(1, shard_bytes // (seq_len * self.dtype.itemsize))
        self.dir.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = self.dir.parent / f"{self.dir.name}.tmp-{secrets.token_hex(4)}"
        self.tmp.mkdir()
        self.sequences = 0
        self.shards: list[dict[str, Any]] = []
        self.has_loss_mask: bool | None = None
        self._tokens_f = self._mask_f = None
        self._starts_f = open(self.tmp / "doc_starts.bin", "wb")  # noqa: SIM115 (open until close/abort)
        self._starts_index = [0]
        self._closed = False

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if not self._closed:
            self.abort()

    def _open_shard(self) -> None:
        self._close_shard()
        k = len(self.shards)
        entry: dict[str, Any] = {"tokens": f"tokens-{k:05d}.bin", "sequences": 0}
        self._tokens_f = open(self.tmp / entry["tokens"], "wb")  # noqa: SIM115 (until the next shard)
        if self.has_loss_mask:
            entry["loss_mask"] = f"loss_mask-{k:05d}.bin"
            self._mask_f = open(self.tmp / entry["loss_mask"], "wb")  # noqa: SIM115
        self.shards.append(entry)

    def _close_shard(self) -> None:
        for f in (self._tokens_f, self._mask_f):
            if f is not None:
                f.close()
        self._tokens_f = self._mask_f = None

    def add(self, tokens: Any, loss_mask: Any = None, doc_starts: Any = None) -> None:
        """Append one sequence: seq_len ids < vocab_size; loss_mask bool [seq_len]; doc_starts offsets."""
        if self._closed:
            raise RuntimeError("ShardWriter is closed")
        tokens = np.asarray(tokens)
        if tokens.shape != (self.seq_len,):
            raise ValueError(f"expected {self.seq_len} tokens, got shape {tokens.shape}")
        if tokens.size and (int(tokens.min()) < 0 or int(tokens.max()) >= self.vocab_size):
            raise ValueError(f"token ids must be in [0, {self.vocab_size}); got {tokens.min()}..{tokens.max()}")
        if self.has_loss_mask is None:
            self.has_loss_mask = loss_mask is not None
        if self.has_loss_mask != (loss_mask is not None):
            raise ValueError("either every sequence has a loss_mask or none does")
        if loss_mask is not None:
            loss_mask = np.asarray(loss_mask, dtype=np.bool_)
            if loss_mask.shape != (self.seq_len,):
                raise ValueError(f"loss_mask must have shape ({self.seq_len},), got {loss_mask.shape}")
        starts = np.asarray(doc_starts if doc_starts is not None else [], dtype=np.int64)
        if starts.size and (starts.min() < 0 or starts.max() >= self.seq_len or np.any(np.diff(starts) <= 0)):
            raise ValueError(f"doc_starts must be increasing offsets in [0, {self.seq_len}): {starts}")
        if not self.shards or self.shards[-1]["sequences"] == self.per_shard:
            self._open_shard()
        self._tokens_f.write(tokens.astype(self.dtype, copy=False).tobytes())
        if loss_mask is not None:
            self._mask_f.write(loss_mask.astype(np.uint8).tobytes())
        self._starts_f.write(starts.astype(np.int32).tobytes())
        self._starts_index.append(self._starts_index[-1] + len(starts))
        self.shards[-1]["sequences"] += 1
        self.sequences += 1

    def close(self, manifest_extra: dict[str, Any] | None = None) -> dict[str, Any]:
        """Finish: write the index and manifest.json, then rename the directory into place."""
        if self._closed:
            raise RuntimeError("ShardWriter is closed")
        try:
            self._close_shard()
            self._starts_f.close()
            np.asarray(self._starts_index, dtype=np.int64).tofile(self.tmp / "doc_starts_index.bin")
            manifest = {
                "format": FORMAT,
                "format_version": FORMAT_VERSION,
                "seq_len": self.seq_len,
                "vocab_size": self.vocab_size,
                "dtype": self.dtype.name,
                "sequences": self.sequences,
                "tokens": self.sequences * self.seq_len,
                "loss_mask": bool(self.has_loss_mask),
                "shards": self.shards,
                **(manifest_extra or {}),
            }
            (self.tmp / "manifest.json").write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
            for f in self.tmp.iterdir():
                _fsync(f)
            old = None
            if self.dir.exists():
                if not self.overwrite:
                    raise InputError("already exists (remove it, or overwrite)", path=str(self.dir))
                old = self.dir.parent / f"{self.dir.name}.old-{secrets.token_hex(4)}"
                self.dir.rename(old)
            self.tmp.rename(self.dir)
            self._closed = True
            if old is not None:
                shutil.rmtree(old)
            return manifest
        except BaseException:
            self.abort()
            raise

    def abort(self) -> None:
        """Drop everything written so far (the final directory is never created)."""
        self._close_shard()
        self._starts_f.close()
        self._closed = True
        shutil.rmtree(self.tmp, ignore_errors=True)


class PackedShards:
    """Random access to the sequences of a shard directory: `ds[i]` reads sequence i and nothing else."""

    def __init__(self, dir: str | Path):
        self.dir = Path(dir)
        path = self.dir / "manifest.json"
        if not path.is_file():
            raise InputError("not a finished shard directory (no manifest.json)", path=str(self.dir))
        try:
            self.manifest: dict[str, Any] = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise InputError(f"invalid JSON: {e.msg}", path=str(path), line=e.lineno) from None
        if self.manifest.get("format") != FORMAT or self.manifest.get("format_version") != FORMAT_VERSION:
            raise InputError(f"unsupported shard format {self.manifest.get('format')!r} version "
                             f"{self.manifest.get('format_version')!r}", path=str(path))
        self.seq_len: int = self.manifest["seq_len"]
        self.dtype = np.dtype(self.manifest["dtype"])
        self._shards = self.manifest["shards"]
        self._first = np.cumsum([0] + [s["sequences"] for s in self._shards])
        for s in self._shards:  # a truncated file would otherwise surface as a bad read deep into training
            want = s["sequences"] * self.seq_len * self.dtype.itemsize
            got = (self.dir / s["tokens"]).stat().st_size
            if got != want:
                raise InputError(f"{s['tokens']} has {got} bytes, the manifest says {want}", path=str(self.dir))
        self._maps: dict[tuple[str, int], np.memmap] = {}

    def __len__(self) -> int:
        return int(self._first[-1])

    def __getstate__(self) -> dict[str, Any]:  # DataLoader workers reopen the maps instead of pickling data
        return {**self.__dict__, "_maps": {}}

    def _map(self, name: str, dtype: Any, k: int = -1, width: int = 1) -> np.memmap:
        key = (name, k)
        if key not in self._maps:
            self._maps[key] = np.memmap(self.dir / name, dtype=dtype, mode="r").reshape(-1, width) \
                if width > 1 else np.memmap(self.dir / name, dtype=dtype, mode="r")
        return self._maps[key]

    def _locate(self, i: int) -> tuple[int, int]:
        n = len(self)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"sequence {i} out of range [0, {n})")
        k = int(np.searchsorted(self._first, i, side="right")) - 1
        return k, i - int(self._first[k])

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        k, row = self._locate(int(i))
        shard = self._shards[k]
        item = {"input_ids": self._map(shard["tokens"], self.dtype, k, self.seq_len)[row].astype(np.int64)}
        if "loss_mask" in shard:
            item["loss_mask"] = self._map(shard["loss_mask"], np.uint8, k, self.seq_len)[row].astype(np.bool_)
        return item

    def doc_starts(self, i: int) -> np.ndarray:
        """Offsets inside sequence i where documents begin (0 is absent when it continues a document)."""
        k, row = self._locate(int(i))
        i = int(self._first[k]) + row
        index = self._map("doc_starts_index.bin", np.int64)
        lo, hi = int(index[i]), int(index[i + 1])
        if hi == lo:
            return np.zeros(0, dtype=np.int64)
        return self._map("doc_starts.bin", np.int32)[lo:hi].astype(np.int64)
