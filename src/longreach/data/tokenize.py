"""Tokenization of document streams with any Hugging Face (fast) tokenizer.

Streaming: documents go through in batches of bounded size, so a corpus larger than memory works.
Batched: the Rust `tokenizers` library encodes a whole batch at once (in parallel over its documents).
Multi-process: with workers > 1, that many processes (each loads the tokenizer once, then encodes
single-threaded) work on consecutive batches while this process reads the corpus; the output order is the
input order, so the result is identical to workers=1. The processes are spawned, so a script that calls
this with workers > 1 must guard its entry point with `if __name__ == "__main__":`. workers=1 already uses
every core through the tokenizers thread pool and was the fastest where measured (16 cores: 3.9M tokens/s
vs 1.8M with 8 processes); processes are the way to use several cores when TOKENIZERS_PARALLELISM=false.

The tokenizer adds no special tokens (BOS/EOS come only from the packer's separator mode), and special-token
strings inside documents ("<|begin_of_text|>" in a web page) are encoded as the plain text they are.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
from collections import deque
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from longreach.data.readers import Document
from longreach.errors import InputError

BATCH_CHARS = 1 << 24  # characters per batch: bounds memory, yet holds enough long documents for every core
BATCH_DOCS = 1024  # documents per batch at most
MIN_WORKER_BATCH_CHARS = 1 << 16  # smallest batch sent to a worker process
_HASHED_PARTS = ("added_tokens", "normalizer", "pre_tokenizer", "model")  # what maps text to ids


def load_tokenizer(path: str | Path) -> Any:
    """A fast Hugging Face tokenizer from a tokenizer.json file, or (through `longreach.model.load`) from a
    model/tokenizer folder or a .gguf file."""
    p = Path(path)
    if p.is_file() and p.suffix == ".json":
        from transformers import PreTrainedTokenizerFast

        tok = PreTrainedTokenizerFast(tokenizer_file=str(p))
    else:
        from longreach.model.load import load_tokenizer as load_model_tokenizer

        tok = load_model_tokenizer(p)
    if getattr(tok, "backend_tokenizer", None) is None:
        raise InputError("not a fast tokenizer (no tokenizer.json to build one from)", path=str(path))
    return tok


def _backend_json(tok: Any) -> str:
    """The tokenizers-library serialization of an HF tokenizer (or of a `tokenizers.Tokenizer`)."""
    backend = getattr(tok, "backend_tokenizer", tok)
    return backend.to_str()


def tokenizer_hash(tok: Any) -> str:
    """Stable sha256 of what maps text to ids: vocabulary, merges, added tokens, normalizer, pre-tokenizer.

    Runtime settings (padding, truncation) and the post-processor / decoder (which transformers may rewrite
    on load, and which do not change the ids of plain text) are left out, so the same tokenizer loaded from
    a model folder or from its tokenizer.json hashes the same; `_canonical` removes the other spellings that
    do not change ids. (SmolLM2's GGUF converted by transformers 5.17 and 5.24 still hashes differently: its
    vocabulary lacks 21 byte symbols, e.g. 0x04, and the two conversions treat those differently.)
    """
    spec = json.loads(_backend_json(tok))
    canonical = json.dumps(_canonical({k: spec.get(k) for k in _HASHED_PARTS}), sort_keys=True,
                           ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def _canonical(parts: dict[str, Any]) -> dict[str, Any]:
    """One spelling for settings that give the same ids: an empty normalizer Sequence is no normalizer,
    trim_offsets only moves offsets, "" affixes are none, and a byte-level BPE whose vocabulary holds all 256
    byte characters never meets an unknown symbol, so its unk_token / fuse_unk / byte_fallback never act."""
    norm = parts.get("normalizer")
    if isinstance(norm, dict) and norm.get("type") == "Sequence" and not norm.get("normalizers"):
        parts["normalizer"] = None
    pre = parts.get("pre_tokenizer")
    if isinstance(pre, dict):
        parts["pre_tokenizer"] = pre = {k: v for k, v in pre.items() if k != "trim_offsets"}
    model = parts.get("model")
    if isinstance(model, dict):
        model = {k: (None if v == "" and k in ("continuing_subword_prefix", "end_of_word_suffix") else v)
                 for k, v in model.items()}
        if (model.get("type") == "BPE" and isinstance(pre, dict) and pre.get("type") == "ByteLevel"
                and _has_every_byte(model.get("vocab"))):
            model = {k: v for k, v in model.items() if k not in ("unk_token", "fuse_unk", "byte_fallback")}
        parts["model"] = model
    return parts


def _has_every_byte(vocab: Any) -> bool:
    from tokenizers import pre_tokenizers

    return isinstance(vocab, dict) and set(pre_tokenizers.ByteLevel.alphabet()) <= set(vocab)


def vocab_size(tok: Any) -> int:
    """Number of token ids in use (base vocabulary plus added tokens): every id is below it."""
    backend = getattr(tok, "backend_tokenizer", tok)
    return max(backend.get_vocab_size(with_added_tokens=True), max(backend.get_vocab().values()) + 1)


def plain_text_encoder(tok_or_json: Any) -> Any:
    """A private `tokenizers.Tokenizer` copy: no padding/truncation, special-token strings read as text."""
    from tokenizers import Tokenizer

    spec = tok_or_json if isinstance(tok_or_json, str) else _backend_json(tok_or_json)
    encoder = Tokenizer.from_str(spec)
    encoder.no_padding()
    encoder.no_truncation()
    encoder.encode_special_tokens = True
    return encoder


def special_tokens_encoder(encoder: Any) -> Any:
    """A copy of a `plain_text_encoder` that encodes special-token strings as the special tokens."""
    from tokenizers import Tokenizer

    special = Tokenizer.from_str(encoder.to_str())
    special.encode_special_tokens = False
    return special


def encode_documents(encoder: Any, special: Any, docs: list[Document]) -> list[np.ndarray]:
    """Token ids of each document: plain text by `encoder`, documents marked special by `special`."""
    out: list[np.ndarray | None] = [None] * len(docs)
    for enc, want in ((encoder, False), (special, True)):
        at = [i for i, d in enumerate(docs) if d.special == want]
        if at:
            for i, ids in zip(at, encode_batch(enc, [docs[i].text for i in at])):
                out[i] = ids
    return out  # type: ignore[return-value]


def encode_batch(encoder: Any, texts: list[str]) -> list[np.ndarray]:
    """Token ids (uint32) of each text, without special tokens."""
    encode = getattr(encoder, "encode_batch_fast", encoder.encode_batch)  # _fast skips offsets
    return [np.asarray(e.ids, dtype=np.uint32) for e in encode(texts, add_special_tokens=False)]


def _batches(docs: Iterable[Document], batch_chars: int, batch_docs: int) -> Iterator[list[Document]]:
    batch: list[Document] = []
    chars = 0
    for doc in docs:
        batch.append(doc)
        chars += len(doc.text)
        if chars >= batch_chars or len(batch) >= batch_docs:
            yield batch
            batch, chars = [], 0
    if batch:
        yield batch


_worker_encoders: tuple[Any, Any] | None = None


def _worker_init(spec: str) -> None:
    # Each worker is one core: the Rust thread pool inside would only compete with the other workers.
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    global _worker_encoders
    plain = plain_text_encoder(spec)
    _worker_encoders = (plain, special_tokens_encoder(plain))


def _worker_encode(docs: list[Document]) -> list[np.ndarray]:
    return encode_documents(*_worker_encoders, docs)


def tokenize_documents(docs: Iterable[Document], encoder: Any, workers: int = 1,
                       batch_chars: int = BATCH_CHARS, batch_docs: int = BATCH_DOCS
                       ) -> Iterator[tuple[Document, np.ndarray]]:
    """(document, token ids) for each document, in input order, holding only a few batches in memory.

    `encoder` comes from `plain_text_encoder(tok)`. workers=1 encodes here (the tokenizers library spreads
    a batch over the cores unless TOKENIZERS_PARALLELISM=false); workers=N starts N processes.
    """
    if workers < 1:
        raise InputError(f"workers must be >= 1, got {workers}", field="workers")
    if workers == 1:
        special = special_tokens_encoder(encoder)  # the workers build their own
        for batch in _batches(docs, batch_chars, batch_docs):
            yield from zip(batch, encode_documents(encoder, special, batch))
        return
    # Smaller batches for processes, so that long documents still spread over all of them.
    batches = _batches(docs, max(MIN_WORKER_BATCH_CHARS, batch_chars // (4 * workers)), batch_docs)
    # "spawn": a fork would copy this process's (possibly threaded) state and the Rust thread pool.
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(workers, initializer=_worker_init, initargs=(encoder.to_str(),)) as pool:
        pending: deque = deque()
        for batch in batches:
            pending.append((batch, pool.apply_async(_worker_encode, (batch,))))
            # A bounded window: reading runs ahead of the workers by at most two batches each.
            while len(pending) >= 2 * workers:
                done, result = pending.popleft()
                yield from zip(done, result.get())
        while pending:
            done, result = pending.popleft()
            yield from zip(done, result.get())
