"""Per-source length up-sampling (Fu et al. 2024, "Data Engineering for Scaling Language Models to 128K
Context"; ChatQA 2 uses it on SlimPajama with sampling hyper-parameter 0.1).

The rule. Within each source, a document is *long* when it has more than `threshold` tokens. A short
document is sampled at `ratio` times the rate of a long one (Fu et al. keep every long document and a
`ratio` share of the short ones while filling each source's token budget). Each source writes `scale` times
the tokens it read, the same factor for every source, so the domain mix is unchanged. For a source with
S short tokens and L long tokens this gives the expected copies of each document:

    w_long  = scale * (S + L) / (ratio * S + L)        w_short = ratio * w_long

(a source with only short or only long documents has w = scale for all; ratio = 1 turns it off). With the
defaults (ratio 0.1, scale 1) a source of 30% long tokens repeats each long document 2.7 times on average and
keeps 27% of its short documents; its long share grows from 30% to 81% and its size stays the same.

Whole copies: document j of its (source, long/short) class gets floor(u + j*w) - floor(u + (j-1)*w) copies
(systematic sampling, u uniform from the seed and the class), so each document gets floor(w) or ceil(w)
copies and the class's total is its expected total rounded. Then all copies are shuffled with the seed, so
the repeats of one document land far apart.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class SourceStats:
    """Token counts of one source as read (before sampling)."""

    documents: int = 0
    long_documents: int = 0
    tokens: int = 0
    long_tokens: int = 0


def source_weights(stats: SourceStats, ratio: float, scale: float) -> tuple[float, float]:
    """(expected copies of a short document, expected copies of a long one) for this source."""
    short_tokens = stats.tokens - stats.long_tokens
    if stats.long_tokens == 0 or short_tokens == 0 or ratio == 1.0:
        return scale, scale
    w_long = scale * stats.tokens / (ratio * short_tokens + stats.long_tokens)
    return ratio * w_long, w_long


def systematic_copies(n: int, weight: float, rng: np.random.Generator) -> np.ndarray:
    """Copies of each of n documents with expected copies `weight`: floor(w) or ceil(w) each."""
    u = rng.random()
    edges = np.floor(u + weight * np.arange(n + 1, dtype=np.float64))
    return np.diff(edges).astype(np.int64)


def plan_copies(sources: np.ndarray, lengths: np.ndarray, names: list[str], threshold: int, ratio: float,
                scale: float, seed: int) -> tuple[np.ndarray, dict[str, dict]]:
    """Copies of every document, and per-source statistics for the manifest.

    `sources[i]` indexes `names` (source of document i), `lengths[i]` is its token count.
    """
    if not 0.0 < ratio <= 1.0:
        raise ValueError(f"upsample ratio must be in (0, 1], got {ratio}")
    if scale <= 0:
        raise ValueError(f"upsample scale must be > 0, got {scale}")
    is_long = lengths > threshold
    copies = np.zeros(len(lengths), dtype=np.int64)
    report: dict[str, dict] = {}
    for s, name in enumerate(names):
        in_source = sources == s
        stats = SourceStats(documents=int(in_source.sum()), long_documents=int((in_source & is_long).sum()),
                            tokens=int(lengths[in_source].sum()), long_tokens=int(lengths[in_source & is_long].sum()))
        weights = source_weights(stats, ratio, scale)
        for long_class, weight in ((0, weights[0]), (1, weights[1])):
            members = np.flatnonzero(in_source & (is_long == bool(long_class)))
            rng = np.random.default_rng([seed, s, long_class])
            copies[members] = systematic_copies(len(members), weight, rng)
        c, n = copies[in_source], lengths[in_source]
        long_c = copies[in_source & is_long]
        report[name] = {
            "documents": stats.documents,
            "long_documents": stats.long_documents,
            "tokens_read": stats.tokens,
            "long_tokens_read": stats.long_tokens,
            "weight_short": weights[0],
            "weight_long": weights[1],
            "documents_written": int(c.sum()),
            "tokens_written": int((c * n).sum()),
            "long_tokens_written": int((long_c * lengths[in_source & is_long]).sum()),
            "long_doc_repeats": int(np.maximum(long_c - 1, 0).sum()),
            "short_doc_repeats": int(np.maximum(copies[in_source & ~is_long] - 1, 0).sum()),
            "documents_dropped": int((c == 0).sum()),
        }
    return copies, report


def document_order(copies: np.ndarray, seed: int, shuffle: bool = True) -> np.ndarray:
    """Document index of each copy to write, in writing order (seeded shuffle, or input order)."""
    order = np.repeat(np.arange(len(copies), dtype=np.int64), copies)
    if shuffle:
        order = np.random.default_rng([seed, 1 << 20]).permutation(order)  # a stream apart from plan_copies
    return order
