"""`longreach eval infinitebench | longbench | ruler | chatrag`: the paper's benchmarks on a model, end to end.

    longreach eval infinitebench --model M.gguf --task en_qa --data longbook_qa_eng.jsonl --out runs/ib
    longreach eval infinitebench --model M --task paper --data InfiniteBench/ --out runs/ib
    longreach eval longbench --model M --task qasper --data LongBench/data/qasper.jsonl --out runs/lb
    longreach eval longbench --model M --suite 32k --data LongBench/data/ --out runs/lb
    longreach eval ruler --model M --tasks all --lengths 4096,8192 --out runs/ruler
    longreach eval chatrag --model M --data ChatRAG-Bench/data --dataset all --out runs/chatrag
    ... --base-url http://host:8000 --model TOKENIZER_DIR     # any OpenAI-compatible server

CPU for tiny models, one GPU for real ones. Prints a JSON object on stdout, tables and progress on stderr.
The data files come from the benchmarks' own releases: docs/BENCHMARKS.md says where.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from longreach.cli.apps import eval_app

Model = Annotated[str, typer.Option(help="HF folder or .gguf file (with --base-url: the tokenizer's source)")]
Out = Annotated[str, typer.Option(help="output folder: prediction files, results.json, records/")]
BaseUrl = Annotated[str | None, typer.Option(help="OpenAI-compatible server instead of a local model")]
ServedModel = Annotated[str | None, typer.Option(help="model id on the server (default: its first)")]
Chat = Annotated[bool | None, typer.Option("--chat/--no-chat", help="chat prompts (default: when the tokenizer "
                                                                    "has a chat template)")]
MaxLength = Annotated[int | None, typer.Option(help="cut prompts in the middle to N tokens, as the official "
                                                    "scripts' max_length (default: the window minus the answer)")]
Limit = Annotated[int | None, typer.Option(help="only the first N examples of each file")]
BatchSize = Annotated[int, typer.Option(help="prompts per backend call")]
Dtype = Annotated[str | None, typer.Option(help="bfloat16, float16 or float32 (default: bf16 on GPU)")]
Device = Annotated[str | None, typer.Option(help="cpu, cuda, cuda:1 (default: cuda when available)")]
Resume = Annotated[bool, typer.Option("--resume/--no-resume", help="keep finished examples in OUT/records/")]


def _config(**kw):
    from longreach.eval.runners import BenchConfig

    return BenchConfig(**kw)


@eval_app.command("infinitebench")
def infinitebench(
    model: Model, out: Out,
    task: Annotated[str, typer.Option(help="en_sum, en_qa, en_mc, en_dia, passkey, number_string, kv_retrieval "
                                           "(or official names), comma-separated; 'paper' = the paper's four; "
                                           "'all'")],
    data: Annotated[Path, typer.Option(help="the task's official .jsonl, or a folder of them "
                                            "(<official task>.jsonl)")],
    base_url: BaseUrl = None, served_model: ServedModel = None, chat: Chat = None, max_length: MaxLength = None,
    limit: Limit = None, batch_size: BatchSize = 1, dtype: Dtype = None, device: Device = None,
    resume: Resume = True,
) -> None:
    """InfiniteBench (>100K): official prompts, middle cut, max new tokens and scoring. Writes
    OUT/preds_<official task>.jsonl (official results format) and OUT/results.json."""
    from longreach.eval import runners

    cfg = _config(model=model, out=out, base_url=base_url, served_model=served_model, chat=chat,
                  max_length=max_length, limit=limit, batch_size=batch_size, dtype=dtype, device=device,
                  resume=resume)
    tasks = runners.infinitebench_tasks(task)
    if len(tasks) == 1:
        print(json.dumps(runners.run_infinitebench(cfg, tasks[0], data)))
    else:
        print(json.dumps(runners.run_infinitebench_tasks(cfg, tasks, data)))


@eval_app.command("longbench")
def longbench(
    model: Model, out: Out,
    data: Annotated[Path, typer.Option(help="the dataset's .jsonl (QuALITY: its official release file), or a "
                                            "folder of <dataset>.jsonl files")],
    task: Annotated[str | None, typer.Option(help="LongBench v1 dataset(s), comma-separated: qasper, hotpotqa, "
                                                  "qmsum, ..., or quality")] = None,
    suite: Annotated[str | None, typer.Option(help="'32k': the paper's 32K suite (qmsum, qasper, quality, "
                                                   "musique, hotpotqa, multifieldqa_en) from the --data folder")]
    = None,
    base_url: BaseUrl = None, served_model: ServedModel = None, chat: Chat = None, max_length: MaxLength = None,
    limit: Limit = None, batch_size: BatchSize = 1, dtype: Dtype = None, device: Device = None,
    resume: Resume = True,
) -> None:
    """LongBench v1 and QuALITY: official prompts (dataset2prompt), middle cut, max new tokens (dataset2maxlen),
    chat template rule and metrics. Writes OUT/<dataset>.jsonl (LongBench pred format) and OUT/results.json."""
    from longreach.errors import InputError
    from longreach.eval import longbench as lb
    from longreach.eval import runners

    if (task is None) == (suite is None):
        raise InputError("give either --task or --suite", field="task")
    if suite is not None and suite.lower() != "32k":
        raise InputError(f"unknown suite {suite!r} (32k)", field="suite")
    datasets = list(lb.SUITE_32K) if suite else [lb.check_dataset(t.strip()) for t in task.split(",") if t.strip()]
    cfg = _config(model=model, out=out, base_url=base_url, served_model=served_model, chat=chat,
                  max_length=max_length, limit=limit, batch_size=batch_size, dtype=dtype, device=device,
                  resume=resume)
    if len(datasets) == 1:
        print(json.dumps(runners.run_longbench(cfg, datasets[0], data)))
    else:
        print(json.dumps(runners.run_longbench_tasks(cfg, datasets, data)))


@eval_app.command("ruler")
def ruler(
    model: Model, out: Out,
    tasks: Annotated[str, typer.Option(help="'all' or comma-separated: niah_single_1..3, niah_multikey_1..3, "
                                            "niah_multivalue, niah_multiquery, vt, cwe, fwe")] = "all",
    lengths: Annotated[str, typer.Option(help="total tokens (prompt + answer), comma-separated")] = "4096,8192",
    samples: Annotated[int, typer.Option(help="examples per task and length")] = 20,
    seed: Annotated[int, typer.Option(help="seed of the generated examples")] = 0,
    haystack: Annotated[str | None, typer.Option(help=".txt file or folder (default: Paul Graham essays)")]
    = None,
    base_url: BaseUrl = None, served_model: ServedModel = None, chat: Chat = None, limit: Limit = None,
    batch_size: BatchSize = 1, dtype: Dtype = None, device: Device = None, resume: Resume = True,
) -> None:
    """RULER synthetic tasks at the given lengths, scored by string match; a task x length table."""
    from longreach.cli.evaluate import _numbers
    from longreach.eval import ruler as r
    from longreach.eval import runners

    names = list(r.TASKS) if tasks == "all" else [t.strip() for t in tasks.split(",") if t.strip()]
    cfg = _config(model=model, out=out, base_url=base_url, served_model=served_model, chat=chat, limit=limit,
                  batch_size=batch_size, dtype=dtype, device=device, resume=resume)
    result = runners.run_ruler(cfg, names, _numbers(lengths, int, "lengths"), samples=samples, seed=seed,
                               haystack=haystack)
    print(json.dumps(result))


@eval_app.command("chatrag")
def chatrag(
    model: Model, out: Out,
    data: Annotated[Path, typer.Option(help="ChatRAG Bench data folder (doc2dial/test.json, doqa/test_cooking."
                                            "json, ...) or one test file")],
    dataset: Annotated[str, typer.Option(help="doc2dial, quac, qrecc, coqa, doqa (its 3 domains), doqa_cooking, "
                                              "..., convfinqa, sqa, topiocqa, inscit, hybridial; comma-separated; "
                                              "'all' = the paper's nine")],
    base_url: BaseUrl = None, served_model: ServedModel = None, chat: Chat = None,
    max_length: Annotated[int | None, typer.Option(help="prompt + answer tokens (official: 4096)")] = None,
    limit: Limit = None, batch_size: BatchSize = 1, dtype: Dtype = None, device: Device = None,
    resume: Resume = True,
) -> None:
    """ChatRAG Bench with the ChatQA prompt: F1 (ConvFinQA: exact match); a table with the average."""
    from longreach.eval import runners

    datasets = runners.chatrag_datasets(dataset)
    cfg = _config(model=model, out=out, base_url=base_url, served_model=served_model, chat=chat,
                  max_length=max_length, limit=limit, batch_size=batch_size, dtype=dtype, device=device,
                  resume=resume)
    if len(datasets) == 1:
        print(json.dumps(runners.run_chatrag(cfg, datasets[0], data)))
    else:
        print(json.dumps(runners.run_chatrag_tasks(cfg, datasets, data)))
