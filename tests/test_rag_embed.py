"""Embedders by their conventions, checked against pooling computed by hand on tiny random models; the
sentence-transformers path on MiniLM; the OpenAI path against a real local HTTP server; the cache."""

from __future__ import annotations

import json
import shutil
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest

from longreach.errors import InputError
from longreach.rag.embed import (
    BGE_QUERY_INSTRUCTION,
    E5_MISTRAL_TASK,
    EmbeddingCache,
    OpenAIEmbedder,
    TransformersEmbedder,
    load_embedder,
    model_fingerprint,
)

TEXTS = ["short one", "a much longer passage with several more words in it to force padding", "mid size text"]


def write_tiny_bert(path: Path, seed: int = 0) -> Path:
    """A 2-layer, hidden-64 BERT with MiniLM's (uncased WordPiece) tokenizer."""
    import torch
    from transformers import BertConfig, BertModel

    from longreach import assets

    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=30522, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=128, max_position_embeddings=128)
    BertModel(cfg).save_pretrained(path)
    src = assets.minilm_embedder()
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(src / name, path / name)
    return path


def write_tiny_decoder(path: Path) -> Path:
    """A 2-layer, hidden-64 Llama with a byte-level BPE tokenizer trained here (EOS, no pad token)."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaModel, PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.train_from_iterator(TEXTS * 20 + [E5_MISTRAL_TASK, "Instruct: Query:"],
                            trainers.BpeTrainer(vocab_size=300, special_tokens=["<s>", "</s>"],
                                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<s>", eos_token="</s>")
    tok.save_pretrained(path)
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=bpe.get_vocab_size(), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    LlamaModel(cfg).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory) -> Path:
    return write_tiny_bert(tmp_path_factory.mktemp("bert") / "tiny-e5")


def by_hand(emb: TransformersEmbedder, text: str, role: str):
    """Hidden states of one unpadded input."""
    import torch

    ids = torch.tensor([emb.token_ids(text, role)])
    with torch.no_grad():
        return ids[0], emb.model(input_ids=ids).last_hidden_state[0].numpy()


def unit(v):
    return v / np.linalg.norm(v)


def test_e5_prefixes_mean_pooling_normalised(bert_dir):
    emb = TransformersEmbedder(bert_dir, "e5", batch_size=8)
    assert emb.format("x", "query") == "query: x" and emb.format("x", "passage") == "passage: x"
    for role, fn in (("query", emb.embed_queries), ("passage", emb.embed_passages)):
        got = fn(TEXTS)  # one padded batch
        for text, row in zip(TEXTS, got):
            _, h = by_hand(emb, text, role)
            np.testing.assert_allclose(row, unit(h.mean(0)), atol=1e-5)
    assert not np.allclose(emb.embed_queries(TEXTS[:1]), emb.embed_passages(TEXTS[:1]))


def test_bge_query_instruction_cls_pooling(bert_dir):
    emb = TransformersEmbedder(bert_dir, "bge", batch_size=8)
    assert emb.format("x", "query") == BGE_QUERY_INSTRUCTION + "x" and emb.format("x", "passage") == "x"
    got = emb.embed_queries(TEXTS)
    for text, row in zip(TEXTS, got):
        _, h = by_hand(emb, text, "query")
        np.testing.assert_allclose(row, unit(h[0]), atol=1e-5)


def test_e5_mistral_instruction_on_queries_last_token_with_eos(tmp_path):
    emb = TransformersEmbedder(write_tiny_decoder(tmp_path / "tiny-e5-mistral"), "e5-mistral", batch_size=8)
    assert emb.format("q", "query") == f"Instruct: {E5_MISTRAL_TASK}\nQuery: q"
    assert emb.format("p", "passage") == "p"
    for role, fn in (("query", emb.embed_queries), ("passage", emb.embed_passages)):
        got = fn(TEXTS)
        for text, row in zip(TEXTS, got):
            ids, h = by_hand(emb, text, role)
            assert ids[-1].item() == emb.tokenizer.eos_token_id
            np.testing.assert_allclose(row, unit(h[-1]), atol=1e-5)
    # truncation keeps the EOS last
    emb.max_length = 8
    assert len(emb.token_ids(TEXTS[1], "passage")) == 8
    assert emb.token_ids(TEXTS[1], "passage")[-1] == emb.tokenizer.eos_token_id


def test_convention_from_name_and_explicit(bert_dir, tmp_path):
    assert load_embedder(str(bert_dir)).convention == "e5"  # "e5" in the folder name
    plain = tmp_path / "plain"
    shutil.copytree(bert_dir, plain)
    with pytest.raises(InputError, match="convention"):
        load_embedder(str(plain))
    assert load_embedder(str(plain), convention="bge").convention == "bge"
    with pytest.raises(InputError):
        load_embedder(str(tmp_path / "missing"))


def test_cache_serves_repeated_texts_without_the_model(bert_dir, tmp_path):
    emb = TransformersEmbedder(bert_dir, "e5", cache_dir=tmp_path / "cache")
    first = emb.embed_passages(TEXTS)
    again = TransformersEmbedder(bert_dir, "e5", cache_dir=tmp_path / "cache")
    again.model = None  # any model call would now fail
    np.testing.assert_array_equal(again.embed_passages(TEXTS[::-1]), first[::-1])
    with pytest.raises(TypeError):
        again.embed_queries(TEXTS[:1])  # same text, other role: not cached, needs the model
    again.max_length = 64
    with pytest.raises(TypeError):
        again.embed_passages(TEXTS[:1])  # other truncation: other vectors, not served from the cache
    other = EmbeddingCache.key("otherweights", "e5", "passage", TEXTS[0])
    assert other != EmbeddingCache.key(emb.fingerprint, "e5", "passage", TEXTS[0])


def test_fingerprint_changes_with_weights(bert_dir, tmp_path):
    other = write_tiny_bert(tmp_path / "tiny-e5", seed=1)
    assert model_fingerprint(bert_dir) != model_fingerprint(other)
    assert model_fingerprint(bert_dir) == model_fingerprint(bert_dir)


@pytest.fixture(scope="module")
def minilm():
    return load_embedder("minilm")


def test_minilm_sentence_transformers_folder(minilm):
    v = minilm.embed_passages(["The cat sat on the mat.", "A feline rested on a rug.", "Stock prices fell."])
    assert v.shape == (3, 384) and minilm.dim == 384
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1, atol=1e-5)
    assert v[0] @ v[1] > v[0] @ v[2] + 0.2
    assert minilm.info()["spec"] == "minilm" and minilm.info()["convention"] == "sentence-transformers"


class _EmbeddingServer(BaseHTTPRequestHandler):
    """/v1/models and /v1/embeddings served from MiniLM; the first POST answers 503 (to test retries)."""

    model = None
    requests: ClassVar[list[int]] = []
    fail_next = True

    def do_GET(self):
        self._send(200, {"object": "list", "data": [{"id": "minilm-test", "object": "model"}]})

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if _EmbeddingServer.fail_next:
            _EmbeddingServer.fail_next = False
            return self._send(503, {"error": "warming up"})
        _EmbeddingServer.requests.append(len(body["input"]))
        vecs = self.model.model.encode(body["input"], normalize_embeddings=False)
        data = [{"object": "embedding", "index": i, "embedding": v.tolist()} for i, v in enumerate(vecs)]
        self._send(200, {"object": "list", "model": body["model"], "data": data[::-1]})  # any order

    def _send(self, code, obj):
        raw = json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def log_message(self, *args):
        pass


def test_openai_endpoint_batched_with_retries(minilm):
    _EmbeddingServer.model = minilm
    server = ThreadingHTTPServer(("127.0.0.1", 0), _EmbeddingServer)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        emb = OpenAIEmbedder(url, batch_size=2, retries=2)
        assert emb.model == "minilm-test" and emb.base_url.endswith("/v1")
        texts = ["alpha beta", "gamma", "delta epsilon zeta", "eta", "theta iota"]
        got = emb.embed_passages(texts)
        assert _EmbeddingServer.requests == [2, 2, 1]
        np.testing.assert_allclose(got, minilm.embed_passages(texts), atol=1e-5)
        assert emb.dim == 384 and load_embedder(f"openai:{url}/v1").fingerprint == emb.fingerprint
    finally:
        server.shutdown()
        server.server_close()
    with pytest.raises(InputError, match="embedding request failed"):
        OpenAIEmbedder(url, model="m", retries=0).embed_passages(["x"])  # server gone
