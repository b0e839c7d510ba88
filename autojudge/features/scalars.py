"""Cheap scalar features the verification step already has, beside the hidden states.

The target's one verification forward gives its logits ``z_k`` [V] at the position of every
draft token ``d_k`` (the same logits top-K and FLy read). From them and the tokens, per position:

==================  ================================================================
name                value at position k
==================  ================================================================
target_logprob      log softmax(z_k)[d_k]: how likely the target finds the draft token
target_top_logprob  log softmax(z_k)[t_k] = max log softmax(z_k): the target's confidence
target_entropy      -sum p log p of softmax(z_k) (nats): how many continuations it allows
target_rank         log(1 + #{v : z_k[v] > z_k[d_k]}): the draft token's rank, compressed
window_agreement    the fraction of d_0 .. d_{k-1} that equal t_0 .. t_{k-1} (1 at k = 0):
                    draft-target agreement so far in this window
==================  ================================================================

A judge that uses some of them (``Judge.meta.scalar_features``, in that order) has the weight
``[w_draft ; w_target ; w_scalars]``: the kernel, the ONNX graph and the decoder all take the
same [B, W, E] fp32 tensor, made by :func:`scalar_features` where the logits are (once per
cycle, for the whole window; the judge itself still runs only at mismatches).

Mining has no windows: :func:`autojudge.mining.scalars.mined_scalar_features` computes the same values for mined labels
from one teacher-forced target pass over each prompt's final answer, with the window position
of each label from the decode a perfect judge would make at a given window
(:func:`perfect_judge_windows`, :func:`speculate`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported on use: the CLI reads SCALAR_FEATURES at start-up
    import torch

TARGET_LOGPROB = "target_logprob"
TARGET_TOP_LOGPROB = "target_top_logprob"
TARGET_ENTROPY = "target_entropy"
TARGET_RANK = "target_rank"
WINDOW_AGREEMENT = "window_agreement"
SCALAR_FEATURES = (TARGET_LOGPROB, TARGET_TOP_LOGPROB, TARGET_ENTROPY, TARGET_RANK, WINDOW_AGREEMENT)
LOGIT_FEATURES = (TARGET_LOGPROB, TARGET_TOP_LOGPROB, TARGET_ENTROPY, TARGET_RANK)


def check_names(names: Sequence[str]) -> tuple[str, ...]:
    """The names as a tuple; ValueError naming the unknown or repeated one."""
    names = tuple(names)
    for name in names:
        if name not in SCALAR_FEATURES:
            raise ValueError(f"unknown scalar feature {name!r}; use any of {', '.join(SCALAR_FEATURES)}")
    if len(set(names)) != len(names):
        raise ValueError(f"scalar features repeat a name: {', '.join(names)}")
    return names


def logit_statistics(
    target_logits: torch.Tensor,  # [..., V] target logits at the position of each draft token
    draft_tokens: torch.Tensor,  # [...] int64
    names: Sequence[str] = LOGIT_FEATURES,
) -> dict[str, torch.Tensor]:  # each [...] fp32
    """The logit features among ``names``, in fp32 whatever the logits' dtype; only those are
    computed (each is a pass over V, once per cycle on the decoder's path)."""
    z = target_logits.float()
    draft = draft_tokens.unsqueeze(-1)  # [..., 1]
    out = {}
    if TARGET_RANK in names:
        out[TARGET_RANK] = (z > z.gather(-1, draft)).sum(dim=-1).float().log1p()
    if any(name in names for name in (TARGET_LOGPROB, TARGET_TOP_LOGPROB, TARGET_ENTROPY)):
        log_p = z.log_softmax(dim=-1)  # [..., V]
        if TARGET_LOGPROB in names:
            out[TARGET_LOGPROB] = log_p.gather(-1, draft).squeeze(-1)
        if TARGET_TOP_LOGPROB in names:
            out[TARGET_TOP_LOGPROB] = log_p.max(dim=-1).values
        if TARGET_ENTROPY in names:
            out[TARGET_ENTROPY] = -(log_p.exp() * log_p).sum(dim=-1)
    return out


def window_agreement(draft_tokens: torch.Tensor, target_tokens: torch.Tensor) -> torch.Tensor:
    """[B, W], [B, W+1] -> [B, W] fp32: the fraction of earlier positions in the window that match."""
    import torch

    w = draft_tokens.shape[-1]
    match = (draft_tokens == target_tokens[..., :w]).float()  # [B, W]
    before = match.cumsum(dim=-1) - match  # [B, W] matches among 0..k-1
    k = torch.arange(w, device=match.device, dtype=torch.float32)  # [W]
    return torch.where(k > 0, before / k.clamp_min(1), torch.ones_like(before))


def scalar_features(
    names: Sequence[str],
    draft_tokens: torch.Tensor,  # [B, W] int64
    target_tokens: torch.Tensor,  # [B, W+1] int64
    target_logits: torch.Tensor | None,  # [B, W, V], needed when a logit feature is named
) -> torch.Tensor:  # [B, W, E] fp32 in ``names``' order
    import torch

    names = check_names(names)
    columns: dict[str, torch.Tensor] = {}
    if any(name in LOGIT_FEATURES for name in names):
        if target_logits is None:
            raise ValueError(f"scalar features {names} need the target's logits")
        columns.update(logit_statistics(target_logits, draft_tokens.to(target_logits.device), names))
    if WINDOW_AGREEMENT in names:
        columns[WINDOW_AGREEMENT] = window_agreement(draft_tokens, target_tokens)
    batch, w = draft_tokens.shape
    if not names:
        return torch.empty(batch, w, 0, device=draft_tokens.device)
    return torch.stack([columns[name].to(draft_tokens.device) for name in names], dim=-1)


def perfect_judge_windows(answer_len: int, mismatches: dict[int, bool], window: int) -> dict[int, tuple[int, int]]:
    """Where each mismatch falls in the decode a perfect judge makes at ``window`` along this answer.

    ``mismatches``: answer position -> important, for every position (below the last one listed)
    where the draft's greedy token differs from the answer's; every other position there matches.
    Returns position -> (k, matches among the k drafted positions before it) for every mismatch
    (see :func:`speculate`); a mismatch at a bonus position gets (0, 0)."""
    end = min(max(mismatches, default=-1) + 1, answer_len)
    where = speculate({pos: not important for pos, important in mismatches.items()}, end, window)[1]
    return {pos: where.get(pos, (0, 0)) for pos in mismatches}


def speculate(accepts: dict[int, bool], end: int, window: int) -> tuple[int, dict[int, tuple[int, int]]]:
    """The cycles of greedy speculation at ``window`` over answer positions [0, end), where
    ``accepts`` maps each mismatched position to whether it is accepted (other positions match).

    As the decoder (:mod:`autojudge.decoding.loop`) runs them: the first cycle drafts from
    position 0 (the target reads the prompt and the drafts in one pass); each cycle drafts
    ``window`` positions and accepts up to the first rejected mismatch (where the target's token
    is emitted) or the end of the window (then a bonus token, which nothing drafts).
    Returns (cycles, position -> (k, matches before it in its window) for each judged mismatch)."""
    where: dict[int, tuple[int, int]] = {}
    start = cycles = 0
    while start < end:
        cycles += 1
        matches = 0
        for k in range(window):
            pos = start + k
            if pos not in accepts:
                matches += 1
                continue
            if pos < end:
                where[pos] = (k, matches)
            if not accepts[pos]:  # rejected: the target's token here, the next cycle after it
                start = pos + 1
                break
        else:
            start += window + 1  # the whole window accepted, then the bonus token
    return cycles, where


def agreement_from_window(k: int, matches: int) -> float:
    """The ``window_agreement`` value at window position ``k`` after ``matches`` matches."""
    return matches / k if k else 1.0
