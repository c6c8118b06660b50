"""`longreach rag index|search`, `longreach ask` and `longreach eval rag-vs-long` end to end (MiniLM, a tiny
random Llama reader saved to disk, the Llama-3 tokenizer for chunking)."""

from __future__ import annotations

import json
import shutil

import pytest
from typer.testing import CliRunner

from longreach.cli import app
from longreach.errors import InputError
from test_eval_backends import tiny_model, tiny_tokenizer
from test_rag_answer import TOPICS


def invoke(args, env):
    r = CliRunner().invoke(app, args, env=env)
    if r.exception and not isinstance(r.exception, SystemExit):
        raise r.exception
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("rag_cli")
    (root / "docs").mkdir()
    for name, text in TOPICS.items():
        (root / "docs" / f"{name}.txt").write_text(f"{text}\n\n{text.upper()}")  # two paragraphs each
    return root


@pytest.fixture(scope="module")
def env(corpus):
    return {"LONGREACH_CACHE": str(corpus / "cache"), "HF_HUB_OFFLINE": "1"}


@pytest.fixture(scope="module")
def reader(corpus):
    """A tiny random Llama and its small BPE tokenizer (also the chunking tokenizer: quicker than Llama-3's)."""
    path = corpus / "reader"
    tiny_model().save_pretrained(path)
    tiny_tokenizer().save_pretrained(path)
    return path


def test_index_search_and_incremental_add(corpus, env, reader):
    ix = corpus / "ix"
    docs = corpus / "docs"
    held_back = corpus / "volcano.txt"
    shutil.move(docs / "volcano.txt", held_back)
    args = ["rag", "index", "--docs", str(docs), "--out", str(ix), "--chunk-tokens", "40", "--tokenizer", str(reader)]
    stats = invoke(args, env)
    assert stats["docs_added"] == 4 and stats["chunks_total"] >= 8 and stats["embedder"]["dim"] == 384
    shutil.move(held_back, docs / "volcano.txt")
    # the folder again, now with one more document: only that one is chunked and embedded
    stats = invoke(args, env)
    assert stats["docs_added"] == 1 and stats["docs_skipped"] == 4 and stats["chunks_added"] >= 2
    hits = invoke(["rag", "search", "--index", str(ix), "--query", "how fast was the lava", "--top-k", "3"], env)
    assert len(hits) == 3 and all(set(h) == {"doc", "start", "end", "score", "text"} for h in hits)
    assert hits[0]["doc"].endswith("volcano.txt") and hits[0]["score"] >= hits[1]["score"] >= hits[2]["score"]
    for h in hits:
        with open(h["doc"]) as f:
            assert f.read()[h["start"]:h["end"]] == h["text"]


def test_search_with_another_embedder_is_a_clear_error(corpus, env, reader, tmp_path):
    from test_rag_embed import write_tiny_bert

    if not (corpus / "ix" / "meta.json").exists():
        invoke(["rag", "index", "--docs", str(corpus / "docs"), "--out", str(corpus / "ix"), "--chunk-tokens",
                "40", "--tokenizer", str(reader)], env)
    other = write_tiny_bert(tmp_path / "tiny-e5")
    with pytest.raises(InputError, match=r"built with embedder 'all-MiniLM-L6-v2'.*dim 384.*dim 64"):
        invoke(["rag", "search", "--index", str(corpus / "ix"), "--query", "x", "--embedder", str(other)], env)


def test_ask_and_rag_vs_long_commands(corpus, env, reader, tmp_path):
    model = reader
    base = ["ask", "--docs", str(corpus / "docs"), "--model", str(model), "--question", "Who owns the bakery?",
            "--max-new-tokens", "3", "--no-chat"]
    assert invoke(base, env)["mode"] == "long"
    rag = invoke(base + ["--max-context", "400", "--chunk-tokens", "50"], env)
    assert rag["mode"] == "rag" and rag["chunks"][0]["doc"].endswith("bakery.txt") and rag["prompt_tokens"] <= 397
    qa = tmp_path / "qa.jsonl"
    qa.write_text(json.dumps({"question": "Where was the satellite launched?", "answers": ["French Guiana"]}) + "\n")
    out = tmp_path / "cmp"
    res = invoke(["eval", "rag-vs-long", "--questions", str(qa), "--docs", str(corpus / "docs"), "--model",
                  str(model), "--out", str(out), "--chunk-sizes", "50", "--top-k", "1,2", "--max-context", "400",
                  "--max-new-tokens", "3", "--no-chat"], env)
    assert [r["name"] for r in res["rows"]] == ["long", "rag-50x1", "rag-50x2"]
    assert (out / "table.md").exists() and (out / "config.yaml").exists()
