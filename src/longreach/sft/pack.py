"""Packing encoded SFT samples into fixed-length sequences, written as shards with a loss mask.

Each sample is one document of its sequence: its offset goes into `doc_starts`, so a stage trained with
`doc_mask: true` (TrainConfig) attends only within a sample and restarts positions at each one. Without it,
samples see the earlier samples of their sequence (cheaper attention kernels; what plain packing does).
Either way the loss counts only answer tokens, normalised over the answer tokens of the optimizer step.

Placement is first-fit over a bounded window of open sequences (the input order is already a seeded
shuffle), which fills sequences well without sorting samples by length. The unused tail of a sequence is
padding: masked out of the loss and a document of its own.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from longreach.sft.format import Encoded

OPEN_SEQUENCES = 64  # sequences kept open for first-fit placement; more fill better, fewer use less memory


@dataclass
class PackStats:
    samples: int = 0  # samples placed
    sequences: int = 0  # sequences written
    tokens: int = 0  # sample tokens (the rest is padding)
    target_tokens: int = 0  # tokens with a loss (answer tokens + EOS)
    truncated: int = 0  # samples whose context was cut in the middle to fit
    dropped: int = 0  # samples that could not fit (no context to cut)

    def fill(self, seq_len: int) -> float:
        return self.tokens / max(1, self.sequences * seq_len)


def _emit(bin_: list[Encoded], seq_len: int, pad_id: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    ids = np.full(seq_len, pad_id, dtype=np.int64)
    mask = np.zeros(seq_len, dtype=np.bool_)
    starts, pos = [], 0
    for e in bin_:
        n = len(e.ids)
        ids[pos:pos + n] = e.ids
        mask[pos:pos + n] = e.mask
        starts.append(pos)
        pos += n
    if pos < seq_len:
        starts.append(pos)  # the padding is a document of its own
    return ids, mask, np.asarray(starts, dtype=np.int64)


def pack(samples: Iterable[Encoded], seq_len: int, pad_id: int, packed: bool = True,
         open_sequences: int = OPEN_SEQUENCES) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(ids, loss_mask, doc_starts) per sequence. Every sample must be at most seq_len tokens.

    packed=False puts each sample alone in its sequence (padded), for comparisons and debugging; a sample marked
    `alone` (plain text) always gets a sequence of its own.
    """
    bins: list[tuple[list[Encoded], int]] = []  # (samples, used tokens), oldest first
    for e in samples:
        n = len(e.ids)
        if n > seq_len:
            raise ValueError(f"sample of {n} tokens exceeds seq_len {seq_len} (fit it first)")
        if not packed or e.alone:
            yield _emit([e], seq_len, pad_id)
            continue
        for k, (b, used) in enumerate(bins):
            if used + n <= seq_len:
                b.append(e)
                bins[k] = (b, used + n)
                break
        else:
            bins.append(([e], n))
        full = [k for k, (_, used) in enumerate(bins) if used == seq_len]
        for k in reversed(full):
            yield _emit(bins.pop(k)[0], seq_len, pad_id)
        if len(bins) > open_sequences:
            yield _emit(bins.pop(0)[0], seq_len, pad_id)
    for b, _ in bins:
        yield _emit(b, seq_len, pad_id)


def write_shards(samples: Iterable[Encoded], out: str | Path, seq_len: int, vocab_size: int, pad_id: int,
                 stats: PackStats, packed: bool = True, manifest_extra: dict[str, Any] | None = None
                 ) -> dict[str, Any]:
    """Pack and write shards (atomically, replacing `out`); fills `stats` and returns the manifest."""
    from longreach.data.shards import ShardWriter

    def counted(it: Iterable[Encoded]) -> Iterator[Encoded]:
        for e in it:
            stats.samples += 1
            stats.tokens += len(e.ids)
            stats.target_tokens += sum(e.mask)
            yield e

    with ShardWriter(out, seq_len=seq_len, vocab_size=vocab_size, overwrite=True) as w:
        for ids, mask, starts in pack(counted(samples), seq_len, pad_id, packed):
            w.add(ids, loss_mask=mask, doc_starts=starts)
            stats.sequences += 1
        return w.close({**(manifest_extra or {}), "sft": {**(manifest_extra or {}).get("sft", {}),
                                                          **stats.__dict__, "fill": stats.fill(seq_len)}})
