"""Answer a question over documents: the full long context when it fits the model's window, RAG otherwise.

    from longreach.eval.backends import open_backend
    from longreach.rag.answer import AskConfig, ask
    result = ask("Who founded it?", docs, open_backend("model.gguf"), AskConfig())
    result["mode"]  # "long" or "rag"

Prompts are ChatQA's (system line, context, "User: ..." turn, "Assistant:"; `longreach.eval.chatrag`), or,
for chat models, the same system line and one user turn holding the context then the question.
"""

from __future__ import annotations

import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from longreach.errors import InputError
from longreach.eval.chatrag import DEFAULT_INSTRUCTION, SYSTEM, chatqa_prompt
from longreach.rag.chunk import ChunkConfig
from longreach.rag.embed import Embedder
from longreach.rag.retrieve import Hit, Retriever, format_context

# ChatQA's instruction for short-span answers (ChatRAG's CoQA one); token F1 punishes long answers.
SHORT_INSTRUCTION = "Answer the following question with a short span. The answer needs to be just in a few words."
TEXT_STOP = ["\nUser:", "\nSystem:"]  # a raw-text model that goes on writes the next turn
RAG_DEFAULT_BUDGET = 12000  # ChatQA 2: RAG overtakes full long context from ~12K retrieved tokens


@dataclass
class AskConfig:
    max_context: int | None = None  # the model's window in tokens; None = what the backend reports
    fit: float = 1.0  # long context when prompt + answer <= fit * window (below 1 leaves headroom)
    budget: int | None = None  # retrieved tokens for RAG; None = min(12000, what the window leaves)
    chunk_tokens: int = 300  # RAG chunks: whole sentences up to this many tokens of the reader's tokenizer
    order: str = "rank"  # retrieved chunks in retriever rank order (ChatQA 2) or by document position
    max_new_tokens: int = 256  # answer length
    instruction: str = DEFAULT_INSTRUCTION  # prefixed to the question (ChatQA)
    chat: bool | None = None  # chat template (None: when the tokenizer has one) or the ChatQA text prompt


def use_chat(backend: Any, chat: bool | None) -> bool:
    return bool(getattr(backend.tokenizer, "chat_template", None)) if chat is None else chat


def qa_prompt(context: str, question: str, chat: bool, instruction: str) -> Any:
    """A question over `context` as ChatQA text, or as chat messages for a chat model."""
    if chat:
        user = f"{context}\n\n{instruction} {question}".strip()
        return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]
    return chatqa_prompt(SYSTEM, context, [{"role": "user", "content": question}], instruction)


def window(backend: Any, max_context: int | None) -> int:
    return int(max_context or backend.max_length)


def fit_hits(backend: Any, hits: list[Hit], question: str, chat: bool, instruction: str,
             limit: int) -> tuple[Any, list[Hit]]:
    """The RAG prompt with as many of `hits` as fit in `limit` tokens (the budget counts chunk text only;
    the "title: ..., source:" framing adds a few tokens per chunk, so the tail may have to go)."""
    hits = list(hits)
    while True:
        prompt = qa_prompt(format_context([h.chunk for h in hits]), question, chat, instruction)
        if backend.count_tokens(prompt) <= limit or not hits:
            return prompt, hits
        hits.pop()


def rag_budget(backend: Any, question: str, chat: bool, cfg: AskConfig) -> int:
    """Retrieved tokens: the configured budget, capped by what the window leaves after prompt and answer."""
    overhead = backend.count_tokens(qa_prompt("", question, chat, cfg.instruction))
    room = int(cfg.fit * window(backend, cfg.max_context)) - cfg.max_new_tokens - overhead
    if room <= 0:
        raise InputError(f"the model's window leaves no room for context ({room} tokens)", field="max_context")
    return min(cfg.budget or RAG_DEFAULT_BUDGET, room)


def ask(question: str, docs: list[Any], backend: Any, cfg: AskConfig | None = None,
        embedder: Embedder | None = None, index_dir: str | Path | None = None, log: bool = True) -> dict[str, Any]:
    """Answer `question` from `docs` (longreach.data.readers.Document); says which mode it used and why.

    With `index_dir`, RAG searches that index (its own embedder unless one is given); otherwise `docs` are
    chunked with the reader's tokenizer and indexed in a temporary folder (the embedding cache keeps repeats
    cheap).
    """
    from longreach.rag.build import build_index
    from longreach.rag.embed import default_cache_dir, load_embedder
    from longreach.rag.index import VectorIndex

    cfg = cfg or AskConfig()
    chat = use_chat(backend, cfg.chat)
    win = window(backend, cfg.max_context)
    limit = int(cfg.fit * win) - cfg.max_new_tokens
    result: dict[str, Any] = {"question": question, "window": win}
    prompt = None
    if docs:
        prompt = qa_prompt("\n\n".join(d.text for d in docs), question, chat, cfg.instruction)
        n = backend.count_tokens(prompt)
        if n <= limit:
            result.update(mode="long", prompt_tokens=n,
                          reason=f"documents fit: {n} prompt tokens + {cfg.max_new_tokens} answer <= "
                                 f"{cfg.fit:g} x window {win}")
        else:
            result["reason"] = (f"documents do not fit: {n} prompt tokens + {cfg.max_new_tokens} answer > "
                                f"{cfg.fit:g} x window {win}")
            prompt = None
    elif index_dir is None:
        raise InputError("no documents to answer from", field="docs")
    else:
        result["reason"] = "answering from an index"
    if prompt is None:
        budget = rag_budget(backend, question, chat, cfg)
        with tempfile.TemporaryDirectory(prefix="longreach-ask-") as tmp:
            if index_dir is not None:
                index = VectorIndex.open(index_dir)
                embedder = embedder or load_embedder(index.meta["embedder"]["spec"],
                                                     convention=index.meta["embedder"]["convention"])
            else:
                embedder = embedder or load_embedder("minilm", cache_dir=default_cache_dir())
                index, _ = build_index(docs, Path(tmp) / "index", embedder, backend.tokenizer,
                                       ChunkConfig(chunk_tokens=cfg.chunk_tokens), log=log)
            hits = Retriever(index, embedder).retrieve(question, budget, cfg.order)
        prompt, hits = fit_hits(backend, hits, question, chat, cfg.instruction, limit)
        result.update(mode="rag", prompt_tokens=backend.count_tokens(prompt), budget=budget,
                      retrieved_tokens=sum(h.chunk.n_tokens for h in hits),
                      chunks=[{k: v for k, v in h.to_dict().items() if k != "text"} for h in hits])
    if log:
        print(f"ask: {'full long context' if result['mode'] == 'long' else 'RAG'} ({result['reason']})",
              file=sys.stderr)
    result["answer"] = backend.generate([prompt], cfg.max_new_tokens, stop=None if chat else TEXT_STOP)[0].strip()
    return result
