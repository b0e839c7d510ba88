"""The acceptance rule (the oracle every other implementation is tested against)."""

import pytest
import torch

from autojudge.acceptance import accept, judge_accept, judge_mismatch_ok, topk_mismatch_ok

D = [[11, 12, 13, 14]]


def _t(rows):
    return torch.tensor(rows, dtype=torch.long)


def test_perfect_match_adds_bonus_token():
    result = accept(_t(D), _t([[11, 12, 13, 14, 99]]))
    assert result.num_accepted.tolist() == [4]
    assert result.next_tokens.tolist() == [99]  # bonus: the target's token after the window
    assert result.accepted.all()


def test_first_token_mismatch_emits_correction_only():
    result = accept(_t(D), _t([[50, 12, 13, 14, 99]]))
    assert result.num_accepted.tolist() == [0]
    assert result.next_tokens.tolist() == [50]


def test_early_mismatch_stops_scan_even_if_later_tokens_match():
    result = accept(_t(D), _t([[11, 60, 13, 14, 99]]))
    assert result.num_accepted.tolist() == [1]
    assert result.next_tokens.tolist() == [60]
    assert result.accepted.tolist() == [[True, False, False, False]]


def test_judge_accepted_mismatch_in_middle_of_run():
    ok = torch.tensor([[False, True, False, False]])
    result = accept(_t(D), _t([[11, 60, 13, 14, 99]]), ok)
    assert result.num_accepted.tolist() == [4]
    assert result.next_tokens.tolist() == [99]
    assert result.mismatch_accepted.tolist() == [[False, True, False, False]]


def test_judge_rejection_after_accepted_mismatches():
    ok = torch.tensor([[True, True, False, True]])
    result = accept(_t(D), _t([[51, 52, 53, 54, 99]]), ok)
    assert result.num_accepted.tolist() == [2]
    assert result.next_tokens.tolist() == [53]  # correction at the first rejected position
    assert result.mismatch_accepted.sum().item() == 2


def test_ok_mask_is_irrelevant_where_tokens_match():
    ok = torch.zeros(1, 4, dtype=torch.bool)
    assert accept(_t(D), _t([[11, 12, 13, 14, 7]]), ok).num_accepted.tolist() == [4]


@pytest.mark.parametrize("batch", [1, 3, 8])
@pytest.mark.parametrize("window", [1, 2, 5, 16, 64])
def test_rows_are_independent(batch, window):
    gen = torch.Generator().manual_seed(batch * 100 + window)
    draft = torch.randint(0, 5, (batch, window), generator=gen)
    target = torch.randint(0, 5, (batch, window + 1), generator=gen)
    ok = torch.rand(batch, window, generator=gen) < 0.3
    result = accept(draft, target, ok)
    for b in range(batch):  # the per-row reference: scan until the first rejection
        n = 0
        while n < window and (draft[b, n] == target[b, n] or ok[b, n]):
            n += 1
        assert result.num_accepted[b].item() == n
        assert result.next_tokens[b].item() == target[b, n].item()
        single = accept(draft[b : b + 1], target[b : b + 1], ok[b : b + 1])
        assert single.num_accepted.item() == n


def test_threshold_tie_is_accepted():
    probs = torch.tensor([[0.25, 0.5, 0.5000001, 0.75]])
    assert judge_mismatch_ok(probs, 0.5).tolist() == [[True, True, False, False]]


def test_judge_accept_probabilities_and_ties():
    hd, ht = 3, 5
    draft_hidden = torch.zeros(1, 4, hd)
    target_hidden = torch.zeros(1, 4, ht)
    target_hidden[0, 2, 0] = 1.0  # position 2: w . x = 2 -> sigmoid(2 + 0) > 0.5
    weight = torch.zeros(hd + ht)
    weight[hd] = 2.0
    # position 0, 1, 3: w . x = 0 -> p = sigmoid(0) = 0.5 exactly: a tie, accepted
    result, probs = judge_accept(_t(D), _t([[51, 52, 53, 54, 99]]), draft_hidden, target_hidden,
                                 weight, 0.0, threshold=0.5)
    assert probs[0, 0].item() == 0.5
    assert probs[0, 2].item() == pytest.approx(torch.sigmoid(torch.tensor(2.0)).item())
    assert result.num_accepted.tolist() == [2]
    assert result.next_tokens.tolist() == [53]


def test_judge_accept_off_is_lossless():
    gen = torch.Generator().manual_seed(0)
    draft = torch.randint(0, 3, (4, 8), generator=gen)
    target = torch.randint(0, 3, (4, 9), generator=gen)
    hidden_d, hidden_t = torch.randn(4, 8, 6, generator=gen), torch.randn(4, 8, 10, generator=gen)
    weight = torch.randn(16, generator=gen)
    judged, _ = judge_accept(draft, target, hidden_d, hidden_t, weight, 0.0, threshold=0.0)
    plain = accept(draft, target)
    assert torch.equal(judged.num_accepted, plain.num_accepted)
    assert torch.equal(judged.next_tokens, plain.next_tokens)


def test_judge_accept_works_on_half_precision_hidden_states():
    hidden = torch.randn(2, 4, 8)
    weight = torch.randn(16)
    d, t = _t([[1, 2, 3, 4]] * 2), _t([[1, 9, 3, 4, 5]] * 2)
    _, p32 = judge_accept(d, t, hidden, hidden, weight, 0.1, 0.5)
    _, p16 = judge_accept(d, t, hidden.half(), hidden.half(), weight, 0.1, 0.5)
    assert p16.dtype == torch.float32
    assert torch.allclose(p32, p16, atol=2e-3)


def test_topk_k1_is_lossless_and_larger_k_admits_runner_up():
    logits = torch.tensor([[[0.0, 5.0, 4.0, 1.0], [3.0, 0.0, 2.0, 9.0]]])  # [1, 2, 4]
    draft = _t([[2, 0]])  # runner-up at both positions
    assert topk_mismatch_ok(draft, logits, 1).tolist() == [[False, False]]
    assert topk_mismatch_ok(draft, logits, 2).tolist() == [[True, True]]
