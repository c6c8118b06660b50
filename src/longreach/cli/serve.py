"""`longreach serve`: an OpenAI-compatible HTTP server over a local model.

    longreach serve --model runs/x/checkpoint --port 8000
"""

from __future__ import annotations

import sys

import typer

from longreach.cli.apps import app


@app.command("serve")
def serve(
    model: str = typer.Option(..., help="HF folder or .gguf file"),
    port: int = typer.Option(8000, help="TCP port"),
    host: str = typer.Option("127.0.0.1", help="address to bind (0.0.0.0 to accept other machines)"),
    name: str | None = typer.Option(None, help="model id in the API (default: the model's folder/file name)"),
    dtype: str | None = typer.Option(None, help="bfloat16, float16 or float32 (default: bf16 on GPU, fp32 on CPU)"),
    device: str | None = typer.Option(None, help="cpu or cuda (default: cuda when available)"),
) -> None:
    """Serve /v1/models, /v1/completions and /v1/chat/completions (greedy decoding) until interrupted."""
    from pathlib import Path

    from longreach.eval.backends import LocalHF
    from longreach.serve import make_server

    backend = LocalHF(model, dtype=dtype, device=device)
    server = make_server(backend, host, port, name or Path(model).name)
    print(f"serving {model} on http://{host}:{server.server_address[1]}/v1", file=sys.stderr)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
