"""The plugin kernel's per-sequence rule (host build, g++) against the PyTorch oracle, with and
without the scalar-feature segment (x = [h_draft ; h_target ; scalars], E = 0 or 5)."""

from __future__ import annotations

import math
import shutil

import pytest
import torch

from autojudge.acceptance import judge_accept
from autojudge.acceptance.plugin import NOT_EVALUATED, KernelCall, build_cuda_library, judge_accept_native

pytestmark = pytest.mark.skipif(shutil.which("g++") is None, reason="needs g++ for the host build")


def make_case(batch, window, draft_size, target_size, dtype=torch.float32, vocab=3, seed=0):
    """Random inputs; a tiny vocabulary makes mismatches frequent."""
    g = torch.Generator().manual_seed(seed)
    draft_tokens = torch.randint(0, vocab, (batch, window), generator=g)
    target_tokens = torch.randint(0, vocab, (batch, window + 1), generator=g)
    draft_hidden = torch.randn(batch, window, draft_size, generator=g).to(dtype) if draft_size else None
    target_hidden = torch.randn(batch, window, target_size, generator=g).to(dtype)
    weight = torch.randn(draft_size + target_size, generator=g) / math.sqrt(draft_size + target_size)
    return draft_tokens, target_tokens, draft_hidden, target_hidden, weight


SCALARS = 5  # as many scalar features as autojudge.features.scalars offers


def with_scalars(inputs, size=SCALARS, seed=0, scale=0.15):
    """``inputs`` (as make_case) with E = ``size`` scalar features: (inputs with the weight
    extended by E entries, scalars [B, W, E]). The values are of the real features' scale: log
    probabilities in [-20, 0], the last in [0, 1] (window_agreement); their part of the logit is
    a few units, enough to flip decisions (see assert_scalars_flip)."""
    draft_tokens, target_tokens, draft_hidden, target_hidden, weight = inputs
    g = torch.Generator().manual_seed(1000 + seed)
    batch, window = draft_tokens.shape
    scalars = -20.0 * torch.rand(batch, window, size, generator=g)
    if size:
        scalars[..., -1] = torch.rand(batch, window, generator=g)
    scalar_weight = scale * torch.randn(size, generator=g)
    return (draft_tokens, target_tokens, draft_hidden, target_hidden, torch.cat([weight, scalar_weight])), scalars


def assert_scalars_flip(inputs, scalars, bias, thresholds):
    """The scalar segment changes some decision: a kernel that skipped it would not pass."""
    hidden_only = (*inputs[:4], inputs[4][:inputs[4].numel() - scalars.shape[-1]])
    flips = 0
    for threshold in thresholds:
        with_segment, _ = oracle(*inputs, bias, threshold, scalars=scalars)
        without, _ = oracle(*hidden_only, bias, threshold)
        flips += int((with_segment.num_accepted != without.num_accepted).sum())
    assert flips > 0, "the scalar features decide nothing in this case"


def float32_below(x: torch.Tensor) -> torch.Tensor:
    """The next float32 towards zero (math.nextafter would step in float64)."""
    x = x.float()
    return torch.nextafter(x, torch.zeros_like(x))


def oracle(draft_tokens, target_tokens, draft_hidden, target_hidden, weight, bias, threshold, scalars=None):
    if draft_hidden is None:  # target-only layout: no draft features
        draft_hidden = target_hidden[..., :0]
    threshold = torch.as_tensor(threshold, dtype=torch.float32).expand(draft_tokens.shape[0]).unsqueeze(1)
    return judge_accept(draft_tokens, target_tokens, draft_hidden, target_hidden, weight, bias, threshold,
                        scalars=scalars)


def assert_same_as_oracle(inputs, bias, threshold, team=None, scalars=None):
    """``team``: (groups, lanes) runs the threaded host team instead of the one-thread one;
    ``scalars``: [B, W, E] scalar features (the weight in ``inputs`` then has E more entries)."""
    draft_tokens, target_tokens = inputs[0], inputs[1]
    call = KernelCall(*inputs, bias=bias, threshold=threshold, scalars=scalars)
    got = call.run() if team is None else call.run_host_team(*team)
    want, want_probabilities = oracle(*inputs, bias, threshold, scalars=scalars)
    assert got.num_accepted.tolist() == want.num_accepted.tolist()
    assert got.next_tokens.tolist() == want.next_tokens.tolist()
    # Evaluated positions: the accepted mismatches, and the rejected position if n < W.
    window = draft_tokens.shape[1]
    mismatch = draft_tokens != target_tokens[:, :window]
    positions = torch.arange(window)
    n = want.num_accepted.unsqueeze(1)
    evaluated = mismatch & (positions <= n)
    assert torch.equal(got.probabilities == NOT_EVALUATED, ~evaluated)
    torch.testing.assert_close(got.probabilities[evaluated], want_probabilities[evaluated], rtol=2e-5, atol=1e-6, equal_nan=True)
    return got


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("window,draft_size,target_size", [
    (1, 8, 16),     # W = 1
    (4, 64, 64),    # vectorised path
    (64, 24, 40),   # W = 64, Hd != Ht
    (7, 13, 29),    # sizes not a multiple of 8: scalar path
    (16, 0, 32),    # target-only layout (no draft hidden states)
])
def test_random_inputs_match_the_oracle(dtype, window, draft_size, target_size):
    inputs = make_case(6, window, draft_size, target_size, dtype, seed=window + draft_size)
    for threshold in (0.0, 0.3, 0.5, 0.7, 1.0):
        assert_same_as_oracle(inputs, bias=0.1, threshold=threshold)
    per_row = torch.linspace(0, 1, 6)
    assert_same_as_oracle(inputs, bias=-0.2, threshold=per_row)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("window,draft_size,target_size", [
    (1, 8, 16), (4, 64, 64), (64, 24, 40), (7, 13, 29), (16, 0, 32)])
def test_with_scalar_features_the_kernel_matches_the_oracle(dtype, window, draft_size, target_size):
    """E = 5 after the hidden states; E = 0 given as an empty [B, W, 0] tensor is the hidden-only judge."""
    base = make_case(6, window, draft_size, target_size, dtype, seed=window + draft_size)
    inputs, scalars = with_scalars(base, seed=window)
    thresholds = (0.0, 0.3, 0.5, 0.7, 1.0)
    for threshold in thresholds:
        assert_same_as_oracle(inputs, bias=0.1, threshold=threshold, scalars=scalars)
        assert_same_as_oracle(base, bias=0.1, threshold=threshold, scalars=scalars[..., :0])
    assert_same_as_oracle(inputs, bias=-0.2, threshold=torch.linspace(0, 1, 6), scalars=scalars)
    if window > 1:
        assert_scalars_flip(inputs, scalars, 0.1, thresholds)


def test_the_scalar_segment_alone_can_decide():
    """Hidden weights zero: p = sigmoid(w_s . s), so the scalars alone accept one row and reject the other."""
    draft_tokens, target_tokens, draft_hidden, target_hidden, weight = make_case(2, 6, 16, 16, vocab=2, seed=5)
    target_tokens[:, :6] = 1 - draft_tokens  # every position a mismatch
    scalars = torch.zeros(2, 6, SCALARS)
    scalars[0, :, 0] = -12.0  # row 0: a draft token the target finds unlikely ...
    scalars[1, :, 0] = -0.5  # ... row 1: one it finds likely
    weight = torch.cat([torch.zeros_like(weight), torch.tensor([-0.5, 0.0, 0.0, 0.0, 0.0])])
    inputs = (draft_tokens, target_tokens, draft_hidden, target_hidden, weight)
    got = assert_same_as_oracle(inputs, bias=-2.0, threshold=0.5, scalars=scalars)
    assert got.num_accepted.tolist() == [0, 6]  # logit 6 - 2 > 0 rejects; 0.25 - 2 < 0 accepts
    for team in ((3, 2), (32, 1)):
        got = assert_same_as_oracle(inputs, bias=-2.0, threshold=0.5, scalars=scalars, team=team)
        assert got.num_accepted.tolist() == [0, 6]


@pytest.mark.parametrize("team", [(2, 1), (3, 2), (32, 1), (40, 2), (256, 1)])
@pytest.mark.parametrize("window,draft_size,target_size", [(1, 8, 16), (33, 24, 40), (64, 0, 32)])
def test_a_cooperative_team_equals_the_oracle(team, window, draft_size, target_size):
    """groups x lanes host threads run the GPU's cooperative path: positions shared by several
    groups (share > 1 when a round is short), rounds capped at 32 positions, reductions, the walk."""
    inputs = make_case(3, window, draft_size, target_size, torch.bfloat16, seed=window + team[0])
    for threshold in (0.0, 0.4, 0.7, 1.0):
        assert_same_as_oracle(inputs, bias=0.1, threshold=threshold, team=team)
    assert_same_as_oracle(inputs, bias=-60.0, threshold=0.5, team=team)  # every mismatch accepted


@pytest.mark.parametrize("team", [(2, 1), (3, 2), (32, 1), (40, 2), (256, 1)])
@pytest.mark.parametrize("window,draft_size,target_size", [(1, 8, 16), (33, 24, 40), (64, 0, 32)])
def test_a_cooperative_team_with_scalar_features_equals_the_oracle_and_the_serial_team(team, window, draft_size,
                                                                                       target_size):
    """The scalar part is added the same way in every team (the first group, one lane per position,
    in feature order): the oracle's decisions, and the one-thread team's."""
    base = make_case(3, window, draft_size, target_size, torch.bfloat16, seed=window + team[0])
    inputs, scalars = with_scalars(base, seed=team[0])
    thresholds = (0.0, 0.4, 0.7, 1.0)
    for threshold in thresholds:
        got = assert_same_as_oracle(inputs, bias=0.1, threshold=threshold, team=team, scalars=scalars)
        serial = assert_same_as_oracle(inputs, bias=0.1, threshold=threshold, scalars=scalars)
        assert got.num_accepted.tolist() == serial.num_accepted.tolist()
        assert_same_as_oracle(base, bias=0.1, threshold=threshold, team=team, scalars=scalars[..., :0])
    if window > 1:
        assert_scalars_flip(inputs, scalars, 0.1, thresholds)


def test_all_match_takes_the_bonus_token_without_evaluating_the_judge():
    draft_tokens, target_tokens, draft_hidden, target_hidden, weight = make_case(3, 8, 16, 16)
    target_tokens[:, :8] = draft_tokens
    got = assert_same_as_oracle((draft_tokens, target_tokens, draft_hidden, target_hidden, weight), 0.0, 0.0)
    assert got.num_accepted.tolist() == [8, 8, 8]
    assert got.next_tokens.tolist() == target_tokens[:, 8].tolist()
    assert bool((got.probabilities == NOT_EVALUATED).all())


def test_first_mismatch_rejected_stops_the_scan():
    draft_tokens, target_tokens, draft_hidden, target_hidden, weight = make_case(2, 32, 16, 16)
    target_tokens[:, :32] = draft_tokens
    target_tokens[:, 0] = draft_tokens[:, 0] + 1  # mismatch at position 0
    target_tokens[:, 5] = draft_tokens[:, 5] + 1
    got = assert_same_as_oracle((draft_tokens, target_tokens, draft_hidden, target_hidden, weight), 50.0, 0.5)
    assert got.num_accepted.tolist() == [0, 0]  # sigmoid(~50) > 0.5: rejected
    assert got.next_tokens.tolist() == target_tokens[:, 0].tolist()
    assert bool((got.probabilities[:, 1:] == NOT_EVALUATED).all())  # nothing after the rejection


def test_judge_accepted_runs_continue_past_mismatches():
    draft_tokens, target_tokens, draft_hidden, target_hidden, weight = make_case(4, 64, 40, 24, vocab=2, seed=3)
    got = assert_same_as_oracle((draft_tokens, target_tokens, draft_hidden, target_hidden, weight), -60.0, 0.5)
    assert got.num_accepted.tolist() == [64] * 4  # every mismatch judged unimportant
    assert got.next_tokens.tolist() == target_tokens[:, 64].tolist()


def test_threshold_ties_pass_and_the_next_float_down_rejects():
    draft_tokens, target_tokens, draft_hidden, target_hidden, weight = make_case(2, 4, 8, 8, vocab=2, seed=1)
    target_tokens[:, :4] = 1 - draft_tokens  # every position a mismatch
    inputs = (draft_tokens, target_tokens, draft_hidden, target_hidden, torch.zeros_like(weight))
    got = assert_same_as_oracle(inputs, bias=0.0, threshold=0.5)  # p = sigmoid(0) = 0.5 exactly
    assert got.num_accepted.tolist() == [4, 4]
    got = assert_same_as_oracle(inputs, bias=0.0, threshold=float32_below(torch.tensor(0.5)))
    assert got.num_accepted.tolist() == [0, 0]
    # The same at a probability that is not a round number: the kernel's own p is a tie.
    real = (draft_tokens, target_tokens, draft_hidden, target_hidden, weight)
    p = judge_accept_native(*real, bias=0.3, threshold=0.0).probabilities[:, 0]
    tie = judge_accept_native(*real, bias=0.3, threshold=p)
    assert bool((tie.probabilities[:, 0] == p).all()) and bool((tie.num_accepted >= 1).all())
    strict = judge_accept_native(*real, bias=0.3, threshold=float32_below(p))
    assert strict.num_accepted.tolist() == [0, 0]


def test_nan_hidden_states_are_rejected_like_the_oracle():
    draft_tokens, target_tokens, draft_hidden, target_hidden, weight = make_case(2, 4, 8, 8, vocab=2, seed=2)
    target_tokens[:, :4] = 1 - draft_tokens
    target_hidden[0, 0, 3] = float("nan")
    got = assert_same_as_oracle((draft_tokens, target_tokens, draft_hidden, target_hidden, weight), -60.0, 1.0)
    assert got.num_accepted.tolist() == [0, 4]


def test_bad_arguments_are_reported():
    draft_tokens, target_tokens, draft_hidden, target_hidden, weight = make_case(2, 4, 8, 8)
    with pytest.raises(ValueError, match="W\\+1"):
        judge_accept_native(draft_tokens, target_tokens[:, :4], draft_hidden, target_hidden, weight, 0.0, 0.5)
    with pytest.raises(ValueError, match="Hd \\+ Ht"):
        judge_accept_native(draft_tokens, target_tokens, draft_hidden, target_hidden, weight[:-1], 0.0, 0.5)
    _, scalars = with_scalars((draft_tokens, target_tokens, draft_hidden, target_hidden, weight))
    with pytest.raises(ValueError, match="Hd \\+ Ht \\+ E"):  # a hidden-only weight with 5 scalar features
        judge_accept_native(draft_tokens, target_tokens, draft_hidden, target_hidden, weight, 0.0, 0.5, scalars=scalars)
    with pytest.raises(ValueError, match="\\[B, W, E\\]"):
        judge_accept_native(draft_tokens, target_tokens, draft_hidden, target_hidden, torch.cat([weight, weight[:5]]),
                            0.0, 0.5, scalars=scalars[:, :3])
    call = KernelCall(draft_tokens, target_tokens, draft_hidden, target_hidden, weight, 0.0, 0.5)
    call.args.scalarFeatureSize = -1
    with pytest.raises(ValueError, match="scalarFeatureSize must be >= 0"):
        call.run()
    call.args.scalarFeatureSize = 5  # and scalarFeatures still null
    with pytest.raises(ValueError, match="scalarFeatures is null"):
        call.run()
    with pytest.raises(ValueError, match="scalarFeatures is null"):
        call.run_host_team(2, 2)
    with pytest.raises(ValueError, match="window must be in 1..1024"):
        judge_accept_native(draft_tokens[:, :0], target_tokens[:, :1], draft_hidden[:, :0], target_hidden[:, :0],
                            weight, 0.0, 0.5)


@pytest.mark.skipif(shutil.which("nvcc") is None and not __import__("os").path.exists("/usr/local/cuda/bin/nvcc"),
                    reason="needs nvcc")
def test_the_cuda_kernel_compiles_for_sm80_and_sm90():
    library = build_cuda_library(("80", "90"))
    assert library.stat().st_size > 0
