"""LocalHF against direct computations on a tiny random Llama: greedy generation equals a naive no-cache
loop, batched equals unbatched, stop strings cut, log-probs equal a direct log-softmax.

The helpers `tiny_tokenizer()` and `tiny_backend()` are shared with the other eval tests.
"""

from __future__ import annotations

import functools

import pytest
import torch

from longreach.eval.backends import LocalHF, cut_at_stop, encode, render

CHAT_TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|>{% endif %}")


@functools.lru_cache(maxsize=1)
def tiny_tokenizer():
    """A byte-level BPE (400 tokens) trained on three Paul Graham essays; adds BOS; has a chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    from longreach import assets

    files = sorted(assets.paul_graham_essays().glob("*.txt"))[:3]
    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    tk.train([str(f) for f in files], trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<s>", "</s>", "<pad>"], show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tk.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 0)])
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    tok.chat_template = CHAT_TEMPLATE
    return tok


def tiny_model(seed: int = 0):
    from longreach.model.tiny import tiny_llama, tiny_llama_config

    return tiny_llama(tiny_llama_config(vocab_size=len(tiny_tokenizer()), max_position=4096), seed=seed)


@functools.lru_cache(maxsize=4)
def tiny_backend(seed: int = 0, batch_size: int = 4) -> LocalHF:
    return LocalHF(tiny_model(seed), tiny_tokenizer(), device="cpu", batch_size=batch_size)


PROMPTS = ["The best thing about startups is that", "a", "Hello world. This is a test of",
           "What is the best thing to do in San Francisco? " * 6]


def naive_greedy(model, tok, prompt: str, n: int) -> str:
    ids = encode(tok, prompt)
    out: list[int] = []
    with torch.no_grad():
        for _ in range(n):
            t = int(model(torch.tensor([ids + out])).logits[0, -1].argmax())
            if t == tok.eos_token_id:
                break
            out.append(t)
    return tok.decode(out, skip_special_tokens=True)


def direct_logprob(model, tok, prompt: str, cont: str) -> float:
    p, full = encode(tok, prompt), encode(tok, prompt + cont)
    start = next((i for i, (a, b) in enumerate(zip(p, full)) if a != b), min(len(p), len(full)))
    with torch.no_grad():
        lp = model(torch.tensor([full])).logits[0].double().log_softmax(-1)
    return float(sum(lp[j - 1, full[j]] for j in range(start, len(full))))


def test_generate_equals_naive_loop():
    b = tiny_backend()
    got = b.generate(PROMPTS, max_new_tokens=12)
    assert got == [naive_greedy(b.model, b.tokenizer, p, 12) for p in PROMPTS]
    assert all(len(x) > 0 for x in got)


def test_batched_equals_unbatched_and_long_prompts_go_alone():
    batched = LocalHF(tiny_model(), tiny_tokenizer(), device="cpu", batch_size=4)
    single = LocalHF(tiny_model(), tiny_tokenizer(), device="cpu", batch_size=1)
    assert batched._batches([5, 40, 7, 3]) == [[1, 2, 0, 3]]
    assert LocalHF(tiny_model(), tiny_tokenizer(), device="cpu", batch_size=4, batch_tokens=64)._batches(
        [5, 40, 7, 3]) == [[1], [2, 0, 3]]
    assert batched.generate(PROMPTS, 10) == single.generate(PROMPTS, 10)
    done = batched.complete(PROMPTS, 10)
    assert [c.prompt_tokens for c in done] == [len(encode(tiny_tokenizer(), p)) for p in PROMPTS]
    assert all(c.finish_reason in ("stop", "length") for c in done)


def test_stop_strings_cut_the_output():
    b = tiny_backend()
    full = b.generate([PROMPTS[0]], 16)[0]
    stop = full[5:8]
    assert stop and b.generate([PROMPTS[0]], 16, stop=[stop])[0] == full[:full.find(stop)]
    assert cut_at_stop("abc. def", ["."]) == ("abc", True) and cut_at_stop("abc", None) == ("abc", False)


def test_logprob_equals_direct_computation():
    b = LocalHF(tiny_model(), tiny_tokenizer(), device="cpu", chunk_tokens=3)  # chunking exercised
    prompts = [PROMPTS[0], PROMPTS[0], PROMPTS[2], "Hello wor", PROMPTS[3]]
    conts = [" good", " a bad idea", " the system", "ld peace", " Eat a sandwich."]  # "wor|ld" merges
    got = b.logprob(prompts, conts)
    want = [direct_logprob(b.model, b.tokenizer, p, c) for p, c in zip(prompts, conts)]
    assert got == pytest.approx(want, abs=1e-3)
    assert b.logprob([PROMPTS[0]], [""]) == [0.0]


def test_token_logprobs_chunked_equals_full_logits():
    b = LocalHF(tiny_model(), tiny_tokenizer(), device="cpu", chunk_tokens=5)
    ids = encode(b.tokenizer, PROMPTS[3])
    lp, top = b.token_logprobs(ids, top=2)
    with torch.no_grad():
        full = b.model(torch.tensor([ids])).logits[0, :-1].log_softmax(-1)
    assert torch.allclose(lp, full.gather(-1, torch.tensor(ids[1:])[:, None])[:, 0], atol=1e-4)
    assert torch.equal(top[1][:, 0], full.argmax(-1))


def test_chat_messages_render_with_template_and_prefix():
    tok = tiny_tokenizer()
    msgs = [{"role": "user", "content": "Hi"}]
    assert render(tok, msgs) == "<|user|>Hi\n<|assistant|>"
    assert render(tok, msgs + [{"role": "assistant", "content": "The key is"}]) == "<|user|>Hi\n<|assistant|>The key is"
    assert tiny_backend().count_tokens(msgs) == len(encode(tok, "<|user|>Hi\n<|assistant|>"))
    assert encode(tok, "x")[0] == tok.bos_token_id and encode(tok, "<s>x").count(tok.bos_token_id) == 1
