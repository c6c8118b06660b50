"""Retrieval quality with known answers: recall@k of the chunk holding each question's evidence passage.

Questions are JSON lines {"id", "question", "answers", "doc": file name, "evidence": a phrase quoted from the
document}; the gold chunks are those overlapping the evidence (found whitespace-insensitively, since essays
wrap lines anywhere). `PG_QUESTIONS` holds 28 hand-written questions over the Paul Graham essays
(`longreach.assets.paul_graham_essays()`), each answered in one passage.

    from longreach.rag.recall import PG_QUESTIONS, load_questions, recall_at_k
    recall_at_k(retriever, load_questions(PG_QUESTIONS), documents, ks=(1, 5, 10))
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from longreach.data.readers import iter_json_lines
from longreach.errors import InputError
from longreach.rag.retrieve import Retriever

PG_QUESTIONS = Path(__file__).parent / "data" / "pg_essays_qa.jsonl"


def load_questions(path: str | Path) -> list[dict[str, Any]]:
    out = []
    for n, q in iter_json_lines(path):
        for key in ("question", "doc", "evidence"):
            if not isinstance(q.get(key), str):
                raise InputError(f"missing '{key}'", path=str(path), line=n, field=key)
        out.append(q)
    return out


def locate(text: str, phrase: str) -> tuple[int, int]:
    """Character span of `phrase` in `text`, any run of whitespace matching any other."""
    m = re.search(r"\s+".join(re.escape(w) for w in phrase.split()), text)
    if m is None:
        raise InputError(f"evidence not found in the document: {phrase!r}", field="evidence")
    return m.span()


def recall_at_k(retriever: Retriever, questions: list[dict[str, Any]], texts: dict[str, str],
                ks: tuple[int, ...] = (1, 5, 10)) -> dict[str, Any]:
    """Share of questions with a gold chunk among the top k, for each k; `texts` maps file name -> text.

    A chunk is gold when it comes from the question's document and overlaps its evidence span."""
    hits_at: dict[int, int] = dict.fromkeys(ks, 0)
    per_question = []
    for q in questions:
        if q["doc"] not in texts:
            raise InputError(f"document {q['doc']!r} is not in the corpus", field="doc")
        start, end = locate(texts[q["doc"]], q["evidence"])
        hits = retriever.search(q["question"], max(ks))
        rank = next((h.rank for h in hits if Path(h.chunk.doc).name == q["doc"]
                     and h.chunk.start < end and start < h.chunk.end), None)
        for k in ks:
            hits_at[k] += rank is not None and rank < k
        per_question.append({"id": q.get("id"), "gold_rank": rank})
    n = len(questions)
    return {"n": n, **{f"recall@{k}": hits_at[k] / n for k in ks}, "per_question": per_question}
