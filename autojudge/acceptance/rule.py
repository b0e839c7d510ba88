"""The acceptance rule of greedy speculative decoding, with the AutoJudge relaxation.

This module is the oracle: the CUDA kernel of the TensorRT plugin, the standard-op ONNX
graph and the Triton code are all tested for equality against these functions.

Glossary (ALGORITHM.md section 4; arXiv 2504.20039):

- **draft tokens** ``d_0 .. d_{W-1}``: what the draft proposed in this cycle (W = window).
- **target tokens** ``t_0 .. t_W``: the target's greedy token at each of the W+1 positions of
  its one verification forward over ``prefix + d_0 .. d_{W-1}``. ``t_k`` is what the target
  would emit at the position of ``d_k``; ``t_W`` follows the whole window.
- **match**: ``d_k == t_k``. **mismatch**: they differ.
- **mismatch_ok**: a per-position mask that lets a mismatch pass anyway. ``None`` is
  lossless decoding. AutoJudge sets it to ``judge_probability <= threshold``; the top-K
  baseline sets it to ``d_k in top-K(target logits at k)``. The rule itself never changes:
  lossy modes only rewrite this mask (lossless by default).
- **accepted count** ``n``: the length of the leading run of positions that match or are
  ok'd. Scanning continues past accepted mismatches and stops at the first rejection.
- **next token** ``t_n``: emitted after ``d_0 .. d_{n-1}``; the **correction** token when
  ``n < W`` (the target's choice at the first rejected position), the **bonus** token when
  ``n == W`` (all accepted: the target's free prediction after the window).
- At an accepted mismatch the emitted token is the **draft** token.

So a cycle emits ``n + 1`` tokens: ``d_0 .. d_{n-1}, t_n``.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from autojudge.features import DRAFT_TARGET, concat
from autojudge.judge.artifact import judge_probabilities


class Acceptance(NamedTuple):
    num_accepted: torch.Tensor  # [B] int64, n in 0..W
    next_tokens: torch.Tensor  # [B] int64, t_n: correction (n < W) or bonus (n == W)
    accepted: torch.Tensor  # [B, W] bool, True at positions 0..n-1
    mismatch_accepted: torch.Tensor  # [B, W] bool, accepted positions where d_k != t_k


def accept(
    draft_tokens: torch.Tensor,  # [B, W] int64
    target_tokens: torch.Tensor,  # [B, W+1] int64
    mismatch_ok: torch.Tensor | None = None,  # [B, W] bool, None = lossless
) -> Acceptance:
    """Apply the acceptance rule to every row independently (vectorised, no Python loop)."""
    batch, window = draft_tokens.shape
    assert target_tokens.shape == (batch, window + 1), (draft_tokens.shape, target_tokens.shape)
    match = draft_tokens == target_tokens[:, :window]  # [B, W]
    ok = match if mismatch_ok is None else match | mismatch_ok
    accepted = ok.to(torch.int64).cumprod(dim=1).bool()  # [B, W] leading run of ok
    num_accepted = accepted.sum(dim=1)  # [B]
    next_tokens = target_tokens.gather(1, num_accepted.unsqueeze(1)).squeeze(1)  # [B]
    return Acceptance(num_accepted, next_tokens, accepted, accepted & ~match)


def judge_mismatch_ok(
    probabilities: torch.Tensor,  # [B, W]
    threshold: float,
) -> torch.Tensor:  # [B, W] bool
    """A mismatch may be accepted iff the judge calls it unimportant: p <= threshold (ties pass)."""
    return probabilities <= threshold


def topk_mismatch_ok(
    draft_tokens: torch.Tensor,  # [B, W] int64
    target_logits: torch.Tensor,  # [B, W, V] logits at the positions of d_0 .. d_{W-1}
    k: int,
) -> torch.Tensor:  # [B, W] bool
    """The top-K baseline: d_k passes if it is among the target's K most likely tokens."""
    top = target_logits.topk(k, dim=-1).indices  # [B, W, K]
    return (top == draft_tokens.unsqueeze(-1)).any(dim=-1)


FLY_ENTROPY = 0.3  # AMD-AGI/FLy fly_config (Llama-3.1-70B/8B): entropy_thre
FLY_WINDOW = 6  # win_len: the mismatch and the 5 positions after it


def top3_entropy(target_logits: torch.Tensor) -> torch.Tensor:
    """[B, W, V] -> [B, W]: -sum p log p over the 3 most likely tokens of the full softmax (nats, not
    renormalised; at most ln 3), FLy's measure of how many continuations the target allows."""
    top = target_logits.float().softmax(dim=-1).topk(3, dim=-1).values  # [B, W, 3]
    return -(top * top.clamp_min(1e-30).log()).sum(dim=-1)


def fly_mismatch_ok(
    draft_tokens: torch.Tensor,  # [B, W] int64
    target_tokens: torch.Tensor,  # [B, W+1] int64
    target_logits: torch.Tensor,  # [B, W, V] logits at the positions of d_0 .. d_{W-1}
    entropy_threshold: float = FLY_ENTROPY,
    window: int = FLY_WINDOW,
) -> torch.Tensor:  # [B, W] bool
    """FLy (arXiv 2511.22972), training-free, as its code decides for greedy decoding (AMD-AGI/FLy
    fly/models/FLy.py at 6667ae8): a mismatch d_i passes when the target is uncertain there (top-3
    entropy >= ``entropy_threshold``) and the target agrees with the draft at the ``window`` - 1
    positions after it (the deferred window: the target's own later tokens show it took d_i in its
    stride). As in that code the window must fit in the drafted tokens with one to spare
    (i <= W - window - 1), else the mismatch is rejected this cycle; no mismatch passes when
    W < window."""
    w = draft_tokens.shape[1]
    match = draft_tokens == target_tokens[:, :w]  # [B, W]
    ok = torch.zeros_like(match)
    if w >= window:
        # clean[b, i]: positions i+1 .. i+window-1 all match; defined for i <= w - window - 1
        runs = match.unfold(1, window - 1, 1)[:, 1:].all(dim=-1)  # [B, w - window + 1] starting at i+1
        ok[:, : w - window] = runs[:, : w - window]
    return ok & ~match & (top3_entropy(target_logits) >= entropy_threshold)


def judge_accept(
    draft_tokens: torch.Tensor,  # [B, W] int64
    target_tokens: torch.Tensor,  # [B, W+1] int64
    draft_hidden: torch.Tensor,  # [B, W, Hd] draft last-layer state at the position of d_k
    target_hidden: torch.Tensor,  # [B, W, Ht] target last-layer state at the position of d_k
    weight: torch.Tensor,  # [Hd + Ht + E] fp32
    bias: float,
    threshold: float,
    scalars: torch.Tensor | None = None,  # [B, W, E] fp32 scalar features (autojudge.features.scalars)
) -> tuple[Acceptance, torch.Tensor]:
    """The whole AutoJudge step as the plugin kernel computes it: (acceptance, probs [B, W])."""
    features = concat(DRAFT_TARGET, draft_hidden, target_hidden, scalars)  # [B, W, Hd+Ht+E]
    probabilities = judge_probabilities(features, weight, bias)
    return accept(draft_tokens, target_tokens, judge_mismatch_ok(probabilities, threshold)), probabilities
