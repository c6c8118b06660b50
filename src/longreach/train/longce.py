"""LongCE's short view: each target's cross-entropy when the model sees only the tokens just before it.

LongCE (Fang et al., ICLR 2025, "What is wrong with perplexity for long-context language modeling?") weighs each
target's loss by min(exp(short - long), gamma), short and long its cross-entropy through a short window and over
the whole context (train/loss.py `longce_weights`): a token the far context makes likelier counts more. As in the
paper's code, the short view runs the model itself, without gradient, on windows of window + stride tokens, one
every `stride` tokens, each scoring its last `stride` targets, so every scored target sees at least `window`
tokens before it; the first `window` targets see the whole context either way and keep weight 1 (NaN here).

A sliding-window attention mask would not do: each layer reaches one window further back (30 layers x 4096 ~ 122K
tokens for SmolLM2), so the windows are cut out and run as sequences of their own (docs/LOG.md session 24).

Measured for an extension from scratch (docs/RESULTS.md sessions 24-25): worse than the plain loss, on the CPU demo
and on SmolLM2-135M 8K -> 128K (NIAH at 128K below the plain loss in four data orders of four; perplexity over the
whole 128K 32.1-34.0 against 26.5-27.1): early in an extension the whole context predicts far tokens worse than the
short view, so their weights fall below 1 and the new positions learn more slowly. An option to test, not a default.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch

from longreach.train.attention import document_ids
from longreach.train.loss import token_nll


class Settings(NamedTuple):
    """TrainConfig's longce_* fields, as CausalLMLoss uses them."""

    window: int
    stride: int
    gamma: float
    floor: float = 0.0


WINDOWS_PER_PASS = 16  # windows per forward pass (16 x 5,120 tokens at the defaults: ~2-3 GB at 135M)


def windows(seq_len: int, window: int, stride: int) -> list[tuple[int, int, int]]:
    """(start, first scored, end) of each window: targets first..end-1 scored with the context start..target.
    All windows are window + stride long; the last ends at seq_len and scores what the others left."""
    if window + stride > seq_len:
        raise ValueError(f"window {window} + stride {stride} is longer than the sequence ({seq_len})")
    out = []
    for e in range(window + stride, seq_len + stride, stride):
        end = min(seq_len, e)
        out.append((end - window - stride, e - stride, end))
    return out


def _cut(x: torch.Tensor | None, group: list[tuple[int, int, int, int]]) -> torch.Tensor | None:
    """The group's windows of a [B, T] tensor or of a dense [B, 1, T, T] mask, stacked."""
    if x is None:
        return None
    return torch.stack([x[r, ..., a:e, a:e] if x.dim() == 4 else x[r, a:e] for r, a, _, e in group])


def _restart(pos: torch.Tensor) -> torch.Tensor:
    """Positions of cut windows: the document a window starts inside now starts at 0 there, as a sequence of its
    own would (RoPE sees only differences, a query log scale sees the position itself)."""
    first = document_ids(pos) == document_ids(pos)[:, :1]
    return pos - first * pos[:, :1]


@torch.no_grad()
def short_nll(hidden_of: Callable[..., torch.Tensor], input_ids: torch.Tensor, labels: torch.Tensor,
              position_ids: torch.Tensor | None, attention_mask: torch.Tensor | None, weight: torch.Tensor,
              window: int, stride: int, chunk_tokens: int) -> torch.Tensor:
    """[B * T] fp32: each target's cross-entropy through its short window, NaN for the first `window` targets
    of a row. hidden_of(input_ids, labels, position_ids, attention_mask) is the training forward's model call
    (CausalLMLoss._hidden: packed documents stay apart as in training); only scored positions are projected."""
    b, t = input_ids.shape
    out = torch.full((b, t), float("nan"), dtype=torch.float32, device=input_ids.device)
    jobs = [(r, *w) for r in range(b) for w in windows(t, window, stride)]
    for g in range(0, len(jobs), WINDOWS_PER_PASS):
        group = jobs[g:g + WINDOWS_PER_PASS]
        ids, lab = _cut(input_ids, group), _cut(labels, group)
        pos = _cut(position_ids, group)
        hidden = hidden_of(ids, lab, None if pos is None else _restart(pos), _cut(attention_mask, group))
        nll = token_nll(hidden[:, window:], weight, lab[:, window:], chunk_tokens).view(len(group), stride)
        for i, (r, a, first, e) in enumerate(group):
            out[r, first:e] = nll[i, first - a - window:]
    return out.reshape(-1)
