"""The CPU demo (`longreach demo`): pass-key documents in the NIAH prompt's own words, the demo tokenizer, the
base-stage sequences, and both stages end to end at a tiny size (base pretraining -> extension -> report)."""

from __future__ import annotations

import json
import random
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from longreach import config as config_io
from longreach import demo
from longreach.eval import niah
from longreach.train.config import TrainConfig

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "demo-cpu.yaml"
PROSE = ("Enter the King. My lord, the night is cold, and all the court is still. Why stay you here? "
         "I stay to watch the stars that wheel above the tower. Go in, good friend; the hour is late. ") * 40


@pytest.fixture
def tiny_plays(tmp_path, monkeypatch):
    """Three small 'plays' for training and one held out, instead of the 78 Gutenberg texts."""
    folder = tmp_path / "plays"
    folder.mkdir()
    words = PROSE.split()
    for i in range(4):
        random.Random(i).shuffle(words)
        (folder / f"play{i}.txt").write_text(" ".join(words) + "\n")
    files = sorted(folder.glob("*.txt"))
    monkeypatch.setattr(demo, "gutenberg_files", lambda held_out: files[3:] if held_out else files[:3])
    return files


def test_passkey_document_ends_like_the_niah_prompt():
    """A training document is exactly what `eval niah` asks a raw-text model, followed by the answer."""
    filler = "One sentence here. Another one there. And a third."
    doc = demo.passkey_document(filler, "48213", 50.0)
    context = niah.insert_needle(filler, demo.NEEDLE.replace("{key}", "48213"), 50.0, len(filler) // 2)
    prompt = niah.Haystack.prompt(SimpleNamespace(chat=False), context, demo.QUESTION, demo.lead_in())
    assert doc == prompt + " 48213.\n"
    assert demo.lead_in() == "The pass key is"


def test_passkey_lengths_fill_one_sequence():
    rng = random.Random(0)
    assert demo.passkey_lengths(rng, 2045, 3, 1) == [2045]
    counts = set()
    for _ in range(500):
        lengths = demo.passkey_lengths(rng, 2045, 3, 4)
        counts.add(len(lengths))
        assert sum(lengths) + 3 * (len(lengths) - 1) == 2045 and min(lengths) >= 96
    assert counts == {1, 2, 3, 4}


def test_named_passkey_document_asks_every_key_once():
    keys = [("red door", "12345", 10.0), ("blue box", "67890", 60.0), ("old mill", "24680", 95.0)]
    doc = demo.named_passkey_document(PROSE[:600], keys, random.Random(0))
    for name, key, _ in keys:
        assert doc.count(f"The pass key of the {name} is {key}. Remember it.") == 1  # the needle
        assert doc.count(f"Answer: The pass key of the {name} is {key}.") == 1  # its question, after all needles
        assert doc.index(f"Question: What is the pass key of the {name}?") > doc.rindex("Remember it.")


def test_tokenizer_splits_keys_into_digits_and_collapses_spaces():
    tok = demo.build_tokenizer([PROSE], vocab_size=400, seed=0)
    pieces = tok.convert_ids_to_tokens(tok(" 48213.", add_special_tokens=False)["input_ids"])
    assert pieces == ["Ġ4", "8", "2", "1", "3", "."]
    ids = tok("a.  The", add_special_tokens=False)["input_ids"]
    assert ids == tok("a. The", add_special_tokens=False)["input_ids"]
    assert tok("Hi")["input_ids"] == tok("Hi", add_special_tokens=False)["input_ids"]  # no BOS added to text


def test_base_sequences_hold_whole_passkey_documents(tiny_plays, tmp_path):
    from longreach.data.shards import PackedShards

    cfg = config_io.load(demo.DemoConfig, overrides=["window=96", "base.passkey_fraction=0.5"])
    tok = demo.build_tokenizer([p.read_text() for p in tiny_plays], vocab_size=400, seed=0)
    manifest = demo.base_sequences(cfg, tok, tmp_path / "shards", 40)
    shards = PackedShards(tmp_path / "shards")
    assert len(shards) == 40 and shards.seq_len == 96
    found = 0
    for i in range(len(shards)):
        ids = shards[i]["input_ids"].tolist()
        assert ids[0] == tok.bos_token_id and tok.bos_token == "<s>"
        text = tok.decode(ids[1:])
        if "pass key" in text:
            found += 1
            key = text.split("The pass key is ")[1][:5]
            assert key.isdigit() and text.endswith(f"Answer: The pass key is {key}.")
            assert text.count(key) == 3  # twice in the needle, once as the answer
    assert found == manifest["demo"]["passkey_sequences"] and 10 <= found <= 30


def test_niah_lengths_cover_inside_and_beyond_the_window():
    cfg = demo.DemoConfig()
    assert demo.niah_lengths(cfg, 128) == [64, 120, 248, 504, 1016, 1528, 2040]
    s = demo.niah_summary({"cells": [{"length": 64, "score": 1.0}, {"length": 128, "score": 0.5},
                                     {"length": 256, "score": 0.0}, {"length": 256, "score": 1.0}]}, 128)
    assert s["inside"] == 0.75 and s["beyond"] == 0.5


def test_bad_stage_is_an_input_error():
    from longreach.errors import InputError

    with pytest.raises(InputError):
        demo.run(demo.DemoConfig(stage="finetune"))


@pytest.mark.slow
def test_demo_runs_end_to_end_at_a_tiny_size(tiny_plays, tmp_path):
    """Base stage (tokenizer, shards, pretraining) then the extension stage (corpus, data prepare, base
    change, training, NIAH and perplexity for three models, report), a few steps each, from the shipped
    config."""
    tiny = ["base.steps=3", "base.batch=4", "base.hidden=32", "base.layers=2", "base.heads=2",
            "base.intermediate=64", "base.vocab_size=400", "eval.niah_trials=1", "eval.niah_depths=0,100",
            f"eval.haystack={tiny_plays[3]}"]
    base = demo.run(config_io.load(demo.DemoConfig, CONFIG, tiny + ["stage=base", f"out={tmp_path / 'b'}"]))
    assert (tmp_path / "b" / "base" / "model.safetensors").is_file()
    assert 0.0 <= base["niah_in_window"] <= 1.0

    cfg = config_io.load(demo.DemoConfig, CONFIG, tiny + [
        f"out={tmp_path / 'x'}", f"base_model={base['base']}", "factor=2", "extend.steps=2",
        "extend.micro_batch=2", "extend.passkey_fraction=0.5", "eval.ppl_sequences=1", "eval.ppl_buckets=4"])
    summary = demo.run(cfg)
    out = tmp_path / "x"
    assert summary["target"] == 256 and summary["window"] == 128
    assert [r["model"] for r in summary["rows"]] == ["base", "base-change", "extended"]
    assert abs(summary["passkey_share"] - 0.5) < 0.15  # measured from the shards' per-source token counts
    for name in ("report.md", "ppl.png", "niah-base.png", "niah-base-change.png", "niah-extended.png"):
        assert (out / name).stat().st_size > 0
    report = (out / "report.md").read_text()
    assert "Synthetic data, declared" in report and "extended" in report
    assert config_io.load(demo.DemoConfig, out / "config.yaml").extend.steps == 2
    change = json.loads((out / "models" / "base-change" / "config.json").read_text())
    assert change["max_position_embeddings"] == 256 and summary["new_base"] > summary["old_base"]
    manifest = json.loads((out / "data" / "manifest.json").read_text())
    assert manifest["seq_len"] == 256 and manifest["separator"]["text"] == "<s>"
    # packed in order, every sequence starts with a document: no pass-key document is split
    from longreach.data.shards import PackedShards
    from longreach.model.load import load_tokenizer
    shards, tok = PackedShards(out / "data"), load_tokenizer(out / "models" / "base")
    assert len(shards) == 4 and manifest["tail_tokens_dropped"] == 0
    for i in range(len(shards)):
        assert shards.doc_starts(i)[0] == 0
        text = tok.decode(shards[i]["input_ids"])
        assert text.endswith("<s>")  # the sequence ends where its last document does
        for doc in text.split("<s>")[:-1]:
            if "Question:" in doc:
                key = doc.split("The pass key is ")[1][:5]
                assert doc.endswith(f"Answer: The pass key is {key}.\n")
    # the extended model is the trained one: its weights differ from the base-change model's
    from safetensors.numpy import load_file
    a = load_file(out / "models" / "base-change" / "model.safetensors")
    b = load_file(out / "models" / "extended" / "model.safetensors")
    assert any(not np.array_equal(a[k], b[k]) for k in a)
    # The comparison knobs: another RoPE scheme in place of the base change, said so in the report; LongCE's
    # token weights in the continued pretraining, the short view the base window.
    yarn = demo.run(config_io.load(demo.DemoConfig, CONFIG, tiny + [
        f"out={tmp_path / 'y'}", f"base_model={base['base']}", "factor=2", "extend.steps=1", "scheme=yarn",
        "extend.micro_batch=2", "eval.ppl_sequences=1", "eval.ppl_buckets=4", "extend.loss_weighting=longce"]))
    step = json.loads((tmp_path / "y" / "train" / "metrics.jsonl").read_text().splitlines()[0])
    assert step["longce_weight_mean"] > 0
    assert config_io.load(TrainConfig, tmp_path / "y" / "train" / "config.yaml").longce_window == 128
    rope_cfg = json.loads((tmp_path / "y" / "models" / "base-change" / "config.json").read_text())
    assert rope_cfg["rope_parameters"]["rope_type"] == "yarn" and rope_cfg["max_position_embeddings"] == 256
    report = (tmp_path / "y" / "report.md").read_text()
    assert "RoPE scheme `yarn` (factor 2)" in report and "weighted by LongCE" in report
    assert [r["model"] for r in yarn["rows"]] == ["base", "base-change", "extended"]


def test_committed_base_retrieves_inside_its_window(tmp_path):
    """The committed base model: a 128-token window and pass-key retrieval inside it (NIAH at 64 tokens)."""
    from longreach.model.load import load_model

    model, tok = load_model(demo.COMMITTED_BASE)
    assert model.config.max_position_embeddings == 128 and tok.bos_token == "<s>"
    pieces = tok.convert_ids_to_tokens(tok(" 48213", add_special_tokens=False)["input_ids"])
    assert pieces == ["Ġ4", "8", "2", "1", "3"]
    cfg = config_io.load(demo.DemoConfig, overrides=["eval.niah_trials=2", "eval.niah_depths=0,50"])
    res = demo.niah(cfg, demo.COMMITTED_BASE, tmp_path / "niah", [64])
    assert res["mean"] >= 0.75


def test_filler_numbers_are_sparse_digits_placed_by_the_seed():
    words = PROSE.split(" ")
    assert demo.with_numbers(PROSE, 0.0, 1) == PROSE
    text = demo.with_numbers(PROSE, 0.05, 1)
    added = text.split(" ")
    numbers = [w for w in added if w.isdigit()]
    assert len(added) == len(words) + len(numbers) and 0.02 * len(words) < len(numbers) < 0.1 * len(words)
    assert all(1 <= len(n) <= 4 for n in numbers) and [w for w in added if not w.isdigit()] == words
    assert text == demo.with_numbers(PROSE, 0.05, 1) != demo.with_numbers(PROSE, 0.05, 2)
    head = " ".join(words[:50])  # a prefix of the words gets the same numbers (exact-length cutting relies on it)
    assert text.startswith(demo.with_numbers(head, 0.05, 1))
