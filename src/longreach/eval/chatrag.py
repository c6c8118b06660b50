"""ChatRAG Bench (conversational QA over documents, <= 4K context): data, ChatQA prompts and official scoring.

Reproduces NVIDIA's ChatRAG Bench evaluation code (nvidia/ChatRAG-Bench, evaluation/dataset.py,
get_scores.py, metrics.py):
- data: one JSON list per dataset; each item has `messages` ([{"role": "user"|"assistant", "content"}], last
  turn the user's), `ctxs` ([{"title", "text"}]) and `answers` (or `answer`); ConvFinQA also `exe_answer`;
- prompt: only the last 7 turns; a per-dataset instruction, prefixed to the FIRST user turn for long-answer
  datasets (doc2dial, quac, qrecc, inscit, doqa_*, hybridial, convfinqa) and to the LAST user turn otherwise
  (topiocqa, sqa, coqa); the top `num_ctx` (5) contexts as "title: T, source: X" joined by blank lines, cut
  from the end so that system + context + turns + max new tokens (64) stay under 4096 tokens;
- metric: token F1 with the official normaliser, which REPLACES punctuation with spaces (not SQuAD's removal)
  before dropping articles; best over the non-empty answers; examples without one are not counted. QuAC and
  DoQA predictions containing an "unanswerable" key phrase become the canned no-answer sentence first; INSCIT's
  added no-answer reference is dropped. ConvFinQA is scored by its exact-match rule (`convfinqa_em`).

`chatqa_prompt` is the ChatQA prompt format of RECIPE.md (also used by SFT and RAG).
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from longreach.errors import InputError

SYSTEM = ("This is a chat between a user and an artificial intelligence assistant. The assistant gives helpful, "
          "detailed, and polite answers to the user's questions based on the context. The assistant should also "
          "indicate when the answer cannot be found in the context.")
DEFAULT_INSTRUCTION = "Please give a full and complete answer for the question."
NO_ANSWER = "Sorry. I cannot find the answer based on the context."

# dataset -> (instruction, which user turn gets it), as in the official evaluation/dataset.py.
INSTRUCTIONS = {
    **{d: (DEFAULT_INSTRUCTION, "first") for d in ("doc2dial", "quac", "qrecc", "inscit", "doqa_cooking",
                                                    "doqa_movies", "doqa_travel", "hybridial", "convfinqa")},
    "topiocqa": ("Answer the following question with a short span, or a full and complete answer.", "last"),
    "sqa": ("Answer the following question with one or a list of items.", "last"),
    "coqa": ("Answer the following question with a short span. The answer needs to be just in a few words.",
             "last"),
}
# ChatRAG Bench reports DoQA as the mean of its three domains' scores, and the benchmark average over 9 columns.
DOQA_DOMAINS = ("doqa_cooking", "doqa_movies", "doqa_travel")
MAX_NEW_TOKENS = 64  # official --out-seq-len
MAX_SEQ_LENGTH = 4096  # official get_inputs default
NUM_CTX = 5  # official --num-ctx
MAX_TURNS = 7  # the official code keeps the latest 7 turns

UNANSWERABLE_KEYPHRASES = [
    "cannot find", "can't find", "not able to", "unable to", "does not provide", "cannot provide", "cannot answer",
    "couldnot answer", "can't answer", "couldn't answer", "cannot be found", "cannot be determined", "do not have",
    "couldn't find", "no information", "does not mention", "doesn't mention", "not explicitly mentioned",
    "not explicitly explain", "can not find", "could not find", "does not specify", "doesn't provide",
    "doesn't specify", "there is no", "not mentioned", "don't have", "don't know", "does not include",
    "doesn't include", "does not contain", "doesn't contain", "not provided", "does not indicate",
    "doesn't indicate", "does not disclose", "doesn't disclose",
]


def chatqa_prompt(system: str, context: str, turns: list[dict], instruction: str | None = None) -> str:
    """The ChatQA prompt: "System: ..." / context / "User: ..." and "Assistant: ..." turns, ending "Assistant:".

    Blocks are separated by blank lines; an empty context leaves its block out (ChatQA stage-1 format).
    `turns` are {"role": "user"|"assistant", "content"} and must end with a user turn; `instruction`, when
    given, is prefixed (with a space) to the first user turn. BOS is the tokenizer's business, not this text's.
    """
    if not turns or turns[-1].get("role") != "user":
        raise InputError("the last turn must be the user's", field="messages")
    parts = [f"System: {system}"]
    if context:
        parts.append(context)
    added = instruction is None
    for turn in turns:
        role, content = turn.get("role"), turn.get("content")
        if role not in ("user", "assistant") or not isinstance(content, str):
            raise InputError(f"bad turn {turn!r}: role user/assistant and string content", field="messages")
        if role == "user" and not added:
            content, added = f"{instruction} {content}", True
        parts.append(("User: " if role == "user" else "Assistant: ") + content)
    parts.append("Assistant:")
    return "\n\n".join(parts)


def check_dataset(dataset: str) -> str:
    if dataset not in INSTRUCTIONS:
        raise InputError(f"unknown ChatRAG dataset '{dataset}'; known: {sorted(INSTRUCTIONS)}", field="dataset")
    return dataset


def load_examples(path: str | Path) -> list[dict]:
    """Items of a ChatRAG Bench test file (a JSON list), each with `messages`, `ctxs` and `answers`."""
    path = Path(path)
    try:
        items = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise InputError(f"not valid JSON ({e.msg})", path=str(path), line=e.lineno) from None
    if not isinstance(items, list):
        raise InputError("expected a JSON list of examples", path=str(path))
    for k, item in enumerate(items):
        where = f"[{k}]"
        if not isinstance(item, dict) or not isinstance(item.get("messages"), list) or not item["messages"]:
            raise InputError(f"item {where}: missing 'messages'", path=str(path), field="messages")
        if not isinstance(item.get("ctxs", []), list):
            raise InputError(f"item {where}: 'ctxs' must be a list", path=str(path), field="ctxs")
        if "answers" not in item and "answer" not in item:
            raise InputError(f"item {where}: need 'answers' or 'answer'", path=str(path), field="answers")
    return items


def answers_of(item: dict) -> list[str]:
    """The reference answers as the official get_scores.py reads them."""
    if "answers" in item:
        return item["answers"]
    answer = item["answer"]
    if isinstance(answer, str):
        return [answer]
    return answer if isinstance(answer, list) else [str(answer)]


def _encode_len(tokenizer, text: str) -> int:
    return len(tokenizer.encode(text, add_special_tokens=False))


def build_prompt(dataset: str, item: dict, tokenizer, max_tokens: int = MAX_SEQ_LENGTH,
                 max_new_tokens: int = MAX_NEW_TOKENS, num_ctx: int = NUM_CTX) -> str:
    """The official ChatRAG Bench prompt of `item`, its context cut from the end to fit `max_tokens`."""
    instruction, where = INSTRUCTIONS[check_dataset(dataset)]
    turns = [dict(t) for t in item["messages"][-MAX_TURNS:]]
    if where == "last":
        if not turns or turns[-1].get("role") != "user":
            raise InputError("the last turn must be the user's", field="messages")
        turns[-1]["content"] = f"{instruction} {turns[-1]['content']}"
        instruction = None
    context = "\n\n".join(f"title: {c['title']}, source: {c['text']}" for c in item.get("ctxs", [])[:num_ctx])
    dialogue = chatqa_prompt(SYSTEM, "", turns, instruction)  # without the context, to measure the rest
    ids = tokenizer.encode(context, add_special_tokens=False)
    keep = min(len(ids), max(0, max_tokens - max_new_tokens - _encode_len(tokenizer, dialogue)))
    while True:  # the separators and the seam can add a token or two: cut again until it fits
        text = context if keep == len(ids) else tokenizer.decode(ids[:keep], skip_special_tokens=True)
        prompt = chatqa_prompt(SYSTEM, text, turns, instruction)
        over = _encode_len(tokenizer, prompt) + max_new_tokens - max_tokens
        if over <= 0 or keep == 0:
            return prompt
        keep = max(0, keep - over)


# ---------------------------------------------------------------------------------------------------------
# Scoring

_ART = re.compile(r"\b(a|an|the)\b")
_PUNC = re.compile(r"[!\"#$%&()*+,-./:;<=>?@\[\]\\^`{|}~_\']")


def normalize_answer(s: str) -> str:
    """The ChatRAG (ParlAI) normaliser: lowercase, punctuation -> space, articles -> space, collapse spaces."""
    return " ".join(_ART.sub(" ", _PUNC.sub(" ", s.lower())).split())


def f1(prediction: str, answers: list[str]) -> float | None:
    """Best token F1 over the non-empty answers; None (not counted) when there is none."""
    best = None
    for ans in answers:
        ans = ans.strip()
        if ans == "":
            continue
        if prediction == "":
            value = 0.0
        else:
            pred, gold = normalize_answer(prediction).split(), normalize_answer(ans).split()
            same = sum((Counter(gold) & Counter(pred)).values())
            value = 0.0
            if same:
                precision, recall = 1.0 * same / len(pred), 1.0 * same / len(gold)
                value = (2 * precision * recall) / (precision + recall)
        best = value if best is None else max(best, value)
    return best


def _is_float(s: Any) -> bool:
    try:
        float(s)
        return True
    except (TypeError, ValueError):
        return False


def convfinqa_em(prediction: str, item: dict) -> float:
    """ConvFinQA exact match: the executed answer or the formula appears in the cleaned prediction (with the
    official rounding, percent and sign variants)."""
    gold, formula = item["exe_answer"], answers_of(item)[0]
    question = item["messages"][-1]["content"]
    pred = prediction.replace(",", "").replace("$", "").replace("million", "").replace("billion", "")
    pred = " ".join(re.sub(r"\((\b\w+\b)\)", "", pred).split())
    if str(gold) in pred or str(formula) in pred:
        return 1.0
    if _is_float(gold) and (str(round(float(gold), 3)) in pred or str(round(float(gold), 2)) in pred):
        return 1.0
    if "percent" in question and (str(float(gold) * 100) in pred or str(round(float(gold) * 100, 1)) in pred
                                  or str(round(float(gold) * 100, 2)) in pred):
        return 1.0
    if str(gold).endswith(".0") and str(int(gold)) in pred:
        return 1.0
    # The official code compares `gold < 0`, which only works for numeric golds (as in the released data).
    if "decrease" in pred and isinstance(gold, (int, float)) and gold < 0 and str(-1 * gold) in pred:
        return 1.0
    return 0.0


def score(dataset: str, prediction: str, item: dict) -> float | None:
    """Official per-example score in [0, 1] (None: no usable reference, left out of the mean)."""
    check_dataset(dataset)
    prediction = prediction.strip()  # the official loader strips each prediction line
    if dataset == "convfinqa":
        return convfinqa_em(prediction, item)
    answers = answers_of(item)
    if dataset == "inscit":  # the no-answer sentence was added to INSCIT's references; the official code drops it
        answers = [a for a in answers if a != NO_ANSWER]
    if dataset == "quac" or dataset.startswith("doqa"):
        prediction = prediction.lower()
        if any(k in prediction for k in UNANSWERABLE_KEYPHRASES):
            prediction = NO_ANSWER
    return f1(prediction.strip().replace("</s>", ""), answers)


def aggregate(scores: list[float | None]) -> float:
    """Dataset score 0-100: the mean (numpy's, as the official code) over the counted examples."""
    counted = [s for s in scores if s is not None]
    if not counted:
        raise InputError("no example has a usable reference answer")
    return float(np.mean(counted)) * 100
