"""The features file of one mined prompt (or a merged dataset): safetensors, fp16, never pickle.

Tensors: ``draft_hidden`` [N, Hd] and ``target_hidden`` [N, Ht], row i at label i.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save

DRAFT_HIDDEN, TARGET_HIDDEN = "draft_hidden", "target_hidden"


def features_bytes(draft_hidden: torch.Tensor, target_hidden: torch.Tensor) -> bytes:
    """[N, Hd], [N, Ht] -> the file's bytes (write them atomically)."""
    return save({DRAFT_HIDDEN: draft_hidden.contiguous(), TARGET_HIDDEN: target_hidden.contiguous()})


def read_features(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """(draft_hidden [N, Hd], target_hidden [N, Ht]); OSError when missing or unreadable."""
    tensors = load_file(path)
    return tensors[DRAFT_HIDDEN], tensors[TARGET_HIDDEN]
