"""LongBench v1 scoring identical to the official metrics.py / eval.py, its prompts, and QuALITY.

Official semantics reproduced (THUDM/LongBench, LongBench/metrics.py and eval.py):
- per example: the best score over the `answers`, starting from 0; for trec/triviaqa/samsum/lsht only the first
  line of the prediction counts (leading newlines stripped first, nothing else);
- per dataset: round(100 * sum / n, 2); `all_classes` is the value on the LAST line of the file;
- QA F1 removes only ASCII punctuation; ROUGE-L is the `rouge` package 1.0.1 (splits sentences on ".",
  case-sensitive, any error scores 0, a perfect match gives 0.999999995); Chinese metrics segment with jieba;
- classification: class names found as case-sensitive substrings; a name that is part of the gold name (but not
  equal) is removed from the matches while iterating the same list, which skips the next match (official quirk);
- retrieval/count: the share of digit runs (`\\d+`) in the prediction equal to the gold number;
- code: fuzzywuzzy ratio of the first line without a backtick, `#` or `//` (after leading newlines are stripped).

QuALITY is not part of LongBench v1, but is in the ChatQA 2 32K suite (QMSum, Qasper, QuALITY, MuSiQue,
HotpotQA, MultiFieldQA-en). It is read from its official release (nyu-mll/quality, one article per line with
`questions`, 4 `options` each and `gold_label` 1-4) and scored by accuracy: the option letter the prediction
chooses (`quality_choice`) must equal the gold letter. That rule is longreach's, stated here, not an official one.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from longreach.data.readers import iter_json_lines
from longreach.errors import InputError
from longreach.eval.infinitebench import truncate_middle
from longreach.eval.metrics import fuzz_ratio, normalize_zh_answer, qa_f1, rouge_l_longbench, token_f1


def qa_f1_score(prediction: str, gold: str, **_: Any) -> float:
    return qa_f1(prediction, gold)


def _jieba_cut(text: str) -> list[str]:
    import jieba  # imported here: loading its dictionary takes a second

    jieba.setLogLevel(60)  # no "Building prefix dict" chatter on stderr
    return list(jieba.cut(text, cut_all=False))


def qa_f1_zh_score(prediction: str, gold: str, **_: Any) -> float:
    pred = [t for t in (normalize_zh_answer(w) for w in _jieba_cut(prediction)) if len(t) > 0]
    ref = [t for t in (normalize_zh_answer(w) for w in _jieba_cut(gold)) if len(t) > 0]
    return token_f1(pred, ref)


def rouge_score(prediction: str, gold: str, **_: Any) -> float:
    return rouge_l_longbench(prediction, gold)


def rouge_zh_score(prediction: str, gold: str, **_: Any) -> float:
    return rouge_l_longbench(" ".join(_jieba_cut(prediction)), " ".join(_jieba_cut(gold)))


def classification_score(prediction: str, gold: str, all_classes: list[str] | None = None, **_: Any) -> float:
    matches = [c for c in (all_classes or []) if c in prediction]
    # Reproduces removing items from a list while a for-loop walks it: after a removal the loop index still
    # advances, so the element that slid into the removed one's place is never checked.
    i = 0
    while i < len(matches):
        m = matches[i]
        if m in gold and m != gold:
            matches.remove(m)  # list.remove drops the FIRST equal item, as the official code does
        i += 1
    return 1.0 / len(matches) if gold in matches else 0.0


def _number_share(prediction: str, gold_number: str) -> float:
    numbers = re.findall(r"\d+", prediction)
    right = sum(1 for x in numbers if str(x) == str(gold_number))
    return 0.0 if len(numbers) == 0 else float(right / len(numbers))


def retrieval_score(prediction: str, gold: str, **_: Any) -> float:
    return _number_share(prediction, re.findall(r"Paragraph (\d+)", gold)[0])


def retrieval_zh_score(prediction: str, gold: str, **_: Any) -> float:
    return _number_share(prediction, re.findall(r"段落(\d+)", gold)[0])


def count_score(prediction: str, gold: Any, **_: Any) -> float:
    return _number_share(prediction, gold)


def code_sim_score(prediction: str, gold: str, **_: Any) -> float:
    line = next((x for x in prediction.lstrip("\n").split("\n")
                 if "`" not in x and "#" not in x and "//" not in x), "")
    return fuzz_ratio(line, gold) / 100


_QUALITY_LETTER = re.compile(r"(?<![A-Za-z])([A-D])(?![A-Za-z])")


def quality_choice(prediction: str) -> str | None:
    """The option letter a QuALITY prediction chooses: the first standalone A-D ("B", "(B)", "B. text")."""
    m = _QUALITY_LETTER.search(prediction)
    return m.group(1) if m else None


def quality_accuracy(prediction: str, gold: str, **_: Any) -> float:
    return 1.0 if quality_choice(prediction) == gold else 0.0


DATASET2METRIC: dict[str, Callable[..., float]] = {  # official eval.py map, plus QuALITY
    "narrativeqa": qa_f1_score,
    "qasper": qa_f1_score,
    "multifieldqa_en": qa_f1_score,
    "multifieldqa_zh": qa_f1_zh_score,
    "hotpotqa": qa_f1_score,
    "2wikimqa": qa_f1_score,
    "musique": qa_f1_score,
    "dureader": rouge_zh_score,
    "gov_report": rouge_score,
    "qmsum": rouge_score,
    "multi_news": rouge_score,
    "vcsum": rouge_zh_score,
    "trec": classification_score,
    "triviaqa": qa_f1_score,
    "samsum": rouge_score,
    "lsht": classification_score,
    "passage_retrieval_en": retrieval_score,
    "passage_count": count_score,
    "passage_retrieval_zh": retrieval_zh_score,
    "lcc": code_sim_score,
    "repobench-p": code_sim_score,
    "quality": quality_accuracy,
}
FIRST_LINE_DATASETS = ("trec", "triviaqa", "samsum", "lsht")
SUITE_32K = ("qmsum", "qasper", "quality", "musique", "hotpotqa", "multifieldqa_en")  # ChatQA 2's 32K suite

MAX_NEW_TOKENS = {  # official config/dataset2maxlen.json; QuALITY: an option letter
    "narrativeqa": 128, "qasper": 128, "multifieldqa_en": 64, "multifieldqa_zh": 64, "hotpotqa": 32,
    "2wikimqa": 32, "musique": 32, "dureader": 128, "gov_report": 512, "qmsum": 512, "multi_news": 512,
    "vcsum": 512, "trec": 64, "triviaqa": 32, "samsum": 128, "lsht": 64, "passage_count": 32,
    "passage_retrieval_en": 32, "passage_retrieval_zh": 32, "lcc": 64, "repobench-p": 64, "quality": 16,
}


def check_dataset(dataset: str) -> str:
    if dataset not in DATASET2METRIC:
        raise InputError(f"unknown LongBench dataset '{dataset}'; known: {sorted(DATASET2METRIC)}", field="task")
    return dataset


def score_example(dataset: str, prediction: str, answers: list, all_classes: list | None = None) -> float:
    """Official per-example score in [0, 1]: best over the answers (first line only for some datasets)."""
    metric = DATASET2METRIC[check_dataset(dataset)]
    if dataset in FIRST_LINE_DATASETS:
        prediction = prediction.lstrip("\n").split("\n")[0]
    best = 0.0
    for gold in answers:
        best = max(best, metric(prediction, gold, all_classes=all_classes))
    return best


def aggregate(scores: list[float]) -> float:
    """Official dataset score: round(100 * sum / n, 2)."""
    return round(100 * sum(scores) / len(scores), 2)


def read_predictions(path: str | Path, dataset: str) -> tuple[list[dict], list | None]:
    """Lines of a LongBench prediction file ("pred", "answers", "all_classes"; "length" ignored) and the
    `all_classes` of its LAST line, which the official eval.py uses for every line."""
    path = Path(path)
    rows, all_classes = [], None
    need = ("pred", "answers") if dataset == "quality" else ("pred", "answers", "all_classes")
    for n, rec in iter_json_lines(path):
        for key in need:
            if key not in rec:
                raise InputError("missing", path=str(path), line=n, field=key)
        if not isinstance(rec["pred"], str):
            raise InputError("expected a string", path=str(path), line=n, field="pred")
        if not isinstance(rec["answers"], list):
            raise InputError("expected a list", path=str(path), line=n, field="answers")
        all_classes = rec.get("all_classes")
        rows.append({"line": n, "id": rec.get("_id", rec.get("id")), "prediction": rec["pred"],
                     "answers": rec["answers"]})
    if not rows:
        raise InputError("no predictions in file", path=str(path))
    return rows, all_classes


def score_file(dataset: str, path: str | Path) -> tuple[float, list[dict]]:
    """(official dataset score 0-100 rounded to 2 decimals, records with their per-example "score" 0-1)."""
    check_dataset(dataset)
    rows, all_classes = read_predictions(path, dataset)
    for r in rows:
        try:
            r["score"] = score_example(dataset, r["prediction"], r["answers"], all_classes)
        except (TypeError, IndexError, AttributeError) as e:  # answers of the wrong shape for this metric
            raise InputError(f"answers do not fit dataset {dataset}: {e}", path=str(path), line=r["line"],
                             field="answers") from None
    return aggregate([r["score"] for r in rows]), rows


# ---------------------------------------------------------------------------------------------------------
# Prompts: wording of the official config/dataset2prompt.json (QuALITY: longreach's, in the same style)

_PASSAGES_QA = ("Answer the question based on the given passages. Only give me the answer and do not output any "
                "other words.")
_QASPER_RULES = ("as concisely as you can, using a single phrase or sentence if possible. If the question cannot "
                 "be answered based on the information in the article, write \"unanswerable\". If the question "
                 "is a yes/no question, answer \"yes\", \"no\", or \"unanswerable\". Do not provide any "
                 "explanation.")
_NARRATIVE_RULES = "asconcisely as you can, using a single phrase if possible. Do not provide any explanation."
PROMPTS = {
    "narrativeqa": "You are given a story, which can be either a novel or a movie script, and a question. Answer "
                   "the question " + _NARRATIVE_RULES + "\n\nStory: {context}\n\nNow, answer the question based "
                   "on the story " + _NARRATIVE_RULES + "\n\nQuestion: {input}\n\nAnswer:",
    "qasper": "You are given a scientific article and a question. Answer the question " + _QASPER_RULES
              + "\n\nArticle: {context}\n\n Answer the question based on the above article " + _QASPER_RULES
              + "\n\nQuestion: {input}\n\nAnswer:",
    "multifieldqa_en": "Read the following text and answer briefly.\n\n{context}\n\nNow, answer the following "
                       "question based on the above text, only give me the answer and do not output any other "
                       "words.\n\nQuestion: {input}\nAnswer:",
    "multifieldqa_zh": "阅读以下文字并用中文简短回答：\n\n{context}\n\n现在请基于上面的文章回答下面的问题，只告诉我答案，"
                       "不要输出任何其他字词。\n\n问题：{input}\n回答：",
    "hotpotqa": _PASSAGES_QA + "\n\nThe following are given passages.\n{context}\n\n" + _PASSAGES_QA
                + "\n\nQuestion: {input}\nAnswer:",
    "2wikimqa": _PASSAGES_QA + "\n\nThe following are given passages.\n{context}\n\n" + _PASSAGES_QA
                + "\n\nQuestion: {input}\nAnswer:",
    "musique": _PASSAGES_QA + "\n\nThe following are given passages.\n{context}\n\n" + _PASSAGES_QA
               + "\n\nQuestion: {input}\nAnswer:",
    "dureader": "请基于给定的文章回答下述问题。\n\n文章：{context}\n\n请基于上述文章回答下面的问题。\n\n问题：{input}\n回答：",
    "gov_report": "You are given a report by a government agency. Write a one-page summary of the report.\n\n"
                  "Report:\n{context}\n\nNow, write a one-page summary of the report.\n\nSummary:",
    "qmsum": "You are given a meeting transcript and a query containing a question or instruction. Answer the "
             "query in one or more sentences.\n\nTranscript:\n{context}\n\nNow, answer the query based on the "
             "above meeting transcript in one or more sentences.\n\nQuery: {input}\nAnswer:",
    "multi_news": "You are given several news passages. Write a one-page summary of all news. \n\nNews:\n"
                  "{context}\n\nNow, write a one-page summary of all the news.\n\nSummary:",
    "vcsum": "下面有一段会议记录，请你阅读后，写一段总结，总结会议的内容。\n会议记录：\n{context}\n\n会议总结：",
    "trec": "Please determine the type of the question below. Here are some examples of questions.\n\n"
            "{context}\n{input}",
    "triviaqa": "Answer the question based on the given passage. Only give me the answer and do not output any "
                "other words. The following are some examples.\n\n{context}\n\n{input}",
    "samsum": "Summarize the dialogue into a few short sentences. The following are some examples.\n\n"
              "{context}\n\n{input}",
    "lsht": "请判断给定新闻的类别，下面是一些例子。\n\n{context}\n{input}",
    "passage_count": "There are some paragraphs below sourced from Wikipedia. Some of them may be duplicates. "
                     "Please carefully read these paragraphs and determine how many unique paragraphs there are "
                     "after removing duplicates. In other words, how many non-repeating paragraphs are there in "
                     "total?\n\n{context}\n\nPlease enter the final count of unique paragraphs after removing "
                     "duplicates. The output format should only contain the number, such as 1, 2, 3, and so on."
                     "\n\nThe final answer is: ",
    "passage_retrieval_en": "Here are 30 paragraphs from Wikipedia, along with an abstract. Please determine "
                            "which paragraph the abstract is from.\n\n{context}\n\nThe following is an abstract."
                            "\n\n{input}\n\nPlease enter the number of the paragraph that the abstract is from. "
                            "The answer format must be like \"Paragraph 1\", \"Paragraph 2\", etc.\n\n"
                            "The answer is: ",
    "passage_retrieval_zh": "以下是若干段落文字，以及其中一个段落的摘要。请确定给定的摘要出自哪一段。\n\n{context}\n\n"
                            "下面是一个摘要\n\n{input}\n\n请输入摘要所属段落的编号。答案格式必须是\"段落1\"，\"段落2\"等格式"
                            "\n\n答案是：",
    "lcc": "Please complete the code given below. \n{context}Next line of code:\n",
    "repobench-p": "Please complete the code given below. \n{context}{input}Next line of code:\n",
    "quality": "You are given a story and a multiple-choice question about it. Answer with the letter of the "
               "correct option only.\n\nStory:\n{context}\n\nNow, answer the question based on the story with "
               "the letter (A, B, C or D) of the correct option only.\n\n{input}\n\nAnswer:",
}
# Datasets the official pred.py feeds without the chat template (few-shot / code completion).
NO_CHAT_TEMPLATE = ("trec", "triviaqa", "samsum", "lsht", "lcc", "repobench-p")


def build_prompt(dataset: str, example: dict, tokenizer, max_tokens: int) -> str:
    """The official prompt of `example` (fields "context" and "input"), cut in the middle to `max_tokens`."""
    template = PROMPTS[check_dataset(dataset)]
    for key in ("context", "input"):
        if key not in example:
            raise InputError("missing", field=key)
    return truncate_middle(tokenizer, template.format(context=example["context"], input=example["input"]),
                           max_tokens)


def load_examples(path: str | Path) -> list[dict]:
    """Examples of a LongBench data file (jsonl: input, context, answers, length, dataset, all_classes, _id)."""
    path = Path(path)
    out = []
    for n, ex in iter_json_lines(path):
        for key in ("input", "context", "answers"):
            if key not in ex:
                raise InputError("missing", path=str(path), line=n, field=key)
        out.append(ex)
    return out


def load_quality(path: str | Path, require_gold: bool = True) -> list[dict]:
    """QuALITY questions from an official release file (e.g. QuALITY.v1.0.1.htmlstripped.dev) as LongBench-style
    examples: {"_id", "dataset": "quality", "context": article, "input": question + lettered options,
    "options", "answers": [gold letter], "all_classes": None, "difficult"}.

    The test split has no `gold_label`: pass require_gold=False to build prompts for it ("answers" is then []).
    """
    path = Path(path)
    out = []
    for n, art in iter_json_lines(path):
        for key in ("article", "questions"):
            if key not in art:
                raise InputError("missing", path=str(path), line=n, field=key)
        for q in art["questions"]:
            opts = q.get("options")
            if not isinstance(opts, list) or len(opts) != 4:
                raise InputError("expected 4 options", path=str(path), line=n, field="questions.options")
            gold = q.get("gold_label")
            if gold is None and require_gold:
                raise InputError("no gold_label (test split? use require_gold=False)", path=str(path), line=n,
                                 field="questions.gold_label")
            if gold is not None and gold not in (1, 2, 3, 4):
                raise InputError(f"expected 1-4, got {gold!r}", path=str(path), line=n,
                                 field="questions.gold_label")
            options = "\n".join(f"({k}) {o}" for k, o in zip("ABCD", opts))
            out.append({"_id": q.get("question_unique_id"), "dataset": "quality", "context": art["article"],
                        "input": f"Question: {q['question'].strip()}\n\nOptions:\n{options}",
                        "options": opts, "answers": ["ABCD"[gold - 1]] if gold else [],
                        "all_classes": None, "difficult": q.get("difficult")})
    return out
