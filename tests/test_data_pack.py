"""Packing: exact token accounting and document starts for every separator layout, long documents split."""

from __future__ import annotations

import numpy as np
import pytest

from longreach.data.pack import Packer

LAYOUTS = {"sep": ([], [7, 8]), "bos_eos": ([1], [2]), "bos_only": ([1], []), "none": ([], [])}


@pytest.mark.parametrize("layout", LAYOUTS)
def test_packer_loses_and_repeats_nothing(layout):
    prefix, suffix = LAYOUTS[layout]
    rng = np.random.default_rng(0)
    seq_len = 16
    # short documents, documents longer than several sequences, and one exactly seq_len long
    docs = [rng.integers(10, 100, size=n).astype(np.uint32) for n in [3, 40, 1, 16, 5, 70, 2, 9]]
    packer = Packer(seq_len, prefix, suffix)
    seqs, starts = [], []
    for d in docs:
        for s, st in packer.add(d):
            assert s.shape == (seq_len,)
            seqs.append(s)
            starts.append(st)

    stream = np.concatenate([np.concatenate([prefix, d, suffix]) for d in docs]).astype(np.uint32)
    assert packer.tokens == len(stream) == len(seqs) * seq_len + packer.tail
    assert packer.separator_tokens == len(docs) * (len(prefix) + len(suffix))
    assert packer.sequences == len(seqs) and packer.documents == len(docs)
    np.testing.assert_array_equal(np.concatenate(seqs), stream[:len(seqs) * seq_len])

    unit_starts = np.cumsum([0] + [len(prefix) + len(d) + len(suffix) for d in docs])[:-1]
    for i, st in enumerate(starts):
        inside = unit_starts[(unit_starts >= i * seq_len) & (unit_starts < (i + 1) * seq_len)]
        np.testing.assert_array_equal(st, inside - i * seq_len)
    assert any(len(st) == 0 for st in starts)  # a sequence inside one long document lists no start


def test_packer_rejects_bad_length():
    from longreach.errors import InputError

    with pytest.raises(InputError):
        Packer(0)
