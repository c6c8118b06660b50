"""Sentence-aware chunking by tokens of the reader model's tokenizer.

ChatQA 2 builds retrieval chunks from whole sentences up to ~1200 tokens. Here a chunk is a run of whole
sentences whose token count (in the tokenizer of the model that will read the chunks) stays within
`chunk_tokens`; a single sentence longer than that is cut at token boundaries. Every chunk keeps its document
id and character offsets, with `chunk.text == document.text[chunk.start:chunk.end]`.

Tokens are counted once per document (one fast-tokenizer call with offsets), each token belonging to the
sentence that holds its first non-space character, so chunking a long book costs one tokenization.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import PurePath
from typing import Any, Protocol

from longreach.errors import InputError


class _Doc(Protocol):  # longreach.data.readers.Document has these fields
    text: str
    source: str
    doc_id: str


@dataclass
class ChunkConfig:
    chunk_tokens: int = 300  # whole sentences up to this many reader tokens (paper grid: 300, 600, 1200)
    overlap: int = 0  # context repeated from the previous chunk (0 = none); always whole sentences
    overlap_unit: str = "tokens"  # "tokens": trailing sentences up to `overlap` tokens; "sentences": that many


@dataclass
class Chunk:
    doc: str  # document id (path, or "path:line" for jsonl records)
    source: str  # source name of the document (file stem or top folder)
    start: int  # character offset of the chunk in the document text
    end: int  # exclusive end offset: text == document.text[start:end]
    text: str
    n_tokens: int  # reader-tokenizer tokens inside [start, end)
    index: int = 0  # position of the chunk within its document

    @property
    def title(self) -> str:
        """What the ChatQA prompt shows as "title:": the document's file name ("essay.txt", "qa.jsonl:12"),
        not its whole path, which costs tokens in every block and tells the reader nothing."""
        return PurePath(self.doc).name or self.doc

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# A sentence ends at terminal punctuation (plus closing quotes/brackets) before whitespace, or at a blank
# line. Abbreviations ("Mr.") over-split, which is harmless: chunks are filled with several sentences anyway.
_BOUNDARY = re.compile(r"[.!?\u3002\uff01\uff1f]+[\"'\u201d\u2019)\]]*(?=\s)|\n[ \t\r\f\v]*\n")


def sentence_spans(text: str) -> list[tuple[int, int]]:
    """(start, end) of each sentence, trimmed of surrounding whitespace; gaps between spans are whitespace."""
    spans: list[tuple[int, int]] = []
    start = 0
    for m in _BOUNDARY.finditer(text):
        _add_trimmed(text, start, m.end(), spans)
        start = m.end()
    _add_trimmed(text, start, len(text), spans)
    return spans


def _add_trimmed(text: str, start: int, end: int, out: list[tuple[int, int]]) -> None:
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    if end > start:
        out.append((start, end))


def _token_positions(text: str, tokenizer: Any) -> list[int]:
    """Where each token sits: its first non-space character (its start if it is all whitespace).

    Byte-level tokenizers glue a leading space to a word (" The") and a period to following newlines
    (".\n\n"); the first non-space character puts each such token in the sentence it belongs to.
    """
    if not getattr(tokenizer, "is_fast", True):
        raise InputError("chunking needs a fast tokenizer (one that returns character offsets)")
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
    out = []
    for s, e in enc["offset_mapping"]:
        p = s
        while p < e and text[p].isspace():
            p += 1
        if e > s:
            out.append(p if p < e else s)
    return out


def _units(text: str, tokenizer: Any, max_tokens: int) -> list[tuple[int, int, int]]:
    """Sentences as (start, end, n_tokens); a sentence over `max_tokens` becomes token-bounded pieces."""
    spans = sentence_spans(text)
    if not spans:
        return []
    ends = [e for _, e in spans]
    # tokens of each sentence, by position (a whitespace-only token goes to the following sentence)
    per_sentence: list[list[int]] = [[] for _ in spans]
    for pos in _token_positions(text, tokenizer):
        i = bisect.bisect_right(ends, pos)
        per_sentence[min(i, len(spans) - 1)].append(pos)
    units: list[tuple[int, int, int]] = []
    for (start, end), toks in zip(spans, per_sentence):
        if len(toks) <= max_tokens:
            units.append((start, end, max(len(toks), 1)))
            continue
        piece_start = start
        for k in range(0, len(toks), max_tokens):
            group = toks[k:k + max_tokens]
            piece_end = end if k + max_tokens >= len(toks) else toks[k + max_tokens]
            trimmed: list[tuple[int, int]] = []
            _add_trimmed(text, piece_start, piece_end, trimmed)
            if trimmed:
                units.append((trimmed[0][0], trimmed[0][1], len(group)))
            piece_start = piece_end
    return units


def chunk_text(text: str, tokenizer: Any, cfg: ChunkConfig, doc: str = "", source: str = "") -> list[Chunk]:
    """Chunks of one document text."""
    if cfg.chunk_tokens < 1:
        raise InputError(f"chunk_tokens must be >= 1, got {cfg.chunk_tokens}", field="chunk_tokens")
    if cfg.overlap_unit not in ("tokens", "sentences"):
        raise InputError(f"overlap_unit must be 'tokens' or 'sentences', got {cfg.overlap_unit!r}",
                         field="overlap_unit")
    if cfg.overlap < 0 or (cfg.overlap_unit == "tokens" and cfg.overlap >= cfg.chunk_tokens):
        raise InputError(f"overlap must be in [0, chunk_tokens), got {cfg.overlap}", field="overlap")
    units = _units(text, tokenizer, cfg.chunk_tokens)
    chunks: list[Chunk] = []
    i = 0
    while i < len(units):
        j, total = i, 0
        while j < len(units) and total + units[j][2] <= cfg.chunk_tokens:
            total += units[j][2]
            j += 1
        start, end = units[i][0], units[j - 1][1]
        chunks.append(Chunk(doc=doc, source=source, start=start, end=end, text=text[start:end],
                            n_tokens=total, index=len(chunks)))
        if j >= len(units):
            break
        i = max(i + 1, _overlap_start(units, i, j, cfg))  # always move forward by at least one sentence
    return chunks


def _overlap_start(units: list[tuple[int, int, int]], i: int, j: int, cfg: ChunkConfig) -> int:
    """First unit of the next chunk: `j`, or earlier to repeat the tail of chunk units[i:j]."""
    if cfg.overlap == 0:
        return j
    if cfg.overlap_unit == "sentences":
        return j - cfg.overlap
    k, carried = j, 0
    while k > i and carried + units[k - 1][2] <= cfg.overlap:
        carried += units[k - 1][2]
        k -= 1
    return k


def chunk_documents(docs: Iterable[_Doc], tokenizer: Any, cfg: ChunkConfig) -> Iterator[Chunk]:
    """Chunks of every document, in document order (documents come from longreach.data.readers)."""
    for d in docs:
        yield from chunk_text(d.text, tokenizer, cfg, doc=d.doc_id, source=d.source)
