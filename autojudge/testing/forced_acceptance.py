"""A test hook that sets speculative decoding's acceptance: the target agrees with each draft token
with probability ``p``.

Random-weight models (benchmarks at real shapes without downloads) never agree, so every cycle
would commit one token and no measurement would say what a cycle with tau = 3 costs. This
wrapper runs the real draft and the real target verification (every forward, every cache
write, the judge's features and the fused judge step: all the costs) and only then rewrites
the target's greedy tokens: t_k becomes d_k, independently per position, with probability
``p``. The loop's rule then accepts a leading run whose expected length makes the cycle's
mean acceptance length

    tau(p, W) = (1 - p^(W+1)) / (1 - p)        (bonus token included; W + 1 when p = 1)

The committed tokens are the drafts where the target was made to agree, so the output is not
the target's greedy output: use it to time cycles, never to judge answers. The caches stay
consistent (the target read exactly the tokens the loop commits).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from autojudge.decoding.backend import Verification


def agreement_for_tau(tau: float, window: int) -> float:
    """The p at which tau(p, window) = tau (bisection; tau in [1, window + 1])."""
    if not 1.0 <= tau <= window + 1:
        raise ValueError(f"tau must be in [1, {window + 1}] at window {window}, not {tau}")
    low, high = 0.0, 1.0
    for _ in range(60):
        p = (low + high) / 2
        low, high = (p, high) if sum(p ** k for k in range(window + 1)) < tau else (low, p)
    return (low + high) / 2


class ForcedAcceptance:
    """Wraps a :class:`~autojudge.decoding.backend.Backend`; everything but ``open`` is the backend's."""

    def __init__(self, backend, p: float, seed: int = 0):
        self.backend, self.p = backend, p
        self.generator = torch.Generator().manual_seed(seed)

    def __getattr__(self, name: str):
        return getattr(self.backend, name)

    def open(self, batch: int, uses_draft: bool) -> ForcedBatch:
        return ForcedBatch(self.backend.open(batch, uses_draft), self.p, self.generator)


class ForcedBatch:
    """A batch state whose verification agrees with each draft token with probability p."""

    def __init__(self, state, p: float, generator: torch.Generator):
        self.state, self.p, self.generator = state, p, generator

    def __getattr__(self, name: str):  # propose, keep, select, join
        return getattr(self.state, name)

    def verify(self, sequences: Sequence[list[int]], draft_tokens: torch.Tensor, need_logits: bool,
               windows: torch.Tensor | None = None) -> Verification:
        verification = self.state.verify(sequences, draft_tokens, need_logits, windows)
        w = draft_tokens.shape[1]
        agree = (torch.rand(draft_tokens.shape, generator=self.generator) < self.p).to(draft_tokens.device)  # [B, w]
        tokens = verification.tokens.clone()  # [B, w+1]
        tokens[:, :w] = torch.where(agree, draft_tokens, tokens[:, :w])
        return verification._replace(tokens=tokens)
