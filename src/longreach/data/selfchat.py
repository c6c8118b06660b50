"""Short chat data in the model's own words, to mix into continued pretraining.

    longreach data self-chat --model SmolLM2-135M-Instruct.Q4_1.gguf --input corpus/ --n 2000 --out chat/
    longreach data prepare --input corpus/ --input chat/self-chat.jsonl --tokenizer ... --seq-len 32768 ...

Why: continued pretraining of an instruct model on raw long documents keeps its language modelling but loses
its instruct behaviour (SmolLM2-135M-Instruct on an H100, 2026-11-25: held-out perplexity 22.09 -> 21.96, yet
greedy chat answers at 2K fell from 1.0 to 0.3; docs/LOG.md). ProLong and ChatQA 2 keep short data in the
long-context mix; a user of an instruct checkpoint seldom has its instruction data, but the checkpoint itself
can answer: each sample is a passage of the user's own corpus (cut at sentence boundaries to a random length
in `passage_tokens`), one of `instructions`, and the model's greedy answer, rendered by the model's chat
template. Answers that may have been cut by `max_new_tokens` are left out (a cut answer would teach the model
to stop mid-way).

Output (`out`): generations.jsonl (resumable: a stopped run continues), and self-chat.jsonl with one record
per kept sample: {"text": the chat-template rendering, "special_tokens": true, "messages", "source_doc"}.
`"special_tokens": true` makes `data prepare` encode "<|im_start|>" etc. as the tokenizer's special tokens;
the file's name is its source, so per-source up-sampling keeps its share of the tokens.
"""

from __future__ import annotations

import json
import random
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from longreach.errors import InputError

DEFAULT_INSTRUCTIONS = [
    "Summarize the text above in two sentences.",
    "What is the main point of the text above?",
    "List three facts stated in the text above.",
    "Explain the first sentence of the text above in simple words.",
    "Write one question that the text above answers, then answer it.",
    "What is the text above about? Answer in one sentence.",
]


@dataclass
class SelfChatConfig:
    model: str = ""  # instruct model with a chat template: HF folder or .gguf (or the tokenizer with base_url)
    inputs: list[str] = field(default_factory=list)  # corpus files/folders, as for `data prepare`
    out: str = ""  # folder: generations.jsonl, self-chat.jsonl, summary.json
    n: int = 1000  # prompts to answer
    passage_tokens: list[int] = field(default_factory=lambda: [120, 600])  # passage length range (tokens)
    instructions: list[str] = field(default_factory=lambda: list(DEFAULT_INSTRUCTIONS))
    max_new_tokens: int = 160  # answers longer than this are dropped
    batch_size: int = 8
    seed: int = 0
    base_url: str | None = None  # an OpenAI-compatible server instead of a local model
    served_model: str | None = None
    dtype: str | None = None
    device: str | None = None
    text_field: str = "text"


def _check(cfg: SelfChatConfig) -> None:
    if not cfg.model:
        raise InputError("--model is required (an instruct model with a chat template)", field="model")
    if not cfg.inputs:
        raise InputError("give at least one --input corpus", field="inputs")
    if not cfg.out:
        raise InputError("--out is required", field="out")
    if len(cfg.passage_tokens) != 2 or not 0 < cfg.passage_tokens[0] <= cfg.passage_tokens[1]:
        raise InputError(f"passage_tokens is a range MIN,MAX with 0 < MIN <= MAX, got {cfg.passage_tokens}",
                         field="passage_tokens")
    if cfg.n < 1 or cfg.max_new_tokens < 1:
        raise InputError("n and max_new_tokens must be >= 1", field="n" if cfg.n < 1 else "max_new_tokens")
    if not cfg.instructions or not all(isinstance(x, str) and x.strip() for x in cfg.instructions):
        raise InputError("instructions must be non-empty strings", field="instructions")


_RUNTIME = ("batch_size", "device", "dtype", "base_url", "served_model")  # may change between resumed runs


def _check_resume(cfg: SelfChatConfig, out: Path) -> None:
    """A folder holds one set: resuming with other settings would pair old answers with new prompts."""
    from dataclasses import asdict

    want = {k: v for k, v in asdict(cfg).items() if k not in _RUNTIME}
    saved = out / "config.json"
    if saved.exists() and (out / "generations.jsonl").exists():
        have = json.loads(saved.read_text())
        diff = sorted(k for k in want if have.get(k) != want[k])
        if diff:
            raise InputError(f"holds self-chat data made with other settings ({', '.join(diff)}): use another "
                             f"--out", path=str(out))
    saved.write_text(json.dumps(want, indent=2) + "\n")


def sample_passages(cfg: SelfChatConfig, tok: Any) -> list[dict[str, Any]]:
    """`n` seeded (passage, instruction) examples from the corpus; a document is drawn in proportion to its
    length, a passage starts after a sentence end and ends at one."""
    from longreach.data.readers import iter_documents

    docs = [d for path in cfg.inputs for d in iter_documents(path, text_field=cfg.text_field) if "." in d.text]
    if not docs:
        raise InputError("no document with a sentence ('.') in the inputs", field="inputs")
    rng = random.Random(cfg.seed)
    weights = [len(d.text) for d in docs]
    lo, hi = cfg.passage_tokens
    out: list[dict[str, Any]] = []
    tries = 0
    while len(out) < cfg.n:
        tries += 1
        if tries > 20 * cfg.n + 100:
            raise InputError(f"only {len(out)} of {cfg.n} passages of {lo}-{hi} tokens found: documents too short",
                             field="passage_tokens")
        doc = rng.choices(docs, weights)[0]
        want = rng.randint(lo, hi)
        start = doc.text.rfind(". ", 0, rng.randrange(len(doc.text)))
        start = 0 if start < 0 else start + 2
        window = doc.text[start:start + 8 * want]  # generous: few tokenizers average more than 8 chars a token
        ids = tok(window, add_special_tokens=False)["input_ids"][:want]
        text = tok.decode(ids)
        end = text.rfind(".")
        text = text[:end + 1].strip() if end >= 0 else ""
        if not text or len(tok(text, add_special_tokens=False)["input_ids"]) < lo:
            continue
        out.append({"id": len(out), "passage": text, "instruction": rng.choice(cfg.instructions),
                    "source_doc": doc.doc_id})
    return out


def messages(ex: dict[str, Any]) -> list[dict[str, str]]:
    return [{"role": "user", "content": f"{ex['passage']}\n\n{ex['instruction']}"}]


def run(cfg: SelfChatConfig, backend: Any = None) -> dict[str, Any]:
    """Generate (or resume), then write self-chat.jsonl and summary.json; returns the summary."""
    from longreach.eval import task
    from longreach.eval.backends import open_backend

    _check(cfg)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    _check_resume(cfg, out)
    backend = backend or open_backend(cfg.model, cfg.base_url, cfg.served_model, True, cfg.dtype, cfg.device,
                                      cfg.batch_size)
    tok = backend.tokenizer
    if not getattr(tok, "chat_template", None):
        raise InputError("the model's tokenizer has no chat template: self-chat data needs an instruct model",
                         field="model")
    examples = sample_passages(cfg, tok)

    # Re-encoding a decoded answer can come out a few tokens shorter than what was generated, so an answer
    # counts as finished only with a margin below the budget (a few answers that ended just in time are lost).
    margin = max(4, cfg.max_new_tokens // 16)

    def score(ex: dict[str, Any], answer: str) -> dict[str, Any]:
        n = len(tok(answer, add_special_tokens=False)["input_ids"])
        return {"score": float(n < cfg.max_new_tokens - margin and bool(answer.strip())), "answer_tokens": n}

    records = task.run(examples, messages, backend, score, out / "generations.jsonl", cfg.max_new_tokens,
                       batch_size=cfg.batch_size)
    kept = 0
    tokens = 0
    tmp = out / "self-chat.jsonl.tmp"
    with tmp.open("w") as f:
        for ex, rec in zip(examples, records):
            if not rec["score"]:
                continue
            msgs = messages(ex) + [{"role": "assistant", "content": rec["prediction"].strip()}]
            text = tok.apply_chat_template(msgs, tokenize=False)
            tokens += len(tok(text, add_special_tokens=False)["input_ids"])
            f.write(json.dumps({"text": text, "special_tokens": True, "messages": msgs,
                                "source_doc": ex["source_doc"]}, ensure_ascii=False) + "\n")
            kept += 1
    if not kept:
        tmp.unlink()
        raise InputError(f"none of the {len(records)} answers finished within {cfg.max_new_tokens} tokens "
                         f"(see {out / 'generations.jsonl'}): raise --max-new-tokens", field="max_new_tokens")
    tmp.replace(out / "self-chat.jsonl")
    summary = {"out": str(out / "self-chat.jsonl"), "prompts": len(records), "kept": kept,
               "dropped_cut_or_empty": len(records) - kept, "tokens": tokens, "model": cfg.model}
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"self-chat: kept {kept} of {len(records)} answers ({tokens} tokens) -> {summary['out']}",
          file=sys.stderr)
    return summary
