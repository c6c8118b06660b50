"""Per-layer options and attention kernels compute the same loss and gradients as the plain model.

Activation checkpointing (full, MLP only, every 2nd layer, with CPU offload) only trades memory for
recomputation; FlexAttention with a document block mask equals the dense block-diagonal mask.
"""

from __future__ import annotations

from contextlib import nullcontext

import pytest
import torch

from longreach.train import attention, parallel
from longreach.train.loop import CausalLMLoss, document_positions, forward_backward
from longreach.train.loss import IGNORE, shift_labels


def _lm(layers: int = 3):
    from longreach.model.tiny import tiny_llama, tiny_llama_config

    lm = tiny_llama(tiny_llama_config(64, hidden=64, layers=layers, heads=4, kv_heads=2), seed=0).train()
    lm.config.use_cache = False
    return lm


def _loss_and_grads(lm, batch):
    model = CausalLMLoss(lm, chunk_tokens=16)
    device = next(lm.parameters()).device  # the batch goes where the model is (Dist() alone means CPU)
    n = torch.tensor(float((batch["labels"] != -100).sum()), device=device)
    loss = forward_backward(model, [batch], n, nullcontext, parallel.Dist(device=device)) / n
    return float(loss), {k: p.grad.clone() for k, p in lm.named_parameters()}


@pytest.fixture(scope="module")
def plain_reference():
    ids = torch.randint(0, 64, (2, 48), generator=torch.Generator().manual_seed(0))
    batch = {"input_ids": ids, "labels": shift_labels(ids)}
    return batch, _loss_and_grads(_lm(), batch)


@pytest.mark.parametrize("mode,offload", [("full", False), ("attn", False), ("mlp", False), ("every:2", False),
                                         ("full", True)])
def test_activation_checkpointing_keeps_loss_and_gradients(mode, offload, plain_reference):
    batch, (ref_loss, ref) = plain_reference
    lm = _lm()
    parallel.configure_layers(lm, checkpointing=mode, offload=offload)
    loss, got = _loss_and_grads(lm, batch)
    assert loss == pytest.approx(ref_loss, abs=1e-6)
    for k, g in ref.items():
        assert torch.allclose(got[k], g, atol=1e-6), k


@pytest.mark.parametrize("mode,runs", [("off", 3), ("full", 6), ("attn", 3)])
def test_selective_checkpointing_never_runs_attention_twice(mode, runs):
    """"attn" keeps the attention kernel's output: 3 layers run it 3 times, full checkpointing 6 times."""
    from torch.utils._python_dispatch import TorchDispatchMode

    ops = parallel._ATTENTION_OPS
    count = []

    class Count(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func in ops:
                count.append(func)
            return func(*args, **(kwargs or {}))

    lm = _lm(3)
    parallel.configure_layers(lm, checkpointing=mode)
    ids = torch.randint(0, 64, (1, 32), generator=torch.Generator().manual_seed(0))
    with Count():
        _loss_and_grads(lm, {"input_ids": ids, "labels": shift_labels(ids)})
    assert len(count) == runs


def test_unknown_checkpointing_mode_is_an_input_error():
    from longreach.errors import InputError

    with pytest.raises(InputError, match="unknown activation checkpointing"):
        parallel.configure_layers(_lm(), checkpointing="some")
    with pytest.raises(InputError, match="offload needs full"):
        parallel.configure_layers(_lm(), checkpointing="mlp", offload=True)


def _forward_loss(lm, batch) -> float:
    with torch.no_grad():  # FlexAttention has no CPU backward: its gradients are checked on the GPU
        return float(CausalLMLoss(lm, chunk_tokens=16)(**batch))


def test_flex_document_mask_equals_dense_document_mask():
    attention.register()
    ids = torch.randint(0, 64, (1, 64), generator=torch.Generator().manual_seed(1))
    starts = [torch.tensor([0, 20, 41]).numpy()]
    labels = shift_labels(ids)
    ref = _forward_loss(_lm(2), {"input_ids": ids, "labels": labels, **document_positions(64, starts)})
    lm = _lm(2)
    lm.config._attn_implementation = attention.FLEX_NAME
    sparse = document_positions(64, starts, dense_mask=False)
    assert set(sparse) == {"position_ids"}
    assert _forward_loss(lm, {"input_ids": ids, "labels": labels, **sparse}) == pytest.approx(ref, abs=1e-4)
    # The mask matters: without it the documents see each other and the loss changes.
    assert _forward_loss(lm, {"input_ids": ids, "labels": labels}) != pytest.approx(ref, abs=1e-4)


def test_flex_without_documents_is_plain_causal_attention():
    attention.register()
    ids = torch.randint(0, 64, (2, 32), generator=torch.Generator().manual_seed(2))
    batch = {"input_ids": ids, "labels": shift_labels(ids)}
    lm = _lm(2)
    lm.config._attn_implementation = attention.FLEX_NAME
    assert _forward_loss(lm, batch) == pytest.approx(_forward_loss(_lm(2), batch), abs=1e-4)


def test_flex_skips_the_mask_when_only_the_first_document_has_targets(monkeypatch):
    """A row holding one sample and then padding (or samples without targets) needs no document mask: plain
    causal attention (SDPA, cuDNN on a GPU) gives the masked loss, and no block mask is built."""
    attention.register()
    ids = torch.randint(0, 64, (1, 64), generator=torch.Generator().manual_seed(3))
    starts = [torch.tensor([0, 40]).numpy()]
    labels = shift_labels(ids)
    first_only = labels.clone()
    first_only[:, 39:] = IGNORE
    ref = _forward_loss(_lm(2), {"input_ids": ids, "labels": first_only, **document_positions(64, starts)})
    pos = document_positions(64, starts, dense_mask=False)
    lm = _lm(2)
    lm.config._attn_implementation = attention.FLEX_NAME
    built = []
    real = attention.doc_block_mask
    monkeypatch.setattr(attention, "doc_block_mask", lambda p: built.append(1) or real(p))
    assert _forward_loss(lm, {"input_ids": ids, "labels": first_only, **pos}) == pytest.approx(ref, abs=1e-4)
    assert not built
    # a target in the second document: the mask is needed, built, and gives the dense mask's loss
    ref2 = _forward_loss(_lm(2), {"input_ids": ids, "labels": labels, **document_positions(64, starts)})
    assert _forward_loss(lm, {"input_ids": ids, "labels": labels, **pos}) == pytest.approx(ref2, abs=1e-4)
    assert built
    assert attention.targets_in_first_document(pos["position_ids"], first_only)
    assert not attention.targets_in_first_document(pos["position_ids"], labels)


@pytest.mark.gpu
def test_flex_document_mask_gradients_on_gpu():
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    attention.register()
    ids = torch.randint(0, 64, (1, 256), generator=torch.Generator().manual_seed(1)).cuda()
    starts = [torch.tensor([0, 100, 181]).numpy()]
    batch = {"input_ids": ids, "labels": shift_labels(ids)}
    dense = {k: v.cuda() for k, v in document_positions(256, starts).items()}
    ref_loss, ref = _loss_and_grads(_lm(2).cuda(), {**batch, **dense})
    lm = _lm(2).cuda()
    lm.config._attn_implementation = attention.FLEX_NAME
    pos = document_positions(256, starts, dense_mask=False)["position_ids"].cuda()
    loss, got = _loss_and_grads(lm, {**batch, "position_ids": pos})
    assert loss == pytest.approx(ref_loss, abs=1e-4)
    for k, g in ref.items():
        assert torch.allclose(got[k], g, atol=1e-4, rtol=1e-3), k


def test_document_ids_start_where_positions_restart():
    pos = torch.tensor([[0, 1, 2, 0, 1, 0]])
    assert attention.document_ids(pos).tolist() == [[1, 1, 1, 2, 2, 3]]


def test_sdpa_path_gets_no_mask_so_cudnn_runs_is_causal():
    """transformers' mask builder skips the mask for our batches: SDPA sees attn_mask=None and is_causal=True
    (an explicit T x T mask would cost T^2 memory, a slower kernel, and hit the cuDNN NaN bug)."""
    from transformers import AttentionInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    seen = []

    def spy(module, q, k, v, attention_mask, **kwargs):
        seen.append(attention_mask)
        return sdpa_attention_forward(module, q, k, v, attention_mask, **kwargs)

    AttentionInterface.register("sdpa", spy)
    try:
        ids = torch.randint(0, 64, (2, 40), generator=torch.Generator().manual_seed(3))
        lm = _lm(2)
        lm.config._attn_implementation = "sdpa"
        _loss_and_grads(lm, {"input_ids": ids, "labels": shift_labels(ids)})
        # explicit contiguous positions (what context parallel's 1-rank case would pass) change nothing
        _loss_and_grads(lm, {"input_ids": ids, "labels": shift_labels(ids),
                             "position_ids": torch.arange(40).expand(2, -1)})
    finally:
        AttentionInterface.register("sdpa", sdpa_attention_forward)
    assert len(seen) == 4 and all(m is None for m in seen)


@pytest.mark.gpu
def test_context_parallel_lower_right_flash_block_on_gpu():
    """The flash kernel called for a query chunk against all earlier keys equals an explicit bottom-right mask."""
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    import torch.nn.functional as F

    from longreach.train.context_parallel import _causal_block

    g = torch.Generator(device="cuda").manual_seed(0)
    q, k, v = (torch.randn(1, 4, n, 64, device="cuda", generator=g, dtype=torch.bfloat16).requires_grad_()
               for n in (128, 384, 384))
    out = _causal_block(q, k, v, None)
    out.float().square().sum().backward()
    grads = [t.grad.float() for t in (q, k, v)]
    q32, k32, v32 = (t.detach().float().requires_grad_() for t in (q, k, v))
    mask = torch.ones(128, 384, dtype=torch.bool, device="cuda").tril(384 - 128)
    ref = F.scaled_dot_product_attention(q32, k32, v32, attn_mask=mask)
    ref.square().sum().backward()
    assert (out.float() - ref).norm() / ref.norm() < 1e-2
    for got, want in zip(grads, (q32.grad, k32.grad, v32.grad)):
        assert (got - want).norm() / want.norm() < 2e-2


def _has_fa4() -> bool:
    try:
        import flash_attn.cute.interface  # noqa: F401
    except ImportError:
        return False
    return True


def test_fa4_attention_says_what_it_cannot_run():
    """attn longreach_fa4 refuses, by name, a CPU tensor, a mask and dropout; without the package it says
    what to install."""
    attention.register()
    lm = _lm(1)
    lm.config._attn_implementation = attention.FA4_NAME
    ids = torch.randint(0, 64, (1, 32), generator=torch.Generator().manual_seed(5))
    with pytest.raises(ValueError, match="longreach_fa4.*CUDA GPU"):
        lm(input_ids=ids, labels=ids)
    q = torch.zeros(1, 4, 8, 16)
    with pytest.raises(ValueError, match="takes no mask.*longreach_flex"):
        attention.fa4_attention_forward(None, q, q, q, attention_mask=torch.ones(1, 1, 8, 8, dtype=torch.bool))
    with pytest.raises(ValueError, match="no attention dropout"):
        attention.fa4_attention_forward(None, q, q, q, dropout=0.1)
    attention.prepare("sdpa")  # nothing to prepare
    if not _has_fa4():  # the loop and the benchmark prepare FA4 before building the model: a missing package
        with pytest.raises(ImportError, match="pip install --pre flash-attn-4"):  # fails there, by name
            attention.prepare(attention.FA4_NAME)


@pytest.mark.gpu
def test_fa4_attention_matches_sdpa_on_gpu():
    """FlashAttention 4 (grouped KV heads, head dim 64, bf16 autocast) gives SDPA's loss and gradients."""
    if not torch.cuda.is_available() or torch.cuda.get_device_capability()[0] not in (9, 10):
        pytest.skip("needs a Hopper or Blackwell GPU")
    if not _has_fa4():
        pytest.skip("flash-attn-4 not installed (scripts/gpu/stage_assets.sh fa4)")
    from longreach.model.tiny import tiny_llama, tiny_llama_config

    attention.register()
    ids = torch.randint(0, 64, (2, 512), generator=torch.Generator().manual_seed(2)).cuda()
    batch = {"input_ids": ids, "labels": shift_labels(ids)}
    n = torch.tensor(float((batch["labels"] != -100).sum()), device="cuda")
    results = []
    for impl in ("sdpa", attention.FA4_NAME):
        lm = tiny_llama(tiny_llama_config(64, hidden=256, layers=2, heads=4, kv_heads=2), seed=0).train().cuda()
        lm.config.use_cache = False
        lm.config._attn_implementation = impl
        loss = forward_backward(CausalLMLoss(lm, chunk_tokens=128), [batch], n,
                                lambda: torch.autocast("cuda", dtype=torch.bfloat16),
                                parallel.Dist(device=torch.device("cuda"))) / n
        results.append((float(loss), {k: p.grad.clone() for k, p in lm.named_parameters()}))
    (ref_loss, ref), (loss, got) = results
    assert loss == pytest.approx(ref_loss, rel=1e-2)
    for k, g in ref.items():
        assert (got[k] - g).norm() / g.norm() < 3e-2, k


def test_fa4_ops_register_and_checkpointing_keeps_their_output():
    """With flash-attn-4 importable (any machine: registration and shapes need no GPU), FA4's forward and
    backward become torch custom ops whose fake kernels give the real shapes (so torch.compile can trace
    around them), and selective checkpointing (ac=attn) keeps the forward's output instead of recomputing it."""
    pytest.importorskip("flash_attn.cute.interface")
    from torch._subclasses.fake_tensor import FakeTensorMode

    op = attention._fa4_attention_op()
    with FakeTensorMode():
        q = torch.empty(2, 128, 4, 64, dtype=torch.bfloat16, requires_grad=True)
        kv = torch.empty(2, 128, 2, 64, dtype=torch.bfloat16, requires_grad=True)
        out, lse = op(q, kv, kv, 0.125)
        assert out.shape == q.shape and lse.shape == (2, 4, 128) and lse.dtype == torch.float32
        out.float().sum().backward()
        assert q.grad.shape == q.shape and kv.grad.shape == kv.shape
    from torch.utils.checkpoint import CheckpointPolicy
    assert parallel._keep_attention(None, op.default) == CheckpointPolicy.MUST_SAVE
    assert parallel._keep_attention(None, torch.ops.aten.mm.default) == CheckpointPolicy.PREFER_RECOMPUTE
