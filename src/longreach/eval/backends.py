"""Backends: where predictions come from - a local Hugging Face model, or any OpenAI-compatible server.

Every evaluation talks to a `Backend`: greedy `generate`, teacher-forced `logprob`, `count_tokens`.
A prompt is raw text or a list of chat messages ({"role", "content"}). Messages are rendered with the
model's chat template; a final "assistant" message is a prefix that the answer continues.

    from longreach.eval.backends import LocalHF, OpenAIHTTP
    b = LocalHF("path/to/hf_folder_or_model.gguf")     # bf16 on a GPU, fp32 on CPU
    b.generate([[{"role": "user", "content": "Hi"}]], max_new_tokens=16)
    b.logprob(["The capital of France is"], [" Paris"])
    h = OpenAIHTTP("http://127.0.0.1:8000", tokenizer="path/to/model")   # e.g. `longreach serve`
"""

from __future__ import annotations

import inspect
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from longreach.errors import InputError

Prompt = str | list[dict[str, str]]


class BackendError(RuntimeError):
    """A server failed (after retries) or cannot do what was asked."""


class Backend(Protocol):
    tokenizer: Any
    max_length: int

    def generate(self, prompts: list[Prompt], max_new_tokens: int, stop: list[str] | None = None) -> list[str]:
        ...

    def logprob(self, prompts: list[Prompt], continuations: list[str]) -> list[float]:
        ...

    def count_tokens(self, text: Prompt) -> int:
        ...


def render(tokenizer: Any, prompt: Prompt) -> str:
    """The text a prompt stands for: itself, or chat messages in the tokenizer's chat template."""
    if isinstance(prompt, str):
        return prompt
    if not getattr(tokenizer, "chat_template", None):
        raise InputError("the model's tokenizer has no chat template: use raw text prompts (--no-chat)")
    prefix = ""
    if prompt and prompt[-1]["role"] == "assistant":  # the start of the answer, continued by the model
        prompt, prefix = prompt[:-1], prompt[-1]["content"]
    return tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True) + prefix


def adds_special(tokenizer: Any, text: str) -> bool:
    """Whether encoding `text` adds the tokenizer's special tokens (BOS): not when a chat template put it in."""
    bos = getattr(tokenizer, "bos_token", None)
    return not (bos and text.startswith(bos))


def encode(tokenizer: Any, text: str) -> list[int]:
    """Token ids of a rendered prompt, as every backend and the server count and feed them."""
    return list(tokenizer(text, add_special_tokens=adds_special(tokenizer, text))["input_ids"])


def cut_at_stop(text: str, stop: list[str] | None) -> tuple[str, bool]:
    """Text before the earliest stop string, and whether one was found (stop strings are not returned)."""
    hits = [i for i in (text.find(s) for s in stop or [] if s) if i >= 0]
    return (text[:min(hits)], True) if hits else (text, False)


@dataclass
class Completion:
    text: str  # generated text, cut before any stop string, special tokens removed
    finish_reason: str  # "stop" (EOS or a stop string) or "length"
    prompt_tokens: int
    completion_tokens: int


class LocalHF:
    """A local causal LM: batched left-padded prefill, KV cache, greedy decoding, teacher-forced log-probs.

    Prompts are sorted by length and batched up to `batch_size` prompts and `batch_tokens` padded tokens, so a
    long prompt (32K+) is prefilled alone. The full [tokens x vocab] logits are never built: generation
    projects the last position only, and scoring projects `chunk_tokens` positions at a time.
    """

    def __init__(self, path_or_model: Any, tokenizer: Any = None, device: str | None = None, dtype: Any = None,
                 batch_size: int = 8, batch_tokens: int = 32768, chunk_tokens: int = 4096,
                 max_length: int | None = None):
        import torch

        from longreach.model import rope
        from longreach.model.load import load_model, resolve_dtype

        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        dtype = resolve_dtype(dtype) or (torch.bfloat16 if str(device).startswith("cuda") else torch.float32)
        if isinstance(path_or_model, (str, Path)):
            self.model, loaded_tok = load_model(path_or_model, dtype=dtype, device=device)
            tokenizer = tokenizer or loaded_tok
        else:
            before = next(path_or_model.parameters()).dtype
            self.model = path_or_model.to(device=device, dtype=dtype)
            if dtype != before:  # .to(dtype) casts the RoPE inv_freq too; rebuild it in fp32
                rope.refresh_rotary(self.model)
        if tokenizer is None:
            raise InputError("LocalHF needs a tokenizer (the model folder has none)")
        self.model.eval()
        self.tokenizer = tokenizer
        self.device = torch.device(device)
        self.batch_size, self.batch_tokens, self.chunk_tokens = batch_size, batch_tokens, chunk_tokens
        cfg = self.model.config
        self.max_length = max_length or getattr(cfg, "max_position_embeddings", None) or 2048
        eos = getattr(self.model.generation_config, "eos_token_id", None)
        eos = [eos] if isinstance(eos, int) else list(eos or [])
        self.eos_ids = set(eos) | ({tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set())
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.pad_id = pad if pad is not None else 0
        self.decoder = self.model.get_decoder()
        self.head = self.model.get_output_embeddings()
        self.softcap = getattr(cfg, "final_logit_softcapping", None)
        # transformers 5.24 renamed `past_key_values` to `cache` (the GPU machine's 5.17 has the old name).
        self._cache_arg = "cache" if "cache" in inspect.signature(self.decoder.forward).parameters \
            else "past_key_values"

    # -- text <-> tokens ---------------------------------------------------------------------------------
    def encode(self, prompt: Prompt) -> list[int]:
        return encode(self.tokenizer, render(self.tokenizer, prompt))

    def count_tokens(self, text: Prompt) -> int:
        return len(self.encode(text))

    def _logits(self, hidden):
        logits = self.head(hidden).float()
        if self.softcap:  # Gemma-2 style final soft-capping; plain lm_head for Llama/Mistral/Qwen
            logits = self.softcap * (logits / self.softcap).tanh()
        return logits

    def _forward(self, ids, mask=None, positions=None, cache=None):
        out = self.decoder(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=cache is not None,
                           **{self._cache_arg: cache})
        return out.last_hidden_state

    # -- generation --------------------------------------------------------------------------------------
    def generate(self, prompts: list[Prompt], max_new_tokens: int, stop: list[str] | None = None) -> list[str]:
        return [c.text for c in self.complete(prompts, max_new_tokens, stop)]

    def complete(self, prompts: list[Prompt], max_new_tokens: int,
                 stop: list[str] | None = None) -> list[Completion]:
        """Greedy completions, in the order of `prompts`, with finish reasons and token counts."""
        ids = [self.encode(p) for p in prompts]
        results: list[Completion | None] = [None] * len(ids)
        for batch in self._batches([len(x) for x in ids]):
            for i, c in zip(batch, self._generate_batch([ids[i] for i in batch], max_new_tokens, stop)):
                results[i] = c
        return results  # type: ignore[return-value]

    def _batches(self, lengths: list[int]) -> list[list[int]]:
        """Indices grouped longest first, within `batch_size` prompts and `batch_tokens` padded tokens."""
        order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
        batches: list[list[int]] = []
        for i in order:
            cur = batches[-1] if batches else None
            # Sorted longest first, so a batch's padded width is the length of its first prompt.
            if cur and len(cur) < self.batch_size and lengths[cur[0]] * (len(cur) + 1) <= self.batch_tokens:
                cur.append(i)
            else:
                batches.append([i])
        return batches

    def _generate_batch(self, batch: list[list[int]], max_new_tokens: int,
                        stop: list[str] | None) -> list[Completion]:
        import torch
        from transformers import DynamicCache

        n, width = len(batch), max(len(x) for x in batch)
        if width == 0:
            raise InputError("cannot generate from an empty prompt (the tokenizer adds no BOS)")
        ids = torch.full((n, width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((n, width), dtype=torch.long)
        for r, x in enumerate(batch):  # left padding: every prompt ends at the last column
            ids[r, width - len(x):] = torch.tensor(x)
            mask[r, width - len(x):] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        # Positions count real tokens only, so a padded prompt sees the same positions as an unpadded one.
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        out: list[list[int]] = [[] for _ in range(n)]
        texts: list[str | None] = [None] * n
        finish = ["length"] * n
        done = [max_new_tokens <= 0] * n
        with torch.inference_mode():
            cache = DynamicCache(config=self.model.config)
            hidden = self._forward(ids, mask, positions, cache)[:, -1]
            nxt_pos = positions[:, -1:] + 1
            for step in range(max_new_tokens):
                tok = self._logits(hidden).argmax(-1)
                for r, t in enumerate(tok.tolist()):
                    if done[r]:
                        continue
                    if t in self.eos_ids:
                        done[r], finish[r] = True, "stop"
                        continue
                    out[r].append(t)
                    if stop:
                        text, hit = cut_at_stop(self.tokenizer.decode(out[r], skip_special_tokens=True), stop)
                        if hit:
                            texts[r], done[r], finish[r] = text, True, "stop"
                if all(done) or step == max_new_tokens - 1:
                    break
                mask = torch.cat([mask, mask.new_ones((n, 1))], dim=1)
                hidden = self._forward(tok[:, None], mask, nxt_pos, cache)[:, -1]
                nxt_pos = nxt_pos + 1
        return [Completion(texts[r] if texts[r] is not None else self.tokenizer.decode(out[r], skip_special_tokens=True),
                           finish[r], len(batch[r]), len(out[r])) for r in range(n)]

    # -- scoring -----------------------------------------------------------------------------------------
    def _target_logprobs(self, hidden, targets, top: int = 0):
        """log p(target) for each row of hidden [T, H] (and the top-k alternatives), `chunk_tokens` at a time."""
        import torch

        lps, tops = [], []
        for s in range(0, hidden.shape[0], self.chunk_tokens):
            logits = self._logits(hidden[s:s + self.chunk_tokens])
            norm = logits.logsumexp(-1)
            lps.append(logits.gather(-1, targets[s:s + self.chunk_tokens, None])[:, 0] - norm)
            if top:
                v, i = logits.topk(top, dim=-1)
                tops.append((v - norm[:, None], i))
        lp = torch.cat(lps)
        if not top:
            return lp, None
        return lp, (torch.cat([v for v, _ in tops]), torch.cat([i for _, i in tops]))

    def token_logprobs(self, ids: list[int], top: int = 0):
        """log p(ids[t] | ids[:t]) for t >= 1 as a float32 CPU tensor [len-1] (plus top-k values, ids)."""
        import torch

        if len(ids) < 2:
            return torch.zeros(0), None
        x = torch.tensor([ids], device=self.device)
        with torch.inference_mode():
            hidden = self._forward(x)[0, :-1]
            lp, tops = self._target_logprobs(hidden, x[0, 1:], top)
        return lp.cpu(), (None if tops is None else (tops[0].cpu(), tops[1].cpu()))

    def logprob(self, prompts: list[Prompt], continuations: list[str]) -> list[float]:
        """Sum of log p(continuation tokens | prompt), teacher-forced.

        Prompt and continuation are tokenised together, so a token spanning the boundary counts as part of the
        continuation. Continuations of the same prompt share one prefill: the KV cache of the prompt is kept
        and cropped back after each continuation (a 128K-token prompt with 6 answers is prefilled once).
        """
        import torch
        from transformers import DynamicCache

        if len(prompts) != len(continuations):
            raise InputError(f"{len(prompts)} prompts but {len(continuations)} continuations")
        groups: dict[str, list[int]] = {}
        for i, p in enumerate(prompts):
            groups.setdefault(render(self.tokenizer, p), []).append(i)
        result = [0.0] * len(prompts)
        for text, members in groups.items():
            p_ids = encode(self.tokenizer, text)
            fulls = [encode(self.tokenizer, text + continuations[i]) for i in members]
            starts = [_common_prefix(p_ids, f) for f in fulls]  # index of each first continuation token
            shared = min(starts)
            if shared == 0:
                raise InputError("logprob needs a non-empty prompt (the tokenizer adds no BOS)")
            with torch.inference_mode():
                cache = DynamicCache(config=self.model.config)
                if shared > 1:  # prefill all shared tokens but the last; its hidden state predicts token `shared`
                    self._forward(torch.tensor([fulls[0][:shared - 1]], device=self.device), cache=cache)
                for i, full, start in zip(members, fulls, starts):
                    if start >= len(full):
                        continue  # empty continuation: log-prob 0
                    fed = torch.tensor([full[shared - 1:]], device=self.device)
                    pos = torch.arange(shared - 1, len(full), device=self.device)[None]
                    hidden = self._forward(fed, positions=pos, cache=cache)[0, :-1]
                    lp, _ = self._target_logprobs(hidden, fed[0, 1:])
                    result[i] = float(lp[start - shared:].sum())
                    cache.crop(-fed.shape[1])  # back to the shared prefix for the next continuation
        return result


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


class OpenAIHTTP:
    """Any OpenAI-compatible server (vLLM, llama.cpp, `longreach serve`, OpenAI itself).

    mode "chat" sends /v1/chat/completions (the server applies the chat template; a text prompt becomes one
    user message); "completions" sends /v1/completions (chat messages are rendered here with `tokenizer`).
    Greedy (temperature 0). 429, 5xx and connection errors are retried with exponential backoff (honouring
    Retry-After); `concurrency` requests run at once. `logprob` needs /v1/completions with echo + logprobs.
    `count_tokens` needs the model's tokenizer (a path or a tokenizer object).
    """

    def __init__(self, base_url: str, model: str | None = None, api_key: str | None = None, mode: str = "chat",
                 timeout: float = 600.0, retries: int = 5, concurrency: int = 4, tokenizer: Any = None,
                 max_length: int | None = None, backoff: float = 1.0):
        import httpx

        if mode not in ("chat", "completions"):
            raise InputError(f"mode must be 'chat' or 'completions', got {mode!r}", field="mode")
        self.base_url = base_url.rstrip("/")
        if not self.base_url.endswith("/v1"):
            self.base_url += "/v1"
        self.mode, self.retries, self.concurrency, self.backoff = mode, retries, concurrency, backoff
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.Client(timeout=timeout, headers=headers)
        if isinstance(tokenizer, (str, Path)):
            from longreach.model.load import load_tokenizer

            tokenizer = load_tokenizer(tokenizer)
        self.tokenizer = tokenizer
        self._max_length = max_length
        self._info: dict[str, Any] | None = None
        self.model = model or self._models()[0]["id"]

    def _models(self) -> list[dict[str, Any]]:
        data = self._request("GET", "/models").get("data") or []
        if not data:
            raise BackendError(f"{self.base_url}/models lists no model")
        return data

    @property
    def max_length(self) -> int:
        if self._max_length is None:
            info = next((m for m in self._models() if m.get("id") == self.model), {})
            self._max_length = info.get("max_model_len")  # vLLM and `longreach serve` report it
        if self._max_length is None:
            raise BackendError(f"{self.base_url} does not report the model's window: pass max_length")
        return self._max_length

    def _request(self, method: str, path: str, payload: dict[str, Any] | None = None) -> dict[str, Any]:
        import httpx

        url = self.base_url + path
        why = ""
        for attempt in range(self.retries + 1):
            wait = self.backoff * 2 ** attempt
            try:
                r = self._client.request(method, url, json=payload)
            except httpx.TransportError as e:  # refused, reset, timed out: worth another try
                why = f"{type(e).__name__}: {e}"
            else:
                if r.status_code == 429 or r.status_code >= 500:
                    why = f"HTTP {r.status_code}: {r.text[:300]}"
                    after = r.headers.get("retry-after", "")
                    wait = float(after) if after.replace(".", "", 1).isdigit() else wait
                elif r.status_code >= 400:
                    raise BackendError(f"{url} answered HTTP {r.status_code}: {r.text[:500]}")
                else:
                    return r.json()
            if attempt < self.retries:
                time.sleep(min(wait, 60.0))
        raise BackendError(f"{url} failed after {self.retries + 1} attempts; last: {why}")

    def _map(self, fn, items: list[Any]) -> list[Any]:
        with ThreadPoolExecutor(max_workers=max(1, self.concurrency)) as pool:
            return list(pool.map(fn, items))

    def _text(self, prompt: Prompt) -> str:
        if isinstance(prompt, str):
            return prompt
        if self.tokenizer is None:
            raise InputError("chat messages in completions mode need the model's tokenizer (tokenizer=...)")
        return render(self.tokenizer, prompt)

    def generate(self, prompts: list[Prompt], max_new_tokens: int, stop: list[str] | None = None) -> list[str]:
        def one(prompt: Prompt) -> str:
            body: dict[str, Any] = {"model": self.model, "max_tokens": max_new_tokens, "temperature": 0}
            if stop:
                body["stop"] = stop
            if self.mode == "chat":
                body["messages"] = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
                text = self._request("POST", "/chat/completions", body)["choices"][0]["message"].get("content")
            else:
                body["prompt"] = self._text(prompt)
                text = self._request("POST", "/completions", body)["choices"][0].get("text")
            return cut_at_stop(text or "", stop)[0]  # some servers return the stop string; drop it

        return self._map(one, prompts)

    def logprob(self, prompts: list[Prompt], continuations: list[str]) -> list[float]:
        def one(pair: tuple[Prompt, str]) -> float:
            prompt = self._text(pair[0])
            full = prompt + pair[1]
            # max_tokens=1 rather than 0: some servers reject 0; the generated token starts at len(full).
            body = {"model": self.model, "prompt": full, "max_tokens": 1, "temperature": 0, "echo": True,
                    "logprobs": 0}
            try:
                lp = self._request("POST", "/completions", body)["choices"][0].get("logprobs")
            except BackendError as e:
                raise BackendError(f"{self.base_url} cannot score text (completions echo+logprobs): {e}") from None
            if not lp or lp.get("token_logprobs") is None or lp.get("text_offset") is None:
                raise BackendError(f"{self.base_url}/completions returned no echo logprobs: this server cannot "
                                   "score text; use generation mode or a local model")
            offsets, values = lp["text_offset"], lp["token_logprobs"]
            total = 0.0
            for k, (start, value) in enumerate(zip(offsets, values)):
                end = offsets[k + 1] if k + 1 < len(offsets) else float("inf")
                if start < len(full) and end > len(prompt) and value is not None:
                    total += value
            return total

        if len(prompts) != len(continuations):
            raise InputError(f"{len(prompts)} prompts but {len(continuations)} continuations")
        return self._map(one, list(zip(prompts, continuations)))

    def count_tokens(self, text: Prompt) -> int:
        if self.tokenizer is None:
            raise InputError("counting tokens needs the model's tokenizer (OpenAIHTTP(tokenizer=...))")
        if self.mode == "chat" and isinstance(text, str):  # sent as one user message, so counted as one
            text = [{"role": "user", "content": text}]
        return len(encode(self.tokenizer, render(self.tokenizer, text)))


def open_backend(model: str, base_url: str | None = None, served_model: str | None = None,
                 chat: bool | None = None, dtype: str | None = None, device: str | None = None,
                 batch_size: int = 8) -> Any:
    """The backend an evaluation command asks for: the local model at `model`, or the server at `base_url`
    (then `model` is where the tokenizer comes from; chat=None picks /chat/completions when it has a template)."""
    if base_url:
        from longreach.model.load import load_tokenizer

        tok = load_tokenizer(model)
        chat = bool(getattr(tok, "chat_template", None)) if chat is None else chat
        return OpenAIHTTP(base_url, model=served_model, mode="chat" if chat else "completions", tokenizer=tok)
    return LocalHF(model, dtype=dtype, device=device, batch_size=batch_size)
