"""SFT chat formats and loss masks: the ChatQA prompt and chat templates, answer-only targets, the middle cut of
over-long contexts, and two masking invariants checked on a tiny model through the training loop's own batch
code: masked labels do not touch the gradient, and the loss is the mean cross-entropy over answer tokens."""

from __future__ import annotations

import pytest
import torch

from longreach.errors import InputError
from longreach.eval.backends import encode as backend_encode
from longreach.eval.chatrag import SYSTEM, chatqa_prompt
from longreach.sft.data import Sample
from longreach.sft.format import encode, encode_fitted, prompt_for

INSTR = "Answer the following question with a short span."


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from longreach.sft.tiny import default_texts, write_tiny_chat_model
    return write_tiny_chat_model(tmp_path_factory.mktemp("tiny") / "model", texts=default_texts(100_000))


@pytest.fixture(scope="module")
def tok(model_dir):
    from longreach.data.tokenize import load_tokenizer
    return load_tokenizer(model_dir)


def two_turns(context="The lighthouse was built in 1874 by Mara Quill. It burned whale oil.") -> Sample:
    return Sample(messages=[{"role": "user", "content": "Who built the lighthouse?"},
                            {"role": "assistant", "content": "Mara Quill."},
                            {"role": "user", "content": "When?"},
                            {"role": "assistant", "content": "In 1874."}], context=context)


def targets(tok, enc) -> list[str]:
    """The masked-in stretches of an encoding, decoded one stretch at a time."""
    out, cur = [], []
    for i, m in zip(enc.ids, enc.mask):
        if m:
            cur.append(i)
        elif cur:
            out.append(tok.decode(cur))
            cur = []
    if cur:
        out.append(tok.decode(cur))
    return out


def test_chatqa_format_matches_inference_prompt_and_masks_only_answers(tok):
    s = two_turns()
    enc = encode(tok, s, "chatqa", None, INSTR)
    eos = tok.eos_token
    assert targets(tok, enc) == [" Mara Quill." + eos, " In 1874." + eos]
    assert enc.ids[0] == tok.bos_token_id and not enc.mask[0]  # this tokenizer puts BOS first itself
    # The prompt of the first answer is exactly what the evaluation backend feeds the model at inference.
    prompt = chatqa_prompt(SYSTEM, s.context, s.messages[:1], INSTR)
    ids = backend_encode(tok, prompt)
    assert enc.ids[:len(ids)] == ids and not any(enc.mask[:len(ids)]) and enc.mask[len(ids)]
    assert prompt == prompt_for(tok, Sample(messages=s.messages[:1], context=s.context), "chatqa", None, INSTR)
    text = tok.decode(enc.ids)
    assert "User: " + INSTR + " Who built the lighthouse?" in text and text.count(INSTR) == 1
    assert text.endswith("Assistant: In 1874." + eos)


def test_sample_instruction_and_system_take_precedence(tok):
    s = Sample(messages=[{"role": "user", "content": "Q?"}, {"role": "assistant", "content": "A."}],
               system="Be brief.", instruction="Reply with one word.")
    text = tok.decode(encode(tok, s, "chatqa", None, INSTR).ids)
    assert "System: Be brief." in text and "Reply with one word. Q?" in text and INSTR not in text


def test_template_format_locates_assistant_spans_exactly(tok):
    s = two_turns()
    enc = encode(tok, s, "template", None, INSTR)
    # ChatML: the answer and its <|im_end|> are targets; the newline after it and the next header are not.
    assert targets(tok, enc) == ["Mara Quill.<|im_end|>", "In 1874.<|im_end|>"]
    text = tok.decode(enc.ids)
    assert text == tok.apply_chat_template(prompt_for(tok, s, "template", None, INSTR)[:1] + s.messages[1:],
                                           tokenize=False)
    assert s.context + "\n\n" + INSTR + " Who built the lighthouse?" in text


def test_template_without_end_token_gets_eos_and_unstable_template_is_refused(tok):
    import copy
    plain = copy.copy(tok)
    plain.chat_template = ("{% for m in messages %}{{ m['role'] + ':\n' + m['content'] + '\n' }}{% endfor %}"
                           "{% if add_generation_prompt %}{{ 'assistant:\n' }}{% endif %}")
    enc = encode(plain, two_turns(context=""), "template", None, None)
    assert enc.ids[-1] == tok.eos_token_id and enc.mask[-1]
    assert targets(plain, enc)[-1] == "In 1874.\n" + tok.eos_token
    unstable = copy.copy(tok)
    unstable.chat_template = "{{ messages | length }}{% for m in messages %}{{ m['content'] }}{% endfor %}"
    with pytest.raises(InputError, match="prefix-stable"):
        encode(unstable, two_turns(), "template", None, None)


def test_long_context_is_cut_in_the_middle_never_the_answer(tok):
    words = [f"w{i}" for i in range(400)]
    s = Sample(messages=[{"role": "user", "content": "Last word?"}, {"role": "assistant", "content": "w399"}],
               context=" ".join(words))
    full = encode(tok, s, "chatqa", None, INSTR)
    enc, status = encode_fitted(tok, s, "chatqa", None, INSTR, max_len=len(full.ids) // 2)
    assert status == "truncated" and len(enc.ids) <= len(full.ids) // 2
    text = tok.decode(enc.ids)
    assert "w0 w1 w2" in text and "w397 w398 w399" in text and " w200 " not in text and " ... " in text
    assert targets(tok, enc) == [" w399" + tok.eos_token]
    no_ctx = Sample(messages=s.messages[:1] + [{"role": "assistant", "content": " ".join(words)}])
    assert encode_fitted(tok, no_ctx, "chatqa", None, INSTR, max_len=64) == (None, "dropped")


@pytest.mark.parametrize("fmt", ["chatqa", "template"])
def test_text_sample_is_trained_on_every_token_and_cut_at_its_end(tok, fmt):
    text = " ".join(f"w{i}" for i in range(300))
    s = Sample(messages=[], text=text)
    enc = encode(tok, s, fmt, None, INSTR)
    body = tok(text, add_special_tokens=False)["input_ids"]
    lead = len(enc.ids) - len(body) - 1  # BOS where the tokenizer adds one
    assert enc.ids[lead:] == body + [tok.eos_token_id] and lead in (0, 1)
    assert enc.mask == [False] * lead + [True] * (len(body) + 1)  # every token a target, EOS too
    cut, status = encode_fitted(tok, s, fmt, None, INSTR, max_len=64)
    assert status == "truncated" and cut.ids == enc.ids[:64] and all(cut.mask[lead:])


# ----------------------------------------------------------------------------- masking on a tiny model

def _batch_through_loop(tmp_path, tok, samples, doc_mask):
    """Samples -> encode -> pack -> shards -> the loop's own collate (labels, doc mask, positions)."""
    from longreach.data.tokenize import vocab_size
    from longreach.sft.pack import PackStats, write_shards
    from longreach.train import parallel
    from longreach.train.loop import Batches

    encs = [encode(tok, s, "chatqa", None, INSTR) for s in samples]
    seq_len = sum(len(e.ids) for e in encs) + 5
    write_shards(encs, tmp_path / "shards", seq_len, vocab_size(tok), tok.pad_token_id, PackStats())
    b = Batches(str(tmp_path / "shards"), 0, parallel.setup(1))
    return b._collate([0], doc_mask), encs


def _samples():
    return [two_turns(), Sample(messages=[{"role": "user", "content": "Name a colour."},
                                          {"role": "assistant", "content": "Red."}]),
            Sample(messages=[{"role": "user", "content": "What code?"}, {"role": "assistant", "content": "4821"}],
                   context="The secret code of the blue door is 4821.")]


def test_loss_is_mean_cross_entropy_over_answer_tokens(tmp_path, tok, model_dir):
    """The pipeline's loss (packed, document mask) equals a direct computation on each sample alone, whose
    targets are found independently: the inference prompt's ids, then " answer" + EOS."""
    from transformers import AutoModelForCausalLM

    from longreach.train.loop import CausalLMLoss
    from longreach.train.loss import IGNORE

    lm = AutoModelForCausalLM.from_pretrained(model_dir, attn_implementation="sdpa").float()
    batch, _ = _batch_through_loop(tmp_path, tok, _samples(), doc_mask=True)
    n_targets = int((batch["labels"] != IGNORE).sum())
    pipeline = CausalLMLoss(lm, chunk_tokens=16)(**batch) / n_targets
    total, count = 0.0, 0
    for s in _samples():
        ids, answer_pos, done = [], [], ""
        for k, turn in enumerate(s.messages):
            if turn["role"] != "assistant":
                continue
            prompt = chatqa_prompt(SYSTEM, s.context, s.messages[:k], INSTR)
            # first turn: the prompt as inference encodes it; later turns: the new text after the last answer
            ids = backend_encode(tok, prompt) if not done else ids + tok(
                prompt[len(done):], add_special_tokens=False)["input_ids"]
            answer = tok(" " + turn["content"], add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
            answer_pos += list(range(len(ids), len(ids) + len(answer)))
            ids = ids + answer
            done = prompt + " " + turn["content"]
        logits = lm(torch.tensor([ids])).logits[0].float()
        pos = torch.tensor(answer_pos)
        total = total + torch.nn.functional.cross_entropy(logits[pos - 1], torch.tensor(ids)[pos], reduction="sum")
        count += len(answer_pos)
    assert n_targets == count
    assert torch.allclose(pipeline, total / count, atol=1e-5)


def test_masked_labels_leave_gradients_unchanged(tmp_path, tok, model_dir):
    """Replace every masked (non-answer) token in the label source: same gradient. Replace one answer token's
    label: a different gradient (the test can fail)."""
    from transformers import AutoModelForCausalLM

    from longreach.train.loop import CausalLMLoss
    from longreach.train.loss import shift_labels

    lm = AutoModelForCausalLM.from_pretrained(model_dir, attn_implementation="sdpa").float()
    model = CausalLMLoss(lm, chunk_tokens=16)
    batch, _ = _batch_through_loop(tmp_path, tok, _samples(), doc_mask=False)
    from longreach.data.shards import PackedShards
    mask = torch.from_numpy(PackedShards(tmp_path / "shards")[0]["loss_mask"])[None]
    ids = batch["input_ids"]

    def grads(label_source):
        lm.zero_grad()
        model(ids, shift_labels(label_source, mask)).backward()
        return torch.cat([p.grad.flatten() for p in lm.parameters()])

    base = grads(ids)
    g = torch.Generator().manual_seed(0)
    noise = torch.randint(0, len(tok), ids.shape, generator=g)
    perturbed = torch.where(mask, ids, noise)
    assert int((perturbed != ids).sum()) > 50
    assert torch.equal(grads(perturbed), base)
    first_target = int(mask[0].nonzero()[0])
    one = ids.clone()
    one[0, first_target] = (ids[0, first_target] + 1) % len(tok)
    assert not torch.allclose(grads(one), base)
