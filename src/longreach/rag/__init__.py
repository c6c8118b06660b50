"""Long-context RAG (ChatQA 2): chunk by sentences in reader tokens, embed by each model's convention, index
(exact or faiss HNSW/IVF, persisted, incremental), retrieve by a total token budget, ChatQA prompts.

- chunk.py: `chunk_text`, `chunk_documents`, `ChunkConfig`, `Chunk` (doc, start, end: text == doc[start:end])
- embed.py: `load_embedder("minilm" | folder | "openai:URL")`, E5 / E5-mistral / BGE / sentence-transformers /
  OpenAI-compatible embedders with an sqlite cache
- index.py: `VectorIndex.create/open/add/commit/search/chunks`, `IndexConfig`
- build.py: `build_index(docs, folder, embedder, tokenizer, ...)` (batched, resumable, incremental)
- retrieve.py: `Retriever.search/retrieve`, `select_by_budget`, `order_hits`, `format_context`
- answer.py: `ask` (full long context when it fits, RAG otherwise)
- compare.py: RAG vs full long context table (`longreach eval rag-vs-long`)
- recall.py: recall@k of gold passages; 28 hand-written questions over the Paul Graham essays
"""
