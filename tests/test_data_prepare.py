"""Tokenization, up-sampling and the whole `data prepare` pipeline (library and CLI) on small real tokenizers."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest

from longreach.data.config import PrepareConfig
from longreach.data.prepare import prepare
from longreach.data.readers import Document
from longreach.data.shards import PackedShards
from longreach.data.tokenize import (
    encode_batch,
    load_tokenizer,
    plain_text_encoder,
    tokenize_documents,
    tokenizer_hash,
)
from longreach.data.upsample import SourceStats, document_order, plan_copies, source_weights
from longreach.errors import InputError

WORDS = ["the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog", "while", "seven", "wizards",
         "quietly", "hex", "jolly", "boxes"]


def make_text(rng: np.random.Generator, n_words: int) -> str:
    return " ".join(rng.choice(WORDS, size=n_words)) + "."


@pytest.fixture(scope="module")
def tiny_tokenizer(tmp_path_factory):
    """A byte-level BPE tokenizer (GPT-2 style, 300 ids) with <bos>/<eos>, saved as an HF folder."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<bos>", "<eos>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    rng = np.random.default_rng(0)
    tk.train_from_iterator([make_text(rng, 50) for _ in range(200)], trainer)
    d = tmp_path_factory.mktemp("tok")
    tk.save(str(d / "tokenizer.json"))
    (d / "tokenizer_config.json").write_text(json.dumps(
        {"bos_token": "<bos>", "eos_token": "<eos>", "tokenizer_class": "PreTrainedTokenizerFast"}))
    return d


def write_corpus(root, rng, sizes: dict[str, list[int]]) -> dict[str, list[str]]:
    """One jsonl file per source with documents of the given word counts."""
    root.mkdir(parents=True, exist_ok=True)
    texts = {}
    for source, counts in sizes.items():
        texts[source] = [make_text(rng, n) for n in counts]
        (root / f"{source}.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts[source]))
    return texts


def test_hash_is_stable_and_special_strings_are_text(tiny_tokenizer, tmp_path):
    folder, file = load_tokenizer(tiny_tokenizer), load_tokenizer(tiny_tokenizer / "tokenizer.json")
    assert tokenizer_hash(folder) == tokenizer_hash(file) == tokenizer_hash(plain_text_encoder(folder))
    assert (folder.bos_token_id, folder.eos_token_id) == (0, 1)
    spec = json.loads((tiny_tokenizer / "tokenizer.json").read_text())
    spec["model"]["merges"] = spec["model"]["merges"][:-1]
    (tmp_path / "other.json").write_text(json.dumps(spec))
    assert tokenizer_hash(load_tokenizer(tmp_path / "other.json")) != tokenizer_hash(folder)
    ids = encode_batch(plain_text_encoder(folder), ["a <bos> b"])[0].tolist()
    assert 0 not in ids and 1 not in ids  # no BOS/EOS added, and the string "<bos>" stays plain text
    with pytest.raises(InputError):
        load_tokenizer(tmp_path / "missing")


def test_hash_ignores_spellings_that_give_the_same_ids(tiny_tokenizer, tmp_path):
    """The spellings in which transformers 5.17 and 5.24 differ when they convert a GGUF tokenizer (seen
    2026-11-26): with every byte in the vocabulary they give the same ids, so they must hash the same."""
    spec = json.loads((tiny_tokenizer / "tokenizer.json").read_text())
    spec["normalizer"] = {"type": "Sequence", "normalizers": []}
    spec["pre_tokenizer"]["trim_offsets"] = not spec["pre_tokenizer"].get("trim_offsets", True)
    spec["model"].update(unk_token="<eos>", fuse_unk=True, byte_fallback=True, continuing_subword_prefix=None,
                         end_of_word_suffix=None)
    (tmp_path / "other.json").write_text(json.dumps(spec))
    a, b = load_tokenizer(tiny_tokenizer), load_tokenizer(tmp_path / "other.json")
    text = "the quick brown fox jumps over zebras \u00e9t\u00e9 42"
    ids = [encode_batch(plain_text_encoder(t), [text])[0].tolist() for t in (a, b)]
    assert ids[0] == ids[1]
    assert tokenizer_hash(a) == tokenizer_hash(b)
    spec["pre_tokenizer"]["add_prefix_space"] = True  # this one changes ids, and the hash
    (tmp_path / "third.json").write_text(json.dumps(spec))
    third = load_tokenizer(tmp_path / "third.json")
    assert encode_batch(plain_text_encoder(third), ["fox"])[0].tolist() != encode_batch(
        plain_text_encoder(a), ["fox"])[0].tolist()
    assert tokenizer_hash(third) != tokenizer_hash(a)


def test_hash_keeps_unk_settings_where_bytes_are_missing(tmp_path):
    """A byte-level BPE trained without the full byte alphabet does meet unknown symbols: there unk_token
    changes ids, so it must change the hash."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.add_special_tokens(["<unk>"])
    tk.train_from_iterator(["hello world"] * 20, trainers.BpeTrainer(vocab_size=40, special_tokens=["<unk>"]))
    spec = json.loads(tk.to_str())
    (tmp_path / "plain.json").write_text(json.dumps(spec))
    spec["model"]["unk_token"] = "<unk>"
    (tmp_path / "unk.json").write_text(json.dumps(spec))
    a, b = load_tokenizer(tmp_path / "plain.json"), load_tokenizer(tmp_path / "unk.json")
    ids = [encode_batch(plain_text_encoder(t), ["hello zebra"])[0].tolist() for t in (a, b)]
    assert ids[0] != ids[1] and tokenizer_hash(a) != tokenizer_hash(b)


def test_workers_give_the_same_tokens_in_the_same_order(tiny_tokenizer):
    rng = np.random.default_rng(1)
    docs = [Document(make_text(rng, int(n)), "s", str(i)) for i, n in enumerate(rng.integers(1, 400, 60))]
    encoder = plain_text_encoder(load_tokenizer(tiny_tokenizer))
    one = list(tokenize_documents(iter(docs), encoder, workers=1, batch_chars=3000))
    two = list(tokenize_documents(iter(docs), encoder, workers=2, batch_chars=3000))
    assert [d.doc_id for d, _ in two] == [d.doc_id for d in docs]
    assert all(np.array_equal(a, b) for (_, a), (_, b) in zip(one, two))
    assert len(one) == len(two) == len(docs)
    single = encode_batch(encoder, [docs[5].text])[0]
    np.testing.assert_array_equal(one[5][1], single)


def test_upsampling_rule_and_counts():
    # source a: 10 short docs of 100 tokens and 2 long of 1000; source b: only short docs
    lengths = np.array([100] * 10 + [1000] * 2 + [50] * 5)
    sources = np.array([0] * 12 + [1] * 5)
    w_short, w_long = source_weights(SourceStats(12, 2, 3000, 2000), ratio=0.1, scale=1.0)
    assert w_long == pytest.approx(3000 / (0.1 * 1000 + 2000)) and w_short == pytest.approx(0.1 * w_long)
    copies, report = plan_copies(sources, lengths, ["a", "b"], threshold=500, ratio=0.1, scale=1.0, seed=0)
    a = report["a"]
    long_copies, short_copies = copies[10:12], copies[:10]
    assert set(long_copies) <= {1, 2} and set(short_copies) <= {0, 1}  # floor(w) or ceil(w) copies
    assert abs(long_copies.sum() - 2 * w_long) < 1 and abs(short_copies.sum() - 10 * w_short) < 1
    assert a["long_doc_repeats"] == long_copies.sum() - 2
    assert a["documents_dropped"] == (short_copies == 0).sum()
    assert a["tokens_written"] == (copies[:12] * lengths[:12]).sum()
    assert a["long_tokens_written"] / a["tokens_written"] > 2000 / 3000  # long docs gained share
    assert abs(a["tokens_written"] - a["tokens_read"]) <= 1000  # the source keeps its size (scale 1)
    assert report["b"]["weight_short"] == 1.0 and copies[12:].tolist() == [1] * 5  # no long docs: untouched
    again, _ = plan_copies(sources, lengths, ["a", "b"], 500, 0.1, 1.0, seed=0)
    np.testing.assert_array_equal(copies, again)
    off, _ = plan_copies(sources, lengths, ["a", "b"], 500, 1.0, 1.0, seed=0)
    assert off.tolist() == [1] * 17
    doubled, rep2 = plan_copies(sources, lengths, ["a", "b"], 500, 1.0, 2.0, seed=0)
    assert doubled.tolist() == [2] * 17 and rep2["a"]["long_doc_repeats"] == 2
    order = document_order(np.array([2, 0, 1]), seed=0)
    assert sorted(order.tolist()) == [0, 0, 2]
    assert document_order(np.array([2, 0, 1]), seed=0, shuffle=False).tolist() == [0, 0, 2]


@pytest.mark.parametrize("sep_mode", ["sep", "bos_eos", "none"])
def test_prepare_accounts_for_every_token(tiny_tokenizer, tmp_path, sep_mode):
    rng = np.random.default_rng(2)
    texts = write_corpus(tmp_path / "c", rng, {"web": [5, 300, 12, 40], "books": [900, 3, 700]})
    cfg = PrepareConfig(inputs=[str(tmp_path / "c" / "web.jsonl"), str(tmp_path / "c" / "books.jsonl")],
                        tokenizer=str(tiny_tokenizer), seq_len=64, out=str(tmp_path / "out"),
                        sep_mode=sep_mode, upsample_ratio=1.0, shuffle=False)
    summary = prepare(cfg)
    ds = PackedShards(tmp_path / "out")
    m = ds.manifest

    tok = load_tokenizer(tiny_tokenizer)
    encoder = plain_text_encoder(tok)
    prefix, suffix = {"sep": ([], encode_batch(encoder, ["<s>"])[0].tolist()), "bos_eos": ([0], [1]),
                      "none": ([], [])}[sep_mode]
    assert (m["separator"]["before_document"], m["separator"]["after_document"]) == (prefix, suffix)
    docs = [encode_batch(encoder, [t])[0] for t in texts["web"] + texts["books"]]
    stream = np.concatenate([np.concatenate([prefix, d, suffix]) for d in docs]).astype(np.int64)
    flat = np.concatenate([ds[i]["input_ids"] for i in range(len(ds))])
    # Every token is in the shards, in order, except the final partial sequence, which is counted.
    assert len(stream) == len(flat) + m["tail_tokens_dropped"] and m["tail_tokens_dropped"] < 64
    np.testing.assert_array_equal(flat, stream[:len(flat)])
    assert m["tokens_read"] == m["document_tokens_written"] == sum(len(d) for d in docs)
    assert m["separator_tokens"] == len(docs) * (len(prefix) + len(suffix))
    assert m["sources"]["web"]["tokens_read"] == sum(len(d) for d in docs[:4])
    assert m["dtype"] == "uint16" and m["tokenizer"]["hash"] == tokenizer_hash(tok)
    assert m["config"]["sep_mode"] == sep_mode and summary["sequences"] == len(ds)
    unit_starts = np.cumsum([0] + [len(prefix) + len(d) + len(suffix) for d in docs])[:-1]
    for i in range(len(ds)):
        in_seq = unit_starts[(unit_starts >= 64 * i) & (unit_starts < 64 * (i + 1))] - 64 * i
        np.testing.assert_array_equal(ds.doc_starts(i), in_seq)
    # each sequence's longest one-document stretch, from the documents' intervals in the stream
    ends = np.append(unit_starts[1:], len(stream))
    spans = np.array([max(min(e, 64 * (i + 1)) - max(b, 64 * i) for b, e in zip(unit_starts, ends))
                      for i in range(len(ds))])
    assert m["document_spans"] == summary["document_spans"] == {
        "p10": round(np.percentile(spans, 10)), "p50": round(np.percentile(spans, 50)),
        "p90": round(np.percentile(spans, 90)), "sequences_half_one_document": int((spans >= 32).sum()),
        "sequences_all_one_document": int((spans == 64).sum())}
    assert 0 < m["document_spans"]["sequences_all_one_document"] < len(ds)  # the 900- and 700-token books


def test_prepare_upsamples_per_source_and_counts_skips(tiny_tokenizer, tmp_path):
    rng = np.random.default_rng(3)
    texts = write_corpus(tmp_path / "c", rng, {"web": [40] * 30 + [400] * 3, "books": [60] * 20 + [600] * 3})
    encoder = plain_text_encoder(load_tokenizer(tiny_tokenizer))
    longest = {k: max(len(ids) for ids in encode_batch(encoder, v)) for k, v in texts.items()}
    with open(tmp_path / "c" / "web.jsonl", "ab") as f:
        f.write(b'{"text": 5}\n{"text": "x"\n{"text": "\xff"}\n\n')
    cfg = PrepareConfig(inputs=[str(tmp_path / "c")], tokenizer=str(tiny_tokenizer), seq_len=128,
                        out=str(tmp_path / "out"), upsample_threshold=200, upsample_ratio=0.1, seed=5)
    with pytest.raises(InputError) as e:
        prepare(cfg)
    assert (e.value.path, e.value.line) == (str(tmp_path / "c" / "web.jsonl"), 34)
    assert not (tmp_path / "out").exists() and sorted(p.name for p in tmp_path.iterdir()) == ["c"]

    cfg.on_error = "skip"
    prepare(cfg)
    m = PackedShards(tmp_path / "out").manifest
    assert m["skipped"] == {"invalid_json": 1, "invalid_utf8": 1, "not_a_string": 1}
    for name, docs in (("web", 33), ("books", 23)):
        s = m["sources"][name]
        assert s["documents"] == docs and s["long_documents"] == 3
        assert s["long_doc_repeats"] > 0 and s["documents_dropped"] > 0
        assert s["long_tokens_written"] / s["tokens_written"] > s["long_tokens_read"] / s["tokens_read"]
        # each source keeps its size, hence its share: off by at most one copy per (short, long) class
        assert abs(s["tokens_written"] - s["tokens_read"]) <= 2 * longest[name]
    written = sum(s["tokens_written"] for s in m["sources"].values())
    assert m["document_tokens_written"] == written
    assert m["sequences"] * 128 + m["tail_tokens_dropped"] == written + m["separator_tokens"]


def test_an_input_without_documents_is_an_error(tiny_tokenizer, tmp_path):
    rng = np.random.default_rng(4)
    write_corpus(tmp_path / "c", rng, {"web": [60] * 10})
    (tmp_path / "empty.jsonl").write_text("\n")
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "figure.png").write_bytes(b"\x89PNG")
    for bad in (tmp_path / "empty.jsonl", tmp_path / "notes"):
        cfg = PrepareConfig(inputs=[str(tmp_path / "c"), str(bad)], tokenizer=str(tiny_tokenizer), seq_len=64,
                            out=str(tmp_path / "out"))
        with pytest.raises(InputError, match="holds no document") as e:
            prepare(cfg)
        assert e.value.path == str(bad) and not (tmp_path / "out").exists()


def test_prepare_joins_the_files_of_a_folder(tiny_tokenizer, tmp_path):
    rng = np.random.default_rng(6)
    words = [" ".join(rng.choice(["alpha", "beta", "gamma", "delta"], 50)) for _ in range(5)]
    for rel, text in zip(["m/1.txt", "m/2.txt", "m/3.txt", "n/1.txt", "n/2.txt"], words):
        (tmp_path / "c" / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "c" / rel).write_text(text)
    sizes = {}
    for join in ("file", "folder"):
        cfg = PrepareConfig(inputs=[str(tmp_path / "c")], tokenizer=str(tiny_tokenizer), seq_len=32,
                            out=str(tmp_path / join), join_files=join, upsample_ratio=1.0, shuffle=False)
        prepare(cfg)
        m = PackedShards(tmp_path / join).manifest
        sizes[join] = (m["documents_read"], {k: s["documents"] for k, s in m["sources"].items()})
    assert sizes == {"file": (5, {"m": 3, "n": 2}), "folder": (2, {"m": 1, "n": 1})}
    cfg.join_files = "book"
    with pytest.raises(InputError, match="must be one of") as e:
        prepare(cfg)
    assert e.value.field == "join_files"


def test_cli_prepare_and_inspect_with_llama3(tmp_path):
    from typer.testing import CliRunner

    from longreach.assets import llama3_tokenizer
    from longreach.cli.apps import app

    rng = np.random.default_rng(4)
    write_corpus(tmp_path / "c", rng, {"a": [200, 30, 500]})
    (tmp_path / "cfg.yaml").write_text("seq_len: 32\nsep_mode: none\nupsample_ratio: 1.0\nshuffle: false\n")
    args = ["data", "prepare", "--input", str(tmp_path / "c"), "--tokenizer", str(llama3_tokenizer()),
            "--out", str(tmp_path / "out"), "--config", str(tmp_path / "cfg.yaml"), "--sep-mode", "sep",
            "--seq-len", "64", "--join-files", "folder"]  # records stay documents under "folder"
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["seq_len"] == 64 and summary["sequences"] == len(PackedShards(tmp_path / "out"))
    m = PackedShards(tmp_path / "out").manifest
    # flags beat the YAML, which beats the defaults; Llama-3 has no "<s>" token: the string is plain text
    assert m["config"]["sep_mode"] == "sep" and m["config"]["shuffle"] is False
    assert m["config"]["join_files"] == "folder" and m["documents_read"] == 3
    assert m["separator"]["after_document"] == [45147, 29] and m["dtype"] == "uint32"

    result = CliRunner().invoke(app, ["data", "inspect", str(tmp_path / "out"), "--tokens", "8"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["document_spans"] == m["document_spans"]  # recomputed from the shards
    shown = report["sequence"]
    assert shown["tokenizer_matches"] and shown["doc_starts"] == [0]
    first = json.loads((tmp_path / "c" / "a.jsonl").read_text().splitlines()[0])["text"]
    assert len(shown["head_ids"]) == 8 and len(shown["head_text"]) > 8 and first.startswith(shown["head_text"])

    result = CliRunner().invoke(app, args)  # the output exists: refuse rather than clobber
    assert isinstance(result.exception, InputError) and "already exists" in str(result.exception)
    assert Counter(p.name.split(".")[0] for p in tmp_path.iterdir()) == Counter(["c", "cfg", "out"])
