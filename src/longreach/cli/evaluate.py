"""`longreach eval niah`, `eval ppl` and `eval attention`: needle in a haystack, perplexity by position, and
where attention goes in a needle prompt.

    longreach eval niah --model M.gguf --lengths 2000,4000 --depths 0,25,50,75,100 --out runs/niah
    longreach eval ppl --model base --model extended --text held_out/ --length 8192 --out runs/ppl
    longreach eval attention --model runs/sft --lengths 16000,128000 --depths 0,50,100 --out runs/attn
"""

from __future__ import annotations

import json
from typing import Annotated

import typer

from longreach.cli.apps import eval_app


def _numbers(text: str, kind: type, flag: str) -> list:
    from longreach.errors import InputError

    try:
        return [kind(float(x)) if kind is int else kind(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise InputError(f"expected comma-separated numbers, got {text!r}", field=flag) from None


@eval_app.command("niah")
def niah(
    model: str = typer.Option(..., help="HF folder or .gguf file (with --base-url: the tokenizer's source)"),
    haystack: str | None = typer.Option(None, help=".txt file or folder; default: Paul Graham essays"),
    needle: str | None = typer.Option(None, help='needle sentence; "{key}" becomes a random pass key'),
    question: str | None = typer.Option(None, help="question asked after the context"),
    answer: str | None = typer.Option(None, help='expected answer (part of the needle); "{key}" for keys'),
    lengths: str = typer.Option("1000,2000,4000", help="whole-prompt lengths in tokens, comma-separated"),
    depths: str = typer.Option("0,25,50,75,100", help="needle depths in % of the context"),
    out: str = typer.Option(..., help="output folder: results.json, heatmap.png, predictions.jsonl"),
    mode: str = typer.Option("generate", help="generate (greedy answer) or logprob (answer vs distractors)"),
    chat: bool | None = typer.Option(None, "--chat/--no-chat", help="chat template (default: when it has one)"),
    base_url: str | None = typer.Option(None, help="OpenAI-compatible server instead of a local model"),
    served_model: str | None = typer.Option(None, help="model id on the server (default: its first)"),
    trials: int = typer.Option(1, help="prompts per cell: each trial its own pass key and, unless "
                                       "--no-rotate-haystack, its own haystack start (a seeded paragraph)"),
    rotate_haystack: bool = typer.Option(True, "--rotate-haystack/--no-rotate-haystack",
                                         help="trials after the first read the haystack from a seeded paragraph"),
    drop_sentences: str = typer.Option("", help="regex: leave out the haystack sentences it matches (does the "
                                                "haystack itself hold distractors for the question?)"),
    distractor: Annotated[list[str] | None, typer.Option(help="logprob mode: a wrong answer (repeatable)")] = None,
    subject: str | None = typer.Option(None, help="logprob: words of needle and question naming what is asked"),
    distractor_subject: Annotated[list[str] | None, typer.Option(
        help="logprob: the subject of each distractor's own needle in the context (repeatable)")] = None,
    distractors_in_context: bool = typer.Option(
        True, "--distractors-in-context/--no-distractors-in-context",
        help="logprob: each distractor is also a needle in the context (off: lenient, see docs)"),
    key_digits: int = typer.Option(5, help="digits of random pass keys"),
    max_new_tokens: int = typer.Option(64, help="generation budget per answer"),
    batch_size: int = typer.Option(4, help="prompts per backend call"),
    seed: int = typer.Option(0, help="seed of the pass keys and the haystack starts"),
    resume: bool = typer.Option(True, "--resume/--no-resume", help="keep cells already in OUT/predictions.jsonl"),
) -> None:
    """Needle in a haystack over lengths x depths. Prints results.json's summary as JSON."""
    from longreach.eval.niah import NiahConfig, run

    cfg = NiahConfig(model=model, haystack=haystack, lengths=_numbers(lengths, int, "lengths"),
                     depths=_numbers(depths, float, "depths"), out=out, mode=mode, chat=chat, base_url=base_url,
                     served_model=served_model, trials=trials, rotate_haystack=rotate_haystack,
                     drop_sentences=drop_sentences,
                     key_digits=key_digits,
                     max_new_tokens=max_new_tokens, batch_size=batch_size, seed=seed, resume=resume,
                     distractors_in_context=distractors_in_context)
    for name, value in (("needle", needle), ("question", question), ("answer", answer), ("subject", subject)):
        if value is not None:
            setattr(cfg, name, value)
    if distractor:
        cfg.distractors = list(distractor)
    if distractor_subject:
        cfg.distractor_subjects = list(distractor_subject)
    results = run(cfg)
    print(json.dumps({k: results[k] for k in ("model", "mean", "cells", "mode", "chat", "seconds")}))


@eval_app.command("ppl")
def ppl(
    model: Annotated[list[str], typer.Option(help="HF folder or .gguf file (repeat to compare models)")],
    text: str = typer.Option(..., help="held-out text: a file or folder (.txt/.md/.rst, .jsonl, .parquet)"),
    length: int = typer.Option(..., help="tokens per sequence"),
    buckets: int = typer.Option(8, help="position buckets"),
    sequences: int = typer.Option(4, help="sequences of LENGTH tokens to average over"),
    context: int | None = typer.Option(None, help="score each token with at most this many tokens before it "
                                                   "(windows moved by half): the text's own difficulty per "
                                                   "bucket, the control for a long curve"),
    out: str = typer.Option(..., help="output folder: results.json and ppl.png"),
) -> None:
    """Perplexity by position on long held-out text. Prints results.json as JSON."""
    from longreach.eval.ppl import PplConfig, run

    results = run(PplConfig(models=list(model), text=text, length=length, buckets=buckets, sequences=sequences,
                            context=context, out=out))
    print(json.dumps(results))


@eval_app.command("attention")
def attention(
    model: str = typer.Option(..., help="HF folder or .gguf file"),
    haystack: str | None = typer.Option(None, help=".txt file or folder; default: Paul Graham essays"),
    needle: str | None = typer.Option(None, help="needle sentence (default: NIAH's)"),
    question: str | None = typer.Option(None, help="question asked after the context (default: NIAH's)"),
    lengths: str = typer.Option("4000,16000", help="whole-prompt lengths in tokens, comma-separated"),
    depths: str = typer.Option("0,50,100", help="needle depths in % of the context"),
    recent: int = typer.Option(8192, help="keys just before the question counted as recent"),
    top: int = typer.Option(8, help="retrieval heads (most needle attention at the shortest length) to follow"),
    chat: bool | None = typer.Option(None, "--chat/--no-chat", help="chat template (default: when it has one)"),
    out: str = typer.Option(..., help="output folder: results.json and probe.png"),
) -> None:
    """Share of each head's attention from the question on the needle, the sink and the recent keys, and the
    needle's logit margin, per length and depth. Prints the retrieval heads' summary as JSON."""
    from longreach.eval.probe import ProbeConfig, run

    cfg = ProbeConfig(model=model, haystack=haystack, lengths=_numbers(lengths, int, "lengths"),
                      depths=_numbers(depths, float, "depths"), recent=recent, top=top, chat=chat, out=out)
    for name, value in (("needle", needle), ("question", question)):
        if value is not None:
            setattr(cfg, name, value)
    results = run(cfg)
    print(json.dumps({k: results[k] for k in ("model", "retrieval_heads", "summary")}))
