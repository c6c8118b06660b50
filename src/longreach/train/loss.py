"""Cross-entropy that never builds the full [tokens x vocab] logits.

At 128K tokens and a 128K vocabulary the logits alone are 64 GB in fp32 (RECIPE.md section 3 lists this as
the top out-of-memory complaint). We project and score `chunk_tokens` positions at a time, each chunk under
activation checkpointing, so the backward pass recomputes one chunk's logits instead of keeping them all.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

IGNORE = -100


def _nll(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-token cross-entropy of one chunk (0 where the label is -100). Upcast after the matmul: the product
    runs in bf16 under autocast, the softmax in fp32."""
    return F.cross_entropy((hidden @ weight.t()).float(), labels, ignore_index=IGNORE, reduction="none")


def _chunk_loss_sum(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return _nll(hidden, weight, labels).sum()


def _over_chunks(fn, hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, chunk_tokens: int,
                 *per_token: torch.Tensor) -> list:
    """fn(hidden, weight, labels, *per_token) of each chunk of `chunk_tokens` positions that has a target, under
    activation checkpointing when a gradient is wanted (the backward recomputes one chunk's logits at a time)."""
    hidden = hidden.reshape(-1, hidden.shape[-1])
    labels, per_token = labels.reshape(-1), [t.reshape(-1) for t in per_token]
    out = []
    for start in range(0, hidden.shape[0], chunk_tokens):
        part = slice(start, start + chunk_tokens)
        if not bool((labels[part] != IGNORE).any()):
            continue
        args = (hidden[part], weight, labels[part], *(t[part] for t in per_token))
        grad = torch.is_grad_enabled() and (args[0].requires_grad or weight.requires_grad)
        out.append(checkpoint(fn, *args, use_reentrant=False) if grad else fn(*args))
    return out


def chunked_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor,
                          chunk_tokens: int = 4096) -> torch.Tensor:
    """Sum of token cross-entropies over positions whose label is not -100.

    hidden: [..., H] final hidden states (after the last norm); weight: [V, H] output embedding;
    labels: [...] next-token targets already shifted. Returns a scalar sum (divide by the token count).
    """
    total = hidden.new_zeros((), dtype=torch.float32)
    return sum(_over_chunks(_chunk_loss_sum, hidden, weight, labels, chunk_tokens), total)


@torch.no_grad()
def token_nll(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor,
              chunk_tokens: int = 4096) -> torch.Tensor:
    """Each position's cross-entropy, [N] fp32 over the flattened positions (0 where the label is -100), chunk
    by chunk like `chunked_cross_entropy`; no gradient."""
    hidden = hidden.reshape(-1, hidden.shape[-1])
    labels = labels.reshape(-1)
    return torch.cat([_nll(hidden[i:i + chunk_tokens], weight, labels[i:i + chunk_tokens])
                      for i in range(0, hidden.shape[0], chunk_tokens)])


def longce_weights(long_nll: torch.Tensor, short_nll: torch.Tensor, gamma: float, floor: float = 0.0) -> torch.Tensor:
    """LongCE's token weights (train/longce.py): min(exp(short_nll - long_nll), gamma), how much likelier the
    whole context makes the token than a short window does, capped at gamma (and raised to `floor`: 1 counts
    only the tokens the far context helps); 1 where short_nll is NaN (targets whose short window is their whole
    context). Tokens the far context does not help get ~1."""
    return torch.where(short_nll.isnan(), 1.0, torch.exp(short_nll - long_nll).clamp(min=floor, max=gamma))


def _weighted_chunk(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, short_nll: torch.Tensor,
                    gamma: float, floor: float) -> torch.Tensor:
    """[weighted sum, plain sum, sum of the weights] of one chunk; the weights are constants (no gradient)."""
    nll = _nll(hidden, weight, labels)
    w = longce_weights(nll.detach(), short_nll, gamma, floor) * (labels != IGNORE)
    return torch.stack([(w * nll).sum(), nll.detach().sum(), w.sum()])


def weighted_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, short_nll: torch.Tensor,
                           gamma: float, chunk_tokens: int = 4096,
                           floor: float = 0.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """LongCE: the sum of each token's cross-entropy times its `longce_weights` (short_nll: the same tokens'
    cross-entropy through a short window, train/longce.py), chunked like `chunked_cross_entropy`. Returns
    (weighted sum: the training loss, plain sum: the loss to report, sum of the weights)."""
    fn = functools.partial(_weighted_chunk, gamma=gamma, floor=floor)
    total = sum(_over_chunks(fn, hidden, weight, labels, chunk_tokens, short_nll),
                hidden.new_zeros(3, dtype=torch.float32))
    return total[0], total[1].detach(), total[2].detach()


def shift_labels(input_ids: torch.Tensor, loss_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Next-token targets for each position; the last position (and masked targets) get -100."""
    labels = torch.full_like(input_ids, IGNORE)
    labels[..., :-1] = input_ids[..., 1:]
    if loss_mask is not None:
        keep = torch.zeros_like(loss_mask, dtype=torch.bool)
        keep[..., :-1] = loss_mask[..., 1:].bool()
        labels = labels.masked_fill(~keep, IGNORE)
    return labels
