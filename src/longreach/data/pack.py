"""Packing: a stream of documents -> sequences of exactly seq_len tokens.

Separator modes (how documents are joined inside a sequence):
- "sep": each document is followed by a separator *string* ("<s>" by default) encoded as plain text by the
  model's tokenizer. ChatQA 2 joins documents with the string "<s>" instead of BOS/EOS and reports much
  better needle-in-a-haystack results for it; Llama-3 and SmolLM2 have no "<s>" special token, so the string
  becomes ordinary tokens (Llama-3: "<s" ">"), which needs no embedding change in the model.
- "bos_eos": the tokenizer's BOS before and EOS after each document (whichever of the two exist).
- "none": documents follow each other directly.

Long documents run on into the next sequence. Nothing is lost or repeated: the tokens of all documents plus
their separators equal sequences * seq_len + the final partial sequence, which is dropped and counted
(`tail_tokens_dropped` in the manifest) rather than padded.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from longreach.errors import InputError

SEP_MODES = ("sep", "bos_eos", "none")


def separator_ids(tok: Any, mode: str, sep: str = "<s>", encoder: Any = None) -> tuple[list[int], list[int]]:
    """(ids before each document, ids after each document) for a separator mode.

    `encoder` (from `tokenize.plain_text_encoder(tok)`, made here if not given) encodes the separator.
    """
    if mode == "sep":
        from longreach.data.tokenize import encode_batch, plain_text_encoder

        if not sep:
            raise InputError("the separator is empty; use sep_mode 'none' for no separator", field="sep")
        return [], [int(i) for i in encode_batch(encoder or plain_text_encoder(tok), [sep])[0]]
    if mode == "bos_eos":
        bos, eos = getattr(tok, "bos_token_id", None), getattr(tok, "eos_token_id", None)
        if bos is None and eos is None:
            raise InputError("the tokenizer has neither a BOS nor an EOS token; use sep_mode 'sep' or 'none'",
                             field="sep_mode")
        return ([bos] if bos is not None else []), ([eos] if eos is not None else [])
    if mode == "none":
        return [], []
    raise InputError(f"must be one of {SEP_MODES}, got {mode!r}", field="sep_mode")


class Packer:
    """Cut documents (each wrapped in prefix/suffix ids) into full sequences of seq_len tokens.

    `add(doc)` yields every sequence the document completes, as (tokens, doc_starts): doc_starts holds the
    offsets inside the sequence where a document (its prefix, if any) begins. A sequence that begins in the
    middle of a document does not list 0.
    """

    def __init__(self, seq_len: int, prefix: list[int] | None = None, suffix: list[int] | None = None,
                 dtype: Any = np.uint32):
        if seq_len < 1:
            raise InputError(f"must be >= 1, got {seq_len}", field="seq_len")
        self.seq_len = seq_len
        self.prefix = np.asarray(prefix or [], dtype=dtype)
        self.suffix = np.asarray(suffix or [], dtype=dtype)
        self._buf = np.empty(seq_len, dtype=dtype)
        self._fill = 0
        self._starts: list[int] = []
        self.documents = 0  # documents added
        self.separator_tokens = 0  # prefix/suffix tokens added
        self.tokens = 0  # all tokens added (documents + separators)
        self.sequences = 0  # full sequences yielded

    @property
    def tail(self) -> int:
        """Tokens waiting in the unfinished last sequence (dropped if no document follows)."""
        return self._fill

    def add(self, doc: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        if len(doc) == 0 and len(self.prefix) == 0 and len(self.suffix) == 0:
            return
        self.documents += 1
        self.separator_tokens += len(self.prefix) + len(self.suffix)
        self._starts.append(self._fill)
        for piece in (self.prefix, doc, self.suffix):
            pos = 0
            while pos < len(piece):
                n = min(self.seq_len - self._fill, len(piece) - pos)
                self._buf[self._fill:self._fill + n] = piece[pos:pos + n]
                self._fill += n
                pos += n
                self.tokens += n
                if self._fill == self.seq_len:
                    self.sequences += 1
                    yield self._buf.copy(), np.asarray(self._starts, dtype=np.int64)
                    self._fill, self._starts = 0, []
