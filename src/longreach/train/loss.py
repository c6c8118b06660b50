"""Cross-entropy that never builds the full [tokens x vocab] logits.

At 128K tokens and a 128K vocabulary the logits alone are 64 GB in fp32 (RECIPE.md section 3 lists this as
the top out-of-memory complaint). We project and score `chunk_tokens` positions at a time, each chunk under
activation checkpointing, so the backward pass recomputes one chunk's logits instead of keeping them all.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

IGNORE = -100


def _chunk_loss_sum(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    logits = hidden @ weight.t()
    # Upcast after the matmul: the product runs in bf16 under autocast, the softmax in fp32.
    return F.cross_entropy(logits.float(), labels, ignore_index=IGNORE, reduction="sum")


def chunked_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor,
                          chunk_tokens: int = 4096) -> torch.Tensor:
    """Sum of token cross-entropies over positions whose label is not -100.

    hidden: [..., H] final hidden states (after the last norm); weight: [V, H] output embedding;
    labels: [...] next-token targets already shifted. Returns a scalar sum (divide by the token count).
    """
    hidden = hidden.reshape(-1, hidden.shape[-1])
    labels = labels.reshape(-1)
    total = hidden.new_zeros((), dtype=torch.float32)
    for start in range(0, hidden.shape[0], chunk_tokens):
        h, y = hidden[start:start + chunk_tokens], labels[start:start + chunk_tokens]
        if not bool((y != IGNORE).any()):
            continue
        if torch.is_grad_enabled() and (h.requires_grad or weight.requires_grad):
            total = total + checkpoint(_chunk_loss_sum, h, weight, y, use_reentrant=False)
        else:
            total = total + _chunk_loss_sum(h, weight, y)
    return total


def shift_labels(input_ids: torch.Tensor, loss_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Next-token targets for each position; the last position (and masked targets) get -100."""
    labels = torch.full_like(input_ids, IGNORE)
    labels[..., :-1] = input_ids[..., 1:]
    if loss_mask is not None:
        keep = torch.zeros_like(loss_mask, dtype=torch.bool)
        keep[..., :-1] = loss_mask[..., 1:].bool()
        labels = labels.masked_fill(~keep, IGNORE)
    return labels
