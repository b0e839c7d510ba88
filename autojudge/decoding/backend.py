"""What the loop needs from wherever the models run: a backend, and its state of a running batch.

The loop (:mod:`autojudge.decoding.loop`) owns the sequences, the acceptance rule, stops,
budgets and metrics; a backend only runs models. Add a backend by implementing
:class:`Backend` and :class:`BatchState` (in-process PyTorch:
:mod:`autojudge.decoding.in_process`; TensorRT-LLM engines behind Triton:
:mod:`autojudge.serving.trtllm.backend`).

Glossary
- **row**: one sequence of the running batch, numbered 0..B-1 in the order the loop passes
  ``sequences``; rows that leave (``select``) renumber the rest, rows that ``join`` come last.
- **sequence**: a row's prompt and committed tokens (Python ints). Every operation gets them
  all; a backend with caches reads only what its caches have not seen, a stateless one
  sends them whole.
- **w**: this cycle's window, the widest any row drafts; a row with a smaller window of its
  own (its request's, its budget's, adaptive, or 0 while its prompt is fed in chunks) uses only
  its first positions: the loop clamps its acceptance and tells ``verify`` (``windows``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple, Protocol

import torch

from autojudge.acceptance import Acceptance
from autojudge.judge import Judge


class Proposal(NamedTuple):
    tokens: torch.Tensor  # [B, w] greedy draft tokens d_0 .. d_{w-1}
    hidden: torch.Tensor | None  # [B, w, Hd] draft states after reading d_0 .. d_{w-1} (judge features), if asked
    lengths: torch.Tensor | None = None  # [B] tokens each row really drafted (a draft that ended early); None = w


class Verification(NamedTuple):
    tokens: torch.Tensor  # [B, w+1] target greedy tokens t_0 .. t_w
    hidden: torch.Tensor  # [B, w+1, Ht] the target states they were read from
    logits: torch.Tensor | None  # [B, w, V] target logits at the positions of d_0 .. d_{w-1}, if asked (top-K)


# judge_accept(draft_tokens [B, w], target_tokens [B, w+1], draft_hidden [B, w, Hd] | None,
#              target_hidden [B, w, Ht], threshold, scalars [B, w, E] fp32 | None) -> Acceptance:
# the judge and the rule in one step (scalars: the judge's scalar features, autojudge.features.scalars)
FusedJudgeAccept = Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor, float,
                             torch.Tensor | None], Acceptance]


class BatchState(Protocol):
    """A backend's state of one running batch (KV caches, or nothing for a stateless one)."""

    def propose(self, sequences: Sequence[list[int]], w: int, need_hidden: bool) -> Proposal:
        """Greedy-draft w tokens after each sequence."""

    def verify(self, sequences: Sequence[list[int]], draft_tokens: torch.Tensor, need_logits: bool,
               windows: torch.Tensor | None = None) -> Verification:
        """One target pass over each sequence + its draft tokens [B, w]. ``windows`` [B]: how many
        of its drafts each row may accept (None: all w); positions past a row's window are never
        read by the loop, so a backend may skip them (a backend whose caches must not see tokens the
        row never drafts, as the TensorRT-LLM one, must)."""

    def keep(self, lengths: torch.Tensor) -> None:
        """Row b is now ``lengths[b]`` [B] tokens long: forget any state past that."""

    def select(self, rows: torch.Tensor) -> None:
        """Only ``rows`` [B'] stay in the batch (the others are done), in that order."""

    def join(self, count: int) -> None:
        """``count`` new rows join at the end, holding nothing yet."""

    # Optional, ``catch_up(sequences)``: the draft reads every sequence but its last token, so the next
    # ``propose`` drafts at once. The loop calls it before a proposal whose draft lags far behind (a
    # probe after idle cycles) and times the two apart; a backend without it reads the lag in ``propose``.


class Backend(Protocol):
    has_draft: bool
    judge: Judge | None
    tokenizer: object  # a Hugging Face tokenizer (decode, for text and stop strings)
    eos_token_ids: frozenset[int]
    device: torch.device  # where the loop keeps its small tensors (counts, tokens)
    max_window: int  # the largest w it can verify
    window_bound: str | None  # what sets max_window, in words (None: the decoder's MAX_WINDOW)
    judge_accept: FusedJudgeAccept | None  # a fused judge + rule step, tested equal to the oracle; None = the oracle

    def open(self, batch: int, uses_draft: bool) -> BatchState: ...
