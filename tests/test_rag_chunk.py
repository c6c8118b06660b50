"""Sentence-aware chunking: offsets, token limits, long sentences, overlap (Llama-3 tokenizer, offline)."""

from __future__ import annotations

import itertools

import pytest

from longreach.errors import InputError
from longreach.rag.chunk import ChunkConfig, chunk_documents, chunk_text, sentence_spans


@pytest.fixture(scope="module")
def tok():
    from transformers import AutoTokenizer

    from longreach import assets

    return AutoTokenizer.from_pretrained(str(assets.llama3_tokenizer()))


@pytest.fixture(scope="module")
def essay() -> str:
    from longreach import assets

    return (assets.paul_graham_essays() / "founders.txt").read_text()


def n_tok(tok, text: str) -> int:
    return len(tok(text, add_special_tokens=False)["input_ids"])


def test_sentence_spans_cover_text_and_split_on_punctuation_and_blank_lines():
    text = "  First one. Second one?  \"Quoted!\" Then\n\nA paragraph without end"
    spans = sentence_spans(text)
    assert [text[s:e] for s, e in spans] == ["First one.", "Second one?", "\"Quoted!\"", "Then",
                                              "A paragraph without end"]
    gaps = [text[e:s] for (_, e), (s, _) in itertools.pairwise(spans)]
    assert all(g.strip() == "" for g in gaps)


def test_chunks_are_whole_sentences_within_token_limit(tok, essay):
    chunks = chunk_text(essay, tok, ChunkConfig(chunk_tokens=120), doc="founders.txt", source="pg")
    starts = {s for s, _ in sentence_spans(essay)}
    ends = {e for _, e in sentence_spans(essay)}
    assert len(chunks) > 5
    for i, c in enumerate(chunks):
        assert c.text == essay[c.start:c.end] and c.doc == "founders.txt" and c.source == "pg" and c.index == i
        assert c.start in starts and c.end in ends  # whole sentences (this essay has none over 120 tokens)
        assert 0 < c.n_tokens <= 120
        assert abs(n_tok(tok, c.text) - c.n_tokens) <= 1  # counted on the whole document, same tokenizer
    # no text is lost and nothing repeats without overlap: the gaps between chunks are whitespace
    for a, b in itertools.pairwise(chunks):
        assert a.end <= b.start and essay[a.end:b.start].strip() == ""
    assert essay[:chunks[0].start].strip() == "" and essay[chunks[-1].end:].strip() == ""
    # packing is greedy: the next sentence would not have fitted
    total = sum(c.n_tokens for c in chunks)
    assert total >= n_tok(tok, essay) - 2


def test_sentence_longer_than_limit_is_cut_by_tokens(tok):
    long_sentence = " ".join(f"word{i}" for i in range(400))
    text = "Short start. " + long_sentence + ". Short end."
    chunks = chunk_text(text, tok, ChunkConfig(chunk_tokens=50))
    assert all(c.n_tokens <= 50 and c.text == text[c.start:c.end] for c in chunks)
    assert all(n_tok(tok, c.text) <= 51 for c in chunks)
    covered = "".join(c.text for c in chunks).replace(" ", "")
    assert covered == text.replace(" ", "")
    assert len(chunks) >= n_tok(tok, long_sentence) // 50


def test_overlap_in_tokens_and_sentences(tok, essay):
    plain = chunk_text(essay, tok, ChunkConfig(chunk_tokens=150))
    over = chunk_text(essay, tok, ChunkConfig(chunk_tokens=150, overlap=40))
    assert len(over) > len(plain)
    spans = sentence_spans(essay)
    for a, b in itertools.pairwise(over):
        assert b.start > a.start
        if b.start < a.end:  # the repeated part is whole sentences of at most 40 tokens
            assert b.start in {s for s, _ in spans}
            assert n_tok(tok, essay[b.start:a.end]) <= 41
    assert sum(b.start < a.end for a, b in itertools.pairwise(over)) >= len(over) // 2
    sent = chunk_text(essay, tok, ChunkConfig(chunk_tokens=150, overlap=1, overlap_unit="sentences"))
    for a, b in itertools.pairwise(sent):
        repeated = [s for s, e in spans if b.start <= s and e <= a.end]
        assert len(repeated) == 1  # exactly the last sentence of the previous chunk


def test_bad_settings_and_empty_documents(tok):
    with pytest.raises(InputError, match="overlap"):
        chunk_text("Some text.", tok, ChunkConfig(chunk_tokens=10, overlap=10))
    with pytest.raises(InputError, match="overlap_unit"):
        chunk_text("Some text.", tok, ChunkConfig(overlap_unit="words"))
    assert chunk_text(" \n\n ", tok, ChunkConfig()) == []


def test_chunk_documents_keeps_ids(tok):
    from types import SimpleNamespace

    docs = [SimpleNamespace(text="One. Two.", source="s", doc_id="a.txt"),
            SimpleNamespace(text="Three.", source="s", doc_id="b.txt")]
    chunks = list(chunk_documents(docs, tok, ChunkConfig(chunk_tokens=100)))
    assert [(c.doc, c.text) for c in chunks] == [("a.txt", "One. Two."), ("b.txt", "Three.")]
