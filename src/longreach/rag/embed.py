"""Text embedders, each used by its own convention, batched, with an on-disk cache.

Conventions (how the model was trained to be used; a wrong one silently ruins retrieval):
- "e5": "query: " / "passage: " prefixes, mean pooling over non-pad tokens, L2-normalised (E5, E5-v2).
- "e5-mistral": instruction on queries only ("Instruct: {task}\\nQuery: {q}"), EOS appended, the last
  token's hidden state, L2-normalised (E5-mistral-7b-instruct and similar decoder embedders).
- "bge": a query instruction, no passage prefix, CLS pooling, L2-normalised (BGE v1.5).
- "sentence-transformers": the folder's own modules (pooling, normalisation, prompts).
- "openai": an OpenAI-compatible /v1/embeddings endpoint, vectors L2-normalised.
The first three run on transformers' AutoModel with the pooling written here, so they can be tested with
tiny random models. `load_embedder("minilm")` is the offline default (all-MiniLM-L6-v2).
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import time
from pathlib import Path
from typing import Any

import numpy as np

from longreach.errors import InputError

E5_MISTRAL_TASK = "Given a question, retrieve passages that answer the question"  # their retrieval task
BGE_QUERY_INSTRUCTION = "Represent this sentence for searching relevant passages: "  # BGE v1.5 English
CONVENTIONS = ("e5", "e5-mistral", "bge", "sentence-transformers", "openai")


def _normalise(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def model_fingerprint(path: str | Path) -> str:
    """A short hash of a model folder: config/tokenizer files, and size + head + tail of each weight file.

    Reading whole weight files would take minutes for a 7B model; head and tail with the size tell apart
    any two checkpoints met in practice.
    """
    root = Path(path)
    h = hashlib.sha256()
    files = sorted(p for p in root.rglob("*") if p.is_file())
    for p in files:
        name = p.relative_to(root).as_posix()
        if p.suffix in (".json", ".txt", ".model") and p.stat().st_size < 50_000_000:
            h.update(name.encode() + b"\0" + p.read_bytes())
        elif p.suffix in (".safetensors", ".bin", ".pt", ".gguf"):
            size = p.stat().st_size
            with p.open("rb") as f:
                head = f.read(1 << 20)
                f.seek(max(0, size - (1 << 20)))
                tail = f.read(1 << 20)
            h.update(name.encode() + b"\0" + str(size).encode() + head + tail)
    return h.hexdigest()[:16]


def default_cache_dir() -> Path | None:
    """$LONGREACH_CACHE/embeddings (LONGREACH_CACHE defaults to ~/.cache/longreach, as for GGUF conversions);
    None when LONGREACH_CACHE is "off"."""
    root = os.environ.get("LONGREACH_CACHE", "~/.cache/longreach")
    if root.lower() in ("", "0", "off", "none", "false"):
        return None
    return Path(root).expanduser() / "embeddings"


class EmbeddingCache:
    """sqlite table of vectors keyed by sha256(model fingerprint, convention settings, role, text)."""

    def __init__(self, path: str | Path):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(str(path), timeout=60)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("CREATE TABLE IF NOT EXISTS emb (key BLOB PRIMARY KEY, vec BLOB) WITHOUT ROWID")

    @staticmethod
    def key(fingerprint: str, convention: str, role: str, text: str) -> bytes:
        return hashlib.sha256(f"{fingerprint}\0{convention}\0{role}\0{text}".encode()).digest()[:20]

    def get(self, keys: list[bytes]) -> dict[bytes, np.ndarray]:
        out: dict[bytes, np.ndarray] = {}
        for i in range(0, len(keys), 500):  # stay under sqlite's bound-parameter limit
            part = keys[i:i + 500]
            rows = self.db.execute(f"SELECT key, vec FROM emb WHERE key IN ({','.join('?' * len(part))})", part)
            out.update((k, np.frombuffer(v, dtype=np.float32)) for k, v in rows)
        return out

    def put(self, keys: list[bytes], vecs: np.ndarray) -> None:
        self.db.executemany("INSERT OR REPLACE INTO emb VALUES (?, ?)",
                            [(k, np.ascontiguousarray(v, dtype=np.float32).tobytes()) for k, v in zip(keys, vecs)])
        self.db.commit()


class Embedder:
    """Shared part: cache look-up and batching. Subclasses implement `_encode(texts, role)`."""

    name: str = ""  # human-readable model name
    fingerprint: str = ""  # identifies the exact weights (or endpoint + model)
    convention: str = ""
    spec: str = ""  # how to load it again: "minilm", a folder, or "openai:URL"
    batch_size: int = 32

    def __init__(self, cache_dir: str | Path | None = None):
        self.cache = EmbeddingCache(Path(cache_dir) / "embeddings.sqlite") if cache_dir else None
        self._dim: int | None = None

    @property
    def dim(self) -> int:
        if self._dim is None:
            self._dim = int(self.embed_passages(["dimension probe"]).shape[1])
        return self._dim

    def info(self) -> dict[str, Any]:
        """What an index records about the embedder that built it."""
        return {"spec": self.spec, "name": self.name, "fingerprint": self.fingerprint,
                "convention": self.convention, "dim": self.dim}

    def cache_tag(self) -> str:
        """Everything besides the weights that changes a vector (the cache key includes it)."""
        return self.convention

    def embed_queries(self, texts: list[str]) -> np.ndarray:
        return self._embed(list(texts), "query")

    def embed_passages(self, texts: list[str]) -> np.ndarray:
        return self._embed(list(texts), "passage")

    def _embed(self, texts: list[str], role: str) -> np.ndarray:
        if not texts:
            return np.zeros((0, self._dim or 0), dtype=np.float32)
        keys = [EmbeddingCache.key(self.fingerprint, self.cache_tag(), role, t) for t in texts]
        found = self.cache.get(keys) if self.cache else {}
        todo = sorted({k: i for i, k in enumerate(keys) if k not in found}.values(), key=lambda i: len(texts[i]))
        # length-sorted batches waste less compute on padding
        for b in range(0, len(todo), self.batch_size):
            idx = todo[b:b + self.batch_size]
            vecs = np.asarray(self._encode([texts[i] for i in idx], role), dtype=np.float32)
            found.update((keys[i], v) for i, v in zip(idx, vecs))
            if self.cache:
                self.cache.put([keys[i] for i in idx], vecs)
        out = np.stack([found[k] for k in keys]).astype(np.float32)
        self._dim = out.shape[1]
        return out

    def _encode(self, texts: list[str], role: str) -> np.ndarray:
        raise NotImplementedError


class TransformersEmbedder(Embedder):
    """E5 / E5-mistral / BGE on transformers' AutoModel, with their pooling implemented here."""

    def __init__(self, path: str | Path, convention: str, instruction: str | None = None,
                 max_length: int | None = None, batch_size: int = 16, device: str = "cpu", dtype: Any = None,
                 cache_dir: str | Path | None = None):
        import torch
        from transformers import AutoModel, AutoTokenizer

        super().__init__(cache_dir)
        if convention not in ("e5", "e5-mistral", "bge"):
            raise InputError(f"convention must be e5, e5-mistral or bge, got {convention!r}", field="convention")
        self.spec, self.name, self.convention = str(path), Path(path).name, convention
        self.fingerprint = model_fingerprint(path)
        self.batch_size, self.device = batch_size, device
        self.instruction = instruction if instruction is not None else {
            "e5-mistral": E5_MISTRAL_TASK, "bge": BGE_QUERY_INSTRUCTION}.get(convention, "")
        self.tokenizer = AutoTokenizer.from_pretrained(str(path))
        self.model = AutoModel.from_pretrained(str(path), dtype=dtype or torch.float32).to(device).eval()
        self._dim = int(self.model.config.hidden_size)
        # inputs are cut at what the model was trained on: 512 for BERT-style E5/BGE, 4096 for E5-mistral
        trained = 4096 if convention == "e5-mistral" else 512
        self.max_length = max_length or min(trained, getattr(self.model.config, "max_position_embeddings", trained))
        self.pad_id = self.tokenizer.pad_token_id
        if self.pad_id is None:  # decoder tokenizers often have none; padded positions are masked anyway
            self.pad_id = self.tokenizer.eos_token_id or 0
        if convention == "e5-mistral" and self.tokenizer.eos_token_id is None:
            raise InputError("e5-mistral convention needs a tokenizer with an EOS token", path=str(path))

    def cache_tag(self) -> str:
        return f"{self.convention}|{self.instruction}|{self.max_length}"

    def format(self, text: str, role: str) -> str:
        """The input string the model was trained on for this role."""
        if self.convention == "e5":
            return ("query: " if role == "query" else "passage: ") + text
        if self.convention == "e5-mistral":
            return f"Instruct: {self.instruction}\nQuery: {text}" if role == "query" else text
        return self.instruction + text if role == "query" else text  # bge

    def token_ids(self, text: str, role: str) -> list[int]:
        """Token ids of one input, truncated to max_length (EOS kept last for e5-mistral)."""
        s = self.format(text, role)
        if self.convention == "e5-mistral":
            ids = self.tokenizer(s, add_special_tokens=True, truncation=True,
                                 max_length=self.max_length - 1)["input_ids"]
            return list(ids) + [self.tokenizer.eos_token_id]
        return list(self.tokenizer(s, add_special_tokens=True, truncation=True,
                                   max_length=self.max_length)["input_ids"])

    def _encode(self, texts: list[str], role: str) -> np.ndarray:
        import torch

        rows = [self.token_ids(t, role) for t in texts]
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):  # right padding; pooling below only reads unmasked positions
            ids[i, :len(r)] = torch.tensor(r)
            mask[i, :len(r)] = 1
        with torch.no_grad():
            hidden = self.model(input_ids=ids.to(self.device),
                                attention_mask=mask.to(self.device)).last_hidden_state.float()
        mask = mask.to(hidden.device)
        if self.convention == "e5":
            pooled = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp(min=1)
        elif self.convention == "bge":
            pooled = hidden[:, 0]
        else:  # last unmasked position: the appended EOS
            last = mask.sum(1) - 1
            pooled = hidden[torch.arange(len(rows), device=hidden.device), last]
        return _normalise(pooled.cpu().numpy())


class SentenceTransformersEmbedder(Embedder):
    """Any sentence-transformers folder, used through the library (its pooling, prompts, normalisation)."""

    def __init__(self, path: str | Path, batch_size: int = 32, device: str = "cpu", name: str | None = None,
                 spec: str | None = None, cache_dir: str | Path | None = None):
        from sentence_transformers import SentenceTransformer

        super().__init__(cache_dir)
        self.spec, self.name = spec or str(path), name or Path(path).name
        self.convention, self.batch_size = "sentence-transformers", batch_size
        self.fingerprint = model_fingerprint(path)
        self.model = SentenceTransformer(str(path), device=device)
        get_dim = getattr(self.model, "get_embedding_dimension", None) or \
            self.model.get_sentence_embedding_dimension  # renamed in sentence-transformers 6
        self._dim = int(get_dim())
        # cosine models are compared by inner product of normalised vectors; dot-product models are not
        self.normalise = getattr(self.model, "similarity_fn_name", "cosine") in (None, "cosine")

    def _encode(self, texts: list[str], role: str) -> np.ndarray:
        kw = {"batch_size": self.batch_size, "convert_to_numpy": True,
              "normalize_embeddings": self.normalise, "show_progress_bar": False}
        if hasattr(self.model, "encode_query"):  # sentence-transformers >= 5 applies the folder's prompts
            fn = self.model.encode_query if role == "query" else self.model.encode_document
            return np.asarray(fn(texts, **kw), dtype=np.float32)
        prompts = getattr(self.model, "prompts", {}) or {}
        prompt_name = role if role in prompts else None
        return np.asarray(self.model.encode(texts, prompt_name=prompt_name, **kw), dtype=np.float32)


class OpenAIEmbedder(Embedder):
    """An OpenAI-compatible /v1/embeddings endpoint (vLLM, TEI, llama.cpp server, OpenAI)."""

    def __init__(self, base_url: str, model: str | None = None, api_key: str | None = None,
                 batch_size: int = 64, timeout: float = 120.0, retries: int = 4,
                 cache_dir: str | Path | None = None):
        import httpx

        super().__init__(cache_dir)
        base = base_url.rstrip("/")
        self.base_url = base if base.endswith("/v1") else base + "/v1"
        self.retries, self.batch_size, self.convention = retries, batch_size, "openai"
        key = api_key or os.environ.get("OPENAI_API_KEY")
        self.client = httpx.Client(timeout=timeout, headers={"Authorization": f"Bearer {key}"} if key else {})
        self.model = model or self._first_model()
        self.spec, self.name = f"openai:{base_url}", self.model
        self.fingerprint = hashlib.sha256(f"{self.base_url}\0{self.model}".encode()).hexdigest()[:16]

    def _request(self, method: str, path: str, **kw: Any) -> Any:
        import httpx

        for attempt in range(self.retries + 1):
            try:
                r = self.client.request(method, self.base_url + path, **kw)
                if r.status_code == 429 or r.status_code >= 500:
                    raise httpx.HTTPStatusError(f"HTTP {r.status_code}", request=r.request, response=r)
                r.raise_for_status()
                return r.json()
            except (httpx.TransportError, httpx.HTTPStatusError) as e:
                status = e.response.status_code if isinstance(e, httpx.HTTPStatusError) else None
                if attempt == self.retries or (status is not None and status < 500 and status != 429):
                    raise InputError(f"embedding request failed: {e}", path=self.base_url + path) from None
                time.sleep(min(0.5 * 2 ** attempt, 8.0))  # back off: busy servers answer 429/503

    def _first_model(self) -> str:
        data = self._request("GET", "/models").get("data") or []
        if not data:
            raise InputError("the server lists no models; pass the model name", path=self.base_url + "/models")
        return data[0]["id"]

    def _encode(self, texts: list[str], role: str) -> np.ndarray:
        out = self._request("POST", "/embeddings", json={"model": self.model, "input": texts})
        data = sorted(out["data"], key=lambda d: d["index"])
        if len(data) != len(texts):
            raise InputError(f"server returned {len(data)} embeddings for {len(texts)} inputs",
                             path=self.base_url + "/embeddings")
        return _normalise(np.array([d["embedding"] for d in data], dtype=np.float32))


def _guess_convention(path: Path) -> str | None:
    """The convention a folder's name or architecture implies, or None when it says nothing."""
    name = path.name.lower()
    if "bge" in name:
        return "bge"
    if "e5" in name and any(s in name for s in ("mistral", "llm", "qwen")):
        return "e5-mistral"
    if "e5" in name:
        return "e5"
    cfg = path / "config.json"
    if cfg.exists() and any(a in cfg.read_text() for a in ('"MistralModel"', '"LlamaModel"', '"Qwen2Model"')):
        return "e5-mistral"
    return None


def load_embedder(spec: str = "minilm", convention: str | None = None, instruction: str | None = None,
                  cache_dir: str | Path | None = None, batch_size: int | None = None, device: str = "cpu") -> Embedder:
    """An embedder from a spec: "minilm" (offline default), "openai:URL[#MODEL]", or a model folder.

    A sentence-transformers folder (one with modules.json) is used through sentence-transformers unless a
    convention is given; other folders need a convention, given or implied by the name (e5, bge, ...).
    """
    common: dict[str, Any] = {"cache_dir": cache_dir}
    if batch_size:
        common["batch_size"] = batch_size
    if spec == "minilm":
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from longreach import assets

        return SentenceTransformersEmbedder(assets.minilm_embedder(), name="all-MiniLM-L6-v2", spec="minilm",
                                            device=device, **common)
    if spec.startswith("openai:"):
        url, _, model = spec[len("openai:"):].partition("#")  # "openai:URL#MODEL" names the model
        return OpenAIEmbedder(url, model=model or None, **common)
    path = Path(spec)
    if not path.is_dir():
        raise InputError("embedder must be 'minilm', 'openai:URL' or a model folder", path=spec)
    if convention is None and (path / "modules.json").exists():
        return SentenceTransformersEmbedder(path, device=device, **common)
    convention = convention or _guess_convention(path)
    if convention is None:
        raise InputError("cannot tell the embedder's convention; pass one of e5, e5-mistral, bge", path=spec)
    if convention == "sentence-transformers":
        return SentenceTransformersEmbedder(path, device=device, **common)
    return TransformersEmbedder(path, convention, instruction=instruction, device=device, **common)
