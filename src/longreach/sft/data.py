"""SFT samples: reading chat/QA records and drawing a stage's weighted blend.

Accepted records (one per line of .jsonl, elements of a .json array, rows of .parquet; a folder means every
such file under it, in sorted order):

    {"messages": [{"role": "system"|"user"|"assistant", "content": str}, ...],
     "context": str?, "instruction": str?}
        turns alternate user/assistant after an optional leading system message. If the last turn is the
        user's, "answer" (str) or "answers" (list of str, the first is the target) gives the reply - the
        layout of NVIDIA's ChatQA training files, whose context field is called "document".
    {"question": str, "answer": str | "answers": [str, ...], "context": str?, "title": str?}
        ChatQA-style single-turn QA (SQuAD, DROP, NarrativeQA, ... after conversion).
    {"text": str}
        plain text with no turns (`qa: text` of the synthesizer): trained on every token, as in pretraining -
        language-modelling replay mixed into an SFT stage, so that the answer-only loss does not erode the
        model's next-token prediction over long text.

Other fields are ignored (synthesized long-QA records carry "gold", "tokens", ... for analysis).

Blends (ChatQA 2 stage weights): the weights are sampling proportions, not per-dataset epochs. A stage draws
`total` samples (its `samples` field, or by default as many as its datasets hold together); dataset i gets
round(total * w_i / sum(w)) of them (largest remainder, so the counts add up to `total`), taken as whole
shuffled passes over the dataset (every record once before any record twice); the drawn samples are then
shuffled together. The same seed gives the same samples in the same order.
"""

from __future__ import annotations

import json
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from longreach.errors import InputError

SUFFIXES = (".jsonl", ".json", ".parquet")


@dataclass
class Sample:
    """One conversation to train on."""

    messages: list[dict[str, str]]  # user/assistant turns, alternating, first user, last assistant
    context: str = ""  # the document the answers come from ("" = none)
    system: str | None = None  # the sample's own system message (None = the recipe's)
    instruction: str | None = None  # task instruction for the first user turn (None = the dataset's/recipe's)
    text: str | None = None  # a plain-text record: no turns, the loss on every token
    where: str = ""  # "file:line" of the record, for messages about it
    extra: dict[str, Any] = field(default_factory=dict)  # fields kept for analysis (e.g. "gold")


def _text(rec: dict, key: str, path: str, line: int | None, required: bool = False) -> str | None:
    v = rec.get(key)
    if v is None:
        if required:
            raise InputError("missing (a string is required)", path=path, line=line, field=key)
        return None
    if not isinstance(v, str):
        raise InputError(f"expected a string, got {type(v).__name__}", path=path, line=line, field=key)
    return v


def _answer(rec: dict, path: str, line: int | None) -> str | None:
    if "answer" in rec and rec["answer"] is not None:
        return _text(rec, "answer", path, line)
    answers = rec.get("answers")
    if answers is None:
        return None
    if isinstance(answers, str):
        return answers
    if not isinstance(answers, list) or not answers or not all(isinstance(a, str) for a in answers):
        raise InputError("expected a non-empty list of strings", path=path, line=line, field="answers")
    return answers[0]


def parse_record(rec: Any, path: str, line: int | None) -> Sample:
    """A Sample from one record, or an InputError naming the file, line and field that is wrong."""
    if not isinstance(rec, dict):
        raise InputError(f"expected an object, got {type(rec).__name__}", path=path, line=line)
    context = _text(rec, "context", path, line)
    if context is None:
        context = _text(rec, "document", path, line) or ""
    title = _text(rec, "title", path, line)
    if title and context:
        context = f"title: {title}, source: {context}"  # the chunk layout of the ChatQA RAG prompt
    instruction = _text(rec, "instruction", path, line)
    if rec.get("messages") is None and rec.get("question") is None and rec.get("text") is not None:
        text = _text(rec, "text", path, line, required=True)
        if not text.strip():
            raise InputError("empty text", path=path, line=line, field="text")
        return Sample(messages=[], text=text, where=f"{path}:{line}" if line is not None else path)
    answer = _answer(rec, path, line)
    system = None
    if "messages" in rec:
        msgs = rec["messages"]
        if not isinstance(msgs, list) or not msgs:
            raise InputError("expected a non-empty list of {role, content}", path=path, line=line,
                             field="messages")
        turns = []
        for i, m in enumerate(msgs):
            where = f"messages[{i}]"
            if not isinstance(m, dict):
                raise InputError("expected an object with role and content", path=path, line=line, field=where)
            role, content = m.get("role"), m.get("content")
            if role not in ("system", "user", "assistant"):
                raise InputError(f"role must be system, user or assistant, got {role!r}", path=path, line=line,
                                 field=where + ".role")
            if not isinstance(content, str):
                raise InputError("content must be a string", path=path, line=line, field=where + ".content")
            if role == "system":
                if i != 0:
                    raise InputError("a system message may only come first", path=path, line=line, field=where)
                system = content
                continue
            expected = "user" if len(turns) % 2 == 0 else "assistant"
            if role != expected:
                raise InputError(f"turns must alternate user/assistant starting with user; expected {expected}",
                                 path=path, line=line, field=where + ".role")
            turns.append({"role": role, "content": content})
        if turns and turns[-1]["role"] == "user":
            if answer is None:
                raise InputError("the last turn is the user's and no answer/answers field gives the reply",
                                 path=path, line=line, field="messages")
            turns.append({"role": "assistant", "content": answer})
        if not turns:
            raise InputError("no user/assistant turn", path=path, line=line, field="messages")
    else:
        question = _text(rec, "question", path, line)
        if question is None:
            raise InputError("a record needs 'messages', 'question' + 'answer'/'answers', or 'text'", path=path,
                             line=line)
        if answer is None:
            raise InputError("missing (answer or answers is required with question)", path=path, line=line,
                             field="answer")
        turns = [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    for i, t in enumerate(turns):
        if t["role"] == "assistant" and not t["content"].strip():
            raise InputError("empty assistant answer", path=path, line=line, field=f"turn {i}")
    extra = {k: rec[k] for k in ("gold", "tokens", "synthetic", "construction") if k in rec}
    return Sample(messages=turns, context=context, system=system, instruction=instruction,
                  where=f"{path}:{line}" if line is not None else path, extra=extra)


class RecordFile:
    """Random access to the records of one .jsonl / .json / .parquet file.

    JSON lines are indexed by byte offset, so a multi-gigabyte long-SFT file is never held in memory whole.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._offsets: list[tuple[int, int]] = []  # (byte offset, line number) of each non-empty line
        self._rows: list[Any] | None = None
        if self.path.suffix == ".parquet":
            import pyarrow.parquet as pq
            self._rows = pq.read_table(self.path).to_pylist()
            return
        with self.path.open("rb") as f:
            head = f.read(64).lstrip()
        if self.path.suffix == ".json" and head.startswith(b"["):
            try:
                self._rows = json.loads(self.path.read_text(encoding="utf-8"))
            except json.JSONDecodeError as e:
                raise InputError(f"invalid JSON: {e.msg}", path=str(self.path), line=e.lineno) from None
            return
        with self.path.open("rb") as f:
            pos = 0
            for n, raw in enumerate(f, 1):
                if raw.strip():
                    self._offsets.append((pos, n))
                pos += len(raw)

    def __len__(self) -> int:
        return len(self._rows) if self._rows is not None else len(self._offsets)

    def sample(self, i: int) -> Sample:
        if self._rows is not None:
            # parquet rows and JSON array elements: "line" is the 1-based record number
            return parse_record(self._rows[i], str(self.path), i + 1)
        pos, line = self._offsets[i]
        with self.path.open("rb") as f:
            f.seek(pos)
            raw = f.readline()
        try:
            rec = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise InputError(f"invalid JSON: {e}", path=str(self.path), line=line) from None
        return parse_record(rec, str(self.path), line)


class Dataset:
    """All record files of one dataset (a file, or a folder of them), addressed by one index."""

    def __init__(self, path: str | Path, name: str = ""):
        p = Path(path)
        self.name = name or p.stem
        if p.is_dir():
            files = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix in SUFFIXES)
        elif p.is_file():
            if p.suffix not in SUFFIXES:
                raise InputError(f"unsupported file type (use {', '.join(SUFFIXES)})", path=str(p))
            files = [p]
        else:
            raise InputError("dataset not found", path=str(p), field=name or None)
        self.files = [RecordFile(f) for f in files]
        self._ends = np.cumsum([len(f) for f in self.files]) if self.files else np.zeros(0, dtype=np.int64)
        if len(self) == 0:
            raise InputError("the dataset holds no record", path=str(p), field=name or None)

    def __len__(self) -> int:
        return int(self._ends[-1]) if len(self._ends) else 0

    def sample(self, i: int) -> Sample:
        k = int(np.searchsorted(self._ends, i, side="right"))
        start = int(self._ends[k - 1]) if k else 0
        return self.files[k].sample(i - start)


def blend_counts(weights: dict[str, float], total: int) -> dict[str, int]:
    """Samples per dataset: proportional to the weights, rounded by largest remainder to sum to `total`."""
    for name, w in weights.items():
        if not (w > 0):
            raise InputError(f"blend weight must be > 0, got {w}", field=f"blend.{name}")
    wsum = sum(weights.values())
    exact = {k: total * w / wsum for k, w in weights.items()}
    counts = {k: int(np.floor(v)) for k, v in exact.items()}
    short = total - sum(counts.values())
    # ties broken by name so the result does not depend on dict order
    for k in sorted(exact, key=lambda k: (-(exact[k] - counts[k]), k))[:short]:
        counts[k] += 1
    return counts


def _name_seed(name: str) -> int:
    return zlib.crc32(name.encode())


def draw_blend(sizes: dict[str, int], weights: dict[str, float], total: int, seed: int,
               salt: str = "") -> list[tuple[str, int]]:
    """(dataset, record index) pairs of a stage's blend, shuffled; see the module docstring for the rule.

    `salt` (the stage name) gives each stage its own draw from the same seed.
    """
    counts = blend_counts(weights, total)
    picks: list[tuple[str, int]] = []
    for name in sorted(counts):
        n, size = counts[name], sizes[name]
        epoch = 0
        while n > 0:
            order = np.random.default_rng([seed, _name_seed(salt), _name_seed(name), epoch]).permutation(size)
            take = order[:n]
            picks.extend((name, int(i)) for i in take)
            n -= len(take)
            epoch += 1
    order = np.random.default_rng([seed, _name_seed(salt), _name_seed("blend")]).permutation(len(picks))
    return [picks[i] for i in order]
