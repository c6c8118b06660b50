import torch
import torch.nn.functional as F

from longreach.train.loss import IGNORE, chunked_cross_entropy, shift_labels


def test_chunked_loss_matches_full_logits_value_and_gradients():
    torch.manual_seed(0)
    hidden = torch.randn(2, 37, 16, requires_grad=True)
    weight = torch.randn(50, 16, requires_grad=True)
    labels = torch.randint(0, 50, (2, 37))
    labels[0, :5] = IGNORE
    full = F.cross_entropy((hidden @ weight.t()).reshape(-1, 50), labels.reshape(-1), ignore_index=IGNORE,
                           reduction="sum")
    gh, gw = torch.autograd.grad(full, (hidden, weight))
    chunked = chunked_cross_entropy(hidden, weight, labels, chunk_tokens=8)
    ch, cw = torch.autograd.grad(chunked, (hidden, weight))
    assert torch.allclose(full, chunked, rtol=1e-5)
    assert torch.allclose(gh, ch, atol=1e-5) and torch.allclose(gw, cw, atol=1e-5)


def test_shift_labels_masks_last_position_and_masked_targets():
    ids = torch.tensor([[5, 6, 7, 8]])
    assert shift_labels(ids).tolist() == [[6, 7, 8, IGNORE]]
    mask = torch.tensor([[True, False, True, True]])
    assert shift_labels(ids, mask).tolist() == [[IGNORE, 7, 8, IGNORE]]
