"""`longreach data prepare` (corpus -> packed shards), `data self-chat` (short chat data in an instruct model's
own words, to mix in) and `longreach data inspect` (look inside shards).

Run: longreach data prepare --input corpus/ --tokenizer TOKENIZER_DIR --seq-len 32768 --out shards/
     longreach data self-chat --model M.gguf --input corpus/ --n 2000 --out chat/
     longreach data inspect shards/
"""

from __future__ import annotations

import json
import logging
import sys
from typing import Annotated

import typer

from longreach.cli.apps import data_app


@data_app.command("prepare")
def prepare(
    input: Annotated[list[str] | None, typer.Option("--input", "-i", help="corpus file or folder (repeatable): "
                                                    ".jsonl/.json, .parquet, .txt/.md/.rst, or folders of them")] = None,
    tokenizer: Annotated[str | None, typer.Option(help="tokenizer: HF folder, tokenizer.json or .gguf")] = None,
    seq_len: Annotated[int | None, typer.Option("--seq-len", help="tokens per packed sequence")] = None,
    out: Annotated[str | None, typer.Option(help="output shard directory (new unless --overwrite)")] = None,
    sep_mode: Annotated[str | None, typer.Option("--sep-mode", help="sep | bos_eos | none")] = None,
    sep: Annotated[str | None, typer.Option(help="separator string after each document (sep mode)")] = None,
    text_field: Annotated[str | None, typer.Option("--text-field", help="record field with the text")] = None,
    source_field: Annotated[str | None, typer.Option("--source-field", help="record field naming the source")
                            ] = None,
    upsample_threshold: Annotated[int | None, typer.Option(
        "--upsample-threshold", help="documents with more tokens than this are long")] = None,
    upsample_ratio: Annotated[float | None, typer.Option(
        "--upsample-ratio", help="rate of a short document relative to a long one (1 = off)")] = None,
    upsample_scale: Annotated[float | None, typer.Option(
        "--upsample-scale", help="tokens written per token read (every source)")] = None,
    workers: Annotated[int | None, typer.Option(help="tokenizer processes")] = None,
    join_files: Annotated[str | None, typer.Option(
        "--join-files", help="text folders: file (a document per file) | folder (a folder's files as one)")] = None,
    on_error: Annotated[str | None, typer.Option("--on-error", help="raise | skip (bad records)")] = None,
    seed: Annotated[int | None, typer.Option(help="seed of up-sampling and shuffle")] = None,
    config: Annotated[str | None, typer.Option("--config", "-c", help="YAML file overriding PrepareConfig")
                      ] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="override a field: --set shuffle=false")] = None,
    overwrite: Annotated[bool, typer.Option(help="replace an existing output directory")] = False,
) -> None:
    """Tokenize, up-sample and pack corpora into shards. Prints a JSON summary on stdout."""
    from longreach import config as config_io
    from longreach.data.config import PrepareConfig
    from longreach.data.prepare import prepare as run

    flags = {"inputs": input or None, "tokenizer": tokenizer, "seq_len": seq_len, "out": out,
             "sep_mode": sep_mode, "sep": sep, "text_field": text_field, "source_field": source_field,
             "upsample_threshold": upsample_threshold, "upsample_ratio": upsample_ratio,
             "upsample_scale": upsample_scale, "workers": workers, "join_files": join_files, "on_error": on_error,
             "seed": seed}
    # JSON values are valid YAML, so strings such as "<s>" or "a: b" survive the override parser unchanged.
    overrides = list(set_ or []) + [f"{k}={json.dumps(v)}" for k, v in flags.items() if v is not None]
    cfg = config_io.load(PrepareConfig, config, overrides)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")
    print(json.dumps(run(cfg, overwrite=overwrite)))


@data_app.command("self-chat")
def self_chat(
    model: Annotated[str, typer.Option(help="instruct model with a chat template: HF folder or .gguf")],
    input: Annotated[list[str], typer.Option("--input", "-i", help="corpus file or folder (repeatable)")],
    out: Annotated[str, typer.Option(help="folder: self-chat.jsonl (for `data prepare --input`), generations")],
    n: Annotated[int, typer.Option(help="prompts to answer")] = 1000,
    passage_tokens: Annotated[str, typer.Option(help="passage length range MIN,MAX in tokens")] = "120,600",
    instruction: Annotated[list[str] | None, typer.Option(help="an instruction (repeatable; default: six "
                                                          "generic ones)")] = None,
    max_new_tokens: Annotated[int, typer.Option(help="answers longer than this are dropped")] = 160,
    batch_size: Annotated[int, typer.Option(help="prompts per generate call")] = 8,
    seed: Annotated[int, typer.Option(help="seed of the passage and instruction draw")] = 0,
    base_url: Annotated[str | None, typer.Option(help="OpenAI-compatible server instead of a local model")] = None,
) -> None:
    """Short chat data in the model's own words (passages of your corpus + instructions + its answers), to mix
    into continued pretraining so an instruct model keeps answering. Prints a JSON summary."""
    from longreach.data.selfchat import SelfChatConfig, run
    from longreach.errors import InputError

    try:
        rng = [int(x) for x in passage_tokens.split(",")]
    except ValueError:
        raise InputError(f"expected MIN,MAX, got {passage_tokens!r}", field="passage_tokens") from None
    cfg = SelfChatConfig(model=model, inputs=list(input), out=out, n=n, passage_tokens=rng,
                         max_new_tokens=max_new_tokens, batch_size=batch_size, seed=seed, base_url=base_url)
    if instruction:
        cfg.instructions = list(instruction)
    print(json.dumps(run(cfg)))


@data_app.command("inspect")
def inspect(
    dir: Annotated[str, typer.Argument(help="shard directory written by `longreach data prepare`")],
    index: Annotated[int, typer.Option(help="sequence to show")] = 0,
    tokens: Annotated[int, typer.Option(help="how many tokens of its head to decode")] = 64,
    tokenizer: Annotated[str | None, typer.Option(help="tokenizer to decode with (default: the manifest's)")
                         ] = None,
) -> None:
    """Summarize a shard directory and decode the head of one sequence. Prints JSON on stdout."""
    import numpy as np

    from longreach.data.prepare import SOURCE_SUMMARY, longest_span, span_summary
    from longreach.data.shards import PackedShards
    from longreach.data.tokenize import load_tokenizer, tokenizer_hash
    from longreach.errors import InputError

    ds = PackedShards(dir)
    m = ds.manifest
    keys = ("seq_len", "sequences", "tokens", "dtype", "vocab_size", "loss_mask", "tokenizer", "separator",
            "documents_read", "tokens_read", "documents_written", "tail_tokens_dropped", "skipped")
    report = {"dir": dir, **{k: m[k] for k in keys if k in m}, "shard_files": len(m["shards"])}
    if "sources" in m:
        report["sources"] = {name: {k: s[k] for k in SOURCE_SUMMARY} for name, s in m["sources"].items()}
    # how far a dependency inside one document reaches, from the shards themselves (any shards, old ones too)
    spans = np.array([longest_span(ds.doc_starts(i), m["seq_len"]) for i in range(len(ds))], dtype=np.int64)
    report["document_spans"] = span_summary(spans, m["seq_len"])
    item = ds[index]
    head = item["input_ids"][:tokens].tolist()
    shown = {"index": index, "doc_starts": ds.doc_starts(index).tolist(), "head_ids": head}
    if "loss_mask" in item:
        shown["loss_tokens"] = int(item["loss_mask"].sum())
    path = tokenizer or (m.get("tokenizer") or {}).get("path")
    if path:
        try:
            tok = load_tokenizer(path)
        except (InputError, OSError, ValueError) as e:
            shown["head_text"] = None
            shown["note"] = f"cannot load tokenizer {path}: {e}"
        else:
            shown["head_text"] = tok.decode(head, clean_up_tokenization_spaces=False)
            shown["tokenizer_matches"] = tokenizer_hash(tok) == (m.get("tokenizer") or {}).get("hash")
    report["sequence"] = shown
    print(json.dumps(report, indent=2, ensure_ascii=False))
