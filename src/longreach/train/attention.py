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

"longreach_fa4" runs plain causal attention by FlashAttention 4's kernels (the `flash-attn-4` package, CuTe DSL,
compiled on first use for the GPU at hand: Hopper sm90 or Blackwell sm100), called directly rather than through
PyTorch's SDPA registry, whose FA4 hook follows one pinned FA4 release. It takes no mask (doc_mask needs
"longreach_flex") and no context parallelism (that path brings its own attention). Measured on an H100 against
cuDNN (benchmarks/train_throughput.py `attn=fa4`; docs/PERFORMANCE.md session 13): its kernels 1.25-1.28x faster
at head dim 64, whole steps 1.16-1.23x. Optional: the default stays "sdpa", which needs no extra package.
"""

from __future__ import annotations

from contextlib import contextmanager, nullcontext

import torch

from longreach.train.loss import IGNORE

FLEX_NAME = "longreach_flex"
FA4_NAME = "longreach_fa4"
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


def _fa4_kernel():
    """FlashAttention 4's interface module, or an ImportError that says what to install."""
    try:
        from flash_attn.cute import interface
    except ImportError as e:
        raise ImportError(f"attn {FA4_NAME!r} needs FlashAttention 4: `pip install 'longreach[gpu]'` or `pip install --pre "
                          f"flash-attn-4` (with nvidia-cutlass-dsl) on a Hopper or Blackwell GPU; import failed: {e}") from None
    return interface


_fa4_op = None


def _fa4_attention_op():
    """FA4's causal forward and backward as torch custom ops (longreach::fa4_fwd / fa4_bwd), registered once,
    before any layer is compiled (`prepare`: registering inside a compiled region stops dynamo from compiling
    it): torch.compile treats them as opaque calls (no graph break, no tracing into the CuTe DSL), and selective
    activation checkpointing sees the forward as one op and keeps its output (train.parallel: ac=attn), as it
    does for SDPA's kernels, so attention never runs twice. Written against flash-attn-4 4.0.0b36's
    `_flash_attn_fwd` / `_flash_attn_bwd` (q, k, v as [B, T, H, D]; lse [B, H, T] in fp32)."""
    global _fa4_op
    if _fa4_op is not None:
        return _fa4_op
    fa = _fa4_kernel()

    # explicit schemas: this module's postponed annotations are strings that infer_schema cannot resolve
    @torch.library.custom_op("longreach::fa4_fwd", mutates_args=(),
                             schema="(Tensor q, Tensor k, Tensor v, float scale) -> (Tensor, Tensor)")
    def fwd(q, k, v, scale):
        out, lse = fa._flash_attn_fwd(q, k, v, softmax_scale=scale, causal=True, return_lse=True)[:2]
        return out, lse

    @fwd.register_fake
    def _(q, k, v, scale):
        b, t, h, _ = q.shape
        return q.new_empty(b, t, h, v.shape[-1]), q.new_empty(b, h, t, dtype=torch.float32)

    @torch.library.custom_op("longreach::fa4_bwd", mutates_args=(), schema="(Tensor dout, Tensor q, Tensor k, "
                             "Tensor v, Tensor out, Tensor lse, float scale) -> (Tensor, Tensor, Tensor)")
    def bwd(dout, q, k, v, out, lse, scale):
        dq, dk, dv = fa._flash_attn_bwd(q, k, v, out, dout, lse, scale, True)[:3]
        return dq, dk, dv

    @bwd.register_fake
    def _(dout, q, k, v, out, lse, scale):
        return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)

    def setup_context(ctx, inputs, output):
        q, k, v, scale = inputs
        ctx.save_for_backward(q, k, v, *output)
        ctx.scale = scale

    def backward(ctx, dout, _dlse):
        q, k, v, out, lse = ctx.saved_tensors
        return (*torch.ops.longreach.fa4_bwd(dout.contiguous(), q, k, v, out, lse, ctx.scale), None)

    fwd.register_autograd(backward, setup_context=setup_context)
    from longreach.train import parallel

    parallel.keep_attention_output(torch.ops.longreach.fa4_fwd.default)
    _fa4_op = torch.ops.longreach.fa4_fwd
    return _fa4_op


def fa4_attention_forward(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                          attention_mask=None, dropout: float = 0.0, scaling: float | None = None, **kwargs):
    """transformers attention-interface function: causal attention by FlashAttention 4 (grouped KV heads
    natively, q/k/v in the autocast dtype, [B, T, H, D] in and out, as the kernels and transformers want)."""
    if attention_mask is not None:
        raise ValueError(f"attn {FA4_NAME!r} runs plain causal attention and takes no mask; for doc_mask use "
                         f"attn {FLEX_NAME!r}")
    if dropout:
        raise ValueError(f"attn {FA4_NAME!r} has no attention dropout (got {dropout})")
    if kwargs.get("sliding_window") or kwargs.get("softcap"):
        raise ValueError(f"attn {FA4_NAME!r} runs full causal attention: no sliding window or softcap")
    if query.device.type != "cuda":
        raise ValueError(f"attn {FA4_NAME!r} runs on a CUDA GPU (Hopper or Blackwell), not on {query.device.type}")
    op = _fa4_attention_op()
    dt = torch.get_autocast_dtype("cuda") if torch.is_autocast_enabled("cuda") else query.dtype
    if dt not in (torch.bfloat16, torch.float16):
        raise ValueError(f"attn {FA4_NAME!r} computes in bf16 or fp16, not {dt} (precision auto or bf16)")
    q, k, v = (t.transpose(1, 2).to(dt).contiguous() for t in (query, key, value))
    out, _ = op(q, k, v, float(scaling if scaling is not None else query.shape[-1] ** -0.5))
    return out, None


def prepare(attn: str) -> None:
    """What an attention implementation needs before the model is built and compiled: FA4's ops registered (and
    its package found, so a missing one fails here, not at the first step)."""
    if attn == FA4_NAME:
        _fa4_attention_op()


def register() -> None:
    """Make "longreach_flex" and "longreach_fa4" valid values of config._attn_implementation."""
    from transformers import AttentionInterface

    AttentionInterface.register(FLEX_NAME, flex_attention_forward)
    AttentionInterface.register(FA4_NAME, fa4_attention_forward)
