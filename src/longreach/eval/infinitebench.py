"""InfiniteBench (>100K tokens): data, prompts and scoring identical to the official code.

Scoring reproduces `src/compute_scores.py` of OpenBMB/InfiniteBench at commit 88b3daa with all its quirks
(checked against 1,010 records scored by that code, shared/reference/infinitebench):
- per record `score()` is the official `get_score_one()` (a 0-1 float); `aggregate()` is `get_score()` x 100;
- which label key a predictions file uses is decided by its first record (`ground_truth` over `label`); a later
  record without that key is scored against "XXXXXXXXXX", as the official code does;
- passkey / number_string: the first run of ASCII digits, compared as a string (a list label: its first item);
- kv_retrieval / En.Dia: a whole-word match after `\\n : " ' . , ? ! { }` become spaces (En.Dia: upper-cased
  words, only the first label);
- En.MC: first character, exact option, "answer is:"/"answer:"/"answer is"/"option is" prefix (case-sensitive,
  one character skipped), then the first word that is a substring of "ABCD";
- En.QA: SQuAD token F1, best over the labels, no first-line cut; En.Sum: rougeLsum F (rouge_score, no stemmer).

Prompts follow the official templates (src/prompt.py at the same commit): style "completion" is the template
the official code uses for open models (yarn-mistral, Yi, ChatGLM3), style "chat" the GPT-4 one. Inputs longer
than the budget are cut in the middle (first and last halves kept), as the official eval scripts do.
Max new tokens are the official DATA_NAME_TO_MAX_NEW_TOKENS.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from longreach.data.readers import iter_json_lines
from longreach.errors import InputError
from longreach.eval.metrics import first_int_match, normalize_answer, rouge_lsum, token_f1

# Short names (longreach, DESIGN.md) -> official task / file names.
TASKS = {
    "passkey": "passkey",
    "number_string": "number_string",
    "kv_retrieval": "kv_retrieval",
    "en_sum": "longbook_sum_eng",
    "en_qa": "longbook_qa_eng",
    "en_mc": "longbook_choice_eng",
    "en_dia": "longdialogue_qa_eng",
}
_SHORT = {official: short for short, official in TASKS.items()}

MAX_NEW_TOKENS = {  # official DATA_NAME_TO_MAX_NEW_TOKENS
    "passkey": 6,
    "number_string": 12,
    "kv_retrieval": 50,
    "longbook_sum_eng": 1200,
    "longbook_choice_eng": 40,
    "longbook_qa_eng": 40,
    "longdialogue_qa_eng": 40,
}

_DIA_INTRO = ('Below is a dialogue script where one random occurrence of a character name is replaced with '
              '"$$MASK$$", and you should try to guess who that character is.')
_MC_OPTIONS = "A. {OPTION_A}\nB. {OPTION_B}\nC. {OPTION_C}\nD. {OPTION_D}"
_FIND_IT = "There is an important info hidden inside a lot of irrelevant text."

# Wording of the official templates (src/prompt.py, commit 88b3daa): `yarn_mistral_templates` ...
COMPLETION_TEMPLATES = {
    "passkey": _FIND_IT + " Find it and memorize it. I will quiz you about the important information.\n\n"
               "{context}\n\n{input}\n\nThe pass key is",
    "number_string": _FIND_IT + " Find it. I will quiz you about the important information there.\n\n"
                     "{context}\n\n{input}\n\nThe sequence of digits is",
    "kv_retrieval": "Extract the value corresponding to the specified key in the JSON object below.\n\n"
                    "{context}\n\n{input}",
    "longbook_sum_eng": "Summarize the book below.\n\n{context}\n\nSummary:",
    "longbook_choice_eng": "Read the book and answer the question.\n\n{context}\n\nQuestion: {question}\n"
                           + _MC_OPTIONS + "\n\nThe letter of the correct answer is",
    "longbook_qa_eng": "Read the book and answer the question. Be very concise in your answer.\n\n{context}\n\n"
                       "Question: {question}\nAnswer:",
    "longdialogue_qa_eng": _DIA_INTRO + "\n\n{context}\n\nThe name that has been replaced with $$MASK$$ is likely",
}
# ... and `gpt4_templates`.
CHAT_TEMPLATES = {
    "passkey": _FIND_IT + " Find it and memorize them. I will quiz you about the important information there."
               "\n\n{context}\n\n{input}",
    "number_string": _FIND_IT + " Find it. I will quiz you about the important information there.\n\n"
                     "{context}\n\n{input}",
    "kv_retrieval": "Extract the value corresponding to the specified key in the JSON object below.\n\n"
                    "{context}\n\n{input}",
    "longbook_sum_eng": "Summarize the following book.\n\n{context}",
    "longbook_choice_eng": "Read the book and answer the question.\n\n{context}\n\nQuestion: {question}\n\n"
                           "Only one of the following options is correct, tell me the answer using one single "
                           "letter (A, B, C, or D). Don't say anything else.\n" + _MC_OPTIONS,
    "longbook_qa_eng": "Read the book below and answer a question.\n\n{context}\n\nQuestion: {question}\n\n"
                       "Be very concise.",
    "longdialogue_qa_eng": _DIA_INTRO + "\n\nThe dialogue:\n\n---\n\n{context}\n\n---\n\nEnd of dialogue.\n\n"
                           'Which character is most likely "$$MASK$$"? Just say the name used by the '
                           "scriptwriter (before the colon marks) of one single character and nothing else.",
}

_MISSING_LABEL = "XXXXXXXXXX"  # what the official get_labels() puts where a record lacks the label key
_WORD_SEPARATORS = ["\n", ":", '"', "'", ".", ",", "?", "!", "{", "}"]
_MC_SEPARATORS = ["\n", '"', "'", ".", ",", "?", "!", "{", "}"]
_MC_PREFIXES = ["answer is:", "answer:", "answer is", "option is"]


def resolve_task(task: str) -> str:
    """Official task name for a short (en_qa) or official (longbook_qa_eng) name."""
    if task in TASKS:
        return TASKS[task]
    if task in _SHORT:
        return task
    raise InputError(f"unknown InfiniteBench task '{task}'; known: {sorted(TASKS)} (or {sorted(_SHORT)})",
                     field="task")


def short_name(task: str) -> str:
    """Short name (en_qa) of a short or official task name."""
    return _SHORT[resolve_task(task)]


def max_new_tokens(task: str) -> int:
    return MAX_NEW_TOKENS[resolve_task(task)]


# ---------------------------------------------------------------------------------------------------------
# Scoring (one record)

def _words(text: str, separators: list[str]) -> list[str]:
    for c in separators:
        text = text.replace(c, " ")
    return text.split()


def _score_digits(pred: str, label: Any) -> bool:
    if isinstance(label, list):
        label = label[0]
    return label == first_int_match(pred)


def _score_kv(pred: str, label: Any) -> bool:
    return label in _words(pred, _WORD_SEPARATORS)


def _score_dialogue(pred: str, label: Any) -> bool:
    # Only the first label counts; labels containing a space can never match a single word.
    return label[0] in [w.upper() for w in _words(pred.strip(), _WORD_SEPARATORS)]


def _score_choice(pred: str, label: Any) -> bool:
    """`label` is [option_text, option_letter]; the checks run in the official order."""
    pred = pred.strip()
    if pred == "":
        return False
    if pred[0] in "ABCD":  # "Based on ..." reads as option B
        return pred[0] in label
    if pred in label:
        return True
    for c in _MC_SEPARATORS:
        pred = pred.replace(c, " ")
    while "  " in pred:
        pred = pred.replace("  ", " ")
    for prefix in _MC_PREFIXES:
        idx = pred.find(prefix)
        if idx == -1:
            continue
        if len(pred) < idx + len(prefix) + 1:  # the prediction ends with the prefix
            return False
        after = pred[idx + len(prefix) + 1:]  # exactly one character after the prefix is skipped
        return any(after.startswith(s) for s in label)
    for word in pred.split():
        if word in "ABCD":  # a substring test: "AB" counts and then fails the label check
            return word in label
    return False


def _score_qa(pred: str, label: Any) -> float:
    best = 0.0
    for gold in label:  # no first-line cut of the prediction
        best = max(best, token_f1(normalize_answer(pred).split(), normalize_answer(gold).split()))
    return best


_SCORERS = {
    "passkey": _score_digits,
    "number_string": _score_digits,
    "kv_retrieval": _score_kv,
    "longdialogue_qa_eng": _score_dialogue,
    "longbook_choice_eng": _score_choice,
    "longbook_qa_eng": _score_qa,
    "longbook_sum_eng": lambda pred, label: rouge_lsum(label, pred),
}


def score(task: str, prediction: str, label: Any) -> float:
    """Official per-record score in [0, 1] (`get_score_one`) of `prediction` against the official label."""
    return float(_SCORERS[resolve_task(task)](prediction, label))


def aggregate(scores: list[float]) -> float:
    """Official file score (`get_score`: the plain mean, in file order) on the 0-100 scale, not rounded."""
    return sum(scores) / len(scores) * 100


# ---------------------------------------------------------------------------------------------------------
# Prediction files (results/<model>/preds_<task>.jsonl as the official repository has them)

def read_predictions(path: str | Path) -> list[dict]:
    """Records of a predictions file: [{"line", "id", "prediction", "label"}], chosen as the official code does.

    The prediction is `prediction`, else `pred`, per record. The label key (`ground_truth` over `label`) is the
    one the first record has; a later record without it gets the label "XXXXXXXXXX" (official behaviour), but a
    record with no label under either key is an error. Blank lines are skipped.
    """
    path = Path(path)
    rows = list(iter_json_lines(path))
    if not rows:
        raise InputError("no predictions in file", path=str(path))
    first_line, first = rows[0]
    label_key = next((k for k in ("ground_truth", "label") if k in first), None)
    if label_key is None:
        raise InputError("no 'ground_truth' or 'label'", path=str(path), line=first_line, field="ground_truth")
    out = []
    for n, rec in rows:
        pred_key = next((k for k in ("prediction", "pred") if k in rec), None)
        if pred_key is None:
            raise InputError("no 'prediction' or 'pred'", path=str(path), line=n, field="prediction")
        if not isinstance(rec[pred_key], str):
            raise InputError(f"expected a string, got {type(rec[pred_key]).__name__}", path=str(path), line=n,
                             field=pred_key)
        if label_key not in rec and not ({"ground_truth", "label"} & rec.keys()):
            raise InputError("no 'ground_truth' or 'label'", path=str(path), line=n, field=label_key)
        out.append({"line": n, "id": rec.get("id"), "prediction": rec[pred_key],
                    "label": rec.get(label_key, _MISSING_LABEL)})
    return out


def score_file(task: str, path: str | Path) -> tuple[float, list[dict]]:
    """(aggregate score 0-100, records with their per-record "score" 0-1) for a predictions file."""
    records = read_predictions(path)
    for r in records:
        try:
            r["score"] = score(task, r["prediction"], r["label"])
        except (TypeError, IndexError, KeyError) as e:  # a label of the wrong shape for this task
            raise InputError(f"label {r['label']!r} does not fit task {task}: {e}", path=str(path),
                             line=r["line"], field="label") from None
    return aggregate([r["score"] for r in records]), records


# ---------------------------------------------------------------------------------------------------------
# Data and prompts (official data files: fields id, context, input, answer, options)

def load_examples(path: str | Path, task: str | None = None) -> list[dict]:
    """Examples of an official data file (e.g. longbook_qa_eng.jsonl), checked for the fields prompts need."""
    path = Path(path)
    official = resolve_task(task) if task else None
    out = []
    for n, ex in iter_json_lines(path):
        for key in ("id", "context", "input", "answer"):
            if key not in ex:
                raise InputError("missing", path=str(path), line=n, field=key)
        if official == "longbook_choice_eng":
            opts = ex.get("options")
            if not isinstance(opts, list) or len(opts) != 4:
                raise InputError("expected a list of 4 options", path=str(path), line=n, field="options")
        out.append(ex)
    return out


def label_of(task: str, example: dict) -> Any:
    """The label the official scripts store with a prediction (`get_answer`): En.MC gets [text, letter]."""
    if resolve_task(task) != "longbook_choice_eng":
        return example["answer"]
    answer, options = example["answer"], example["options"]
    if isinstance(answer, list) and len(answer) == 2 and answer[1] in ("A", "B", "C", "D"):
        return answer
    text = answer[0] if isinstance(answer, list) and len(answer) == 1 else answer
    if not isinstance(text, str) or text not in options:
        raise InputError(f"answer {answer!r} is not one of the options", field="answer")
    return [text, "ABCD"[options.index(text)]]


def truncate_middle(tokenizer, text: str, max_tokens: int) -> str:
    """`text` if it fits in `max_tokens` tokens, else its first and last max_tokens // 2 tokens (decoded).

    `tokenizer` is a Hugging Face tokenizer (encode/decode); special tokens are not counted or kept.
    """
    ids = tokenizer.encode(text, add_special_tokens=False)
    if len(ids) <= max_tokens:
        return text
    half = max_tokens // 2
    return (tokenizer.decode(ids[:half], skip_special_tokens=True)
            + tokenizer.decode(ids[len(ids) - half:], skip_special_tokens=True))


def build_prompt(task: str, example: dict, tokenizer, max_tokens: int, style: str = "completion") -> str:
    """The official prompt for `example`, cut in the middle to at most `max_tokens` tokens of `tokenizer`.

    style: "completion" (the official template for open models) or "chat" (the official GPT-4 template).
    """
    official = resolve_task(task)
    if style not in ("completion", "chat"):
        raise InputError(f"unknown prompt style '{style}' (completion or chat)", field="style")
    template = (COMPLETION_TEMPLATES if style == "completion" else CHAT_TEMPLATES)[official]
    fields = {"context": example["context"], "input": example["input"], "question": example["input"]}
    if official == "longbook_choice_eng":
        fields.update({f"OPTION_{k}": opt for k, opt in zip("ABCD", example["options"])})
    return truncate_middle(tokenizer, template.format(**fields), max_tokens)
