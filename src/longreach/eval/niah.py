"""Needle in a haystack (gkamradt's test, as in ChatQA 2), scored without a judge model.

    longreach eval niah --model SmolLM2-135M-Instruct.Q4_1.gguf --lengths 2000,4000 --depths 0,25,50,75,100 \
        --out runs/niah          # CPU, or one GPU; --base-url http://host:8000 for a served model

A cell (length L, depth D) is one prompt of exactly L tokens of the model's tokenizer (template, context,
needle and question all counted). The haystack (Paul Graham essays by default, in sorted file order, repeated
as needed) is cut to fit, and the needle goes in at D% of the context tokens, moved back to just after the
nearest preceding period (a sentence boundary); D = 100 puts it at the very end. (Where re-encoding merges
tokens at the cut so that no cut gives exactly L, the haystack starts a few tokens later; if even that
fails, the prompt is the longest under L. Each record keeps its prompt_tokens.)

Scoring (written down because the acceptance numbers depend on it):
- generate: greedy answer. A digits answer (a pass key) scores 1 if the first run of digits in the output
  equals it, else 0. A text answer scores the fraction of its key words (lower-cased words minus a short
  stop-word list: for the default needle eat, sandwich, sit, dolores, park, sunny, day) that begin some word
  of the output ("eating" counts for "eat").
- logprob: the answer and its distractors are scored as continuations after the needle's own lead-in (for the
  default needle "The best thing to do in San Francisco is"); 1 if the answer's summed log-prob beats every
  distractor, else 0. The record also keeps p_answer, the answer's softmax probability among the choices.
  A pass-key answer gets `distractors_digits` random keys of the same length as distractors.

Prompt: chat models get one user turn, "{context}\n\n{question}", in their chat template with its own default
system prompt. (gkamradt adds a system line and "Don't give information outside the document or repeat your
findings"; SmolLM2-135M-Instruct then answers with that sentence instead of the needle: 4K scored 0.6 with it,
1.0 without, on CPU.) Raw-text models get "{context}\n\nQuestion: {question}\nAnswer: {lead-in}" (no
"Question:" line when the question is empty). In logprob mode chat prompts also end with the lead-in as the
start of the assistant's answer. A needle containing "{key}" gets a random key per cell and trial (seeded: a resumed run
asks the same keys).
"""

from __future__ import annotations

import json
import math
import random
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from longreach import config as config_io
from longreach.errors import InputError
from longreach.eval import task
from longreach.eval.backends import BackendError, open_backend, render

DEFAULT_NEEDLE = "The best thing to do in San Francisco is eat a sandwich and sit in Dolores Park on a sunny day."
DEFAULT_QUESTION = "What is the best thing to do in San Francisco?"
DEFAULT_ANSWER = "eat a sandwich and sit in Dolores Park on a sunny day"
# Other San Francisco plans of about the answer's length: what the answer must beat in logprob mode.
DEFAULT_DISTRACTORS = [
    "ride a cable car up Nob Hill and watch the boats on the bay",
    "walk across the Golden Gate Bridge and eat clam chowder at the pier",
    "take a ferry to Alcatraz and walk along the water in the evening",
    "hike up Twin Peaks and watch the fog roll over the city at dusk",
    "drink coffee in the Mission and browse the bookstores on Valencia Street",
]
STOPWORDS = {"a", "an", "the", "and", "or", "in", "on", "at", "to", "of", "is", "are", "be", "it", "for", "with",
             "by", "as", "from"}


@dataclass
class NiahConfig:
    model: str = ""  # HF folder or .gguf file; with base_url, where the tokenizer comes from
    haystack: str | None = None  # .txt file or folder of .txt files; None: the Paul Graham essays
    needle: str = DEFAULT_NEEDLE  # "{key}" in it becomes a random pass key per cell and trial
    question: str = DEFAULT_QUESTION  # may be empty (raw-text prompts then end with the lead-in only)
    answer: str = DEFAULT_ANSWER  # "{key}" for pass keys (scored as digits)
    lengths: list[int] = field(default_factory=lambda: [1000, 2000, 4000])  # whole-prompt tokens
    depths: list[float] = field(default_factory=lambda: [0.0, 25.0, 50.0, 75.0, 100.0])  # % of context
    out: str = "runs/niah"  # results.json, heatmap.png, predictions.jsonl, config.yaml go here
    mode: str = "generate"  # generate (greedy answer) or logprob (answer vs distractors)
    chat: bool | None = None  # None: use the chat template when the tokenizer has one
    base_url: str | None = None  # an OpenAI-compatible server instead of a local model
    served_model: str | None = None  # the server's model id; None: the first one it lists
    trials: int = 1  # prompts per cell (useful with random pass keys); a cell scores their mean
    max_new_tokens: int = 64  # room for a short sentence that restates the answer
    distractors: list[str] = field(default_factory=lambda: list(DEFAULT_DISTRACTORS))  # logprob, text answers
    distractors_digits: int = 5  # logprob, pass keys: this many random keys compete with the answer
    key_digits: int = 5  # length of random pass keys
    seed: int = 0  # pass keys come from (seed, length, depth, trial)
    batch_size: int = 4  # prompts per backend call (long prompts are still prefilled one at a time)
    dtype: str | None = None  # None: bfloat16 on GPU, float32 on CPU
    device: str | None = None  # None: cuda when available
    resume: bool = True  # keep finished cells found in out/predictions.jsonl


# -- scoring ------------------------------------------------------------------------------------------------
def words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", text.lower())


def key_words(answer: str) -> list[str]:
    ws = words(answer)
    return [w for w in ws if w not in STOPWORDS] or ws


def answer_score(prediction: str, answer: str) -> float:
    """See the module docstring: digits match for pass keys, key-word fraction for text answers."""
    if answer.isdigit():
        first = re.search(r"\d+", prediction)
        return float(first is not None and first.group() == answer)
    keys, got = key_words(answer), words(prediction)
    if not keys:
        raise InputError("the answer has no words to look for", field="answer")
    return sum(any(g.startswith(k) for g in got) for k in keys) / len(keys)


def choice_score(logprobs: list[float]) -> dict[str, float]:
    """Answer first, distractors after: 1 if the answer has the highest log-prob, and its softmax share."""
    top = max(logprobs)
    p = math.exp(logprobs[0] - top) / sum(math.exp(x - top) for x in logprobs)
    return {"score": float(logprobs[0] > max(logprobs[1:])), "p_answer": p}


# -- haystack and prompts -------------------------------------------------------------------------------------
def read_haystack(path: str | Path | None) -> str:
    """The haystack text: one file, or every .txt under a folder in sorted order joined by blank lines."""
    if path is None:
        from longreach import assets

        path = assets.paul_graham_essays()
    p = Path(path)
    if not p.exists():
        raise InputError("haystack not found", path=str(p))
    files = sorted(p.rglob("*.txt")) if p.is_dir() else [p]
    if not files:
        raise InputError("no .txt files in the haystack folder", path=str(p))
    text = "\n\n".join(f.read_text(errors="replace").strip() for f in files)
    if "." not in text:
        raise InputError("haystack has no sentences (no '.') to put the needle between", path=str(p))
    return text


def lead_in(needle: str, answer: str) -> str:
    """The needle's words before the answer ("The best thing to do in San Francisco is"), or ""."""
    at = needle.find(answer)
    return needle[:at].strip() if at > 0 else ""


def insert_needle(context: str, needle: str, depth: float, char_at: int) -> str:
    """Put the needle after the last period at or before `char_at` (the start if none); depth 100: the end."""
    if depth >= 100:
        at = len(context)
    else:
        period = context.rfind(".", 0, char_at)
        at = period + 1 if period >= 0 else 0
    return context[:at] + "\n" + needle + "\n" + context[at:]


class Haystack:
    """Builds each cell's prompt to an exact token length."""

    def __init__(self, backend: Any, text: str, max_length: int, chat: bool):
        self.backend, self.tok, self.chat = backend, backend.tokenizer, chat
        ids = list(self.tok(text, add_special_tokens=False)["input_ids"])
        if len(ids) < max_length:  # repeat the essays until they cover the longest cell
            reps = max_length // max(1, len(ids)) + 1
            ids = list(self.tok("\n\n".join([text] * reps), add_special_tokens=False)["input_ids"])
        self.ids = ids

    def prompt(self, context: str, question: str, prefix: str | None) -> Any:
        """Chat messages or raw text; `prefix` (None in chat generation) starts the answer."""
        if self.chat:
            msgs = [{"role": "user", "content": f"{context}\n\n{question}".rstrip()}]
            return msgs + ([{"role": "assistant", "content": prefix}] if prefix is not None else [])
        lead = f"Question: {question}\nAnswer:" if question else ""
        return context + "\n\n" + " ".join(x for x in (lead, prefix or "") if x)

    def context(self, n_tokens: int, needle: str, depth: float, skip: int = 0) -> str:
        """Haystack tokens [skip, skip + n_tokens) as text with the needle inside."""
        ctx_ids = self.ids[skip:skip + n_tokens]
        text = self.tok.decode(ctx_ids)
        char_at = min(len(text), len(self.tok.decode(ctx_ids[:int(n_tokens * depth / 100)])))
        return insert_needle(text, needle, depth, char_at)

    def build(self, length: int, depth: float, needle: str, question: str, prefix: str | None) -> Any:
        """The prompt with the most haystack whose token count is `length` (or just under when the
        tokenizer cannot hit it exactly)."""
        def make(n: int, skip: int = 0) -> tuple[int, Any]:
            prompt = self.prompt(self.context(n, needle, depth, skip), question, prefix)
            return self.backend.count_tokens(prompt), prompt

        n_ctx = length - make(0)[0]
        best: tuple[int, Any] | None = None
        under = over = None  # most haystack tokens found to fall short, fewest found to overshoot
        for _ in range(24):  # re-encoding merges tokens at the seams: step by the miss, then bisect
            if not 0 <= n_ctx <= len(self.ids):
                break
            got, prompt = make(n_ctx)
            if got == length:
                return prompt
            if got < length:
                under = n_ctx if under is None else max(under, n_ctx)
                best = (got, prompt) if best is None or got > best[0] else best
            else:
                over = n_ctx if over is None else min(over, n_ctx)
            if under is not None and over is not None:
                if over - under <= 1:
                    break
                n_ctx = (under + over) // 2
            else:
                n_ctx += length - got
        # One token more overshoots, one fewer falls short: the cut's last token re-encodes as two (e.g. "?  A"
        # as " " + " A"). Starting the haystack a few tokens later moves the cut to other tokens.
        for skip in range(1, 6) if over is not None else []:
            for n in (over, over - 1):
                if n + skip > len(self.ids):
                    continue
                got, prompt = make(n, skip)
                if got == length:
                    return prompt
                if got < length and (best is None or got > best[0]):
                    best = (got, prompt)
        if best is None:
            raise InputError(f"length {length} is too short for the template, question and needle",
                             field="lengths")
        return best[1]


def continuation(prompt_text: str, answer: str) -> str:
    """The answer as it continues the prompt: after a space unless the prompt ends in whitespace."""
    return answer if not prompt_text or prompt_text[-1].isspace() else " " + answer


# -- the run --------------------------------------------------------------------------------------------------
def cell_examples(cfg: NiahConfig) -> list[dict[str, Any]]:
    out = []
    for length in cfg.lengths:
        for depth in cfg.depths:
            for trial in range(cfg.trials):
                rng = random.Random(f"{cfg.seed}-{length}-{depth:g}-{trial}")
                key = str(rng.randint(10 ** (cfg.key_digits - 1), 10 ** cfg.key_digits - 1))
                ex = {"id": f"L{length}-D{depth:g}-T{trial}", "length": length, "depth": float(depth),
                      "trial": trial, "needle": cfg.needle.replace("{key}", key),
                      "question": cfg.question.replace("{key}", key), "answer": cfg.answer.replace("{key}", key)}
                if cfg.mode == "logprob":
                    if ex["answer"].isdigit():
                        n = len(ex["answer"])
                        others: set[str] = set()
                        while len(others) < cfg.distractors_digits:
                            others.add(str(rng.randint(10 ** (n - 1), 10 ** n - 1)))
                            others.discard(ex["answer"])
                        ex["distractors"] = sorted(others)
                    else:
                        ex["distractors"] = list(cfg.distractors)
                out.append(ex)
    return out


def _check(cfg: NiahConfig) -> None:
    if not cfg.model:
        raise InputError("--model is required", field="model")
    if cfg.mode not in ("generate", "logprob"):
        raise InputError(f"mode must be generate or logprob, got {cfg.mode!r}", field="mode")
    if not cfg.lengths or not cfg.depths or any(n <= 0 for n in cfg.lengths):
        raise InputError("give positive --lengths and at least one depth", field="lengths")
    if any(not 0 <= d <= 100 for d in cfg.depths):
        raise InputError("depths are percentages in 0..100", field="depths")
    if cfg.trials < 1:
        raise InputError("trials must be >= 1", field="trials")
    if "{key}" in cfg.answer and "{key}" not in cfg.needle:
        raise InputError("the answer uses {key} but the needle does not", field="answer")
    if cfg.answer.replace("{key}", "1") not in cfg.needle.replace("{key}", "1"):
        print("warning: the answer is not part of the needle; the prompt gets no lead-in", file=sys.stderr)
    custom_text = cfg.needle != DEFAULT_NEEDLE and not cfg.answer.replace("{key}", "1").isdigit()
    if cfg.mode == "logprob" and custom_text and cfg.distractors == DEFAULT_DISTRACTORS:
        raise InputError("logprob mode with a custom text needle needs its own --distractor answers",
                         field="distractors")


def _check_resume(cfg: NiahConfig, out: Path) -> None:
    """A folder holds one experiment: resuming with other settings would mix two runs' cells."""
    saved = out / "config.yaml"
    if not (cfg.resume and saved.exists() and (out / "predictions.jsonl").exists()):
        return
    old = config_io.load(NiahConfig, saved)
    ignore = {"out", "resume", "batch_size", "device", "base_url", "served_model"}
    diff = [k for k in config_io.to_dict(cfg) if k not in ignore and getattr(old, k) != getattr(cfg, k)]
    if diff:
        raise InputError(f"holds a run with other settings ({', '.join(diff)}): use another --out or --no-resume",
                         path=str(out))


def run(cfg: NiahConfig, backend: Any = None) -> dict[str, Any]:
    """Evaluate every (length, depth, trial); writes results.json, heatmap.png, predictions.jsonl."""
    from longreach.eval.plots import niah_heatmap

    _check(cfg)
    out = Path(cfg.out)
    start = time.time()
    backend = backend or open_backend(cfg.model, cfg.base_url, cfg.served_model, cfg.chat, cfg.dtype, cfg.device,
                                      cfg.batch_size)
    chat = cfg.chat if cfg.chat is not None else bool(getattr(backend.tokenizer, "chat_template", None))
    try:
        window = backend.max_length
        if max(cfg.lengths) > window:
            print(f"note: lengths above the model's window ({window}) are tested as asked", file=sys.stderr)
    except BackendError:  # a server that does not report its window: nothing to warn about
        pass
    resolved = NiahConfig(**{**config_io.to_dict(cfg), "chat": chat})
    _check_resume(resolved, out)
    config_io.dump(resolved, out / "config.yaml")
    hay = Haystack(backend, read_haystack(cfg.haystack), max(cfg.lengths), chat)

    def build_prompt(ex: dict[str, Any]) -> Any:
        prefix = lead_in(ex["needle"], ex["answer"])
        if cfg.mode == "generate" and chat:
            prefix = None  # a chat model answers in its own words
        return hay.build(ex["length"], ex["depth"], ex["needle"], ex["question"], prefix)

    def score(ex: dict[str, Any], pred: Any) -> dict[str, Any]:
        s = answer_score(pred, ex["answer"]) if cfg.mode == "generate" else None
        rec = {"score": s} if s is not None else choice_score(pred)
        return {**rec, "length": ex["length"], "depth": ex["depth"], "trial": ex["trial"], "answer": ex["answer"]}

    def choices(ex: dict[str, Any], prompt: Any) -> list[str]:
        text = render(backend.tokenizer, prompt)
        return [continuation(text, a) for a in [ex["answer"], *ex["distractors"]]]

    examples = cell_examples(cfg)
    # Non-chat base models ramble on; the answer sits on the first line.
    stop = None if chat else ["\n"]
    records = task.run(examples, build_prompt, backend, score, out / "predictions.jsonl", cfg.max_new_tokens,
                       resume=cfg.resume, batch_size=cfg.batch_size, stop=stop,
                       choices=choices if cfg.mode == "logprob" else None)
    cells = []
    for length in cfg.lengths:
        for depth in cfg.depths:
            got = [r["score"] for r in records if r["length"] == length and r["depth"] == float(depth)]
            cells.append({"length": int(length), "depth": float(depth), "score": sum(got) / len(got)})
    results = {"model": cfg.model, "cells": cells, "mean": sum(c["score"] for c in cells) / len(cells),
               "mode": cfg.mode, "chat": chat, "trials": cfg.trials, "needle": cfg.needle,
               "question": cfg.question, "answer": cfg.answer, "seconds": round(time.time() - start, 1)}
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    niah_heatmap(results, out / "heatmap.png")
    return results

