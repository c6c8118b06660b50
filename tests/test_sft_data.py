"""SFT records (messages, NVIDIA's ChatQA layout, question/answers; jsonl, json, parquet), errors that name the
file, line and field, and weighted blends (proportions, whole passes before repeats, determinism)."""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

import pytest

from longreach.errors import InputError
from longreach.sft.data import Dataset, blend_counts, draw_blend, parse_record

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data" / "sft"


def test_shipped_sample_files_parse():
    general, qa, conv = (Dataset(DATA / f) for f in ("general.jsonl", "context_qa.jsonl", "convqa.jsonl"))
    assert (len(general), len(qa), len(conv)) == (16, 12, 4)
    s = general.sample(3)
    assert s.system == "You answer in one sentence." and s.messages[0]["role"] == "user"
    s = qa.sample(0)  # question/answer with a title
    assert s.context.startswith("title: lighthouse notes, source: The lighthouse") and s.messages[-1] == {
        "role": "assistant", "content": "Mara Quill"}
    assert qa.sample(1).messages[-1]["content"] == "1911"  # "answers": first reference is the target
    s = conv.sample(0)  # ChatQA layout: messages end with the user, "document", "answers"
    assert [m["role"] for m in s.messages] == ["user", "assistant", "user", "assistant"]
    assert s.messages[-1]["content"] == "It is closed for repairs until March." and "east wing" in s.context
    assert s.where.endswith("convqa.jsonl:1")


def test_json_array_and_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    recs = [{"question": f"q{i}", "answer": f"a{i}", "context": f"c{i}"} for i in range(3)]
    (tmp_path / "a.json").write_text(json.dumps(recs))
    pq.write_table(pa.Table.from_pylist(recs), tmp_path / "b.parquet")
    (tmp_path / "notes.txt").write_text("not a record file")
    ds = Dataset(tmp_path)  # a folder: every record file in it, sorted
    assert len(ds) == 6
    assert [ds.sample(i).messages[0]["content"] for i in range(6)] == ["q0", "q1", "q2"] * 2
    assert ds.sample(5).context == "c2" and ds.sample(5).where.endswith("b.parquet:3")


@pytest.mark.parametrize("rec, field, msg", [
    ({"messages": [{"role": "user", "content": "hi"}, {"role": "bot", "content": "x"}]}, "messages[1].role",
     "role must be"),
    ({"messages": [{"role": "user", "content": "hi"}, {"role": "user", "content": "x"}]}, "messages[1].role",
     "alternate"),
    ({"messages": [{"role": "user", "content": "hi"}]}, "messages", "no answer"),
    ({"messages": [{"role": "user", "content": 3}, {"role": "assistant", "content": "x"}]},
     "messages[0].content", "string"),
    ({"messages": [{"role": "user", "content": "a"}, {"role": "system", "content": "s"}]}, "messages[1]",
     "only come first"),
    ({"question": "q"}, "answer", "answer or answers"),
    ({"question": "q", "answers": []}, "answers", "non-empty list"),
    ({"question": "q", "answer": "a", "context": ["x"]}, "context", "expected a string"),
    ({"question": "q", "answer": "  "}, "turn 1", "empty assistant answer"),
    ({"context": "no conversation"}, None, "needs 'messages', 'question'"),
    ({"text": "  "}, "text", "empty text"),
    ({"text": 5}, "text", "expected a string"),
])
def test_malformed_records_name_file_line_field(rec, field, msg):
    with pytest.raises(InputError, match=msg) as e:
        parse_record(rec, "x.jsonl", 7)
    assert (e.value.path, e.value.line, e.value.field) == ("x.jsonl", 7, field)


def run_cli(args: list[str], capsys) -> tuple[int, str, str]:
    """`longreach ARGS` in this process (the console script's main: InputError -> one line, exit 2)."""
    from longreach.cli import main
    old, sys.argv = sys.argv, ["longreach", *args]
    try:
        main()
        code = 0
    except SystemExit as e:
        code = e.code or 0
    finally:
        sys.argv = old
    out = capsys.readouterr()
    return code, out.out, out.err


def test_bad_line_in_a_recipe_is_one_line_error_exit_2(tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "q", "answer": "a"}\n\n{"question": "q2", "answers": "a2"}\n{"question": 1}\n')
    cfg = tmp_path / "r.yaml"
    cfg.write_text(f"model: {tmp_path}\ndatasets: {{bad: {bad}}}\nstages: {{s1: {{blend: {{bad: 1}}}}}}\n")
    # the recipe fails at the record, before any model is needed; the tokenizer comes first, so give one
    tok = tmp_path / "tok"
    from longreach.sft.tiny import train_tokenizer
    train_tokenizer(["some text to learn a few merges from"] * 20, vocab_size=300).save_pretrained(tok)
    code, _, err = run_cli(["sft", "--config", str(cfg), "--set", f"tokenizer={tok}", "--set",
                            f"out={tmp_path / 'run'}"], capsys)
    assert code == 2, err
    last = err.strip().splitlines()[-1]
    assert last == f"error: {bad}:4: field 'question': expected a string, got int"


def test_blend_counts_are_proportions_summing_to_total():
    w = {"drop": 0.069, "narrativeqa": 0.095, "quoref": 0.026, "sft": 0.2}
    c = blend_counts(w, 1000)
    assert sum(c.values()) == 1000
    for k, weight in w.items():
        assert abs(c[k] - 1000 * weight / sum(w.values())) < 1
    with pytest.raises(InputError, match="> 0"):
        blend_counts({"a": 1.0, "b": 0.0}, 10)


def test_draw_blend_whole_passes_and_determinism():
    sizes = {"small": 3, "big": 100}
    picks = draw_blend(sizes, {"small": 1.0, "big": 1.0}, 20, seed=5, salt="sft2")
    assert picks == draw_blend(sizes, {"small": 1.0, "big": 1.0}, 20, seed=5, salt="sft2")
    assert picks != draw_blend(sizes, {"small": 1.0, "big": 1.0}, 20, seed=6, salt="sft2")
    assert picks != draw_blend(sizes, {"small": 1.0, "big": 1.0}, 20, seed=5, salt="sft3")
    small = Counter(i for name, i in picks if name == "small")
    assert sum(small.values()) == 10 and set(small) == {0, 1, 2}  # 10 draws of 3: every record 3 or 4 times
    assert max(small.values()) - min(small.values()) <= 1
    big = [i for name, i in picks if name == "big"]
    assert len(big) == len(set(big)) == 10  # a subsample of a large set has no repeats
    assert [name for name, _ in picks] != sorted(name for name, _ in picks)  # the blend is shuffled together


def test_text_record_is_a_plain_text_sample():
    s = parse_record({"text": "Once upon a time.", "qa": "text", "tokens": 5}, "t.jsonl", 3)
    assert s.text == "Once upon a time." and s.messages == [] and s.where == "t.jsonl:3"
    q = parse_record({"question": "q", "answer": "a", "text": "ignored"}, "t.jsonl", 4)  # turns win over text
    assert q.text is None and q.messages[1]["content"] == "a"
