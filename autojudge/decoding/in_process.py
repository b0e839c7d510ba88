"""The in-process backend: draft, target (and judge) as PyTorch models in this process.

Each running batch keeps one KV cache per model whose rows have different lengths
(:class:`~autojudge.models.ragged_cache.RaggedCache`): every model only reads the tokens
its cache has not seen yet, nothing is re-prefilled, and a rejected draft token becomes a
hole (cropped away when no row needs the slot; a batch of one never holds a hole).

Cache invariant: after a cycle the target cache holds every committed token but the last
(which the next verification feeds first); the draft cache holds a prefix of the committed
tokens and lags by whatever it has not read yet. Holes left by rows that left, rows that
joined late and rejected drafts are squeezed out (``compact``) once a cache is more than twice
as wide as its longest row, so a batch that never empties (a server's) does not grow.

On CPUs a batch is cheap (the weights are read once: a [16, 5] target verification costs
~4.5x a [1, 5] one on 2 cores, not 16x). Outputs of a batch equal each row decoded alone up
to floating-point rounding (the batched matmuls sum in another order, which can flip a
near-tied greedy choice); in float64 they are identical (tested).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from autojudge.decoding.backend import Proposal, Verification
from autojudge.decoding.config import MAX_WINDOW
from autojudge.decoding.loop import SpeculativeLoop
from autojudge.judge import Judge
from autojudge.models import CausalLM
from autojudge.models.ragged_cache import RaggedCache

HOLE_SLACK = 32  # a cache wider than twice its longest row plus this many slots is compacted


class InProcessBackend:
    """Draft, target (and judge) as PyTorch models in this process."""

    max_window = MAX_WINDOW
    window_bound = None  # the decoder's own limit
    judge_accept = None  # the oracle; on CUDA the fused op (below)

    def __init__(self, target: CausalLM, draft: CausalLM | None = None, judge: Judge | None = None):
        self.target, self.draft, self.judge = target, draft, judge
        if judge is not None and target.device.type == "cuda":  # the plugin's kernel as one op, tested equal
            from autojudge.acceptance.torch_op import fused_judge_accept

            self.judge_accept = fused_judge_accept(judge, target.device)  # None (the oracle) without nvcc
        self.has_draft = draft is not None
        self.tokenizer, self.eos_token_ids, self.device = target.tokenizer, target.eos_token_ids, target.device
        # Tokens past the smaller vocabulary are padding rows, never real tokens.
        self.vocab = min(target.vocab_size, draft.vocab_size) if draft else target.vocab_size
        self.pad_id = target.tokenizer.pad_token_id or 0

    def open(self, batch: int, uses_draft: bool) -> InProcessBatch:
        return InProcessBatch(self, batch, uses_draft)


class InProcessBatch:
    """A running batch's KV caches: one ragged cache per model."""

    def __init__(self, backend: InProcessBackend, batch: int, uses_draft: bool):
        self.b = backend
        self.target_cache = RaggedCache(backend.target, batch)
        self.draft_cache = RaggedCache(backend.draft, batch) if uses_draft else None

    def propose(self, sequences: Sequence[list[int]], w: int, need_hidden: bool) -> Proposal:
        """Greedy-draft w tokens per row. The first read is each row's unread tail (ragged,
        left-padded), the later ones one token per row; the state after reading d_{w-1}
        costs one extra draft forward, made only when the judge needs it."""
        cache, draft = self.draft_cache, self.b.draft
        fed, mask = cache.unread(sequences, self.b.pad_id)  # [B, U] ids, [B, U] False = a hole
        drafted, states = [], []
        for step in range(w + int(need_hidden)):
            hidden = cache.read(fed, mask)[:, -1:]  # [B, 1, Hd]
            if step:
                states.append(hidden)  # the state after reading d_{step-1}
            if step == w:
                break
            fed = draft.greedy(hidden, self.b.vocab)  # [B, 1]
            mask = torch.ones_like(fed, dtype=torch.bool)
            drafted.append(fed)
        return Proposal(torch.cat(drafted, dim=1), torch.cat(states, dim=1) if need_hidden else None)

    def catch_up(self, sequences: Sequence[list[int]]) -> None:
        """The draft reads each row's unread tail but its last token (the next propose reads that one)."""
        ids, fed = self.draft_cache.unread([seq[:-1] for seq in sequences], self.b.pad_id)  # [B, U - 1]
        if ids.shape[1]:
            self.draft_cache.read(ids, fed)

    def verify(self, sequences: Sequence[list[int]], draft_tokens: torch.Tensor, need_logits: bool,
               windows: torch.Tensor | None = None) -> Verification:  # (windows: unread drafts become holes)
        target, w = self.b.target, draft_tokens.shape[1]
        ids, fed = self.target_cache.unread(sequences, self.b.pad_id)  # [B, U]
        block = torch.cat([ids, draft_tokens], dim=1)  # [B, U + w]
        fed = torch.cat([fed, torch.ones_like(draft_tokens, dtype=torch.bool)], dim=1)
        hidden = self.target_cache.read(block, fed)[:, -(w + 1):]  # [B, w+1, Ht]
        logits = target.logits(hidden[:, :w])[..., : self.b.vocab] if need_logits else None  # [B, w, V]
        return Verification(target.greedy(hidden, self.b.vocab), hidden, logits)

    def _caches(self) -> list[RaggedCache]:
        return [c for c in (self.target_cache, self.draft_cache) if c is not None]

    def keep(self, lengths: torch.Tensor) -> None:
        for cache in self._caches():
            cache.keep(lengths)
        self._squeeze()

    def select(self, rows: torch.Tensor) -> None:
        for cache in self._caches():
            cache.select(rows)
        self._squeeze()

    def _squeeze(self) -> None:
        """A batch that never empties piles holes up: compact a cache grown past twice its longest
        row (a static cache, autojudge.gpu, has none to squeeze)."""
        for cache in self._caches():
            if isinstance(cache, RaggedCache) and cache.width > 2 * int(cache.lengths.max()) + HOLE_SLACK:
                cache.compact()

    def join(self, count: int) -> None:
        for cache in self._caches():
            cache.add_rows(count)


class SpeculativeDecoder(SpeculativeLoop):
    """Greedy speculative decoding of ``target`` with ``draft`` (and optionally a judge), in process."""

    def __init__(self, target: CausalLM, draft: CausalLM | None = None, judge: Judge | None = None,
                 check_judge_names: bool = True):
        if judge is not None:
            judge.check_models(draft.name if draft else "", draft.hidden_size if draft else 0,
                               target.name, target.hidden_size, check_names=check_judge_names)
        super().__init__(InProcessBackend(target, draft, judge))
        self.target, self.draft, self.judge = target, draft, judge
