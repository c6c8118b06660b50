"""Corpus readers: formats, sources, and every kind of bad input (raise with file:line:field, or skip+count)."""

from __future__ import annotations

import json
from collections import Counter

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from longreach.data.readers import iter_documents
from longreach.errors import InputError


def write_jsonl(path, lines: list) -> None:
    path.write_bytes(b"".join((x if isinstance(x, bytes) else json.dumps(x).encode()) + b"\n" for x in lines))


def test_jsonl_fields_sources_and_ids(tmp_path):
    f = tmp_path / "web.jsonl"
    write_jsonl(f, [{"text": "one"}, b"", {"text": "two", "meta": {"set": "arxiv"}}])
    docs = list(iter_documents(f))
    assert [d.text for d in docs] == ["one", "two"]
    assert [d.source for d in docs] == ["web", "web"]
    assert [d.doc_id for d in docs] == [f"{f}:1", f"{f}:3"]  # the blank line 2 is no record

    g = tmp_path / "c.jsonl"
    write_jsonl(g, [{"body": "x", "meta": {"set": "arxiv"}}, {"body": "y", "meta": {"set": "book"}}])
    docs = list(iter_documents(g, text_field="body", source_field="meta.set"))
    assert [(d.text, d.source) for d in docs] == [("x", "arxiv"), ("y", "book")]


BAD_LINES = [
    (b'{"text": "ok"', "invalid_json", None, "invalid JSON"),
    (b'{"text": "caf\xe9"}', "invalid_utf8", None, "not valid UTF-8 (byte 0xe9 at column 14)"),
    (json.dumps({"txt": "a"}).encode(), "missing_field", "text", "missing"),
    (json.dumps({"text": None}).encode(), "missing_field", "text", "missing"),
    (json.dumps({"text": 3}).encode(), "not_a_string", "text", "expected a string, got int"),
    (json.dumps({"text": "  \n "}).encode(), "empty", "text", "empty document"),
    (json.dumps(["text"]).encode(), "not_an_object", None, "expected a JSON object"),
    (b'{"text": "lone \\ud800 surrogate"}', "invalid_utf8", "text", "unpaired surrogate"),
]


@pytest.mark.parametrize("bad, reason, field, message", BAD_LINES, ids=[b[1] + str(i) for i, b in
                                                                         enumerate(BAD_LINES)])
def test_jsonl_bad_line_raises_with_location_or_is_counted(tmp_path, bad, reason, field, message):
    f = tmp_path / "d.jsonl"
    write_jsonl(f, [{"text": "good one"}, {"text": "good two"}, bad, {"text": "good four"}])
    with pytest.raises(InputError) as e:
        list(iter_documents(f))
    assert (e.value.path, e.value.line, e.value.field) == (str(f), 3, field)
    assert message in str(e.value) and str(e.value).startswith(f"{f}:3: ")

    counter: Counter = Counter()
    docs = list(iter_documents(f, on_error="skip", counter=counter))
    assert [d.text for d in docs] == ["good one", "good two", "good four"]
    assert counter == Counter({reason: 1})


def test_text_folder_recursive_sorted_with_sources(tmp_path):
    root = tmp_path / "corpus"
    (root / "b_books").mkdir(parents=True)
    (root / "a_code" / "deep").mkdir(parents=True)
    (root / "b_books" / "z.txt").write_text("book z")
    (root / "b_books" / "a.md").write_text("book a")
    (root / "a_code" / "deep" / "x.rst").write_text("code x")
    (root / "top.txt").write_text("\ufefftop level")  # a BOM is not part of the text
    (root / "notes.bin").write_bytes(b"\x00\x01")  # not a corpus file
    (root / ".hidden.txt").write_text("hidden")
    docs = list(iter_documents(root))
    assert [(d.text, d.source) for d in docs] == [
        ("code x", "a_code"), ("book a", "b_books"), ("book z", "b_books"), ("top level", "corpus")]
    assert docs[0].doc_id == str(root / "a_code" / "deep" / "x.rst")

    single = root / "b_books" / "z.txt"
    assert [(d.text, d.source) for d in iter_documents(single)] == [("book z", "z")]


def test_text_file_bad_bytes_and_empty(tmp_path):
    root = tmp_path / "c"
    root.mkdir()
    (root / "a.txt").write_text("fine")
    (root / "b.txt").write_bytes(b"line one\nline two \xff\xfe here\n")
    (root / "c.txt").write_text("   \n")
    with pytest.raises(InputError) as e:
        list(iter_documents(root))
    assert (e.value.path, e.value.line) == (str(root / "b.txt"), 2)
    assert "byte 0xff at column 10" in str(e.value)
    counter: Counter = Counter()
    assert [d.text for d in iter_documents(root, on_error="skip", counter=counter)] == ["fine"]
    assert counter == Counter({"invalid_utf8": 1, "empty": 1})
    with pytest.raises(InputError, match="empty document"):
        list(iter_documents(root / "c.txt"))


def test_parquet_streams_rows_with_row_numbers(tmp_path):
    f = tmp_path / "p.parquet"
    texts = [f"doc {i}" for i in range(600)]
    texts[450] = None
    pq.write_table(pa.table({"text": texts, "src": ["a", "b"] * 300}), f, row_group_size=100)
    with pytest.raises(InputError) as e:
        list(iter_documents(f))
    assert (e.value.line, e.value.field, e.value.reason) == (451, "text", "missing")
    counter: Counter = Counter()
    docs = list(iter_documents(f, on_error="skip", counter=counter, source_field="src"))
    assert len(docs) == 599 and counter == Counter({"missing_field": 1})
    assert (docs[0].text, docs[0].source, docs[0].doc_id) == ("doc 0", "a", f"{f}:1")
    assert (docs[-1].text, docs[-1].source) == ("doc 599", "b")
    with pytest.raises(InputError, match="no such column") as e:
        list(iter_documents(f, text_field="content", on_error="skip"))
    assert e.value.field == "content"

    g = tmp_path / "n.parquet"
    pq.write_table(pa.table({"text": [1, 2]}), g)
    with pytest.raises(InputError, match="expected a string, got int"):
        list(iter_documents(g))


def test_join_folder_makes_one_document_per_folder(tmp_path):
    root = tmp_path / "corpus"
    (root / "manual" / "sub").mkdir(parents=True)
    (root / "manual" / "b.rst").write_bytes(b"chapter b\r\n\r\n")
    (root / "manual" / "a.txt").write_text("\ufeffchapter a\n")
    (root / "manual" / "sub" / "c.md").write_text("section c")
    (root / "manual" / "z.txt").write_text("chapter z")  # sorts after sub/c.md: still the manual's document
    (root / "manual" / "empty.txt").write_text("  \n")
    write_jsonl(root / "manual" / "records.jsonl", [{"text": "r1"}, {"text": "r2"}])  # records stay documents
    (root / "top.txt").write_text("top")
    counter = Counter()
    docs = list(iter_documents(root, join="folder", on_error="skip", counter=counter))
    assert [(d.text, d.source, d.doc_id) for d in docs] == [
        ("r1", "manual", f"{root / 'manual' / 'records.jsonl'}:1"),
        ("r2", "manual", f"{root / 'manual' / 'records.jsonl'}:2"),
        ("chapter a\n\nchapter b\n\nchapter z\n", "manual", str(root / "manual")),  # path order, blank lines
        ("section c\n", "manual", str(root / "manual" / "sub")),
        ("top\n", "corpus", str(root)),
    ]
    assert counter == Counter(empty=1)  # a bad file inside a folder is still counted (or raised)
    with pytest.raises(InputError, match="empty document") as e:
        list(iter_documents(root, join="folder"))
    assert str(root / "manual" / "empty.txt") in str(e.value)
    assert [d.text for d in iter_documents(root / "top.txt", join="folder")] == ["top"]  # a file: itself


def test_bad_paths_and_options(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        list(iter_documents(tmp_path / "nope.jsonl"))
    (tmp_path / "broken.parquet").write_bytes(b"not parquet")
    with pytest.raises(InputError, match="not a readable parquet file"):
        list(iter_documents(tmp_path / "broken.parquet"))
    with pytest.raises(InputError, match="on_error"):
        list(iter_documents(tmp_path, on_error="ignore"))
    with pytest.raises(InputError, match="join_files"):
        list(iter_documents(tmp_path, join="book"))


def test_record_files_in_a_folder_are_sources(tmp_path):
    write_jsonl(tmp_path / "web.jsonl", [{"text": "w"}])
    pq.write_table(pa.table({"text": ["b"]}), tmp_path / "books.parquet")
    (tmp_path / "sub").mkdir()
    write_jsonl(tmp_path / "sub" / "part-1.jsonl", [{"text": "s"}])
    assert [(d.text, d.source) for d in iter_documents(tmp_path)] == [("b", "books"), ("s", "sub"), ("w", "web")]


def test_symlinked_corpus_folders_are_followed_once(tmp_path):
    real = tmp_path / "elsewhere" / "manuals"
    (real / "sub").mkdir(parents=True)
    (real / "a.txt").write_text("alpha")
    (real / "sub" / "b.md").write_text("beta")
    (real / "sub" / "loop").symlink_to(real, target_is_directory=True)  # a cycle must not repeat files
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "manuals").symlink_to(real, target_is_directory=True)
    (corpus / "notes.txt").write_text("gamma")
    docs = list(iter_documents(corpus))
    assert [(d.source, d.text) for d in docs] == [("manuals", "alpha"), ("manuals", "beta"), ("corpus", "gamma")]
