"""`longreach rag index|search`, `longreach ask` and `longreach eval rag-vs-long` (CPU or GPU).

    longreach rag index --docs essays/ --out runs/index --chunk-tokens 300 [--embedder minilm|FOLDER|openai:URL]
    longreach rag search --index runs/index --query "What did they fund?" --top-k 5
    longreach ask --docs essays/ --question "..." --model model.gguf [--max-context 8192] [--budget 6000]
    longreach eval rag-vs-long --questions qa.jsonl --docs essays/ --model model.gguf --out runs/rag_vs_long

Embeddings are cached in $LONGREACH_CACHE/embeddings (default ~/.cache/longreach; LONGREACH_CACHE=off disables).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer

from longreach.cli.apps import app, eval_app, rag_app
from longreach.errors import InputError


def _ints(text: str, flag: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise InputError(f"expected comma-separated integers, got {text!r}", field=flag) from None


def _tokenizer(path: str | None):
    """The reader's tokenizer that counts chunk tokens: a HF folder or .gguf; default Llama-3's (offline)."""
    from longreach import assets
    from longreach.model.load import load_tokenizer

    return load_tokenizer(path or assets.llama3_tokenizer())


@rag_app.command("index")
def index(
    docs: str = typer.Option(..., help="file or folder of documents (.txt/.md/.rst, .jsonl, .parquet)"),
    out: str = typer.Option(..., help="index folder (created, or added to: documents already in it are skipped)"),
    chunk_tokens: int = typer.Option(300, help="whole sentences up to this many reader tokens per chunk"),
    overlap: int = typer.Option(0, help="context repeated from the previous chunk (whole sentences)"),
    overlap_unit: str = typer.Option("tokens", help="overlap counted in tokens or sentences"),
    embedder: str = typer.Option("minilm", help="minilm, a model folder (E5/E5-mistral/BGE/sentence-transformers)"
                                                " or openai:URL[#MODEL]"),
    convention: str | None = typer.Option(None, help="e5, e5-mistral, bge or sentence-transformers "
                                                     "(default: from the folder)"),
    index_kind: str = typer.Option("flat", "--index", help="flat (exact), hnsw or ivf (approximate, large corpora)"),
    tokenizer: str | None = typer.Option(None, help="reader tokenizer (HF folder or .gguf); default Llama-3's"),
    text_field: str = typer.Option("text", help="text field of .jsonl/.parquet records"),
    batch_chunks: int = typer.Option(512, help="chunks embedded and appended per step"),
    device: str = typer.Option("cpu", help="embedder device (cpu, cuda)"),
) -> None:
    """Chunk, embed and index documents. Prints build statistics as JSON."""
    from dataclasses import asdict

    from longreach.data.readers import iter_documents
    from longreach.rag.build import build_index
    from longreach.rag.chunk import ChunkConfig
    from longreach.rag.embed import default_cache_dir, load_embedder
    from longreach.rag.index import IndexConfig

    emb = load_embedder(embedder, convention=convention, cache_dir=default_cache_dir(), device=device)
    built, stats = build_index(iter_documents(docs, text_field=text_field), out, emb, _tokenizer(tokenizer),
                               ChunkConfig(chunk_tokens=chunk_tokens, overlap=overlap, overlap_unit=overlap_unit),
                               IndexConfig(kind=index_kind), batch_chunks=batch_chunks)
    if built.cfg.kind != index_kind:
        print(f"note: {out} is a '{built.cfg.kind}' index (fixed when it was created)", file=sys.stderr)
    print(json.dumps({"index": out, **asdict(stats), "embedder": emb.info(), "kind": built.cfg.kind}))


@rag_app.command("search")
def search(
    index: str = typer.Option(..., help="index folder made by `longreach rag index`"),
    query: str = typer.Option(..., help="the query text"),
    top_k: int = typer.Option(5, help="how many chunks"),
    embedder: str | None = typer.Option(None, help="embedder (default: the one that built the index)"),
    exact: bool = typer.Option(False, help="exact search even on an approximate index"),
    device: str = typer.Option("cpu", help="embedder device (cpu, cuda)"),
) -> None:
    """Print the top-k chunks as a JSON list of {"doc", "start", "end", "score", "text"}."""
    from longreach.rag.embed import default_cache_dir, load_embedder
    from longreach.rag.index import VectorIndex
    from longreach.rag.retrieve import Retriever

    ix = VectorIndex.open(index)
    built = ix.meta["embedder"]
    emb = load_embedder(embedder or built["spec"], convention=None if embedder else built["convention"],
                        cache_dir=default_cache_dir(), device=device)
    hits = Retriever(ix, emb).search(query, top_k, exact=True if exact else None)
    print(json.dumps([{k: h.to_dict()[k] for k in ("doc", "start", "end", "score", "text")} for h in hits],
                     ensure_ascii=False))


@app.command("ask")
def ask(
    question: str = typer.Option(..., help="the question"),
    model: str = typer.Option(..., help="reader: HF folder or .gguf (with --base-url: the tokenizer's source)"),
    docs: str | None = typer.Option(None, help="file or folder of documents"),
    index: str | None = typer.Option(None, help="answer by RAG from this index folder instead of --docs"),
    base_url: str | None = typer.Option(None, help="OpenAI-compatible server running the reader"),
    served_model: str | None = typer.Option(None, help="model id on the server (default: its first)"),
    max_context: int | None = typer.Option(None, help="reader window in tokens (default: the model's)"),
    fit: float = typer.Option(1.0, help="full long context when prompt + answer <= FIT x window"),
    budget: int | None = typer.Option(None, help="RAG: retrieved tokens (default: min(12000, what fits))"),
    chunk_tokens: int = typer.Option(300, help="RAG chunk size in reader tokens (when indexing --docs)"),
    order: str = typer.Option("rank", help="RAG chunk order: rank or position"),
    embedder: str | None = typer.Option(None, help="RAG embedder (default: minilm, or the index's)"),
    max_new_tokens: int = typer.Option(256, help="answer length in tokens"),
    chat: bool | None = typer.Option(None, "--chat/--no-chat", help="chat template (default: when it has one)"),
) -> None:
    """Answer from documents: full long context when they fit the window, RAG otherwise. Prints JSON with
    "answer" and "mode" ("long" or "rag"); the choice and its reason also go to stderr."""
    from longreach.data.readers import iter_documents
    from longreach.eval.backends import open_backend
    from longreach.rag import answer
    from longreach.rag.embed import default_cache_dir, load_embedder

    if docs is None and index is None:
        raise InputError("give --docs or --index", field="docs")
    documents = list(iter_documents(docs)) if docs else []
    backend = open_backend(model, base_url, served_model, chat)
    emb = load_embedder(embedder, cache_dir=default_cache_dir()) if embedder else None
    cfg = answer.AskConfig(max_context=max_context, fit=fit, budget=budget, chunk_tokens=chunk_tokens, order=order,
                           max_new_tokens=max_new_tokens, chat=chat)
    print(json.dumps(answer.ask(question, documents, backend, cfg, embedder=emb, index_dir=index),
                     ensure_ascii=False))


@eval_app.command("rag-vs-long")
def rag_vs_long(
    questions: str = typer.Option(..., help='JSON lines {"question", "answers", "context" or "docs"}'),
    model: str = typer.Option(..., help="reader: HF folder or .gguf (with --base-url: the tokenizer's source)"),
    out: str = typer.Option(..., help="output folder: results.json, table.md, predictions/"),
    docs: str | None = typer.Option(None, help="one corpus for every question (file or folder)"),
    base_url: str | None = typer.Option(None, help="OpenAI-compatible server running the reader"),
    chunk_sizes: str = typer.Option("300,600,1200", help="chunk sizes in reader tokens"),
    top_k: str = typer.Option("5,10,20,40", help="chunks per prompt; budget = chunk size x top-k"),
    long: bool = typer.Option(True, "--long/--no-long", help="include the full-long-context row"),
    max_context: int | None = typer.Option(None, help="reader window in tokens (default: the model's)"),
    embedder: str = typer.Option("minilm", help="embedder spec"),
    order: str = typer.Option("rank", help="chunk order: rank or position"),
    max_new_tokens: int = typer.Option(64, help="answer length"),
    chat: bool | None = typer.Option(None, "--chat/--no-chat", help="chat template (default: when it has one)"),
    batch_size: int = typer.Option(4, help="prompts per backend call"),
) -> None:
    """The same questions by full long context and by RAG at several chunk sizes and budgets (token F1),
    in the paper's table shape. Prints results.json."""
    from longreach.rag.compare import CompareConfig, run

    cfg = CompareConfig(questions=questions, model=model, out=out, docs=docs, base_url=base_url,
                        chunk_sizes=_ints(chunk_sizes, "chunk_sizes"), top_k=_ints(top_k, "top_k"), long=long,
                        max_context=max_context, embedder=embedder, order=order, max_new_tokens=max_new_tokens,
                        chat=chat, batch_size=batch_size)
    results = run(cfg)
    print((Path(out) / "table.md").read_text(), file=sys.stderr)
    print(json.dumps(results))
