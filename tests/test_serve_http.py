"""`longreach serve` and the OpenAIHTTP backend over real HTTP on 127.0.0.1 (no mocks): generation and
log-probs equal LocalHF's; 429/503/refused connections are retried; bad requests are not."""

from __future__ import annotations

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from longreach.eval.backends import BackendError, OpenAIHTTP
from longreach.serve import make_server
from test_eval_backends import PROMPTS, tiny_backend, tiny_tokenizer


@pytest.fixture(scope="module")
def server():
    srv = make_server(tiny_backend(), "127.0.0.1", 0, name="tiny", quiet=True)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()
    srv.server_close()


def test_generation_and_logprobs_equal_local(server):
    local = tiny_backend()
    completions = OpenAIHTTP(server, mode="completions", tokenizer=tiny_tokenizer(), concurrency=3)
    assert completions.model == "tiny" and completions.max_length == local.max_length
    assert completions.generate(PROMPTS, 10) == local.generate(PROMPTS, 10)
    chats = [[{"role": "user", "content": p}] for p in PROMPTS[:3]]
    chat = OpenAIHTTP(server + "/v1", model="tiny", mode="chat", tokenizer=tiny_tokenizer())
    assert chat.generate(chats, 8) == local.generate(chats, 8)
    assert chat.generate(PROMPTS[:1], 8) == local.generate(chats[:1], 8)  # text = one user message
    assert chat.count_tokens(PROMPTS[0]) == local.count_tokens(chats[0])
    stop = local.generate(PROMPTS[:1], 12)[0][3:5]
    assert completions.generate(PROMPTS[:1], 12, stop=[stop]) == local.generate(PROMPTS[:1], 12, stop=[stop])
    prompts, conts = [PROMPTS[0], PROMPTS[0], "Hello wor", chats[0]], [" good", " bad", "ld peace", "Sure"]
    assert chat.logprob(prompts, conts) == pytest.approx(local.logprob(prompts, conts), abs=1e-4)


def test_raw_endpoints(server):
    with httpx.Client(base_url=server) as c:
        echo = c.post("/v1/completions", json={"prompt": "Hello world. This", "max_tokens": 0, "echo": True,
                                               "logprobs": 2}).json()["choices"][0]
        assert echo["text"] == "Hello world. This" and echo["finish_reason"] == "length"
        lp = echo["logprobs"]
        assert lp["token_logprobs"][0] is None and lp["tokens"][0] == "<s>"  # BOS, nothing predicts it
        assert "".join(lp["tokens"][1:]) == "Hello world. This" and lp["text_offset"][1] == 0
        assert all(len(t) == 2 for t in lp["top_logprobs"][1:]) and lp["top_logprobs"][0] is None
        r = c.post("/v1/completions", json={"prompt": ["a", "b"], "max_tokens": 3, "logprobs": 0}).json()
        assert len(r["choices"]) == 2 and r["usage"]["completion_tokens"] <= 6
        assert c.post("/v1/completions", json={"prompt": "a", "stream": True}).status_code == 400
        assert c.post("/v1/chat/completions", json={"messages": "hi"}).status_code == 400
        assert c.post("/v1/completions", content=b"{not json").status_code == 400
        assert c.get("/v1/nothing").status_code == 404
        assert c.get("/v1/models").json()["data"][0]["id"] == "tiny"


class Flaky(BaseHTTPRequestHandler):
    """Answers 503, then 429 (Retry-After 0), then a real chat completion; counts requests."""

    calls = 0

    def do_POST(self):
        type(self).calls += 1
        self.rfile.read(int(self.headers["Content-Length"]))
        code = {1: 503, 2: 429}.get(type(self).calls, 200)
        body = json.dumps({"choices": [{"message": {"role": "assistant", "content": "fine. thanks"}}]}
                          if code == 200 else {"error": {"message": "busy"}}).encode()
        self.send_response(code)
        if code == 429:
            self.send_header("Retry-After", "0")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_retries_on_503_429_and_refused_connections():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), Flaky)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        b = OpenAIHTTP(f"http://127.0.0.1:{srv.server_address[1]}", model="m", retries=3, backoff=0.01)
        assert b.generate(["hi"], 5, stop=["."]) == ["fine"]  # stop strings are cut on the client too
        assert Flaky.calls == 3
        Flaky.calls = 10
        with pytest.raises(BackendError, match="cannot score text"):  # no echo logprobs from this server
            b.logprob(["a"], ["b"])
    finally:
        srv.shutdown()
        srv.server_close()
    with socket.socket() as s:  # a port with nobody listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    b = OpenAIHTTP(f"http://127.0.0.1:{port}", model="m", retries=2, backoff=0.01, timeout=2)
    start = time.time()
    with pytest.raises(BackendError, match="3 attempts"):
        b.generate(["hi"], 5)
    assert time.time() - start < 5


def test_client_errors_are_not_retried(server):
    b = OpenAIHTTP(server, model="tiny", mode="chat", retries=5, backoff=30.0)
    start = time.time()
    with pytest.raises(BackendError, match="HTTP 400"):
        b.generate([[{"role": "user", "content": 3}]], 4)  # type: ignore[list-item]
    assert time.time() - start < 10  # one retry would have waited 30 s
