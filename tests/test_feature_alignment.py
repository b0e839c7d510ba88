"""The judge reads, at each draft token d_k, exactly the features the miner stored for that
mismatch: the draft's state after reading d_k and the target's state as it reads d_k.

Equivalence tests (batched vs one at a time, served vs in process) cannot see a feature taken
one position off: both sides would take it off alike. This test compares the decoder's judge
inputs with what mining stores, position by position.
"""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import perturbed, tiny_model

from autojudge.decoding import DecodeConfig, SpeculativeDecoder
from autojudge.decoding import loop as decoding_loop
from autojudge.judge import Judge, JudgeMetadata
from autojudge.mining import mine_example
from autojudge.tasks import Example, Task

PROMPTS = [[1, 504, 3458, 314, 253, 1345, 28, 288], [1, 42, 977, 11, 5], [1, 9, 8, 7, 6, 5, 4, 3, 2000, 31]]
MAX_NEW = 24


class WholeAnswer(Task):
    """Every mismatch is important: the result is the whole completion, so mining keeps the
    target's own answer and labels every position where the draft disagrees with it."""

    name = "whole"

    def result(self, example, completion):
        return completion


@pytest.fixture(scope="module")
def pair(make_lm):
    target = tiny_model(3).double()
    return make_lm(target, "t3"), make_lm(perturbed(copy.deepcopy(target), 0.35, seed=8).double(), "d3")


def reject_all(target, draft) -> Judge:
    meta = JudgeMetadata(target.name, target.hidden_size, draft.name, draft.hidden_size, threshold=0.0)
    return Judge(torch.zeros(meta.num_features), 20.0, meta)  # p ~ 1 > 0: every mismatch rejected


def judge_inputs(decoder, prompt, monkeypatch) -> dict[int, tuple[int, torch.Tensor, torch.Tensor]]:
    """Decode ``prompt`` in judge mode; for each cycle's first mismatch (every earlier draft
    token matched, so its prefix is the target's own answer): answer position -> (draft token,
    draft features, target features) exactly as the judge received them."""
    seen, cycle_start = {}, {}
    real_mismatch_ok, real_probabilities, real_cycle = decoding_loop.mismatch_ok, Judge.probabilities, \
        decoding_loop.Running.cycle

    def cycle(self):
        cycle_start["generated"] = len(self.active[0].generated)
        return real_cycle(self)

    def mismatch_ok(config, backend, threshold, draft_tokens, draft_hidden, verification):
        differs = (draft_tokens[0] != verification.tokens[0, : draft_tokens.shape[1]]).nonzero()
        cycle_start["first"] = (int(differs[0]), int(draft_tokens[0, int(differs[0])])) if len(differs) else None
        return real_mismatch_ok(config, backend, threshold, draft_tokens, draft_hidden, verification)

    def probabilities(judge, draft_hidden, target_hidden, scalars=None):  # [1, w, Hd], [1, w, Ht]: what it reads
        if cycle_start["first"] is not None:
            k, token = cycle_start["first"]
            seen[cycle_start["generated"] + k] = (token, draft_hidden[0, k].clone(), target_hidden[0, k].clone())
        return real_probabilities(judge, draft_hidden, target_hidden, scalars)

    monkeypatch.setattr(decoding_loop.Running, "cycle", cycle)
    monkeypatch.setattr(decoding_loop, "mismatch_ok", mismatch_ok)
    monkeypatch.setattr(Judge, "probabilities", probabilities)
    decoder.generate(prompt, DecodeConfig(mode="judge", window=4, max_new_tokens=MAX_NEW), eos_token_ids=frozenset())
    return seen


@pytest.mark.parametrize("prompt", PROMPTS, ids=["p0", "p1", "p2"])
def test_the_decoders_judge_inputs_are_the_features_mining_stores(pair, prompt, monkeypatch):
    target, draft = pair
    decoder = SpeculativeDecoder(target, draft, reject_all(target, draft))
    seen = judge_inputs(decoder, prompt, monkeypatch)
    monkeypatch.setattr(target, "eos_token_ids", frozenset())  # the decode above ran without EOS too
    mined = mine_example(target, draft, WholeAnswer(), Example(id="x", question=""), prompt, MAX_NEW)
    labels = {label["pos"]: (label["draft_token"], row) for row, label in enumerate(mined.record["labels"])}
    assert len(seen) >= 2, "the draft should disagree with the target a few times"
    for pos, (token, draft_features, target_features) in seen.items():
        assert pos in labels, f"the decoder met a mismatch at {pos} that mining did not label"
        mined_token, row = labels[pos]
        assert token == mined_token
        # mining stores fp16: compare at that precision
        torch.testing.assert_close(draft_features.half(), mined.draft_hidden[row], atol=2e-3, rtol=2e-3)
        torch.testing.assert_close(target_features.half(), mined.target_hidden[row], atol=2e-3, rtol=2e-3)
