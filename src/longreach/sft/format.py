"""Chat formats for SFT: token ids plus a loss mask that is True only on the assistants' answers (+ EOS).

- chatqa: the ChatQA prompt (`longreach.eval.chatrag.chatqa_prompt`): "System: ..." line, the context, then
  "User: ..." / "Assistant: ..." turns separated by blank lines; the task instruction prefixes the first user
  turn. Pieces are tokenized separately - the prompt up to "Assistant:" exactly as inference tokenizes it,
  then " " + answer, then EOS - so training sees the tokens a generating model sees. Earlier turns of a
  multi-turn sample are answers too (each followed by EOS). BOS comes first when the tokenizer itself puts
  one there (Llama-3 does, SmolLM2 has none), which is what `longreach.eval.backends.encode` does at inference.
- template: the tokenizer's own chat template. Assistant spans are found exactly by rendering the
  conversation prefix by prefix and diffing token ids: the ids of messages[:k] with the generation prompt
  must be a prefix of the ids of messages[:k+1], and the difference is turn k's answer plus its end-of-turn
  token; whatever the template adds after that last special token (ChatML's trailing newline) is not a
  target. A template that is not prefix-stable is refused with a clear error rather than guessed at.
  The context (if any) and the instruction go into the first user message.

A plain-text sample (`Sample.text`) is the same in both formats: [BOS if the tokenizer adds one] + its tokens
+ EOS, every token but BOS a target, packed in a sequence of its own. Longer than the sequence length, it keeps
its beginning.

A sample longer than the sequence length keeps its answers whole: the context is cut in the middle (the
first and last halves kept, as long-context benchmarks cut inputs) until it fits; without a context to cut it
is dropped. Both are counted by the caller.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from longreach.errors import InputError
from longreach.eval.chatrag import DEFAULT_INSTRUCTION, SYSTEM, chatqa_prompt
from longreach.sft.data import Sample

FORMATS = ("chatqa", "template")
CUT_MARK = " ... "  # joins the kept halves of a context cut in the middle


@dataclass
class Encoded:
    ids: list[int]
    mask: list[bool]  # True = the token is a target (an assistant answer token or its EOS)
    alone: bool = False  # packed into a sequence of its own (plain text: its many targets would outweigh the
    # few answer tokens of samples sharing the sequence, the loss being the mean over a step's targets)


def first_user_text(context: str, instruction: str | None, question: str) -> str:
    """The first user message of the template format: context, blank line, instruction and question."""
    q = f"{instruction} {question}" if instruction else question
    return f"{context}\n\n{q}" if context else q


def _bos_first(tok: Any) -> list[int]:
    """[BOS] if the tokenizer adds it to plain text itself, else []."""
    bos = tok.bos_token_id
    lead = tok("", add_special_tokens=True)["input_ids"]
    return [bos] if bos is not None and lead[:1] == [bos] else []


def _ids(tok: Any, text: str) -> list[int]:
    return list(tok(text, add_special_tokens=False)["input_ids"])


def encode_chatqa(tok: Any, s: Sample, system: str = SYSTEM, instruction: str | None = DEFAULT_INSTRUCTION
                  ) -> Encoded:
    if tok.eos_token_id is None:
        raise InputError("the tokenizer has no EOS token to end answers with", field="tokenizer")
    ids, mask = _bos_first(tok), []
    mask = [False] * len(ids)
    done = ""  # text rendered so far (prompt + answers), to take each new prompt piece as a difference
    for k, turn in enumerate(s.messages):
        if turn["role"] != "assistant":
            continue
        prompt = chatqa_prompt(s.system or system, s.context, s.messages[:k], instruction)
        if not prompt.startswith(done):
            raise AssertionError("chatqa_prompt is not prefix-stable across turns")
        piece = _ids(tok, prompt[len(done):])
        answer = _ids(tok, " " + turn["content"]) + [tok.eos_token_id]
        ids += piece + answer
        mask += [False] * len(piece) + [True] * len(answer)
        done = prompt + " " + turn["content"]
    return Encoded(ids, mask)


def _special_ids(tok: Any) -> set[int]:
    out = set(tok.all_special_ids)
    out.update(i for i, t in getattr(tok, "added_tokens_decoder", {}).items() if getattr(t, "special", False))
    return out


def template_messages(s: Sample, system: str | None, instruction: str | None) -> list[dict[str, str]]:
    msgs = [dict(m) for m in s.messages]
    msgs[0]["content"] = first_user_text(s.context, instruction, msgs[0]["content"])
    sys_text = s.system if s.system is not None else system
    return ([{"role": "system", "content": sys_text}] if sys_text else []) + msgs


def encode_template(tok: Any, s: Sample, system: str | None = None, instruction: str | None = None) -> Encoded:
    if not getattr(tok, "chat_template", None):
        raise InputError("the tokenizer has no chat template (use format: chatqa)", field="format")
    msgs = template_messages(s, system, instruction)

    def render(m: list[dict[str, str]], gen: bool) -> list[int]:
        return _ids(tok, tok.apply_chat_template(m, tokenize=False, add_generation_prompt=gen))

    full = render(msgs, False)
    mask = [False] * len(full)
    special = _special_ids(tok)
    closed = True  # whether the last answer ends with an end-of-turn token of the template
    for k, m in enumerate(msgs):
        if m["role"] != "assistant":
            continue
        before = render(msgs[:k], True)
        through = full if k + 1 == len(msgs) else render(msgs[:k + 1], False)
        if through[:len(before)] != before or full[:len(through)] != through:
            raise InputError("the chat template is not prefix-stable (a conversation's render is not an "
                             "extension of its prefix's), so answer tokens cannot be located: use format: chatqa",
                             field="format")
        end = len(through)
        while end > len(before) and through[end - 1] not in special:
            end -= 1
        closed = end > len(before)
        if not closed:  # no end-of-turn token in the span: the whole span is the answer
            end = len(through)
        for i in range(len(before), end):
            mask[i] = True
    if not closed and len(full) == len(through):  # the last answer has no end token: EOS ends it
        full, mask = full + [tok.eos_token_id], mask + [True]
    return Encoded(full, mask)


def encode(tok: Any, s: Sample, fmt: str, system: str | None, instruction: str | None) -> Encoded:
    """Token ids and loss mask of one sample; `instruction` applies when the sample has none of its own."""
    if fmt not in FORMATS:
        raise InputError(f"format must be one of {FORMATS}, got {fmt!r}", field="format")
    if s.text is not None:
        return encode_text(tok, s.text)
    instr = s.instruction if s.instruction is not None else instruction
    if fmt == "chatqa":
        return encode_chatqa(tok, s, system if system is not None else SYSTEM, instr or None)
    return encode_template(tok, s, system, instr or None)


def encode_text(tok: Any, text: str) -> Encoded:
    """A plain-text sample: [BOS] + tokens + EOS, every token but BOS a target (the first one of a text without
    BOS has nothing before it, so the loss skips it anyway); packed alone."""
    if tok.eos_token_id is None:
        raise InputError("the tokenizer has no EOS token to end a text with", field="tokenizer")
    bos = _bos_first(tok)
    ids = bos + _ids(tok, text) + [tok.eos_token_id]
    return Encoded(ids, [False] * len(bos) + [True] * (len(ids) - len(bos)), alone=True)


def encode_fitted(tok: Any, s: Sample, fmt: str, system: str | None, instruction: str | None,
                  max_len: int) -> tuple[Encoded | None, str]:
    """(encoded, "ok" | "truncated" | "dropped"): the context is cut in the middle until the sample fits."""
    enc = encode(tok, s, fmt, system, instruction)
    if len(enc.ids) <= max_len:
        return enc, "ok"
    if s.text is not None:  # plain text: its beginning
        return Encoded(enc.ids[:max_len], enc.mask[:max_len], alone=True), "truncated"
    if not s.context:
        return None, "dropped"
    ctx = _ids(tok, s.context)
    keep = len(ctx) - (len(enc.ids) - max_len)
    for _ in range(8):  # decode -> re-encode can merge tokens differently at the cut: shrink until it fits
        if keep <= 0:
            return None, "dropped"
        head = tok.decode(ctx[:keep // 2])
        tail = tok.decode(ctx[len(ctx) - (keep - keep // 2):])
        enc = encode(tok, replace(s, context=head + CUT_MARK + tail), fmt, system, instruction)
        if len(enc.ids) <= max_len:
            return enc, "truncated"
        keep -= len(enc.ids) - max_len + 4
    return None, "dropped"


def prompt_for(tok: Any, s: Sample, fmt: str, system: str | None, instruction: str | None) -> Any:
    """What to give a `longreach.eval.backends` backend to answer the sample's last user turn: the ChatQA text,
    or the messages (the backend renders the template). `s.messages` ends with that user turn."""
    if s.text is not None:
        raise InputError("a plain-text sample has no question to answer", path=s.where or None, field="text")
    instr = s.instruction if s.instruction is not None else instruction
    if fmt == "chatqa":
        return chatqa_prompt(s.system or system or SYSTEM, s.context, s.messages, instr or None)
    if fmt == "template":
        return template_messages(s, system, instr or None)
    raise InputError(f"format must be one of {FORMATS}, got {fmt!r}", field="format")
