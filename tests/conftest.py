"""Shared fixtures: tiny Llama models and packed shards built on CPU (no model hub)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


@pytest.fixture
def one_thread():
    """One intra-op thread for tiny models: on a shared, oversubscribed CPU, OpenMP threads spin-waiting for
    each other made these steps ~7x slower. Modules opt in with pytestmark = usefixtures("one_thread")."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def write_tiny_llama(path: Path, vocab: int = 64, hidden: int = 64, layers: int = 2, seed: int = 0,
                     weights: bool = True, max_position: int = 256) -> Path:
    """A 2-layer Llama (hidden 64) saved as a Hugging Face folder."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=max_position,
                      tie_word_embeddings=True)
    if weights:
        torch.manual_seed(seed)
        LlamaForCausalLM(cfg).save_pretrained(path)
    else:
        path.mkdir(parents=True, exist_ok=True)
        cfg.save_pretrained(path)
    return path


def write_pattern_shards(path: Path, n_seq: int = 16, seq_len: int = 32, vocab: int = 64, seed: int = 0,
                         loss_mask: bool = False, doc_every: int = 0) -> Path:
    """Learnable sequences (counting runs modulo the vocabulary) written through the real ShardWriter."""
    from longreach.data.shards import ShardWriter

    rng = np.random.default_rng(seed)
    w = ShardWriter(path, seq_len=seq_len, vocab_size=vocab)
    for _ in range(n_seq):
        start, step = rng.integers(0, vocab), rng.integers(1, 4)
        toks = (start + step * np.arange(seq_len)) % vocab
        mask = (np.arange(seq_len) % 2 == 0) if loss_mask else None
        starts = np.arange(0, seq_len, doc_every) if doc_every else None
        w.add(toks, loss_mask=mask, doc_starts=starts)
    w.close({"source": "test-pattern"})
    return path


def word_tokenizer(vocab: int = 64):
    """A word-level fast tokenizer: <unk> <s> </s>, then "w0" ... "w{vocab - 4}" (ids 3 ...)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["<unk>", "<s>", "</s>"] + [f"w{i}" for i in range(vocab - 3)]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>")


def with_extra_token(tok):
    """A copy of `tok` with one more token ("<sep>"): a tokenizer that must hash differently."""
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(tokenizer_object=tok.backend_tokenizer, unk_token="<unk>", bos_token="<s>",
                                  eos_token="</s>")
    tok.add_tokens(["<sep>"])
    return tok


@pytest.fixture
def tiny_model(tmp_path) -> Path:
    return write_tiny_llama(tmp_path / "model")


@pytest.fixture
def pattern_shards(tmp_path) -> Path:
    return write_pattern_shards(tmp_path / "shards")
