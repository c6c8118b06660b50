"""Attention for training: which SDPA kernel runs, and document-masked FlexAttention for packed data.

The default path is transformers' "sdpa" attention. With no attention_mask and contiguous position_ids,
transformers' mask builder returns no mask at all (masking_utils: `_ignore_causal_mask_sdpa`) and its sdpa
function calls F.scaled_dot_product_attention(is_causal=True, enable_gqa=True): no T x T mask is ever built,
and PyTorch picks cuDNN on an H100. An explicit mask would select a slower kernel and hits the cuDNN NaN bug
at seq_len % 128 == 64 (RECIPE.md section 3), so the loop never passes one on that path.

`sdpa_backend(name)` pins one SDPA kernel (cudnn, flash, efficient, math) so the benchmark can compare them.

"longreach_flex" is an attention-interface function for documents packed into one sequence (doc_mask, off by
default as in ChatQA 2): FlexAttention with a block mask "causal and same document", where a document starts
wherever position_ids restart at 0. The block mask is sparse (T/128 x T/128 blocks), so 128K tokens cost no
T x T tensor. Build it once per micro-batch with `doc_block_mask(position_ids)` and pass it as the model's
attention_mask (transformers forwards a 4-D BlockMask untouched). Given no mask, "longreach_flex" is plain causal
attention and runs SDPA with is_causal (cuDNN on an H100) rather than FlexAttention: the training loop passes no
mask when every target of a micro-batch lies in the first document of its row (`targets_in_first_document`), as
in a sequence holding one long sample and its padding, where a causal mask gives the same loss.
"""

from __future__ import annotations

from contextlib import contextmanager, nullcontext

import torch

from longreach.train.loss import IGNORE

FLEX_NAME = "longreach_flex"
_compiled_flex = None


@contextmanager
def sdpa_backend(name: str = "auto"):
    """Restrict F.scaled_dot_product_attention to one backend: auto (PyTorch decides), cudnn, flash,
    efficient or math."""
    if name == "auto":
        with nullcontext():
            yield
        return
    from torch.nn.attention import SDPBackend, sdpa_kernel

    backends = {"cudnn": SDPBackend.CUDNN_ATTENTION, "flash": SDPBackend.FLASH_ATTENTION,
                "efficient": SDPBackend.EFFICIENT_ATTENTION, "math": SDPBackend.MATH}
    if name not in backends:
        raise ValueError(f"unknown SDPA backend {name!r}; known: auto, {', '.join(backends)}")
    with sdpa_kernel([backends[name]]):
        yield


def document_ids(position_ids: torch.Tensor) -> torch.Tensor:
    """[B, T] document index of each token: a new document wherever the position restarts at 0."""
    return (position_ids == 0).long().cumsum(-1)


def doc_block_mask(position_ids: torch.Tensor):
    """FlexAttention BlockMask: token q sees token k when k <= q and both are in the same document."""
    from torch.nn.attention.flex_attention import create_block_mask

    doc = document_ids(position_ids)
    b, t = doc.shape

    def same_doc_causal(bi, h, q, k):
        return (q >= k) & (doc[bi, q] == doc[bi, k])

    # Compiled block-mask creation never builds the T x T mask; eager (CPU tests) does, fine at test sizes.
    return create_block_mask(same_doc_causal, b, None, t, t, device=position_ids.device,
                             _compile=position_ids.device.type == "cuda")


def targets_in_first_document(position_ids: torch.Tensor, labels: torch.Tensor) -> bool:
    """Whether every target (label != -100) of the batch is in the first document of its row. Then plain causal
    attention gives the document mask's loss: the first document sees only itself either way, and what later
    documents see changes no loss (they come after it, so nothing of theirs reaches the first one)."""
    doc = document_ids(position_ids)
    return bool(((labels == IGNORE) | (doc == doc[:, :1])).all())


def _flex():
    """flex_attention compiled once on CUDA (the fused kernel); the eager reference elsewhere."""
    global _compiled_flex
    from torch.nn.attention.flex_attention import flex_attention

    if _compiled_flex is None:
        _compiled_flex = torch.compile(flex_attention, dynamic=False)
    return _compiled_flex


def flex_attention_forward(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                           attention_mask=None, dropout: float = 0.0, scaling: float | None = None, **kwargs):
    """transformers attention-interface function; attention_mask is a BlockMask or None (plain causal: SDPA)."""
    from torch.nn.attention.flex_attention import BlockMask, flex_attention

    gqa = key.shape[1] != query.shape[1]
    if not isinstance(attention_mask, BlockMask):
        out = torch.nn.functional.scaled_dot_product_attention(query, key, value, is_causal=True, scale=scaling,
                                                               enable_gqa=gqa)
        return out.transpose(1, 2).contiguous(), None
    mask = attention_mask
    if query.device.type == "cuda":
        if torch.is_autocast_enabled("cuda"):
            # q/k leave RoPE in fp32; the flex kernel runs in the autocast dtype.
            dt = torch.get_autocast_dtype("cuda")
            query, key, value = query.to(dt), key.to(dt), value.to(dt)
        fn = _flex()
    else:
        fn = flex_attention
    out = fn(query, key, value, block_mask=mask, scale=scaling, enable_gqa=gqa)
    return out.transpose(1, 2).contiguous(), None


def register() -> None:
    """Make "longreach_flex" a valid config._attn_implementation."""
    from transformers import AttentionInterface

    AttentionInterface.register(FLEX_NAME, flex_attention_forward)
