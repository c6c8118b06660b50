"""RAG against full long context on the same questions (ChatQA 2's comparison), as a table.

    longreach eval rag-vs-long --questions qa.jsonl --model model.gguf --out runs/rag_vs_long \
        --chunk-sizes 300,600,1200 --top-k 5,10,20,40

Questions are JSON lines {"id"?, "question", "answers": [...], and "context": str or "docs": [str or
{"title", "text"}]}; or `docs` names one corpus (file or folder) shared by every question. Each setting is one
`longreach.eval.task.run` (resumable predictions jsonl): the full long context (cut in the middle to fit the
window), and RAG with each chunk size x top-k, i.e. a budget of chunk_size x top_k retrieved tokens filled in
rank order. Scored by token F1 (best over the answers, x100). Settings whose budget cannot fit the window are
listed as skipped.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from longreach.data.readers import iter_json_lines
from longreach.errors import InputError
from longreach.rag.answer import SHORT_INSTRUCTION, TEXT_STOP, fit_hits, qa_prompt, use_chat, window
from longreach.rag.retrieve import Hit, Retriever, order_hits, select_by_budget


@dataclass
class CompareConfig:
    questions: str = ""  # JSON lines of questions (see the module docstring)
    model: str = ""  # reader: HF folder or .gguf (with base_url: where its tokenizer comes from)
    out: str = ""  # output folder: results.json, table.md, predictions/<setting>.jsonl, indexes/
    docs: str | None = None  # one corpus shared by all questions, instead of per-question context
    base_url: str | None = None  # OpenAI-compatible server serving the reader
    chunk_sizes: list[int] = field(default_factory=lambda: [300, 600, 1200])  # the paper's grid
    top_k: list[int] = field(default_factory=lambda: [5, 10, 20, 40])  # the paper's grid
    long: bool = True  # include the full-long-context row
    max_context: int | None = None  # reader window; None = what the backend reports
    embedder: str = "minilm"  # embedder spec (see longreach.rag.embed.load_embedder)
    order: str = "rank"  # chunk order in the prompt: rank or position
    max_new_tokens: int = 64  # answer length
    instruction: str = SHORT_INSTRUCTION  # short answers: token F1 punishes long ones
    chat: bool | None = None  # chat template (None: when the tokenizer has one) or ChatQA text prompts
    batch_size: int = 4  # prompts per backend call


def load_questions(path: str | Path, shared_docs: bool) -> list[dict[str, Any]]:
    """Questions with "id", "question", "answers" and (unless a shared corpus is given) "docs"."""
    out: list[dict[str, Any]] = []
    for n, rec in iter_json_lines(path):
        if not isinstance(rec.get("question"), str):
            raise InputError("missing 'question'", path=str(path), line=n, field="question")
        answers = rec.get("answers", rec.get("answer"))
        answers = [answers] if isinstance(answers, str) else answers
        if not isinstance(answers, list) or not answers:
            raise InputError("missing 'answers'", path=str(path), line=n, field="answers")
        q = {"id": str(rec.get("id", n)), "question": rec["question"], "answers": [str(a) for a in answers]}
        if not shared_docs:
            q["docs"] = _docs_of(rec, q["id"], path, n)
        out.append(q)
    if not out:
        raise InputError("no questions", path=str(path))
    return out


def _docs_of(rec: dict[str, Any], qid: str, path: Any, line: int) -> list[Any]:
    from longreach.data.readers import Document

    if isinstance(rec.get("context"), str):
        return [Document(text=rec["context"], source=qid, doc_id="document")]
    docs = rec.get("docs")
    if not isinstance(docs, list) or not docs:
        raise InputError("needs 'context' (a string) or 'docs' (a list), or pass --docs", path=str(path),
                         line=line, field="docs")
    out = []
    for i, d in enumerate(docs):
        text, title = (d, f"document {i + 1}") if isinstance(d, str) else (d.get("text"), d.get("title"))
        if not isinstance(text, str):
            raise InputError(f"docs[{i}] needs a 'text' string", path=str(path), line=line, field="docs")
        out.append(Document(text=text, source=qid, doc_id=str(title or f"document {i + 1}")))
    return out


def _f1(example: dict[str, Any], prediction: str) -> dict[str, Any]:
    from longreach.eval.metrics import qa_f1

    best = max(qa_f1(prediction, a) for a in example["answers"])
    return {"score": 100.0 * best, **example["stats"]}


def run(cfg: CompareConfig, backend: Any = None, embedder: Any = None) -> dict[str, Any]:
    """Every setting over every question; returns (and writes) the table. `backend` and `embedder` default
    to the ones `cfg` names."""
    from longreach.config import dump
    from longreach.data.readers import iter_documents
    from longreach.eval import task
    from longreach.eval.backends import open_backend
    from longreach.eval.infinitebench import truncate_middle
    from longreach.rag.embed import default_cache_dir, load_embedder

    if not cfg.questions or not cfg.out or (backend is None and not cfg.model):
        raise InputError("questions, model and out are required")
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    dump(cfg, out / "config.yaml")
    questions = load_questions(cfg.questions, shared_docs=cfg.docs is not None)
    shared = list(iter_documents(cfg.docs)) if cfg.docs else None
    backend = backend or open_backend(cfg.model, cfg.base_url, chat=cfg.chat)
    chat, win = use_chat(backend, cfg.chat), window(backend, cfg.max_context)
    limit = win - cfg.max_new_tokens
    embedder = embedder or load_embedder(cfg.embedder, cache_dir=default_cache_dir())
    tok = backend.tokenizer
    settings: list[dict[str, Any]] = []

    if cfg.long:
        examples = []
        head: dict[str, str] = {}  # per corpus: the text cut once to the window, then per question
        for q in questions:
            docs = shared if shared is not None else q["docs"]
            key = "shared" if shared is not None else q["id"]
            if key not in head:
                head[key] = truncate_middle(tok, "\n\n".join(d.text for d in docs), limit)
            prompt, context = long_prompt(backend, head[key], q["question"], chat, cfg.instruction, limit)
            examples.append({**q, "prompt": prompt,
                             "stats": {"context_tokens": len(tok.encode(context, add_special_tokens=False))}})
        settings.append({"name": "long", "chunk_tokens": None, "top_k": None, "budget": limit,
                         "examples": examples})

    for size in cfg.chunk_sizes:
        ks = [k for k in cfg.top_k if size * k <= limit]
        ranked = _rank(questions, shared, size, max(ks) * size, embedder, tok, out) if ks else {}
        for k in cfg.top_k:
            if k not in ks:
                settings.append({"name": f"rag-{size}x{k}", "chunk_tokens": size, "top_k": k, "budget": size * k,
                                 "skipped": f"budget {size * k} does not fit the window ({win} tokens)"})
                continue
            examples = []
            for q in questions:
                chosen = order_hits(select_by_budget(ranked[q["id"]], size * k), cfg.order)
                prompt, chosen = fit_hits(backend, chosen, q["question"], chat, cfg.instruction, limit)
                examples.append({**q, "prompt": prompt, "stats": {
                    "context_tokens": sum(h.chunk.n_tokens for h in chosen), "chunks": len(chosen)}})
            settings.append({"name": f"rag-{size}x{k}", "chunk_tokens": size, "top_k": k, "budget": size * k,
                             "examples": examples})

    rows = []
    for s in settings:
        row = {k: s[k] for k in ("name", "chunk_tokens", "top_k", "budget")}
        if "skipped" in s:
            rows.append({**row, "skipped": s["skipped"]})
            continue
        print(f"rag-vs-long: {s['name']}", file=sys.stderr)
        for ex in s["examples"]:
            ex.pop("docs", None)  # records need not carry the documents
        records = task.run(s["examples"], lambda ex: ex["prompt"], backend, _f1,
                           out / "predictions" / f"{s['name']}.jsonl", max_new_tokens=cfg.max_new_tokens,
                           batch_size=cfg.batch_size, stop=None if chat else TEXT_STOP)
        n = len(records)
        rows.append({**row, "n": n, "score": round(task.mean_score(records), 2),
                     "context_tokens": round(sum(r["context_tokens"] for r in records) / n, 1)})
    results = {"model": cfg.model, "window": win, "chat": chat, "embedder": embedder.info(), "order": cfg.order,
               "questions": len(questions), "rows": rows}
    (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    (out / "table.md").write_text(markdown_table(results))
    return results


def long_prompt(backend: Any, text: str, question: str, chat: bool, instruction: str,
                limit: int) -> tuple[Any, str]:
    """The full-long-context prompt, `text` cut in the middle (InfiniteBench's rule) to fit `limit` tokens."""
    from longreach.eval.infinitebench import truncate_middle

    room = limit - backend.count_tokens(qa_prompt("", question, chat, instruction))
    while True:  # re-tokenising at the seams can add a token or two: cut again until it fits
        context = truncate_middle(backend.tokenizer, text, max(room, 0))
        prompt = qa_prompt(context, question, chat, instruction)
        over = backend.count_tokens(prompt) - limit
        if over <= 0 or room <= 0:
            return prompt, context
        room -= over + 4


def _rank(questions: list[dict[str, Any]], shared: list[Any] | None, size: int, max_budget: int, embedder: Any,
          tok: Any, out: Path) -> dict[str, list[Hit]]:
    """Each question's chunks of `size` tokens in retriever rank order, enough to fill `max_budget`.

    A smaller budget's selection is a prefix of the larger one's, so one ranking serves every top-k."""
    from longreach.rag.build import build_index
    from longreach.rag.chunk import ChunkConfig

    ranked: dict[str, list[Hit]] = {}
    retrievers: dict[Path, Retriever] = {}
    for q in questions:
        folder = out / "indexes" / f"chunks{size}" / ("shared" if shared is not None else _safe(q["id"]))
        if folder not in retrievers:
            index, _ = build_index(shared if shared is not None else q["docs"], folder, embedder, tok,
                                   ChunkConfig(chunk_tokens=size), log=False)
            retrievers[folder] = Retriever(index, embedder)
        retriever = retrievers[folder]
        k = min(len(retriever.index), 2 * max_budget // size + 16)  # chunks are mostly a little under `size`
        ranked[q["id"]] = select_by_budget(retriever.search(q["question"], k), max_budget)
    return ranked


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def markdown_table(results: dict[str, Any]) -> str:
    """The paper's shape: one row per setting (chunk size x top-k = retrieved tokens), then the score."""
    title = (f"RAG vs full long context: {results['model']} (window {results['window']}), "
             f"{results['questions']} questions, embedder {results['embedder']['name']}, order {results['order']}")
    lines = [title, "", "| setting | chunk size | top-k | budget (tokens) | mean context tokens | F1 |",
             "|---|---:|---:|---:|---:|---:|"]
    for r in results["rows"]:
        name = "full long context" if r["name"] == "long" else "RAG"
        size = r["chunk_tokens"] or "-"
        k = r["top_k"] or "-"
        if "skipped" in r:
            lines.append(f"| {name} | {size} | {k} | {r['budget']} | - | skipped: over the window |")
        else:
            lines.append(f"| {name} | {size} | {k} | {r['budget']} | {r['context_tokens']} | {r['score']:.2f} |")
    return "\n".join(lines) + "\n"
