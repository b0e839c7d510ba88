"""FLy, the training-free lossy baseline (arXiv 2511.22972), against a loop written from its code's
rule (AMD-AGI/FLy fly/models/FLy.py): a mismatch at i passes iff the target's top-3 entropy there is
>= the gate and the next window-1 positions all match, with the window fitting before the last
drafted token (i <= W - window - 1)."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import perturbed, tiny_model

from autojudge.acceptance import accept, fly_mismatch_ok
from autojudge.acceptance.rule import top3_entropy
from autojudge.decoding import DecodeConfig, SpeculativeDecoder


def reference(draft: list[int], target: list[int], entropy: list[float], gate: float, window: int) -> int:
    """Tokens accepted in one row, decided position by position."""
    w = len(draft)
    for i in range(w):
        if draft[i] == target[i]:
            continue
        fits = w >= window and i <= w - window - 1
        clean = fits and all(draft[j] == target[j] for j in range(i + 1, i + window))
        if not (clean and entropy[i] >= gate):
            return i
    return w


@pytest.mark.parametrize("seed", range(40))
def test_the_rule_matches_a_position_by_position_reading_of_flys_code(seed):
    g = torch.Generator().manual_seed(seed)
    batch, w, vocab = 3, int(torch.randint(3, 17, (1,), generator=g)), 6
    target = torch.randint(0, vocab, (batch, w + 1), generator=g)
    draft = torch.where(torch.rand(batch, w, generator=g) < 0.8, target[:, :w], torch.randint(0, vocab, (batch, w),
                                                                                               generator=g))
    logits = torch.randn(batch, w, vocab, generator=g) * float(torch.rand(1, generator=g) * 4)
    gate = float(torch.rand(1, generator=g)) * 0.8
    got = accept(draft, target, fly_mismatch_ok(draft, target, logits, gate, 6)).num_accepted.tolist()
    entropy = top3_entropy(logits)
    want = [reference(draft[b].tolist(), target[b].tolist(), entropy[b].tolist(), gate, 6) for b in range(batch)]
    assert got == want


def test_the_window_and_the_gate_on_a_hand_made_row():
    draft = torch.tensor([[5, 1, 2, 3, 4, 5, 6, 7, 8]])  # a mismatch at 0, then 8 matches
    target = torch.tensor([[0, 1, 2, 3, 4, 5, 6, 7, 8, 9]])
    flat = torch.zeros(1, 9, 10)  # uniform: top-3 entropy 3 * 0.1 * ln 10 = 0.69 nats
    sharp = torch.full((1, 9, 10), -30.0)
    sharp[..., 0] = 0.0  # one likely token: entropy ~0
    assert math.isclose(float(top3_entropy(flat)[0, 0]), 0.3 * math.log(10), rel_tol=1e-5)
    assert accept(draft, target, fly_mismatch_ok(draft, target, flat, 0.3, 6)).num_accepted.item() == 9
    assert accept(draft, target, fly_mismatch_ok(draft, target, sharp, 0.3, 6)).num_accepted.item() == 0  # gate
    late = torch.tensor([[0, 1, 2, 9, 4, 5, 6, 7, 8]])  # mismatch at 3 > W - window - 1 = 2: no room
    assert accept(late, target, fly_mismatch_ok(late, target, flat, 0.3, 6)).num_accepted.item() == 3
    broken = torch.tensor([[5, 1, 2, 9, 4, 5, 6, 7, 8]])  # a second mismatch inside the window
    assert accept(broken, target, fly_mismatch_ok(broken, target, flat, 0.3, 6)).num_accepted.item() == 0


def test_fly_decoding_is_lossless_below_its_window_and_lossy_above(make_lm):
    target = make_lm(tiny_model(0), "tiny-target")
    draft = make_lm(perturbed(tiny_model(0), 0.05, seed=3), "tiny-draft")
    prompt = [1, 504, 3458, 314, 253, 1234, 17, 2800, 30]
    decoder = SpeculativeDecoder(target, draft)
    greedy = decoder.generate(prompt, DecodeConfig(mode="target", max_new_tokens=48), eos_token_ids=frozenset())
    narrow = decoder.generate(prompt, DecodeConfig(mode="fly", window=6, max_new_tokens=48, fly_entropy=0.0),
                              eos_token_ids=frozenset())
    assert narrow.token_ids == greedy.token_ids and narrow.metrics.num_accepted_mismatches == 0
    wide = decoder.generate(prompt, DecodeConfig(mode="fly", window=16, max_new_tokens=48, fly_entropy=0.0),
                            eos_token_ids=frozenset())
    assert wide.metrics.num_accepted_mismatches > 0
