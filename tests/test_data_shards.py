"""Shard store: dtype choice, random access = sequential write, atomic writes, resumable epoch order."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest

from longreach.data.shards import PackedShards, ShardWriter, epoch_order, finish_order, token_dtype
from longreach.errors import InputError


def test_dtype_fits_vocabulary(tmp_path):
    assert token_dtype(65536) == np.uint16 and token_dtype(65537) == np.uint32
    for vocab, itemsize in ((65536, 2), (128257, 4)):
        d = tmp_path / f"v{vocab}"
        with ShardWriter(d, seq_len=4, vocab_size=vocab) as w:
            w.add([0, 1, vocab - 2, vocab - 1])
            w.close()
        ds = PackedShards(d)
        assert ds.manifest["dtype"] == np.dtype(token_dtype(vocab)).name
        assert (d / "tokens-00000.bin").stat().st_size == 4 * itemsize
        assert ds[0]["input_ids"].tolist() == [0, 1, vocab - 2, vocab - 1]
        assert ds[0]["input_ids"].dtype == np.int64
    with ShardWriter(tmp_path / "x", seq_len=2, vocab_size=10) as w, pytest.raises(ValueError):
        w.add([3, 10])


def test_random_access_equals_sequential_write(tmp_path):
    rng = np.random.default_rng(1)
    seq_len, n = 8, 23
    seqs = rng.integers(0, 300, size=(n, seq_len))
    masks = rng.random((n, seq_len)) < 0.5
    starts = [np.sort(rng.choice(seq_len, size=rng.integers(0, 4), replace=False)) for _ in range(n)]
    # 5 sequences per shard file: the reads cross shard boundaries
    with ShardWriter(tmp_path / "s", seq_len, vocab_size=300, shard_bytes=5 * seq_len * 2) as w:
        for s, m, st in zip(seqs, masks, starts):
            w.add(s, loss_mask=m, doc_starts=st)
        manifest = w.close({"note": "kept"})
    assert manifest["note"] == "kept" and len(manifest["shards"]) == 5
    assert json.loads((tmp_path / "s" / "manifest.json").read_text()) == manifest

    ds = PackedShards(tmp_path / "s")
    assert len(ds) == n and ds.seq_len == seq_len
    for i in rng.permutation(n):  # any order, each read on its own
        item = ds[i]
        np.testing.assert_array_equal(item["input_ids"], seqs[i])
        np.testing.assert_array_equal(item["loss_mask"], masks[i])
        assert item["loss_mask"].dtype == np.bool_
        np.testing.assert_array_equal(ds.doc_starts(i), starts[i])
    np.testing.assert_array_equal(ds[-1]["input_ids"], seqs[-1])
    with pytest.raises(IndexError):
        ds[n]
    copy = pickle.loads(pickle.dumps(ds))  # as DataLoader workers get it: maps reopened, not copied
    assert len(pickle.dumps(ds)) < 4096
    np.testing.assert_array_equal(copy[7]["input_ids"], seqs[7])


def test_loss_mask_all_or_nothing_and_validation(tmp_path):
    with ShardWriter(tmp_path / "a", 4, 10) as w:
        w.add([1, 2, 3, 4])
        with pytest.raises(ValueError):
            w.add([1, 2, 3, 4], loss_mask=[1, 1, 0, 0])
        with pytest.raises(ValueError):
            w.add([1, 2, 3])
        with pytest.raises(ValueError):
            w.add([1, 2, 3, 4], doc_starts=[2, 1])
        w.close()
    assert "loss_mask" not in PackedShards(tmp_path / "a")[0]


def test_failed_write_leaves_no_directory(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(RuntimeError, match="boom"), ShardWriter(out, 4, 10) as w:
        w.add([1, 2, 3, 4])
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []

    # A process killed mid-write leaves only DIR.tmp-*: the reader refuses it and DIR does not exist.
    w = ShardWriter(out, 4, 10)
    w.add([1, 2, 3, 4])
    assert not out.exists() and w.tmp.name.startswith("out.tmp-")
    with pytest.raises(InputError, match="no manifest"):
        PackedShards(w.tmp)
    w.abort()


def test_existing_directory_kept_unless_overwrite(tmp_path):
    out = tmp_path / "out"
    with ShardWriter(out, 2, 10) as w:
        w.add([1, 2])
        w.close()
    with pytest.raises(InputError, match="already exists"):
        ShardWriter(out, 2, 10)
    with ShardWriter(out, 2, 10, overwrite=True) as w:
        w.add([5, 6])
        w.add([7, 8])
        w.close()
    assert [PackedShards(out)[i]["input_ids"].tolist() for i in range(2)] == [[5, 6], [7, 8]]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_truncated_shard_is_detected(tmp_path):
    with ShardWriter(tmp_path / "s", 4, 10) as w:
        w.add([1, 2, 3, 4])
        w.close()
    f = tmp_path / "s" / "tokens-00000.bin"
    f.write_bytes(f.read_bytes()[:-2])
    with pytest.raises(InputError, match="manifest says"):
        PackedShards(tmp_path / "s")


def test_epoch_order_is_a_fixed_permutation():
    a = epoch_order(100, seed=3, epoch=0)
    assert sorted(a.tolist()) == list(range(100))
    np.testing.assert_array_equal(a, epoch_order(100, seed=3, epoch=0))
    assert not np.array_equal(a, epoch_order(100, seed=3, epoch=1))
    assert not np.array_equal(a, epoch_order(100, seed=4, epoch=0))


def test_finish_order_moves_the_lowest_or_highest_keys_to_the_end_of_the_visited_part():
    order = np.array([7, 3, 9, 0, 5, 2, 8])  # the run visits the first 5; 2 and 8 stay where they are
    key = np.array([0.5, 0.0, 0.9, 0.0, 0.2])
    # the two lowest keys (sequences 3 and 0, a tie kept in order) go last; the others keep their order
    assert finish_order(order, 5, 2, key, "low").tolist() == [7, 9, 5, 3, 0, 2, 8]
    assert finish_order(order, 5, 2, key, "high").tolist() == [3, 0, 5, 7, 9, 2, 8]
    assert finish_order(order, 5, 0, key, "low").tolist() == order.tolist()
    assert finish_order(order, 5, 2, np.zeros(5), "low").tolist() == order.tolist()  # equal keys move nothing
    ties = np.array([0.0, 0.0, 0.9, 0.0, 0.2])  # three lowest tied: the later two (sequences 3 and 0) go
    assert finish_order(order, 5, 2, ties, "low").tolist() == [7, 9, 5, 3, 0, 2, 8]
    with pytest.raises(ValueError, match="visited"):
        finish_order(order, 8, 2, key, "low")
    with pytest.raises(ValueError, match="count"):
        finish_order(order, 5, 6, key, "low")
    with pytest.raises(ValueError, match="last"):
        finish_order(order, 5, 2, key, "middle")
