"""Needle in a haystack (gkamradt's test, as in ChatQA 2), scored without a judge model.

    longreach eval niah --model SmolLM2-135M-Instruct.Q4_1.gguf --lengths 2000,4000 --depths 0,25,50,75,100 \
        --out runs/niah          # CPU, or one GPU; --base-url http://host:8000 for a served model

A cell (length L, depth D) is one prompt of exactly L tokens of the model's tokenizer (template, context,
needle and question all counted). The haystack (Paul Graham essays by default, in sorted file order, repeated
as needed) is cut to fit, and the needle goes in at D% of the context tokens, moved back to just after the
nearest preceding period (a sentence boundary); D = 100 puts it at the very end. (Where re-encoding merges
tokens at the cut so that no cut gives exactly L, the haystack starts a few tokens later; if even that
fails, the prompt is the longest under L. Each record keeps its prompt_tokens.)

Trials: with `trials` T > 1 a cell is T prompts and scores their mean. Trial 0 reads the haystack from its
start (so T = 1 is the classic grid); trial t > 0 from a seeded paragraph start, wrapping around to the
beginning (`rotate_haystack`, the starts are in results.json), so the trials are independent samples of the
text around the needle and `longreach eval compare` gets narrower intervals. Without it, only a "{key}" needle
varies between trials.

results.json also names the test (needle, question, answer, mode, trials, the haystack's sha256, ...: what a report
checks before it pairs two grids) and, for a `longreach average` model, the runs it averages (`model_sources`).

Scoring (written down because the acceptance numbers depend on it):
- generate: greedy answer. A digits answer (a pass key) scores 1 if the first run of digits in the output
  equals it, else 0. A text answer scores the fraction of its key words (lower-cased words minus a short
  stop-word list: for the default needle eat, sandwich, sit, dolores, park, sunny, day) that begin some word
  of the output ("eating" counts for "eat").
- logprob: the answer and its distractors are scored as continuations after the needle's own lead-in (for the
  default needle "The best thing to do in San Francisco is"); 1 if the answer's summed log-prob beats every
  distractor, else 0. The record also keeps p_answer, the answer's softmax probability among the choices.
  A pass-key answer gets `distractors_digits` random keys of the same length as distractors.
  Every distractor is ALSO in the context, as its own needle about another subject ("The best thing to do in
  Paris is walk along the Seine ..."), at a seeded random depth (multi-key NIAH, as in RULER). Without that, a
  model that only notices which words occur somewhere in the context wins: on an H100 (2026-11-25) SmolLM2-135M
  scored 1.0 at 16K-24K, twice its window, and its RoPE-base-changed copy 1.0 at 1K-32K, while both generated
  nothing right there (docs/LOG.md). With the distractors in the context, a model has to bind the answer to
  the asked subject: chance is 1 / (1 + distractors). Position biases remain (on CPU the base-changed copy
  still scored at depths 0, 75 and 100 of 2K-4K: 0.6 against 1.0 before the change), so generation stays the
  primary score and log-prob a diagnostic. `distractors_in_context: false` gives the lenient form back (for
  comparison only).

Prompt: chat models get one user turn, "{context}\n\n{question}", in their chat template with its own default
system prompt. (gkamradt adds a system line and "Don't give information outside the document or repeat your
findings"; SmolLM2-135M-Instruct then answers with that sentence instead of the needle: 4K scored 0.6 with it,
1.0 without, on CPU.) Raw-text models get "{context}\n\nQuestion: {question}\nAnswer: {lead-in}" (no
"Question:" line when the question is empty). In logprob mode chat prompts also end with the lead-in as the
start of the assistant's answer. A needle containing "{key}" gets a random key per cell and trial (seeded: a resumed run
asks the same keys).
"""

from __future__ import annotations

import hashlib
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
DEFAULT_SUBJECT = "San Francisco"  # what the question asks about; distractor needles name other subjects
# logprob mode: plans for other cities, of about the answer's length; each is a needle in the context too
# ("The best thing to do in Paris is ..."), and a wrong answer the right one must beat.
DEFAULT_DISTRACTOR_SUBJECTS = ["Paris", "Tokyo", "Chicago", "Rome", "Sydney"]
DEFAULT_DISTRACTORS = [
    "walk along the Seine and eat a croissant in a small cafe at noon",
    "ride the train to Shibuya and eat ramen at a counter late at night",
    "walk along the lake shore and eat deep dish pizza in the evening",
    "climb the Spanish Steps and eat gelato in a quiet square at dusk",
    "take a ferry across the harbour and swim at Bondi Beach in the morning",
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
    trials: int = 1  # prompts per cell; a cell scores their mean (each trial its own haystack and pass key)
    rotate_haystack: bool = True  # trial t > 0 starts the haystack at a seeded paragraph (trial 0 at the start)
    drop_sentences: str = ""  # a regex: haystack sentences it matches are left out (does the haystack itself hold
    # distractors for the question? e.g. "San Francisco" for the default needle; the needle is never dropped);
    # results.json's sentences_dropped counts them in the whole haystack text, not per cell
    max_new_tokens: int = 64  # room for a short sentence that restates the answer
    distractors: list[str] = field(default_factory=lambda: list(DEFAULT_DISTRACTORS))  # logprob, text answers
    distractors_digits: int = 5  # logprob, pass keys: this many random keys compete with the answer
    distractors_in_context: bool = True  # logprob: each distractor is a needle of its own in the context
    subject: str = DEFAULT_SUBJECT  # in the needle and the question; distractor needles swap it out
    distractor_subjects: list[str] = field(default_factory=lambda: list(DEFAULT_DISTRACTOR_SUBJECTS))
    key_digits: int = 5  # length of random pass keys
    seed: int = 0  # pass keys come from (seed, length, depth, trial), haystack starts from (seed, trial)
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


def per_length(result: dict[str, Any]) -> dict[int, float]:
    """A NIAH result's mean score at each context length (its cells averaged over depths and trials)."""
    by: dict[int, list[float]] = {}
    for c in result["cells"]:
        by.setdefault(c["length"], []).append(float(c["score"]))
    return {n: sum(v) / len(v) for n, v in sorted(by.items())}


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


def needle_position(context: str, depth: float, char_at: int) -> int:
    """After the last period at or before `char_at` (the start if none); depth 100: the end."""
    if depth >= 100:
        return len(context)
    period = context.rfind(".", 0, char_at)
    return period + 1 if period >= 0 else 0


def insert_needle(context: str, needle: str, depth: float, char_at: int) -> str:
    """Put the needle on its own line at `needle_position`."""
    return insert_needles(context, [(needle_position(context, depth, char_at), 0, needle)])


def insert_needles(context: str, placed: list[tuple[int, Any, str]]) -> str:
    """Insert (char position, order key, needle) triples; needles at one position go in order-key order."""
    out, last = [], 0
    for at, _, needle in sorted(placed):
        out += [context[last:at], "\n" + needle + "\n"]
        last = at
    return "".join(out) + context[last:]


def distractor_depths(n: int, depth: float, rng: random.Random, gap: float = 5.0) -> list[float]:
    """n seeded depths in 0..100 at least `gap` points from the needle's (fewer apart when n is large)."""
    out: list[float] = []
    while len(out) < n:
        d = round(rng.uniform(0, 100), 1)
        if abs(d - depth) >= gap or n > 100 / (2 * gap):
            out.append(d)
    return out


def drop_sentences(text: str, pattern: str) -> tuple[str, int]:
    """`text` without the sentences `pattern` matches (re.search), and how many those were. A dropped sentence
    takes the whitespace after it, or the one before it where only the one after breaks a paragraph, so the
    paragraphs stay as they were."""
    from longreach.rag.chunk import sentence_spans

    regex = re.compile(pattern)
    kept, at, dropped = [], 0, 0
    for start, end in sentence_spans(text):
        if not regex.search(text[start:end]):
            continue
        before, after = start, end
        while before > at and text[before - 1].isspace():
            before -= 1
        while after < len(text) and text[after].isspace():
            after += 1
        text_before = before > at or any(kept)
        only_after_breaks = "\n" in text[end:after] and "\n" not in text[before:start]
        if text_before and only_after_breaks:  # the paragraph break after it stays, the space before it goes
            kept.append(text[at:before])
            at = end
        else:
            kept.append(text[at:start])
            at = after
        dropped += 1
    kept.append(text[at:])
    return "".join(kept), dropped


def model_sources(model: str | None) -> list[str] | None:
    """The runs a model averages (`longreach average` records them in its longreach.json), else None (a .gguf
    file, a hub id, a served model's name, a record that cannot be read: that one with a note): a report pairs a
    soup's grid with its runs' grids by these paths. With --base-url, `model` is where the tokenizer comes from."""
    from longreach.model.load import read_record

    try:
        record = read_record(model) if model else {}
    except (OSError, ValueError) as e:
        print(f"note: {model}: its longreach.json cannot be read ({e}); model_sources left out", file=sys.stderr)
        return None
    sources = record.get("sources") if isinstance(record, dict) and record.get("stage") == "average" else None
    return [str(x) for x in sources] if isinstance(sources, list) else None


def haystack_start(text: str, seed: int, trial: int) -> int:
    """Where trial `trial` starts reading the haystack: 0 for the first, else a paragraph start, trial t taking
    the t-th of the paragraphs in a seeded order (no two trials share one until they run out). One prompt per
    cell is one sample of the haystack; with a start per trial, trials are independent samples."""
    if trial == 0:
        return 0
    starts = [m.end() for m in re.finditer(r"\n\s*\n\s*", text) if m.end() < len(text)]  # first character
    if not starts:
        return 0
    random.Random(f"{seed}-haystack").shuffle(starts)
    return starts[(trial - 1) % len(starts)]


class Haystack:
    """Builds each cell's prompt to an exact token length; `start`: the text is read from this character
    on, wrapping around to its beginning."""

    def __init__(self, backend: Any, text: str, max_length: int, chat: bool, start: int = 0):
        self.backend, self.tok, self.chat = backend, backend.tokenizer, chat
        if start:
            text = text[start:].rstrip() + "\n\n" + text[:start].strip()
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

    def context(self, n_tokens: int, needles: list[tuple[str, float]], skip: int = 0) -> str:
        """Haystack tokens [skip, skip + n_tokens) as text with each (needle, depth) inside; needles that
        fall after the same period go in depth order (the first given first at equal depths)."""
        ctx_ids = self.ids[skip:skip + n_tokens]
        text = self.tok.decode(ctx_ids)
        placed = []
        for order, (needle, depth) in enumerate(needles):
            char_at = min(len(text), len(self.tok.decode(ctx_ids[:int(n_tokens * depth / 100)])))
            placed.append((needle_position(text, depth, char_at), (depth, order), needle))
        return insert_needles(text, placed)

    def build(self, length: int, depth: float, needle: str, question: str, prefix: str | None,
              others: list[tuple[str, float]] = ()) -> Any:
        """The prompt with the most haystack whose token count is `length` (or just under when the
        tokenizer cannot hit it exactly); `others`: distractor (needle, depth) pairs."""
        needles = [(needle, depth), *others]

        def make(n: int, skip: int = 0) -> tuple[int, Any]:
            prompt = self.prompt(self.context(n, needles, skip), question, prefix)
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
            raise InputError(f"length {length} is too short for the template, question and needle(s)",
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
                    if cfg.distractors_in_context:
                        ex["distractor_needles"] = [
                            [distractor_needle(cfg, ex, d, subj), at] for d, subj, at in
                            zip(ex["distractors"], cfg.distractor_subjects,
                                distractor_depths(len(ex["distractors"]), float(depth), rng))]
                out.append(ex)
    return out


def distractor_needle(cfg: NiahConfig, ex: dict[str, Any], distractor: str, subject: str) -> str:
    """The cell's needle about another subject, with the distractor in place of the answer: the subject is
    swapped in the needle's own words only, never inside the answer or the distractor."""
    needle, answer = ex["needle"], ex["answer"]
    at = needle.find(answer)
    before, after = needle[:at], needle[at + len(answer):]
    return before.replace(cfg.subject, subject) + distractor + after.replace(cfg.subject, subject)


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
    try:
        re.compile(cfg.drop_sentences)
    except re.error as e:
        raise InputError(f"not a regular expression: {e}", field="drop_sentences") from None
    if "{key}" in cfg.answer and "{key}" not in cfg.needle:
        raise InputError("the answer uses {key} but the needle does not", field="answer")
    if cfg.answer.replace("{key}", "1") not in cfg.needle.replace("{key}", "1"):
        print("warning: the answer is not part of the needle; the prompt gets no lead-in", file=sys.stderr)
    custom_text = cfg.needle != DEFAULT_NEEDLE and not cfg.answer.replace("{key}", "1").isdigit()
    if cfg.mode == "logprob" and custom_text and cfg.distractors == DEFAULT_DISTRACTORS:
        raise InputError("logprob mode with a custom text needle needs its own --distractor answers",
                         field="distractors")
    if cfg.mode == "logprob" and cfg.distractors_in_context:
        _check_subjects(cfg)


def _check_subjects(cfg: NiahConfig) -> None:
    """Distractor needles must differ from the needle only in subject and answer, so the question can tell."""
    digits = cfg.answer.replace("{key}", "1").isdigit()
    n = cfg.distractors_digits if digits else len(cfg.distractors)
    hint = ("give --subject (words of the needle and the question that name what is asked) and "
            "--distractor-subject for each distractor, or --no-distractors-in-context (lenient: see "
            "`longreach.eval.niah`)")
    if not cfg.subject or cfg.subject not in cfg.needle or cfg.subject not in cfg.question:
        raise InputError(f"logprob mode puts distractor needles in the context; the subject {cfg.subject!r} must "
                         f"appear in both the needle and the question: {hint}", field="subject")
    if cfg.subject in cfg.answer:
        raise InputError(f"the subject {cfg.subject!r} must not be part of the answer", field="subject")
    if cfg.answer.replace("{key}", "1") not in cfg.needle.replace("{key}", "1"):
        raise InputError("distractor needles replace the answer inside the needle: the answer must be part of "
                         "the needle", field="answer")
    subjects = cfg.distractor_subjects[:n]
    if len(subjects) < n or len(set(subjects)) < n or any(cfg.subject in x or x in cfg.subject for x in subjects):
        raise InputError(f"need {n} distinct distractor subjects, none containing or contained in "
                         f"{cfg.subject!r}, got {cfg.distractor_subjects!r}: {hint}", field="distractor_subjects")
    if not digits and (len(set(cfg.distractors)) < n or any(cfg.answer in d or d in cfg.answer or cfg.subject in d
                                                            for d in cfg.distractors)):
        raise InputError("distractors must be distinct, neither contain nor be part of the answer, and not "
                         "name the subject", field="distractors")


LOGPROB_ONLY = {"distractors", "distractors_digits", "distractors_in_context", "subject", "distractor_subjects"}


def _check_resume(cfg: NiahConfig, out: Path) -> None:
    """A folder holds one experiment: resuming with other settings would mix two runs' cells."""
    saved = out / "config.yaml"
    if not (cfg.resume and saved.exists() and (out / "predictions.jsonl").exists()):
        return
    old = config_io.load(NiahConfig, saved)
    if "distractors_in_context" not in saved.read_text():
        old.distractors_in_context = False  # saved before the field existed: the lenient form
    if "rotate_haystack" not in saved.read_text():
        old.rotate_haystack = False  # saved before the field existed: every trial read the haystack from its start
    ignore = {"out", "resume", "batch_size", "device", "base_url", "served_model"}
    if cfg.trials == 1 and old.trials == 1:
        ignore.add("rotate_haystack")  # one trial reads the haystack from its start either way
    if cfg.mode == "generate" and old.mode == "generate":
        ignore |= LOGPROB_ONLY
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
    sources = model_sources(cfg.model)  # before the grid: a bad record is a note now, not an error after it
    config_io.dump(resolved, out / "config.yaml")
    text = read_haystack(cfg.haystack)
    haystack_sha256 = hashlib.sha256(text.encode()).hexdigest()  # names the haystack wherever its file lies
    dropped = 0
    if cfg.drop_sentences:
        text, dropped = drop_sentences(text, cfg.drop_sentences)
        if "." not in text:
            raise InputError(f"--drop-sentences {cfg.drop_sentences!r} leaves no sentence of the haystack",
                             field="drop_sentences")
        if not dropped:
            print(f"note: --drop-sentences {cfg.drop_sentences!r} matches no sentence of the haystack",
                  file=sys.stderr)
    starts = [haystack_start(text, cfg.seed, t) if cfg.rotate_haystack else 0 for t in range(cfg.trials)]
    hays: dict[int, Haystack] = {}  # one per start, tokenized when its first prompt is built

    def build_prompt(ex: dict[str, Any]) -> Any:
        prefix = lead_in(ex["needle"], ex["answer"])
        if cfg.mode == "generate" and chat:
            prefix = None  # a chat model answers in its own words
        others = [(n, d) for n, d in ex.get("distractor_needles", [])]
        at = starts[ex["trial"]]
        if at not in hays:
            hays[at] = Haystack(backend, text, max(cfg.lengths), chat, start=at)
        return hays[at].build(ex["length"], ex["depth"], ex["needle"], ex["question"], prefix, others)

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
               "mode": cfg.mode, "chat": chat, "trials": cfg.trials, "haystack_starts": starts,
               "needle": cfg.needle, "haystack_sha256": haystack_sha256, "drop_sentences": cfg.drop_sentences,
               "sentences_dropped": dropped, "model_sources": sources,
               "distractors_in_context": cfg.mode == "logprob" and cfg.distractors_in_context,
               "question": cfg.question, "answer": cfg.answer, "seconds": round(time.time() - start, 1)}
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    niah_heatmap(results, out / "heatmap.png")
    return results

