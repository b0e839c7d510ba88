"""The bf16-screened greedy head returns exactly the fp32 argmax."""

import pytest
import torch

from autojudge.greedy_head import ScreenedGreedyHead


def _exact(hidden, weight):
    return (hidden @ weight.T).argmax(dim=-1)


def test_matches_fp32_argmax_on_the_real_lm_head(embedded_target):
    ids = torch.tensor([[1, 504, 3458, 314, 253, 1345, 28, 288, 30, 1105, 314, 1565]])
    hidden = embedded_target.hidden_states(ids, embedded_target.new_cache())  # [1, 12, 576]
    weight = embedded_target.model.lm_head.weight
    head = ScreenedGreedyHead(weight)
    assert torch.equal(head(hidden), _exact(hidden, weight))
    noisy = hidden + 0.5 * torch.randn_like(hidden)
    assert torch.equal(head(noisy), _exact(noisy, weight))


@pytest.mark.parametrize("scale", [1e-3, 1.0, 30.0])
def test_matches_fp32_argmax_on_random_heads(scale):
    gen = torch.Generator().manual_seed(int(scale * 1000))
    weight = torch.randn(5000, 48, generator=gen)
    hidden = torch.randn(3, 7, 48, generator=gen) * scale
    assert torch.equal(ScreenedGreedyHead(weight)(hidden), _exact(hidden, weight))


def test_near_ties_below_bf16_resolution_are_resolved_in_fp32():
    gen = torch.Generator().manual_seed(0)
    weight = torch.randn(1000, 32, generator=gen)
    hidden = torch.randn(1, 32, generator=gen)
    # Row 700 beats row 3 by less than bf16 can represent; in bf16 they look equal.
    weight[3] = hidden[0] / hidden[0].norm() * 10
    weight[700] = weight[3] * (1 + 1e-5)
    assert _exact(hidden, weight).item() == 700
    assert ScreenedGreedyHead(weight)(hidden).item() == 700
