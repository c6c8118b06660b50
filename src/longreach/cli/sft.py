"""`longreach sft`: multi-stage instruction tuning, long-QA synthesis and the long-document QA evaluation.

    longreach sft --config configs/sft-demo-cpu.yaml [--set k=v ...]     # stages 1 -> 2 -> 3
    longreach sft tiny-model --out runs/sft-demo/start                   # the demo's start model
    longreach sft synth --tokenizer MODEL --qa needle --lengths 4000,16000 --n 200 --out long_qa.jsonl
    longreach sft eval-long-qa --model PATH --lengths 8000,16000,32000 --n 20 --out DIR
"""

from __future__ import annotations

import json
from typing import Annotated

import typer

from longreach.cli.apps import app

sft_app = typer.Typer(help="Instruction tuning in stages (ChatQA 2 recipe), long-QA data and evaluation.",
                      invoke_without_command=True)
app.add_typer(sft_app, name="sft")


def _ints(text: str) -> list[int]:
    from longreach.errors import InputError
    try:
        return [int(float(x)) for x in text.split(",") if x.strip()]
    except ValueError:
        raise InputError(f"expected comma-separated numbers, got {text!r}", field="lengths") from None


@sft_app.callback()
def sft(
    ctx: typer.Context,
    config: Annotated[str | None, typer.Option("--config", "-c", help="recipe YAML (stages, blends)")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="override: --set stages.sft2.train.lr=1e-5")] = None,
    prepare_only: Annotated[bool, typer.Option(help="make every stage's data (synth + shards), train nothing")] = False,
) -> None:
    """Run (or resume) every stage of a recipe; prints a JSON summary with each stage's last checkpoint."""
    if ctx.invoked_subcommand is not None:
        return
    if config is None and not set_:
        typer.echo(ctx.get_help())
        raise typer.Exit(2)
    from longreach.sft import recipe

    print(json.dumps(recipe.run(recipe.load(config, list(set_ or [])), prepare_only=prepare_only)))


Doc = Annotated[list[str] | None, typer.Option("--docs", help="real text: a path, gutenberg, paul_graham, "
                                                             "linux-doc or python-doc (repeatable)")]


@sft_app.command("tiny-model")
def tiny_model(
    out: Annotated[str, typer.Option(help="folder to write the model and tokenizer to")],
    vocab_size: Annotated[int, typer.Option(help="BPE vocabulary trained on Gutenberg plays + PG essays")] = 1024,
    seed: int = 0,
) -> None:
    """Write the 2-layer, hidden-64 Llama + small BPE tokenizer the CPU demo starts from."""
    from longreach.sft.tiny import write_tiny_chat_model

    print(json.dumps({"model": str(write_tiny_chat_model(out, vocab_size=vocab_size, seed=seed))}))


@sft_app.command("synth")
def synth(
    out: Annotated[str, typer.Option(help="output .jsonl (records `longreach sft` reads, with gold positions)")],
    tokenizer: Annotated[str, typer.Option(help="model folder / .gguf / tokenizer.json whose tokens set lengths")],
    qa: Annotated[str, typer.Option(help="needle | statement | cloze (synthetic QA) | records (your QA file) | "
                                         "text (plain running text, trained on every token)")] = "needle",
    construction: Annotated[str, typer.Option(help="insert (random sentence boundary) | distractors")] = "insert",
    lengths: Annotated[str, typer.Option(help="target context lengths in tokens, comma-separated")] = "4000",
    n: Annotated[int, typer.Option(help="samples to write")] = 100,
    docs: Doc = None,
    records: Annotated[str, typer.Option(help="qa=records: .jsonl of document, passage, question, answer")] = "",
    split: Annotated[str, typer.Option(help="train | heldout | all (documents by a hash of their name)")] = "train",
    facts: Annotated[int, typer.Option(help="needle: facts per context (one asked)")] = 3,
    max_docs: Annotated[int, typer.Option(help="use at most this many documents (0 = all)")] = 0,
    seed: int = 0,
) -> None:
    """Make long-context QA samples from real documents (NarrativeQA_131072-style gold insertion, or the gold
    document among distractors). Prints counts per length bin as JSON."""
    from collections import Counter

    from longreach.data.tokenize import load_tokenizer
    from longreach.sft.synth import SynthConfig, synthesize, write_jsonl

    cfg = SynthConfig(docs=list(docs or []), qa=qa, records=records, construction=construction,
                      lengths=_ints(lengths), n=n, facts=facts, split=split, max_docs=max_docs, seed=seed)
    recs = synthesize(cfg, load_tokenizer(tokenizer))
    write_jsonl(recs, out)
    print(json.dumps({"out": out, "n": len(recs), "bins": dict(Counter(r["length_bin"] for r in recs)),
                      "mean_tokens": sum(r["tokens"] for r in recs) / len(recs)}))


@sft_app.command("eval-long-qa")
def eval_long_qa(
    model: Annotated[str, typer.Option(help="HF folder or .gguf")],
    out: Annotated[str, typer.Option(help="folder for predictions.jsonl and results.json")],
    lengths: Annotated[str, typer.Option(help="context lengths in tokens")] = "8000,16000,32000",
    n: Annotated[int, typer.Option(help="examples per length")] = 20,
    docs: Doc = None,
    split: Annotated[str, typer.Option(help="heldout (documents `synth` never trains on) | all")] = "heldout",
    fmt: Annotated[str, typer.Option("--format", help="chatqa | template (as the model was tuned)")] = "chatqa",
    seed: int = 1234,
    batch_size: Annotated[int, typer.Option(help="prompts per generate call")] = 1,
    dtype: Annotated[str | None, typer.Option(help="bfloat16 / float32 (default: bf16 on GPU)")] = None,
) -> None:
    """Answer accuracy on needle-fact questions over held-out real documents, per length (greedy).
    Default documents: gutenberg and paul_graham."""
    from longreach.eval.backends import LocalHF
    from longreach.sft.longqa import run_long_qa_eval

    backend = LocalHF(model, dtype=dtype, batch_size=batch_size)
    res = run_long_qa_eval(backend, out, _ints(lengths), n, docs=list(docs or []) or None, split=split, fmt=fmt,
                           seed=seed, model=model)
    print(json.dumps(res))
