"""Adaptive speculation: each request's window follows its own measured acceptance.

Speculation pays only when the draft agrees often enough for the tokens a cycle commits to
outweigh what drafting and the wider verification cost. A :class:`WindowController` keeps one
request's acceptance estimate and, before each cycle, picks the window w in 0..W that
maximises expected committed tokens per unit of cost:

    E(w) = 1 + a + a^2 + ... + a^w      (a: the chance that the next draft token is accepted,
                                         as a run of accepted tokens ends at the first rejection)
    C(w) = target + w * (target_per_token + draft)   (:class:`CycleCost`, measured on this machine)

w = 0 is plain target decoding. While at 0 the controller learns nothing, so after
``probe_every`` idle cycles it drafts one token to look again; each probe that is rejected
doubles that wait (up to ``max_probe_every``), so a draft that never agrees costs almost nothing.
The estimate is a decayed count of accepted tokens against rejections (``memory`` per cycle), starting from a weak prior.
Lossless output does not depend on the schedule (every window gives the target's greedy tokens);
judge, top-K and FLy accept what their rule accepts within the window chosen.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass


@dataclass(frozen=True)
class CycleCost:
    """Cost of one cycle's parts, in seconds (only the ratios matter)."""

    target: float  # a target forward verifying 0 draft tokens (one new token)
    target_per_token: float  # each draft token more in that forward
    draft: float  # one draft step

    def cycle(self, w: int) -> float:
        return self.target + w * (self.target_per_token + self.draft)

    @classmethod
    def measure(cls, backend, prompt: list[int], window: int, repeats: int = 3) -> CycleCost:
        """Time the backend's own verify (0 and ``window`` drafts) and propose (1 token) of one token
        after ``prompt``, each on a fresh batch state whose caches already hold the prompt."""
        import torch

        with torch.inference_mode():  # as the loop runs the backend
            return cls._measure(backend, prompt, window, repeats)

    @classmethod
    def _measure(cls, backend, prompt: list[int], window: int, repeats: int) -> CycleCost:
        import torch

        empty = torch.zeros((1, 0), dtype=torch.long, device=backend.device)
        drafts = torch.zeros((1, window), dtype=torch.long, device=backend.device)

        def timed(run) -> float:
            samples = []
            for _ in range(repeats + 1):  # the first warms caches and kernels up
                state = backend.open(1, uses_draft=True)
                state.verify([prompt], empty, need_logits=False)  # prefills, not timed
                state.propose([prompt], 1, need_hidden=False)
                state.keep(torch.tensor([len(prompt)], device=backend.device))
                start = time.perf_counter()
                run(state)
                samples.append(time.perf_counter() - start)
            return statistics.median(samples[1:])

        longer = [prompt + [0]]
        plain = timed(lambda s: s.verify(longer, empty, need_logits=False))
        wide = timed(lambda s: s.verify(longer, drafts, need_logits=False))
        step = timed(lambda s: s.propose(longer, 1, need_hidden=False))
        return cls(target=plain, target_per_token=max(wide - plain, 0.0) / max(window, 1), draft=step)


def expected_tokens(a: float, w: int) -> float:
    """Committed tokens of a cycle with window w when each draft token is accepted with chance a."""
    return float(w + 1) if a >= 1.0 else (1.0 - a ** (w + 1)) / (1.0 - a)


class WindowController:
    def __init__(self, max_window: int, cost: CycleCost, prior: float = 0.5, prior_weight: float = 2.0,
                 memory: float = 0.8, probe_every: int = 8, max_probe_every: int = 128):
        self.max_window, self.cost, self.memory = max_window, cost, memory
        self.probe_every, self.max_probe_every, self.wait = probe_every, max_probe_every, probe_every
        self.accepted, self.trials = prior * prior_weight, prior_weight  # decayed counts
        self.idle = 0  # cycles at w = 0 since the last look

    @property
    def acceptance(self) -> float:
        return self.accepted / self.trials

    def window(self) -> int:
        if self.idle >= self.wait:
            return 1
        a = self.acceptance
        return max(range(self.max_window + 1), key=lambda w: expected_tokens(a, w) / self.cost.cycle(w))

    def update(self, drafted: int, accepted: int) -> None:
        """After a cycle that drafted ``drafted`` tokens and accepted the first ``accepted``."""
        if drafted == 0:
            self.idle += 1
            return
        if self.idle >= self.wait:  # this was a probe: back off while probes fail
            self.wait = self.probe_every if accepted else min(2 * self.wait, self.max_probe_every)
        self.idle = 0
        rejected = 1 if accepted < drafted else 0  # the run stopped at a rejection, or used the whole window
        self.accepted = self.memory * self.accepted + accepted
        self.trials = self.memory * self.trials + accepted + rejected
