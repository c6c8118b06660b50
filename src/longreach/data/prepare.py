"""`longreach data prepare`: corpus files -> tokenized, up-sampled, packed shards.

Two passes. (1) Read and tokenize every document once, streaming, appending its ids to a temporary token
file next to the output (so memory holds only a few batches, whatever the corpus size) and noting each
document's source and length. (2) With every source's length statistics known, decide the copies of each
document (data/upsample.py), shuffle them, pack them into seq_len sequences (data/pack.py) and write the
shards (data/shards.py), which appear under `out` only once complete.

Run: longreach data prepare --input CORPUS --tokenizer TOKENIZER --seq-len 32768 --out shards/
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import shutil
import tempfile
import time
from array import array
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from longreach.data.config import PrepareConfig
from longreach.data.pack import SEP_MODES, Packer, separator_ids
from longreach.data.readers import JOIN, ON_ERROR, Document, iter_documents
from longreach.data.shards import ShardWriter, document_stretches, token_dtype
from longreach.data.tokenize import (
    load_tokenizer,
    plain_text_encoder,
    tokenize_documents,
    tokenizer_hash,
    vocab_size,
)
from longreach.data.upsample import document_order, plan_copies
from longreach.errors import InputError

log = logging.getLogger("longreach.data")
_LOG_EVERY_S = 10.0  # seconds between progress lines
SOURCE_SUMMARY = ("documents", "tokens_read", "documents_written", "tokens_written", "long_doc_repeats",
                  "documents_dropped")  # per-source numbers shown in summaries (the manifest has them all)


def check_config(cfg: PrepareConfig) -> None:
    """Reject settings that cannot work, before any expensive step."""
    if not cfg.inputs:
        raise InputError("no input given", field="inputs")
    if not cfg.tokenizer:
        raise InputError("no tokenizer given", field="tokenizer")
    if not cfg.out:
        raise InputError("no output directory given", field="out")
    if cfg.seq_len < 1:
        raise InputError(f"must be >= 1, got {cfg.seq_len}", field="seq_len")
    if cfg.sep_mode not in SEP_MODES:
        raise InputError(f"must be one of {SEP_MODES}, got {cfg.sep_mode!r}", field="sep_mode")
    if cfg.on_error not in ON_ERROR:
        raise InputError(f"must be one of {ON_ERROR}, got {cfg.on_error!r}", field="on_error")
    if cfg.join_files not in JOIN:
        raise InputError(f"must be one of {JOIN}, got {cfg.join_files!r}", field="join_files")
    if not 0.0 < cfg.upsample_ratio <= 1.0:
        raise InputError(f"must be in (0, 1], got {cfg.upsample_ratio}", field="upsample_ratio")
    if cfg.upsample_scale <= 0:
        raise InputError(f"must be > 0, got {cfg.upsample_scale}", field="upsample_scale")
    if cfg.upsample_threshold < 0:
        raise InputError(f"must be >= 0, got {cfg.upsample_threshold}", field="upsample_threshold")
    if cfg.workers < 1:
        raise InputError(f"must be >= 1, got {cfg.workers}", field="workers")
    for path in cfg.inputs:
        if not Path(path).exists():
            raise InputError("no such file or folder", path=str(path))


def _input_documents(cfg: PrepareConfig, path: str, skipped: Counter) -> Iterator[Document]:
    """One input's documents; an input with none at all (not even a skipped record) is an error, not a
    silently missing source."""
    before = sum(skipped.values())
    n = 0
    for n, doc in enumerate(iter_documents(path, text_field=cfg.text_field, on_error=cfg.on_error, counter=skipped,
                                           source_field=cfg.source_field, join=cfg.join_files), 1):
        yield doc
    if n == 0 and sum(skipped.values()) == before:
        raise InputError("this input holds no document (.jsonl/.json, .parquet, .txt/.md/.rst with text)",
                         path=str(path), field="inputs")


def _tokenize_to_store(cfg: PrepareConfig, encoder: Any, store: Path, dtype: np.dtype,
                       skipped: Counter) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Pass 1: append every document's ids to `store`; return (lengths, source index, source names)."""
    docs = itertools.chain.from_iterable(_input_documents(cfg, p, skipped) for p in cfg.inputs)
    lengths, sources = array("q"), array("i")
    names: dict[str, int] = {}
    start = last_log = time.perf_counter()
    total = 0
    with open(store, "wb") as f:
        for doc, ids in tokenize_documents(docs, encoder, workers=cfg.workers, batch_chars=cfg.batch_chars):
            if len(ids) == 0:
                if cfg.on_error == "raise":
                    raise InputError(f"document {doc.doc_id} has no tokens after tokenization")
                skipped["no_tokens"] += 1
                continue
            f.write(ids.astype(dtype, copy=False).tobytes())
            lengths.append(len(ids))
            sources.append(names.setdefault(doc.source, len(names)))
            total += len(ids)
            now = time.perf_counter()
            if now - last_log > _LOG_EVERY_S:
                last_log = now
                log.info("tokenized %d documents, %d tokens (%.0f tokens/s)", len(lengths), total,
                         total / (now - start))
    return (np.frombuffer(lengths, dtype=np.int64), np.frombuffer(sources, dtype=np.int32), list(names))


def longest_span(doc_starts: np.ndarray, seq_len: int) -> int:
    """The longest stretch of a packed sequence that one document fills."""
    return int(document_stretches(doc_starts, seq_len).max())


def span_summary(spans: np.ndarray, seq_len: int) -> dict[str, Any]:
    """How far a dependency inside one document can reach in these sequences: quantiles of each sequence's
    longest one-document stretch, and how many sequences hold at least half / all of seq_len of one document.
    A 128K window trained on sequences whose documents all end by 40K never sees a 100K-token dependency."""
    q = np.percentile(spans, [10, 50, 90]).round().astype(int) if len(spans) else [0, 0, 0]
    return {"p10": int(q[0]), "p50": int(q[1]), "p90": int(q[2]),
            "sequences_half_one_document": int((spans >= seq_len / 2).sum()),
            "sequences_all_one_document": int((spans == seq_len).sum())}


def prepare(cfg: PrepareConfig, overwrite: bool = False) -> dict[str, Any]:
    """Build the shard directory `cfg.out`; return a summary (what the CLI prints)."""
    check_config(cfg)
    out = Path(cfg.out)
    if out.exists() and not overwrite:
        raise InputError("already exists (remove it, or pass --overwrite)", path=str(out))
    start = time.perf_counter()
    tok = load_tokenizer(cfg.tokenizer)
    encoder = plain_text_encoder(tok)
    prefix, suffix = separator_ids(tok, cfg.sep_mode, cfg.sep, encoder)
    vocab = vocab_size(tok)
    dtype = token_dtype(vocab)
    skipped: Counter = Counter()
    out.parent.mkdir(parents=True, exist_ok=True)
    store_dir = Path(tempfile.mkdtemp(prefix=f"{out.name}.tokens-", dir=out.parent))
    try:
        store = store_dir / "tokens.bin"
        tokenize_start = time.perf_counter()
        lengths, sources, names = _tokenize_to_store(cfg, encoder, store, dtype, skipped)
        tokenize_s = time.perf_counter() - tokenize_start
        if len(lengths) == 0:
            raise InputError(f"no documents to pack (skipped: {dict(skipped)})", field="inputs")
        copies, per_source = plan_copies(sources, lengths, names, cfg.upsample_threshold, cfg.upsample_ratio,
                                         cfg.upsample_scale, cfg.seed)
        order = document_order(copies, cfg.seed, cfg.shuffle)
        offsets = np.concatenate([[0], np.cumsum(lengths)])
        tokens = np.memmap(store, dtype=dtype, mode="r")
        packer = Packer(cfg.seq_len, prefix, suffix, dtype=dtype)
        with ShardWriter(out, cfg.seq_len, vocab, shard_bytes=cfg.shard_bytes, overwrite=overwrite) as writer:
            spans = array("q")  # per sequence: its longest run of one document's tokens
            for d in order:
                for seq, starts in packer.add(tokens[offsets[d]:offsets[d + 1]]):
                    writer.add(seq, doc_starts=starts)
                    spans.append(longest_span(starts, cfg.seq_len))
            doc_tokens_written = int((copies * lengths).sum())
            if packer.tokens != doc_tokens_written + packer.separator_tokens or \
                    packer.tokens != packer.sequences * cfg.seq_len + packer.tail:
                raise RuntimeError("token accounting mismatch in packing")  # a bug, never bad input
            if writer.sequences == 0:
                raise InputError(f"{packer.tokens} tokens do not fill one sequence of {cfg.seq_len}",
                                 field="seq_len")
            manifest = writer.close({
                "tokenizer": {"path": str(cfg.tokenizer), "name_or_path": getattr(tok, "name_or_path", None),
                              "hash": tokenizer_hash(encoder), "vocab_size": vocab,
                              "bos_token_id": getattr(tok, "bos_token_id", None),
                              "eos_token_id": getattr(tok, "eos_token_id", None)},
                "separator": {"mode": cfg.sep_mode, "text": cfg.sep if cfg.sep_mode == "sep" else None,
                              "before_document": prefix, "after_document": suffix},
                "documents_read": len(lengths),
                "tokens_read": int(lengths.sum()),
                "documents_written": int(copies.sum()),
                "document_tokens_written": doc_tokens_written,
                "separator_tokens": packer.separator_tokens,
                "tail_tokens_dropped": packer.tail,
                "document_spans": span_summary(np.frombuffer(spans, dtype=np.int64), cfg.seq_len),
                "sources": per_source,
                "skipped": dict(sorted(skipped.items())),
                "config": dataclasses.asdict(cfg),
            })
    finally:
        shutil.rmtree(store_dir, ignore_errors=True)
    seconds = time.perf_counter() - start
    keys = ("seq_len", "sequences", "tokens", "documents_read", "tokens_read", "documents_written",
            "document_tokens_written", "separator_tokens", "tail_tokens_dropped", "document_spans", "skipped")
    return {
        "out": str(out),
        **{k: manifest[k] for k in keys},
        "sources": {name: {k: s[k] for k in SOURCE_SUMMARY} for name, s in per_source.items()},
        "tokenizer_hash": manifest["tokenizer"]["hash"],
        "workers": cfg.workers,
        "seconds": round(seconds, 3),
        "tokens_per_second": round(manifest["tokens_read"] / seconds, 1),
        "tokenize_seconds": round(tokenize_s, 3),  # pass 1 alone: reading + tokenizing
        "tokenize_tokens_per_second": round(manifest["tokens_read"] / tokenize_s, 1),
    }
