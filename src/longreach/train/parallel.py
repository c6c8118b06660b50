"""How the model is laid on the hardware: process groups, FSDP2, context parallel, checkpointing, compile.

The same loop runs on one CPU, one GPU or many: with WORLD_SIZE unset the process-group parts are no-ops.
Ranks are laid out as [data-parallel groups] x [context-parallel ranks]; the ranks of one context-parallel
group read the same sequence and each keeps 1/cp of it (train/context_parallel.py). FSDP2 shards parameters,
gradients and optimizer state over all ranks (dp x cp), so context parallel ranks share the memory of the
weights too.

Order, as in torchtitan: per-layer options (activation checkpointing, compile) first, then FSDP2 on top, so
FSDP2's all-gather hooks stay outside the checkpointed and compiled region.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from longreach.errors import InputError
from longreach.model import logscale


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    cp: int = 1  # context-parallel degree
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    mesh: object | None = None  # DeviceMesh ("dp", "cp") when world > 1

    @property
    def dp(self) -> int:
        return self.world // self.cp

    @property
    def dp_rank(self) -> int:
        return self.rank // self.cp

    @property
    def cp_rank(self) -> int:
        return self.rank % self.cp

    @property
    def cp_group(self):
        """Process group of this rank's context-parallel peers (None without context parallel)."""
        return self.mesh["cp"].get_group() if self.cp > 1 else None

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup(context_parallel: int = 1) -> Dist:
    """Initialise torch.distributed from torchrun's environment (NCCL on GPU, gloo on CPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if world % context_parallel:
        raise InputError(f"context_parallel={context_parallel} does not divide the world size {world}",
                         field="context_parallel")
    if torch.cuda.is_available():
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    d = Dist(rank=rank, world=world, local_rank=local_rank, cp=context_parallel, device=device)
    if world > 1:
        if not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        from torch.distributed.device_mesh import init_device_mesh
        d.mesh = init_device_mesh(device.type, (d.dp, d.cp), mesh_dim_names=("dp", "cp"))
    return d


def teardown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def check_seq_len(seq_len: int, cp: int) -> None:
    """Context parallel splits each sequence into 2*cp load-balanced pieces: the length must divide."""
    if cp > 1 and seq_len % (2 * cp):
        raise InputError(f"sequence length {seq_len} must be divisible by 2 x context_parallel = {2 * cp} "
                         f"(load-balanced context parallel cuts each sequence into {2 * cp} equal pieces)",
                         field="seq_len")


CHECKPOINTING = ("off", "full", "attn", "mlp", "every:K")


_SIDE_EFFECTS = "skip_fwd_side_effects_in_bwd_under_checkpoint"


def configure_layers(lm: torch.nn.Module, checkpointing: str = "off", compile: bool = False,
                     offload: bool = False) -> None:
    """Per-decoder-layer speed/memory options, applied in place (parameter names are unchanged).

    checkpointing: "off"; "full" (recompute each layer in backward: keeps one [T, hidden] tensor per layer);
      "attn" (selective: keep the attention kernel's output and recompute everything else, so attention, the
      largest cost at long lengths, never runs twice while the layer keeps ~1.5 x [T, hidden]);
      "mlp" (recompute only the MLP); "every:K" (full checkpointing of every K-th layer, none for the rest).
    compile: torch.compile each layer's body (fuses RMSNorm, RoPE, SwiGLU and the casts around the matmuls),
      with the checkpoint inside the compiled region so the compiler sees the recomputation policy.
    offload: with full checkpointing, the saved layer inputs go to pinned CPU memory (one GPU only).
    """
    if checkpointing not in ("off", "full", "attn", "mlp") and not checkpointing.startswith("every:"):
        raise InputError(f"unknown activation checkpointing {checkpointing!r}; known: {', '.join(CHECKPOINTING)}",
                         field="checkpointing")
    every = int(checkpointing.split(":")[1]) if checkpointing.startswith("every:") else 1
    if offload and checkpointing != "full":
        raise InputError("activation offload needs full activation checkpointing", field="offload")
    if compile:
        # One compiled body per layer object; the default cache (8) would send later layers back to eager.
        torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 4 * len(lm.model.layers))
        if logscale.installed(lm) and checkpointing != "off" and hasattr(torch._dynamo.config, _SIDE_EFFECTS):
            # the query log scale's hook hands the positions to q_proj (a module attribute): without this the
            # compiler refuses that side effect inside a checkpointed region and runs the layers eagerly
            setattr(torch._dynamo.config, _SIDE_EFFECTS, True)
    for i, layer in enumerate(lm.model.layers):
        fwd = layer.forward
        if offload:  # the reentrant checkpoint is opaque to the compiler: compile inside it
            layer.forward = _offloaded_checkpoint(torch.compile(fwd) if compile else fwd)
            continue
        if checkpointing in ("full", "attn") or (checkpointing.startswith("every:") and i % every == 0):
            fwd = _checkpoint(fwd, selective=checkpointing == "attn")
        elif checkpointing == "mlp":
            layer.mlp.forward = _checkpoint(layer.mlp.forward)
        layer.forward = torch.compile(fwd) if compile else fwd


def _attention_ops() -> set:
    names = ("_scaled_dot_product_cudnn_attention", "_scaled_dot_product_flash_attention",
             "_scaled_dot_product_efficient_attention", "_scaled_dot_product_flash_attention_for_cpu",
             "_flash_attention_forward", "_efficient_attention_forward")
    return {getattr(torch.ops.aten, n).default for n in names if hasattr(torch.ops.aten, n)}


def _keep_attention(ctx, op, *args, **kwargs):
    from torch.utils.checkpoint import CheckpointPolicy
    return CheckpointPolicy.MUST_SAVE if op in _ATTENTION_OPS else CheckpointPolicy.PREFER_RECOMPUTE


_ATTENTION_OPS = _attention_ops()


def keep_attention_output(op) -> None:
    """Selective checkpointing (ac=attn) keeps this op's output, as it keeps SDPA's kernels' (an attention
    kernel registered as a custom op, e.g. train.attention's FA4)."""
    _ATTENTION_OPS.add(op)


def _checkpoint(fn, selective: bool = False):
    from torch.utils.checkpoint import checkpoint, create_selective_checkpoint_contexts

    def context():
        return create_selective_checkpoint_contexts(_keep_attention)

    @functools.wraps(fn)
    def run(*args, **kwargs):
        if not torch.is_grad_enabled():
            return fn(*args, **kwargs)
        if selective:
            return checkpoint(fn, *args, use_reentrant=False, context_fn=context, **kwargs)
        return checkpoint(fn, *args, use_reentrant=False, **kwargs)
    return run


def _offloaded_checkpoint(fn):
    """Checkpoint whose one saved tensor, the layer input, lives in pinned CPU memory until the backward.

    The reentrant checkpoint saves its inputs through ctx.save_for_backward, which save_on_cpu intercepts;
    the non-reentrant one keeps them in a closure on the GPU, so it cannot offload.
    """
    @functools.wraps(fn)
    def run(*args, **kwargs):
        if not torch.is_grad_enabled():
            return fn(*args, **kwargs)
        with torch.autograd.graph.save_on_cpu(pin_memory=torch.cuda.is_available()):
            return torch.utils.checkpoint.checkpoint(functools.partial(fn, **kwargs), *args, use_reentrant=True)
    return run


def shard_model(model: torch.nn.Module, d: Dist) -> torch.nn.Module:
    """FSDP2 on a CausalLMLoss: shard each decoder layer, then the rest, over all ranks (dp x cp).

    Parameters stay fp32 (the master weights) and are all-gathered in fp32; bf16 autocast casts them for the
    matmuls, as on one GPU, so one and several GPUs compute the same numbers.
    """
    if d.world == 1:
        return model
    from torch.distributed.fsdp import fully_shard
    mesh = d.mesh._flatten("dp_cp") if d.cp > 1 else d.mesh["dp"]
    layers = list(model.lm.model.layers)
    for i, layer in enumerate(layers):
        # The last layer's parameters are needed again right away by the backward: keep them gathered.
        fully_shard(layer, mesh=mesh, reshard_after_forward=i < len(layers) - 1)
    fully_shard(model, mesh=mesh)
    return model


def all_reduce_sum(x: torch.Tensor, d: Dist) -> torch.Tensor:
    if d.world > 1:
        dist.all_reduce(x, op=dist.ReduceOp.SUM)
    return x
