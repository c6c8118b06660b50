"""`longreach extend`: change a model's RoPE for a longer window and save it as a Hugging Face folder.

    longreach extend --model SmolLM2-135M-Instruct.Q4_1.gguf --out runs/smollm2-128k --target-len 131072
    longreach extend --model runs/base --out runs/base-yarn --target-len 32768 --scheme yarn --dtype bf16

Also the way to convert a GGUF to safetensors once: `--scheme theta --base 100000 --target-len 8192` keeps
SmolLM2's RoPE as it is. Prints a JSON summary on stdout; progress goes to stderr.

`longreach average --out runs/soup A B ...` averages models fine-tuned from one start (model/average.py).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from longreach.cli.apps import app


@app.command("extend")
def extend(
    model: Annotated[str, typer.Option(help="Hugging Face model folder or .gguf file")],
    out: Annotated[Path, typer.Option(help="output folder (Hugging Face layout + longreach.json)")],
    target_len: Annotated[int, typer.Option(help="context window to reach, in tokens")],
    scheme: Annotated[str, typer.Option(help="theta | pi | ntk | yarn | llama3")] = "theta",
    base: Annotated[float | None, typer.Option(help="theta: new RoPE base (default: derived from "
                                                     "--target-len by the Men et al. bound)")] = None,
    factor: Annotated[float | None, typer.Option(help="pi/ntk/yarn/llama3 scale (default: target / "
                                                       "current window; yarn on a YaRN model: / its original window)")] = None,
    dynamic: Annotated[bool, typer.Option(help="ntk: dynamic NTK instead of a static base")] = False,
    dtype: Annotated[str | None, typer.Option(help="bf16 | fp32 | fp16 (default: as loaded)")] = None,
    attention_factor: Annotated[float | None, typer.Option(
        "--attention-factor", help="theta/yarn: scale of cos/sin (attention logits x its square; yarn default "
                                   "0.1 ln s + 1, theta 1)")] = None,
    query_log_scale: Annotated[float | None, typer.Option(
        "--query-log-scale", help="queries at position p x 1 + S ln(floor((p+1)/F) + 1): sharper attention "
                                  "from the F-th token on (0 removes it; default: keep the model's)")] = None,
    query_log_floor: Annotated[int, typer.Option(
        "--query-log-floor", help="F of --query-log-scale: positions below F - 1 are unchanged")] = 8192,
) -> None:
    """Load a model, apply a RoPE scheme for --target-len tokens, save it, and check it reads back."""
    from longreach.model.extend import extend_checkpoint

    summary = extend_checkpoint(model, out, target_len, scheme=scheme, base=base, factor=factor,
                                dynamic=dynamic, dtype=dtype, attention_factor=attention_factor,
                                query_log_scale=query_log_scale, query_log_floor=query_log_floor)
    print(json.dumps(summary, indent=2))


@app.command("average")
def average(
    models: Annotated[list[str], typer.Argument(help="two or more Hugging Face model folders (or .gguf files) "
                                                     "fine-tuned from one start: same config and tokenizer")],
    out: Annotated[Path, typer.Option(help="output folder (Hugging Face layout + longreach.json)")],
    weight: Annotated[list[float] | None, typer.Option(
        help="one per model, in order (repeatable; default: equal); scaled to sum 1")] = None,
    dtype: Annotated[str | None, typer.Option(help="bf16 | fp32 | fp16 (default: the first model's)")] = None,
) -> None:
    """Average the models' weights tensor by tensor (a model soup of runs that differ in data order or seed),
    save the result, and print a JSON summary with the models' spread around it."""
    from longreach.model.average import average_models

    print(json.dumps(average_models(models, out, weights=weight, dtype=dtype), indent=2))


@app.command("rope-plan")
def rope_plan(
    model: Annotated[str, typer.Option(help="Hugging Face model folder or .gguf file")],
    target_len: Annotated[int, typer.Option(help="context window to reach, in tokens")],
    factor: Annotated[list[float] | None, typer.Option(
        help="yarn/llama3 factors to compare (repeatable; default: target / window, x1.5 and x2 of it)")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="print the rows as JSON")] = False,
) -> None:
    """Compare the RoPE schemes `longreach extend` could apply for --target-len, before any training: where each
    one's frequencies first fail the Men et al. condition (retrieval weakened beyond it in longreach's runs), how
    many of the model's frequencies it keeps, and the most it slows one (more moved: more perplexity lost)."""
    from longreach.model import rope
    from longreach.model.load import load_config

    config = load_config(model)
    rows = rope.plan(config, target_len, factor)
    if json_out:
        print(json.dumps(rows, indent=2))
        return
    p = rope.rope_parameters(config)
    print(f"RoPE plans for {target_len} tokens from {model} (window {config.max_position_embeddings}, "
          f"{p['rope_type']} base {float(p['rope_theta']):.4g})")
    print("| longreach extend flags | B_m < 0 from | frequencies kept | most slowed | attention factor |")
    print("|---|---|---|---|---|")
    for r in rows:
        if "error" in r:
            print(f"| {r['flags']} | refused: {r['error']} | | | |")
            continue
        reach = "never" if r["bound_reach"] is None else f"{r['bound_reach']:,}"
        print(f"| {r['flags']} | {reach} | {r['unchanged']}/{r['frequencies']} | x{r['max_slowdown']:.3g} | "
              f"{r['attention_scaling']:.4g} |")
