"""A tiny chat model for the CPU SFT demo and tests: a byte-level BPE trained on real text + a 2-layer Llama.

A real model's 49K-128K vocabulary would make a hidden-64 model spend nearly all its time in the output
layer, so the demo trains its own small vocabulary (1024 by default) on real text.

    longreach sft tiny-model --out runs/sft-demo/start      # then: longreach sft --config configs/sft-demo-cpu.yaml
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

BOS, EOS, PAD = "<s>", "<|im_end|>", "<pad>"
# ChatML, as SmolLM2 and Qwen use it: a turn ends with <|im_end|> (the EOS token) and a newline.
CHAT_TEMPLATE = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}"
                 "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
PLAYS = ("as_you_like_it_gut.txt", "hamlet_gut.txt")  # from assets.gutenberg_texts()


def default_texts(max_chars: int = 200_000) -> list[str]:
    """Training text for the tiny vocabulary: two Gutenberg plays and the Paul Graham essays (real English
    of two periods, so neither the plays nor modern prose fall apart into single bytes)."""
    from longreach import assets
    gut, pg = assets.gutenberg_texts(), assets.paul_graham_essays()
    files = [gut / f for f in PLAYS if (gut / f).is_file()]
    texts = [f.read_text(encoding="utf-8", errors="replace")[:max_chars // 2] for f in files]
    texts += [f.read_text(encoding="utf-8", errors="replace") for f in sorted(pg.glob("*.txt"))]
    return texts


def train_tokenizer(texts: list[str], vocab_size: int = 1024) -> Any:
    """A byte-level BPE (every string encodes; character offsets work) that puts BOS first, like Llama-3."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = [BOS, EOS, PAD, "<|im_start|>"]
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer)
    tok.post_processor = processors.TemplateProcessing(single=f"{BOS} $A", pair=f"{BOS} $A $B",
                                                       special_tokens=[(BOS, tok.token_to_id(BOS))])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD,
                                   chat_template=CHAT_TEMPLATE)


def write_tiny_chat_model(out: str | Path, vocab_size: int = 1024, hidden: int = 64, layers: int = 2,
                          max_position: int = 2048, seed: int = 0, texts: list[str] | None = None) -> Path:
    """Save a tokenizer + randomly initialised tiny Llama (Hugging Face folder) at `out`."""
    from longreach.model.tiny import tiny_llama, tiny_llama_config

    out = Path(out)
    tok = train_tokenizer(texts or default_texts(), vocab_size)
    cfg = tiny_llama_config(len(tok), hidden=hidden, layers=layers, max_position=max_position)
    cfg.bos_token_id, cfg.eos_token_id, cfg.pad_token_id = tok.bos_token_id, tok.eos_token_id, tok.pad_token_id
    model = tiny_llama(cfg, seed=seed)
    model.generation_config.bos_token_id = tok.bos_token_id
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out
