"""A model's KV cache together with the tokens it holds, reused across related sequences.

Mining explores many sequences that share a long prefix (the target's answer up to a
mismatch). ``extend(tokens)`` keeps the longest common prefix of what is cached and what
is asked for, crops the rest, and runs the model only on the new suffix; it counts every
token it feeds, which is the mining cost we report.
"""

from __future__ import annotations

import torch

from autojudge.models import CausalLM, crop_cache


class PrefixCache:
    def __init__(self, lm: CausalLM, track_greedy: bool = False):
        self.lm = lm
        self.cache = lm.new_cache()
        self.tokens: list[int] = []  # the tokens whose keys/values are cached
        self.tokens_fed = 0  # model forward tokens so far (the cost)
        self.forward_calls = 0  # model forward passes so far
        # With track_greedy, predictions[k] is the model's greedy token after tokens[:k + 1]
        # (a teacher-forced pass over everything cached, kept in step with the cache).
        self.track_greedy = track_greedy
        self.predictions: list[int] = []

    def reset(self) -> None:
        """Forget everything (the naive reference loop re-prefills from scratch)."""
        self.cache = self.lm.new_cache()
        self.tokens = []
        self.predictions = []

    def extend(self, tokens: list[int]) -> tuple[int, torch.Tensor]:
        """Make the cache hold exactly ``tokens``; returns ``(start, hidden)`` where
        ``hidden`` [len(tokens) - start, H] are the last-layer states of ``tokens[start:]``.
        At least the last token is (re)computed, so its hidden state is always returned."""
        common = 0
        limit = min(len(self.tokens), len(tokens) - 1)
        while common < limit and self.tokens[common] == tokens[common]:
            common += 1
        self.truncate(common)
        return common, self.append(tokens[common:])

    def truncate(self, length: int) -> None:
        """Keep only the first ``length`` cached tokens."""
        crop_cache(self.cache, length)
        del self.tokens[length:]
        del self.predictions[length:]

    def append(self, new: list[int]) -> torch.Tensor:
        """Feed ``new`` after everything cached -> hidden [len(new), H]."""
        ids = torch.tensor([new], dtype=torch.long, device=self.lm.device)  # [1, S]
        hidden = self.lm.hidden_states(ids, self.cache)[0]  # [S, H]
        self.tokens += new
        self.tokens_fed += len(new)
        self.forward_calls += 1
        if self.track_greedy:
            self.predictions += self.lm.greedy(hidden[None])[0].tolist()
        return hidden
