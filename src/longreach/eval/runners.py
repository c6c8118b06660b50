"""The paper's benchmarks end to end: official data file -> official prompt -> backend -> official score.

    longreach eval infinitebench --model M.gguf --task en_qa --data longbook_qa_eng.jsonl --out runs/ib
    longreach eval longbench --model M --suite 32k --data longbench/ --out runs/lb
    longreach eval ruler --model M --tasks all --lengths 4096,8192 --out runs/ruler
    longreach eval chatrag --model M --data ChatRAG-Bench/data --dataset all --out runs/chatrag

CPU for tiny models, one GPU for real ones; `--base-url URL` evaluates any OpenAI-compatible server (then
--model names the tokenizer, needed to cut prompts to the window). docs/BENCHMARKS.md says where the data is.

Every task goes through `task.run`: OUT/records/<name>.jsonl gets one record per finished example, so a
stopped run resumes without redoing them (OUT/records/<name>.settings.json refuses a resume with other
settings). Then the benchmark's own prediction file is written (InfiniteBench: OUT/preds_<official task>.jsonl
as the official results/<model>/ files; LongBench: OUT/<dataset>.jsonl as the official pred/<model>/ files;
ChatRAG: OUT/preds_<dataset>.jsonl), so `longreach eval score` or the official scripts re-score it to the same
number, and OUT/results.json gets {"benchmark", "task", "n", "score"} (a list once a folder holds several).

Prompt length: with --max-length N, the prompt is cut in the middle to N tokens (BOS included, chat template
not), the `max_length` / `TRUNCATE_LEN` of the official scripts. Without it, to the model's window minus the
official max new tokens minus what BOS and the chat template add, so prompt and answer fit the window.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from longreach.errors import InputError
from longreach.eval import chatrag, infinitebench, longbench, ruler, task
from longreach.eval.backends import BackendError, encode, open_backend
from longreach.eval.report import PAPER, PAPER_MODELS, SUITES

INFINITEBENCH_PAPER = ("en_sum", "en_qa", "en_mc", "en_dia")  # the paper's >100K table
CHATRAG_COLUMNS = ("doc2dial", "quac", "qrecc", "coqa", "doqa", "convfinqa", "sqa", "topiocqa", "inscit")
# ChatRAG Bench test files inside the released data folder (nvidia/ChatRAG-Bench, data/).
CHATRAG_FILES = {
    "doc2dial": "doc2dial/test.json", "quac": "quac/test.json", "qrecc": "qrecc/test.json",
    "coqa": "coqa/dev.json", "doqa_cooking": "doqa/test_cooking.json", "doqa_movies": "doqa/test_movies.json",
    "doqa_travel": "doqa/test_travel.json", "convfinqa": "convfinqa/dev.json", "sqa": "sqa/test.json",
    "topiocqa": "topiocqa/dev.json", "inscit": "inscit/dev.json", "hybridial": "hybridial/test.json",
}
GPT4_SYSTEM = "You are a helpful assistant"  # the official InfiniteBench GPT-4 script's system message


@dataclass
class BenchConfig:
    model: str = ""  # HF folder or .gguf file; with base_url, where the tokenizer comes from
    out: str = "runs/bench"  # output folder: prediction files, results.json, records/
    base_url: str | None = None  # an OpenAI-compatible server instead of a local model
    served_model: str | None = None  # the server's model id; None: the first one it lists
    chat: bool | None = None  # chat prompts; None: when the tokenizer has a chat template (server: its mode)
    max_length: int | None = None  # prompt tokens (official max_length); None: window - new tokens - template
    limit: int | None = None  # evaluate only the first N examples of each file
    batch_size: int = 1  # prompts per backend call (long prompts are prefilled one at a time anyway)
    dtype: str | None = None  # None: bfloat16 on GPU, float32 on CPU
    device: str | None = None  # None: cuda when available
    resume: bool = True  # keep finished examples found in out/records/


class Session:
    """The backend of a run and what prompt building needs from it: chat or not, window, token counts."""

    def __init__(self, cfg: BenchConfig, backend: Any = None):
        if not cfg.model and backend is None:
            raise InputError("--model is required (with --base-url: where the tokenizer comes from)", field="model")
        if cfg.max_length is not None and cfg.max_length <= 0:
            raise InputError("must be positive", field="max_length")
        self.cfg = cfg
        self.backend = backend or open_backend(cfg.model, cfg.base_url, cfg.served_model, cfg.chat, cfg.dtype,
                                               cfg.device, cfg.batch_size)
        self.tok = self.backend.tokenizer
        mode = getattr(self.backend, "mode", None)  # a server: its endpoint decides how text is sent
        has_template = bool(getattr(self.tok, "chat_template", None))
        self.chat = mode == "chat" if mode is not None else (cfg.chat if cfg.chat is not None else has_template)
        self.specials = len(encode(self.tok, ""))  # tokens the tokenizer adds to plain text (BOS)

    def window(self) -> int:
        try:
            return int(self.backend.max_length)
        except BackendError as e:
            raise InputError(f"{e}; pass --max-length", field="max_length") from None

    def text_budget(self, max_new_tokens: int, wrap: Callable[[str], Any]) -> int:
        """Tokens the prompt text may take before `wrap` adds the chat template (see the module docstring)."""
        if self.cfg.max_length is not None:
            n = self.cfg.max_length - self.specials
        else:
            n = self.window() - max_new_tokens - self.backend.count_tokens(wrap(""))
        if n <= 0:
            raise InputError(f"no room for a prompt: {n} tokens left after the template and {max_new_tokens} new "
                             "tokens", field="max_length")
        return n

    def settings(self) -> dict[str, Any]:
        model = Path(self.cfg.model)
        return {"model": str(model.resolve()) if model.exists() else self.cfg.model, "chat": self.chat}


# ---------------------------------------------------------------------------------------------------------
# Shared plumbing

def _with_ids(examples: list[dict], key: str, limit: int | None) -> list[dict]:
    """The first `limit` examples, each with an "id" for task.run: the file's own ids when every example has a
    distinct one, else positions (decided on the whole file, so --limit keeps the ids of a full run)."""
    ids = [str(ex.get(key)) for ex in examples]
    if not (all(ex.get(key) is not None for ex in examples) and len(set(ids)) == len(ids)):
        ids = [str(i) for i in range(len(examples))]
    return [{**ex, "id": i} for ex, i in zip(_limit(examples, limit), ids)]


def _limit(examples: list[dict], limit: int | None) -> list[dict]:
    if limit is not None and limit <= 0:
        raise InputError("must be positive", field="limit")
    return examples[:limit] if limit else examples


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    _write_atomic(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def _check_settings(path: Path, records: Path, settings: dict[str, Any], resume: bool) -> None:
    """A records file holds one experiment: resuming it with other settings would mix two runs."""
    if resume and path.exists() and records.exists():
        old = json.loads(path.read_text())
        diff = sorted(k for k in set(old) | set(settings) if old.get(k) != settings.get(k))
        if diff:
            raise InputError(f"holds a run with other settings ({', '.join(diff)}): use another --out or "
                             "--no-resume", path=str(path))
    _write_atomic(path, json.dumps(settings, indent=2) + "\n")


def save_results(out: Path, entries: list[dict]) -> None:
    """Add score entries to out/results.json, replacing earlier ones of the same benchmark/task/length."""
    path = out / "results.json"
    old: list[dict] = []
    if path.exists():
        data = json.loads(path.read_text())
        old = data if isinstance(data, list) else [data]

    def key(e: dict) -> tuple:
        return e.get("benchmark"), e.get("task"), e.get("length")

    new_keys = {key(e) for e in entries}
    merged = [e for e in old if key(e) not in new_keys] + entries
    _write_atomic(path, json.dumps(merged[0] if len(merged) == 1 else merged, indent=2) + "\n")


def _evaluate(sess: Session, name: str, examples: list[dict], build_prompt: Callable, score: Callable,
              max_new_tokens: int, settings: dict[str, Any]) -> list[dict]:
    """task.run over `examples` (each with an "id") with the records in out/records/<name>.jsonl."""
    records = Path(sess.cfg.out) / "records" / f"{name}.jsonl"
    _check_settings(records.with_suffix(".settings.json"), records, {**sess.settings(), **settings},
                    sess.cfg.resume)
    print(f"{name}: {len(examples)} examples, {max_new_tokens} new tokens", file=sys.stderr)
    return task.run(examples, build_prompt, sess.backend, score, records, max_new_tokens, resume=sess.cfg.resume,
                    batch_size=sess.cfg.batch_size)


def format_table(header: list[str], rows: list[list[Any]]) -> str:
    """A plain text table (numbers with 2 decimals) for the terminal."""
    cells = [[f"{x:.2f}" if isinstance(x, float) else "" if x is None else str(x) for x in r]
             for r in [header, *rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
             for r in cells]
    return "\n".join([lines[0], "-" * len(lines[0]), *lines[1:]])


def _suite_scores(cfg: BenchConfig, names: list[str], data: str | Path, backend: Any, run_one: Any,
                  folder_of: str | None = None) -> dict[str, float]:
    """Score of each task through `run_one(cfg, name, data, session=...)`, one model session for all;
    `folder_of` ("tasks", "datasets"): several of them need --data to be a folder."""
    if folder_of and len(names) > 1 and not Path(data).is_dir():
        raise InputError(f"several {folder_of} need --data to be a folder of their files", path=str(data))
    sess = Session(cfg, backend)
    return {n: run_one(cfg, n, data, session=sess)["score"] for n in names}


def _suite_summary(benchmark: str, column: str, scores: dict[str, float]) -> dict[str, Any]:
    """Print the table beside the paper's models; the suite's result with its average."""
    rows, avg = _suite_rows(benchmark, scores)
    print(format_table([column, "score", *PAPER_MODELS], rows), file=sys.stderr)
    return {"benchmark": benchmark, "scores": scores, "average": avg}


def _suite_rows(benchmark: str, scores: dict[str, float]) -> tuple[list[list[Any]], float | None]:
    """Rows (task, score, paper numbers) and the average when every task of a paper suite is present."""
    rows = [[t, s, *PAPER.get((benchmark, t), [None] * len(PAPER_MODELS))] for t, s in scores.items()]
    for bench, tasks, paper in SUITES.values():
        if bench == benchmark and all(t in scores for t in tasks):
            avg = sum(scores[t] for t in tasks) / len(tasks)
            rows.append([f"average ({len(tasks)} tasks)", avg, *paper])
            return rows, avg
    return rows, None


# ---------------------------------------------------------------------------------------------------------
# InfiniteBench

def infinitebench_tasks(spec: str) -> list[str]:
    """Short task names of "en_qa", "en_qa,en_mc", "paper" (the paper's four) or "all" (all seven)."""
    if spec == "paper":
        return list(INFINITEBENCH_PAPER)
    if spec == "all":
        return list(infinitebench.TASKS)
    return [infinitebench.short_name(t.strip()) for t in spec.split(",") if t.strip()]


def _data_file(data: Path, name: str) -> Path:
    """`data` itself (one file), or data/<name> inside a folder."""
    if data.is_dir():
        path = data / name
        if not path.is_file():
            raise InputError(f"no {name} in the data folder", path=str(data))
        return path
    if not data.is_file():
        raise InputError("no such file", path=str(data))
    return data


def run_infinitebench(cfg: BenchConfig, task_name: str, data: str | Path, backend: Any = None,
                      session: Session | None = None) -> dict[str, Any]:
    """One InfiniteBench task (en_qa, ... or an official name) from its official data file (or a folder of
    them). Writes out/preds_<official>.jsonl and out/results.json; returns the results entry."""
    official, short = infinitebench.resolve_task(task_name), infinitebench.short_name(task_name)
    path = _data_file(Path(data), f"{official}.jsonl")
    sess = session or Session(cfg, backend)
    examples = infinitebench.load_examples(path, official)
    runs = _with_ids(examples, "id", cfg.limit)
    style = "chat" if sess.chat else "completion"

    def wrap(text: str) -> Any:
        return [{"role": "system", "content": GPT4_SYSTEM}, {"role": "user", "content": text}] if sess.chat \
            else text

    max_new = infinitebench.max_new_tokens(official)
    budget = sess.text_budget(max_new, wrap)

    def score(ex: dict, pred: str) -> dict:
        label = infinitebench.label_of(official, ex)
        if official == "kv_retrieval" and isinstance(label, list) and len(label) == 1:
            # The raw data file has a string; a `datasets` export makes it a one-item list, which the official
            # scorer (a word match against the label) could never match.
            label = label[0]
        return {"score": infinitebench.score(official, pred, label), "ground_truth": label}

    records = _evaluate(sess, f"infinitebench_{official}", runs,
                        lambda ex: wrap(infinitebench.build_prompt(official, ex, sess.tok, budget, style)),
                        score, max_new, {"prompt_tokens": budget, "max_new_tokens": max_new, "data": path.name})
    # The official results format: {"id", "prediction", "ground_truth"} per line, in data order.
    _write_jsonl(Path(cfg.out) / f"preds_{official}.jsonl",
                 [{"id": ex["id"], "prediction": r["prediction"], "ground_truth": r["ground_truth"]}
                  for ex, r in zip(examples, records)])
    entry = {"benchmark": "infinitebench", "task": short, "n": len(records),
             "score": infinitebench.aggregate([r["score"] for r in records])}
    save_results(Path(cfg.out), [entry])
    return entry


def run_infinitebench_tasks(cfg: BenchConfig, tasks: list[str], data: str | Path,
                            backend: Any = None) -> dict[str, Any]:
    """Several InfiniteBench tasks (data: a folder of official files); prints a table beside the paper."""
    scores = _suite_scores(cfg, tasks, data, backend, run_infinitebench, folder_of="tasks")
    return _suite_summary("infinitebench", "task", scores)


# ---------------------------------------------------------------------------------------------------------
# LongBench v1 and QuALITY

def _longbench_file(data: Path, dataset: str) -> Path:
    """The data file of `dataset` in a folder: <dataset>.jsonl (LongBench's data/ folder); QuALITY may also be
    its official release file (QuALITY.v1.0.1.htmlstripped.dev or any QuALITY*.dev)."""
    if dataset == "quality" and not (data / "quality.jsonl").is_file():
        found = sorted(data.glob("QuALITY*.dev"))
        if found:
            return found[-1]
    return _data_file(data, f"{dataset}.jsonl")


def run_longbench(cfg: BenchConfig, dataset: str, data: str | Path, backend: Any = None,
                  session: Session | None = None) -> dict[str, Any]:
    """One LongBench v1 dataset (or QuALITY, official release format). Writes out/<dataset>.jsonl in
    LongBench's pred format and out/results.json; returns the results entry."""
    dataset = longbench.check_dataset(dataset)
    data = Path(data)
    path = _longbench_file(data, dataset) if data.is_dir() else _data_file(data, f"{dataset}.jsonl")
    sess = session or Session(cfg, backend)
    loaded = longbench.load_quality(path) if dataset == "quality" else longbench.load_examples(path)
    for ex in loaded:
        if ex.get("dataset") not in (None, dataset, f"{dataset}_e"):  # LongBench-E files say "qasper_e"
            raise InputError(f"the file holds dataset {ex['dataset']!r}, not {dataset!r}", path=str(path),
                             field="dataset")
    examples = _with_ids(loaded, "_id", cfg.limit)
    # The official pred.py: no chat template for few-shot and code-completion datasets.
    use_chat = sess.chat and dataset not in longbench.NO_CHAT_TEMPLATE

    def wrap(text: str) -> Any:
        return [{"role": "user", "content": text}] if use_chat else text

    max_new = longbench.MAX_NEW_TOKENS[dataset]
    budget = sess.text_budget(max_new, wrap)

    def score(ex: dict, pred: str) -> float:
        return longbench.score_example(dataset, pred, ex["answers"], ex.get("all_classes"))

    records = _evaluate(sess, f"longbench_{dataset}", examples,
                        lambda ex: wrap(longbench.build_prompt(dataset, ex, sess.tok, budget)), score, max_new,
                        {"prompt_tokens": budget, "max_new_tokens": max_new, "chat_template": use_chat,
                         "data": path.name})
    _write_jsonl(Path(cfg.out) / f"{dataset}.jsonl",
                 [{"pred": r["prediction"], "answers": ex["answers"], "all_classes": ex.get("all_classes"),
                   "length": ex.get("length"), "_id": ex.get("_id")} for ex, r in zip(examples, records)])
    entry = {"benchmark": "longbench", "task": dataset, "n": len(records),
             "score": longbench.aggregate([r["score"] for r in records])}
    save_results(Path(cfg.out), [entry])
    return entry


def run_longbench_tasks(cfg: BenchConfig, datasets: list[str], data: str | Path,
                        backend: Any = None) -> dict[str, Any]:
    """Several datasets (data: a folder) - e.g. the paper's 32K suite - and a table with the average."""
    scores = _suite_scores(cfg, datasets, data, backend, run_longbench, folder_of="datasets")
    return _suite_summary("longbench", "dataset", scores)


# ---------------------------------------------------------------------------------------------------------
# RULER

def run_ruler(cfg: BenchConfig, tasks: list[str], lengths: list[int], samples: int = 20, seed: int = 0,
              haystack: str | None = None, backend: Any = None) -> dict[str, Any]:
    """RULER tasks x lengths, generated here from the haystack (default: Paul Graham essays) and scored with
    RULER's string match. Records in out/records/ruler_<task>_<length>.jsonl; out/results.json gets one entry per cell."""
    from longreach.eval.niah import read_haystack

    if not tasks or not lengths or samples < 1 or any(n <= 0 for n in lengths):
        raise InputError("give tasks, positive lengths and samples >= 1", field="lengths")
    for t in tasks:
        if t not in ruler.TASKS:
            raise InputError(f"unknown RULER task '{t}'; known: {sorted(ruler.TASKS)}", field="tasks")
    sess = Session(cfg, backend)
    text = read_haystack(haystack) if haystack else None

    def wrap(ex: dict) -> Any:
        # RULER: a completion model reads input + answer prefix; a chat model starts its reply with the prefix.
        if sess.chat:
            return [{"role": "user", "content": ex["input"]}, {"role": "assistant", "content": ex["answer_prefix"]}]
        return ex["input"] + ex["answer_prefix"]

    # RULER's lengths count the whole templated prompt plus the answer: leave room for BOS and the template.
    overhead = sess.backend.count_tokens(wrap({"input": "", "answer_prefix": ""}))
    settings = {"seed": seed, "haystack": str(Path(haystack).resolve()) if haystack else None}
    table = []
    for length in lengths:
        for t in tasks:
            made = ruler.generate(t, length - overhead, sess.tok, num_samples=samples, seed=seed,
                                  haystack_text=text)
            examples = [{**ex, "id": f"{t}-{length}-{i}", "length": length} for i, ex in enumerate(made)]
            examples = _limit(examples, cfg.limit)

            def score(ex: dict, pred: str) -> dict:
                return {"score": ruler.score(ex["task"], pred, ex["outputs"]), "task": ex["task"],
                        "length": ex["length"], "outputs": ex["outputs"]}

            records = _evaluate(sess, f"ruler_{t}_{length}", examples, wrap, score, ruler.TOKENS_TO_GENERATE[t], settings)
            table.append({"benchmark": "ruler", "task": t, "length": length, "n": len(records),
                          "score": ruler.aggregate([r["score"] for r in records])})
    save_results(Path(cfg.out), table)
    cell = {(e["task"], e["length"]): e["score"] for e in table}
    average = {n: round(sum(cell[(t, n)] for t in tasks) / len(tasks), 2) for n in lengths}
    rows = [[t, *(cell[(t, n)] for n in lengths)] for t in tasks] + [["average", *average.values()]]
    print(format_table(["task \\ length", *map(str, lengths)], rows), file=sys.stderr)
    return {"benchmark": "ruler", "model": cfg.model, "cells": table, "average": average}


# ---------------------------------------------------------------------------------------------------------
# ChatRAG Bench

def chatrag_datasets(spec: str) -> list[str]:
    """Dataset names of "coqa", "coqa,quac", or "all" (the paper's nine columns; DoQA = its three domains)."""
    if spec == "all":
        return [d for c in CHATRAG_COLUMNS for d in (chatrag.DOQA_DOMAINS if c == "doqa" else [c])]
    out = []
    for d in (x.strip() for x in spec.split(",") if x.strip()):
        out += list(chatrag.DOQA_DOMAINS) if d == "doqa" else [chatrag.check_dataset(d)]
    return out


def _chatrag_file(data: Path, dataset: str) -> Path:
    if not data.is_dir():
        if not data.is_file():
            raise InputError("no such file", path=str(data))
        return data
    for root in (data, data / "data"):  # the release folder itself, or its parent
        if (root / CHATRAG_FILES[dataset]).is_file():
            return root / CHATRAG_FILES[dataset]
    raise InputError(f"no {CHATRAG_FILES[dataset]} in the data folder", path=str(data))


def run_chatrag(cfg: BenchConfig, dataset: str, data: str | Path, backend: Any = None,
                session: Session | None = None) -> dict[str, Any]:
    """One ChatRAG Bench dataset with the ChatQA prompt (chat backends get it as one user message); F1, or
    exact match for ConvFinQA. Writes out/preds_<dataset>.jsonl and out/results.json."""
    dataset = chatrag.check_dataset(dataset)
    path = _chatrag_file(Path(data), dataset)
    sess = session or Session(cfg, backend)
    examples = _with_ids(chatrag.load_examples(path), "id", cfg.limit)  # ChatRAG items have no id: positions

    def wrap(text: str) -> Any:
        return [{"role": "user", "content": text}] if sess.chat else text

    # The official limit counts prompt text + answer (4096, BOS not counted); a chat template's tokens come off
    # it, and a window below it must hold BOS too.
    template = sess.backend.count_tokens(wrap("")) - sess.specials
    total = (cfg.max_length or chatrag.MAX_SEQ_LENGTH) - template
    if cfg.max_length is None:
        total = min(total, sess.window() - template - sess.specials)
    records = _evaluate(sess, f"chatrag_{dataset}", examples,
                        lambda ex: wrap(chatrag.build_prompt(dataset, ex, sess.tok, total)),
                        lambda ex, pred: {"score": chatrag.score(dataset, pred, ex)}, chatrag.MAX_NEW_TOKENS,
                        {"prompt_tokens": total, "data": path.name})
    _write_jsonl(Path(cfg.out) / f"preds_{dataset}.jsonl",
                 [{"id": ex["id"], "prediction": r["prediction"], "answers": chatrag.answers_of(ex),
                   "score": r["score"]} for ex, r in zip(examples, records)])
    entry = {"benchmark": "chatrag", "task": dataset, "n": sum(r["score"] is not None for r in records),
             "score": chatrag.aggregate([r["score"] for r in records]),
             "metric": "em" if dataset == "convfinqa" else "f1"}
    save_results(Path(cfg.out), [entry])
    return entry


def run_chatrag_tasks(cfg: BenchConfig, datasets: list[str], data: str | Path,
                      backend: Any = None) -> dict[str, Any]:
    """Several ChatRAG datasets; DoQA's column is the mean of its domains; a table with the average."""
    scores = _suite_scores(cfg, datasets, data, backend, run_chatrag)
    if all(d in scores for d in chatrag.DOQA_DOMAINS):
        doqa = sum(scores[d] for d in chatrag.DOQA_DOMAINS) / len(chatrag.DOQA_DOMAINS)
        save_results(Path(cfg.out), [{"benchmark": "chatrag", "task": "doqa", "n": len(chatrag.DOQA_DOMAINS),
                                      "score": doqa}])
        scores = {**{d: s for d, s in scores.items() if d not in chatrag.DOQA_DOMAINS}, "doqa": doqa}
    return _suite_summary("chatrag", "dataset", scores)
