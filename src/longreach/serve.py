"""A small OpenAI-compatible HTTP server over a local model (standard library only).

    longreach serve --model runs/x/checkpoint --port 8000          # CPU or one GPU
    curl -s localhost:8000/v1/chat/completions \
        -d '{"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 32}'

Endpoints: GET /v1/models (ids and max_model_len), POST /v1/completions (prompt: a string or a list of
strings; echo and logprobs supported, including max_tokens 0 for scoring text), POST /v1/chat/completions
(the model's chat template). Decoding is always greedy: temperature, top_p and seed are accepted and
ignored, so answers are reproducible. No streaming and n = 1 only. Requests are served one model call at a
time; `OpenAIHTTP` (longreach.eval.backends) and other OpenAI clients talk to it.
"""

from __future__ import annotations

import json
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from longreach.eval.backends import LocalHF, adds_special, render


class RequestError(ValueError):
    """A bad request: answered with HTTP 400 and an OpenAI-style error body."""


def _stop_list(body: dict[str, Any]) -> list[str] | None:
    stop = body.get("stop")
    if stop is None:
        return None
    stop = [stop] if isinstance(stop, str) else stop
    if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
        raise RequestError("'stop' must be a string or a list of strings")
    return stop


def _max_tokens(body: dict[str, Any], default: int) -> int:
    n = body.get("max_tokens", body.get("max_completion_tokens", default))
    if n is None:
        return default
    if not isinstance(n, int) or n < 0:
        raise RequestError("'max_tokens' must be a non-negative integer")
    return n


def _check_common(body: dict[str, Any]) -> None:
    if body.get("stream"):
        raise RequestError("streaming is not supported")
    if body.get("n", 1) != 1:
        raise RequestError("only n = 1 is supported")


class ModelService:
    """The model behind the server; one call at a time (a forward pass already uses every core/the GPU)."""

    def __init__(self, backend: LocalHF, name: str):
        self.backend, self.name = backend, name
        self.lock = threading.Lock()

    def models(self) -> dict[str, Any]:
        return {"object": "list", "data": [{"id": self.name, "object": "model", "created": 0,
                                            "owned_by": "longreach", "max_model_len": self.backend.max_length}]}

    def _logprobs(self, text: str, skip_chars: int, top: int) -> dict[str, Any]:
        """OpenAI's logprobs object for the tokens of `text` that start at or after `skip_chars`."""
        tok = self.backend.tokenizer
        enc = tok(text, add_special_tokens=adds_special(tok, text), return_offsets_mapping=True)
        ids, offsets = list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]
        lp, tops = self.backend.token_logprobs(ids, top=top)
        values = [None] + [float(x) for x in lp]
        out: dict[str, Any] = {"tokens": [], "token_logprobs": [], "text_offset": [], "top_logprobs": None}
        if top:
            out["top_logprobs"] = []
        for k, (tid, (start, end)) in enumerate(zip(ids, offsets)):
            if start < skip_chars:
                continue
            out["tokens"].append(text[start:end] if end > start else tok.decode([tid]))
            out["token_logprobs"].append(values[k])
            out["text_offset"].append(start)
            if top:
                alts = None if k == 0 else {tok.decode([int(i)]): float(v)
                                            for v, i in zip(tops[0][k - 1], tops[1][k - 1])}
                out["top_logprobs"].append(alts)
        return out

    def completions(self, body: dict[str, Any]) -> dict[str, Any]:
        _check_common(body)
        prompts = body.get("prompt")
        prompts = [prompts] if isinstance(prompts, str) else prompts
        if not isinstance(prompts, list) or not prompts or not all(isinstance(p, str) for p in prompts):
            raise RequestError("'prompt' must be a string or a non-empty list of strings")
        max_tokens, stop = _max_tokens(body, 16), _stop_list(body)
        echo, top = bool(body.get("echo")), body.get("logprobs")
        if top is not None and (not isinstance(top, int) or not 0 <= top <= 20):
            raise RequestError("'logprobs' must be an integer in 0..20")
        with self.lock:
            done = self.backend.complete(prompts, max_tokens, stop)
            choices = []
            for i, (prompt, c) in enumerate(zip(prompts, done)):
                choice: dict[str, Any] = {"index": i, "text": (prompt if echo else "") + c.text,
                                          "finish_reason": c.finish_reason, "logprobs": None}
                if top is not None:
                    # Scored by teacher forcing over the final text: the same numbers greedy decoding saw.
                    choice["logprobs"] = self._logprobs(prompt + c.text, 0 if echo else len(prompt), top)
                choices.append(choice)
        usage = {"prompt_tokens": sum(c.prompt_tokens for c in done),
                 "completion_tokens": sum(c.completion_tokens for c in done)}
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        return {"id": f"cmpl-{uuid.uuid4().hex[:24]}", "object": "text_completion", "created": int(time.time()),
                "model": self.name, "choices": choices, "usage": usage}

    def chat(self, body: dict[str, Any]) -> dict[str, Any]:
        _check_common(body)
        messages = body.get("messages")
        ok = isinstance(messages, list) and messages and all(
            isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
            for m in messages)
        if not ok:
            raise RequestError("'messages' must be a non-empty list of {role, content} with text content")
        messages = [{"role": m["role"], "content": m["content"]} for m in messages]
        try:
            render(self.backend.tokenizer, messages)
        except ValueError as e:
            raise RequestError(str(e)) from None
        with self.lock:
            c = self.backend.complete([messages], _max_tokens(body, 512), _stop_list(body))[0]
        return {"id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "object": "chat.completion", "created": int(time.time()),
                "model": self.name,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": c.text},
                             "finish_reason": c.finish_reason, "logprobs": None}],
                "usage": {"prompt_tokens": c.prompt_tokens, "completion_tokens": c.completion_tokens,
                          "total_tokens": c.prompt_tokens + c.completion_tokens}}


def _handler(service: ModelService, quiet: bool) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _send(self, code: int, payload: dict[str, Any]) -> None:
            data = json.dumps(payload).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _error(self, code: int, message: str, kind: str = "invalid_request_error") -> None:
            self._send(code, {"error": {"message": message, "type": kind, "code": code}})

        def do_GET(self) -> None:
            path = self.path.split("?")[0].rstrip("/")
            if path in ("/v1/models", "/models"):
                self._send(200, service.models())
            elif path in ("/health", "/v1/health"):
                self._send(200, {"status": "ok"})
            else:
                self._error(404, f"no route {path}", "not_found")

        def do_POST(self) -> None:
            path = self.path.split("?")[0].rstrip("/")
            routes = {"/v1/completions": service.completions, "/v1/chat/completions": service.chat,
                      "/completions": service.completions, "/chat/completions": service.chat}
            size = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(size) if size else b""
            if path not in routes:
                self._error(404, f"no route {path}", "not_found")
                return
            try:
                body = json.loads(raw or b"{}")
                if not isinstance(body, dict):
                    raise RequestError("the request body must be a JSON object")
                self._send(200, routes[path](body))
            except (RequestError, json.JSONDecodeError) as e:
                self._error(400, str(e))
            except Exception as e:  # noqa: BLE001 (a failure inside the model: report it, keep serving)
                self._error(500, f"{type(e).__name__}: {e}", "server_error")

        def log_message(self, format: str, *args: Any) -> None:
            if not quiet:
                sys.stderr.write(f"{self.address_string()} {format % args}\n")

    return Handler


def make_server(backend: LocalHF, host: str = "127.0.0.1", port: int = 8000, name: str = "longreach",
                quiet: bool = False) -> ThreadingHTTPServer:
    """A server bound to host:port (port 0: any free port, see `server.server_address`); call
    `serve_forever()` on it (in a thread for tests), `shutdown()` to stop."""
    server = ThreadingHTTPServer((host, port), _handler(ModelService(backend, name), quiet))
    server.daemon_threads = True
    return server
