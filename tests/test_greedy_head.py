"""The bf16-screened greedy head returns exactly the fp32 argmax."""

import pytest
import torch

from autojudge.models.cpu.greedy_head import ScreenedGreedyHead


def _exact(hidden, weight):
    return (hidden @ weight.T).argmax(dim=-1)


def _row_by_row(head, hidden):
    """One row per call, so every row goes through the bf16 screen (decode steps)."""
    rows = hidden.reshape(-1, 1, hidden.shape[-1])  # [N, 1, H]
    return torch.cat([head(row) for row in rows]).reshape(hidden.shape[:-1])


def test_matches_fp32_argmax_on_the_real_lm_head(embedded_target):
    ids = torch.tensor([[1, 504, 3458, 314, 253, 1345, 28, 288, 30, 1105, 314, 1565]])
    hidden = embedded_target.hidden_states(ids, embedded_target.new_cache())  # [1, 12, 576]
    weight = embedded_target.model.lm_head.weight
    head = ScreenedGreedyHead(weight)
    assert torch.equal(_row_by_row(head, hidden), _exact(hidden, weight))
    assert torch.equal(head(hidden), _exact(hidden, weight))  # several rows: fp32 GEMM
    noisy = hidden + 0.5 * torch.randn_like(hidden)
    assert torch.equal(_row_by_row(head, noisy), _exact(noisy, weight))


@pytest.mark.parametrize("scale", [1e-3, 1.0, 30.0])
def test_matches_fp32_argmax_on_random_heads(scale):
    gen = torch.Generator().manual_seed(int(scale * 1000))
    weight = torch.randn(5000, 48, generator=gen)
    hidden = torch.randn(3, 7, 48, generator=gen) * scale
    head = ScreenedGreedyHead(weight)
    assert torch.equal(_row_by_row(head, hidden), _exact(hidden, weight))
    assert torch.equal(head(hidden), _exact(hidden, weight))


def test_near_ties_below_bf16_resolution_are_resolved_in_fp32():
    gen = torch.Generator().manual_seed(0)
    weight = torch.randn(1000, 32, generator=gen)
    hidden = torch.randn(1, 32, generator=gen)
    # Row 700 beats row 3 by less than bf16 can represent; in bf16 they look equal.
    weight[3] = hidden[0] / hidden[0].norm() * 10
    weight[700] = weight[3] * (1 + 1e-5)
    assert _exact(hidden, weight).item() == 700
    assert ScreenedGreedyHead(weight)(hidden).item() == 700


@pytest.mark.parametrize("rows", [1, 2, 5, 16, 17])
def test_few_rows_linear_equals_f_linear(rows):
    from autojudge.models.cpu.few_rows_linear import FewRowsLinear, use_few_rows_linear

    layer = torch.nn.Sequential(torch.nn.Linear(24, 40), torch.nn.Linear(40, 8, bias=False))
    x = torch.randn(rows, 24)
    expected = layer(x)
    assert use_few_rows_linear(layer) == 2
    assert all(type(m) is FewRowsLinear for m in layer)
    torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-6)
