"""`ask` (full long context when it fits, RAG otherwise) and the RAG-vs-long-context comparison, with a tiny
random Llama reader (answers are noise; what is checked is which context reaches the prompt) and MiniLM."""

from __future__ import annotations

import json

import pytest

from longreach.data.readers import Document
from longreach.rag.answer import AskConfig, ask, qa_prompt
from longreach.rag.compare import CompareConfig, load_questions, markdown_table, run
from longreach.rag.embed import load_embedder
from test_eval_backends import tiny_backend

TOPICS = {
    "volcano": "The Kilauea volcano on Hawaii erupted again, sending lava toward the ocean. Geologists measured "
               "the lava flow at twelve meters per hour. Residents of the island were told to leave their homes.",
    "bakery": "The bakery on Main Street sells sourdough bread baked before dawn. Its owner, Marta Lindqvist, "
              "learned to bake in Stockholm. The cinnamon buns sell out by nine in the morning.",
    "chess": "The chess tournament in Reykjavik drew players from forty countries. The youngest grandmaster was "
             "fourteen years old. The final game lasted six hours and ended in a draw.",
    "satellite": "The weather satellite was launched from French Guiana on an Ariane rocket. It watches storms "
                 "over the Atlantic. Its cameras take a picture of the whole Earth every ten minutes.",
    "orchard": "The apple orchard grows twelve varieties, including Honeycrisp and Gala. Pickers arrive in "
               "September. The farm presses cider in old oak barrels every autumn.",
}


@pytest.fixture(scope="module")
def minilm():
    return load_embedder("minilm")


def docs(repeat: int = 1) -> list[Document]:
    return [Document(text=" ".join([t] * repeat), source="test", doc_id=f"{name}.txt") for name, t in TOPICS.items()]


def test_prompt_formats():
    text = qa_prompt("title: a, source: b", "Who?", chat=False, instruction="Answer briefly.")
    assert text.startswith("System: ") and text.endswith("User: Answer briefly. Who?\n\nAssistant:")
    assert "\n\ntitle: a, source: b\n\n" in text
    msgs = qa_prompt("CTX", "Who?", chat=True, instruction="Answer briefly.")
    assert [m["role"] for m in msgs] == ["system", "user"] and msgs[1]["content"] == "CTX\n\nAnswer briefly. Who?"


def test_ask_uses_long_context_when_it_fits_and_rag_otherwise(minilm, capsys):
    backend = tiny_backend()
    q = "Who owns the bakery on Main Street?"
    long = ask(q, docs(), backend, AskConfig(max_context=4096, max_new_tokens=4, chat=False), embedder=minilm)
    assert long["mode"] == "long" and long["prompt_tokens"] + 4 <= 4096 and isinstance(long["answer"], str)
    assert "full long context" in capsys.readouterr().err
    # the same documents, repeated so they exceed a 400-token window: RAG, and the bakery passage is retrieved
    cfg = AskConfig(max_context=400, max_new_tokens=4, chunk_tokens=60, chat=False)
    rag = ask(q, docs(repeat=4), backend, cfg, embedder=minilm)
    assert rag["mode"] == "rag" and "do not fit" in rag["reason"] and "RAG" in capsys.readouterr().err
    assert rag["chunks"][0]["doc"] == "bakery.txt"
    assert rag["prompt_tokens"] + 4 <= 400 and rag["retrieved_tokens"] <= rag["budget"]
    assert rag["budget"] < 400  # derived: what the window leaves after the question and the answer
    # a configured budget below that is respected
    small = ask(q, docs(repeat=4), backend, AskConfig(max_context=400, max_new_tokens=4, chunk_tokens=60,
                                                       budget=70, chat=False), embedder=minilm)
    assert small["budget"] == 70 and small["retrieved_tokens"] <= 70 and len(small["chunks"]) == 1


def test_rag_vs_long_table_and_resume(tmp_path, minilm, monkeypatch):
    monkeypatch.setenv("LONGREACH_CACHE", str(tmp_path / "cache"))
    qa = tmp_path / "qa.jsonl"
    with qa.open("w") as f:
        f.write(json.dumps({"id": "q1", "question": "How fast did the lava flow?", "answers": ["twelve meters"],
                            "docs": [{"title": n, "text": " ".join([t] * 2)} for n, t in TOPICS.items()]}) + "\n")
        f.write(json.dumps({"question": "Where was the satellite launched?", "answer": "French Guiana",
                            "context": " ".join(TOPICS.values())}) + "\n")
    cfg = CompareConfig(questions=str(qa), model="tiny", out=str(tmp_path / "out"), chunk_sizes=[40, 500],
                        top_k=[1, 2, 20], max_context=600, max_new_tokens=4, chat=False)
    backend = tiny_backend()
    results = run(cfg, backend=backend, embedder=minilm)
    rows = {r["name"]: r for r in results["rows"]}
    assert list(rows) == ["long", "rag-40x1", "rag-40x2", "rag-40x20", "rag-500x1", "rag-500x2", "rag-500x20"]
    skipped = [name for name, r in rows.items() if "skipped" in r]
    assert skipped == ["rag-40x20", "rag-500x2", "rag-500x20"]  # budgets 800, 1000, 10000 > 596 tokens
    for name in ("rag-40x1", "rag-40x2", "rag-500x1"):
        r = rows[name]
        assert r["n"] == 2 and 0 <= r["score"] <= 100 and 0 < r["context_tokens"] <= r["budget"]
    assert rows["rag-40x2"]["context_tokens"] > rows["rag-40x1"]["context_tokens"]
    assert rows["long"]["context_tokens"] > rows["rag-40x2"]["context_tokens"]
    table = (tmp_path / "out" / "table.md").read_text()
    assert table == markdown_table(results) and "| full long context |" in table and "skipped" in table
    records = [json.loads(x) for x in (tmp_path / "out" / "predictions" / "rag-40x1.jsonl").read_text().splitlines()]
    assert [r["id"] for r in records] == ["q1", "2"] and all(r["chunks"] >= 1 for r in records)
    # a rerun resumes: nothing is generated again, the table is the same
    calls = []
    monkeypatch.setattr(backend, "generate", lambda *a, **k: calls.append(a) or [""])
    assert run(cfg, backend=backend, embedder=minilm)["rows"] == results["rows"] and calls == []


def test_question_file_errors(tmp_path):
    from longreach.errors import InputError

    bad = tmp_path / "qa.jsonl"
    bad.write_text(json.dumps({"question": "q?", "answers": ["a"]}) + "\n")
    with pytest.raises(InputError, match="context"):
        load_questions(bad, shared_docs=False)
    assert load_questions(bad, shared_docs=True)[0]["answers"] == ["a"]
    bad.write_text('{"question": "q?"}\n')
    with pytest.raises(InputError, match="answers"):
        load_questions(bad, shared_docs=True)
