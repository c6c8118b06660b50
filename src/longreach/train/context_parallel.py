"""Context parallelism: one sequence split over the ranks of a group, keys and values all-gathered.

The approach of the Llama 3 paper (section 3.3.2). A sequence of T tokens is cut into 2*cp equal chunks and
rank r of the context-parallel group keeps chunks r and 2*cp-1-r, so that every rank has the same amount of
causal attention work. Everything in a decoder layer except attention works token by token, so it runs
unchanged on the local tokens (position_ids carry the global positions, for RoPE). Attention all-gathers K and
V over the group (cheap with grouped-query attention: kv_heads x head_dim values per token) and computes each
local query chunk against all the keys before it. The result is exact, not an approximation, and
differentiable: the all-gather's backward is a reduce-scatter (sum) of the key/value gradients.

Used by the training loop when TrainConfig.context_parallel > 1 (launch with torchrun); tested on CPU with
gloo in tests/test_parallel_gloo.py. The attention goes through transformers' attention interface:
`enable(lm, group)` registers "longreach_cp" and points the model's config at it.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F

ATTN_NAME = "longreach_cp"


def chunk_positions(seq_len: int, cp: int, cp_rank: int, device=None) -> torch.Tensor:
    """Global positions kept by `cp_rank`: chunks cp_rank and 2*cp-1-cp_rank of 2*cp equal chunks."""
    c = seq_len // (2 * cp)
    a, b = cp_rank, 2 * cp - 1 - cp_rank
    return torch.cat([torch.arange(a * c, (a + 1) * c, device=device),
                      torch.arange(b * c, (b + 1) * c, device=device)])


def shard_batch(batch: dict[str, torch.Tensor], cp: int, cp_rank: int) -> dict[str, torch.Tensor]:
    """This rank's part of a micro-batch: every [B, T] tensor cut to the rank's two chunks, plus the global
    position_ids. Labels must already be shifted over the whole sequence (they are, by the loop's collate)."""
    if cp == 1:
        return batch
    if "attention_mask" in batch:
        raise ValueError("context parallel does not take an explicit attention mask (doc_mask)")
    ids = batch["input_ids"]
    seq_len = ids.shape[1]
    pos = chunk_positions(seq_len, cp, cp_rank, device=ids.device)
    out = {k: v[:, pos] for k, v in batch.items()}
    if "position_ids" not in batch:
        out["position_ids"] = pos.unsqueeze(0).expand(ids.shape[0], -1)
    return out


class _GatherSequence(torch.autograd.Function):
    """[B, H, 2c, D] local (chunks r, 2cp-1-r) -> [B, H, T, D] in sequence order; backward reduce-scatters."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, group) -> torch.Tensor:
        cp = dist.get_world_size(group)
        ctx.group, ctx.cp = group, cp
        x = x.contiguous()
        # Gathered along dim 0 (ranks stacked on the batch dimension), the layout every backend accepts.
        buf = x.new_empty((cp * x.shape[0], *x.shape[1:]))
        dist.all_gather_into_tensor(buf, x, group=group)
        buf = buf.view(cp, *x.shape)
        c = x.shape[2] // 2
        # Rank k holds chunks k (first half) and 2cp-1-k (second half): first halves in rank order, then
        # second halves in reverse rank order give the sequence order.
        return torch.cat([buf[:, :, :, :c].unbind(0)[k] for k in range(cp)]
                         + [buf[:, :, :, c:].unbind(0)[k] for k in reversed(range(cp))], dim=2)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        cp = ctx.cp
        pieces = grad.chunk(2 * cp, dim=2)
        per_rank = torch.cat([torch.cat([pieces[k], pieces[2 * cp - 1 - k]], dim=2) for k in range(cp)])
        out = grad.new_empty((grad.shape[0], *per_rank.shape[1:]))
        dist.reduce_scatter_tensor(out, per_rank.contiguous(), op=dist.ReduceOp.SUM, group=ctx.group)
        return out, None


def gather_sequence(x: torch.Tensor, group) -> torch.Tensor:
    return _GatherSequence.apply(x, group)


def _repeat_kv(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    if n_rep == 1:
        return x
    b, h, t, d = x.shape
    return x[:, :, None].expand(b, h, n_rep, t, d).reshape(b, h * n_rep, t, d)


def _causal_block(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None) -> torch.Tensor:
    """Queries that are the last q.shape[2] positions of the keys' range, causally masked (bottom-right).

    Equal lengths: plain is_causal SDPA (cuDNN on an H100). Otherwise, on CUDA in bf16/fp16, the flash kernel,
    whose causal mask is aligned bottom-right when there are fewer queries than keys (what PyTorch's
    causal_lower_right bias calls; used directly because that tensor subclass breaks selective checkpointing);
    elsewhere (CPU tests) an explicit mask.
    """
    lq, lk = q.shape[2], k.shape[2]
    if lq == lk:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale)
    if q.device.type == "cuda" and q.dtype in (torch.bfloat16, torch.float16) and q.shape[-1] % 8 == 0:
        return torch.ops.aten._scaled_dot_product_flash_attention(q, k, v, 0.0, is_causal=True, scale=scale)[0]
    mask = torch.ones(lq, lk, dtype=torch.bool, device=q.device).tril(diagonal=lk - lq)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)


def cp_attention_forward(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                         attention_mask=None, dropout: float = 0.0, scaling: float | None = None, **kwargs):
    """transformers attention-interface function: query [B, Hq, 2c, D], key/value [B, Hkv, 2c, D] local.

    Returns [B, 2c, Hq, D] like transformers' sdpa_attention_forward.
    """
    if query.device.type == "cuda" and torch.is_autocast_enabled("cuda"):
        # RoPE leaves q/k in fp32 (cos/sin follow the fp32 residual stream). transformers' sdpa path is cast
        # by autocast inside SDPA; the lower-right kernels below are not, so cast here (and gather in bf16).
        dt = torch.get_autocast_dtype("cuda")
        query, key, value = query.to(dt), key.to(dt), value.to(dt)
    group = module.cp_group
    cp = dist.get_world_size(group)
    r = dist.get_rank(group)
    k_all, v_all = gather_sequence(key, group), gather_sequence(value, group)
    n_rep = query.shape[1] // key.shape[1]
    # The flash kernel called below does not take grouped-query heads: expand K/V (transient, per layer).
    k_all, v_all = _repeat_kv(k_all, n_rep), _repeat_kv(v_all, n_rep)
    c = query.shape[2] // 2
    outs = []
    for j, chunk in ((r, 0), (2 * cp - 1 - r, 1)):
        q = query[:, :, chunk * c:(chunk + 1) * c]
        end = (j + 1) * c
        outs.append(_causal_block(q, k_all[:, :, :end], v_all[:, :, :end], scaling))
    out = torch.cat(outs, dim=2)
    return out.transpose(1, 2).contiguous(), None


def enable(lm: torch.nn.Module, group) -> None:
    """Route every attention layer of a transformers model through the context-parallel attention."""
    from transformers import AttentionInterface

    AttentionInterface.register(ATTN_NAME, cp_attention_forward)
    for layer in lm.model.layers:
        layer.self_attn.cp_group = group
    lm.config._attn_implementation = ATTN_NAME
