"""The judge's features: which hidden states, in which order (ALGORITHM.md section 2).

Layouts (the order of the concatenation the judge's weight vector expects):

- ``draft+target``: ``[h_draft ; h_target]``, F = Hd + Ht (the default);
- ``target``: ``h_target`` only, F = Ht (for drafters without hidden states).

Either may be followed by E scalar features (:mod:`autojudge.features.scalars`): F += E.

``h_draft`` and ``h_target`` are the last-layer states (after the final norm) at the position
of the draft token ``d_k``: the draft's after reading ``d_k``, the target's when it reads
``d_k`` in its verification forward. Mining stores them (:mod:`autojudge.features.files`),
training stacks them, the decoder, the ONNX graph and the plugin kernel concatenate them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported on use: the CLI reads LAYOUTS at start-up
    import torch

DRAFT_TARGET = "draft+target"
TARGET_ONLY = "target"
LAYOUTS = (DRAFT_TARGET, TARGET_ONLY)


def uses_draft(layout: str) -> bool:
    """Whether the layout reads the draft's hidden states."""
    return layout == DRAFT_TARGET


def num_features(layout: str, draft_hidden_size: int, target_hidden_size: int, num_scalars: int = 0) -> int:
    return (draft_hidden_size if uses_draft(layout) else 0) + target_hidden_size + num_scalars


def concat(layout: str, draft_hidden: torch.Tensor | None, target_hidden: torch.Tensor,
           scalars: torch.Tensor | None = None) -> torch.Tensor:
    """[..., Hd], [..., Ht] and [..., E] -> [..., F] fp32 in the layout's order, the scalar
    features (:mod:`autojudge.features.scalars`) last (``draft_hidden`` is unused, and may be
    None, in the target-only layout; ``scalars`` None or [..., 0]: the judge uses none)."""
    import torch

    parts = (draft_hidden, target_hidden) if uses_draft(layout) else (target_hidden,)
    if scalars is not None:
        parts = (*parts, scalars)
    return torch.cat([p.float() for p in parts], dim=-1)
