"""The command tree. Each cli module adds its commands to one of these apps.

Heavy libraries (torch, transformers) are imported inside commands, so `longreach --help` stays fast.
"""

import typer

app = typer.Typer(help="longreach: long context for open LLMs (ChatQA 2 recipe).", no_args_is_help=True,
                  pretty_exceptions_enable=False)
data_app = typer.Typer(help="Read, tokenize, up-sample and pack corpora into shards.", no_args_is_help=True)
eval_app = typer.Typer(help="Evaluate models and score predictions.", no_args_is_help=True)
rag_app = typer.Typer(help="Chunk, embed, index and search documents.", no_args_is_help=True)
app.add_typer(data_app, name="data")
app.add_typer(eval_app, name="eval")
app.add_typer(rag_app, name="rag")
