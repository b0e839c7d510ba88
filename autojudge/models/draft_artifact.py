"""The draft artifact: a draft distilled from its target, stored without the target's tensors.

A draft artifact is a directory with ``draft.safetensors`` (the trained layers and norm,
fp16, and optionally ``greedy_vocab``) and ``draft.json`` (format, target name and shape,
layer count, sha256 of the weights, how it was made). The draft **shares** the target's
token embedding and LM head: they are taken from the target at load time, never stored.

**Greedy vocabulary** (optional): ascending token ids the draft may propose; only those
rows of the shared LM head are computed (see :mod:`autojudge.distill.training`).
"""

from __future__ import annotations

from pathlib import Path

import torch
from pydantic import BaseModel, ConfigDict, Field

from autojudge.errors import ModelLoadError
from autojudge.models.causal_lm import CausalLM
from autojudge.models.layer_subset import build_student, trainable_state
from autojudge.storage import read_artifact, write_artifact

DRAFT_FORMAT = "autojudge.draft/v1"
DRAFT_WEIGHTS = "draft.safetensors"
DRAFT_METADATA = "draft.json"


GREEDY_VOCAB = "greedy_vocab"
MAX_LAYERS = 1024  # bounds a draft's depth before any layer is built
MAX_SIZE = 1 << 22  # hidden and vocabulary sizes beyond any model's


class DraftFile(BaseModel):
    """The fields of ``draft.json`` that loading uses, type- and range-checked."""

    model_config = ConfigDict(strict=True, extra="ignore")
    format: str
    name: str | None = None
    target: str
    target_hidden_size: int = Field(ge=1, le=MAX_SIZE)
    target_vocab_size: int = Field(ge=1, le=MAX_SIZE)
    num_layers: int = Field(ge=1, le=MAX_LAYERS)
    init_layers: list[int] = Field(min_length=1, max_length=MAX_LAYERS)


def export_draft(student: CausalLM, target: CausalLM, directory: Path, init_layers, made_by: dict,
                 name: str | None = None, greedy_vocab: torch.Tensor | None = None) -> Path:
    """Write the draft artifact: trained tensors in fp16 + metadata with their sha256."""
    tensors = {n: p.detach().to(torch.float16) for n, p in trainable_state(student).items()}
    if greedy_vocab is not None:
        tensors[GREEDY_VOCAB] = greedy_vocab.to(torch.long)
    meta = {
        "format": DRAFT_FORMAT,
        "name": name or f"{target.name}-draft-{len(init_layers)}L",
        "target": target.name,
        "target_hidden_size": target.hidden_size,
        "target_vocab_size": target.vocab_size,
        "num_layers": len(init_layers),
        "greedy_vocab_size": None if greedy_vocab is None else int(greedy_vocab.numel()),
        "init_layers": list(init_layers),
        "shared_with_target": ["token embedding", "LM head"],
        "made_by": made_by,
    }
    return write_artifact(directory, DRAFT_WEIGHTS, DRAFT_METADATA, tensors, meta)


def is_draft_artifact(path: Path) -> bool:
    return (path / DRAFT_METADATA).is_file()


def load_draft_artifact(directory: Path, target: CausalLM) -> CausalLM:
    """A distilled draft for ``target``: shared tensors from the target, the rest from disk."""
    meta, tensors = read_artifact(directory, DRAFT_WEIGHTS, DRAFT_METADATA, DRAFT_FORMAT, "draft",
                                  ModelLoadError, "reinstall the package or re-run "
                                  "`autojudge-trt draft distill`", DraftFile)
    weights_path, meta_path = directory / DRAFT_WEIGHTS, directory / DRAFT_METADATA
    if (meta.target_hidden_size, meta.target_vocab_size) != (target.hidden_size, target.vocab_size):
        raise ModelLoadError(
            f"draft {directory} was distilled for {meta.target!r} (hidden {meta.target_hidden_size}, "
            f"vocab {meta.target_vocab_size}), not for {target.name!r} (hidden {target.hidden_size}, "
            f"vocab {target.vocab_size})"
        )
    layers = meta.init_layers
    if len(layers) != meta.num_layers or len(layers) > target.num_layers or \
            any(not 0 <= i < target.num_layers for i in layers):
        raise ModelLoadError(f"{meta_path}: field 'init_layers': must list num_layers ({meta.num_layers}) "
                             f"layers of the target, at most its {target.num_layers}, each in "
                             f"0..{target.num_layers - 1}; got {len(layers)}: {layers[:8]}")
    student = build_student(target, tuple(layers))
    greedy_vocab = tensors.pop(GREEDY_VOCAB, None)
    if greedy_vocab is not None:
        if greedy_vocab.dtype not in (torch.int64, torch.int32) or greedy_vocab.dim() != 1 or \
                greedy_vocab.numel() == 0 or not bool((greedy_vocab[1:] > greedy_vocab[:-1]).all()) or \
                int(greedy_vocab.max()) >= target.vocab_size or int(greedy_vocab.min()) < 0:
            raise ModelLoadError(f"{weights_path}: {GREEDY_VOCAB} must be a non-empty int64 vector of ascending "
                                 f"token ids below {target.vocab_size} (got {greedy_vocab.dtype}, "
                                 f"shape {tuple(greedy_vocab.shape)})")
        student.greedy_vocab = greedy_vocab.to(device=target.device, dtype=torch.long)
    params = trainable_state(student)
    if set(tensors) != set(params):
        raise ModelLoadError(f"{weights_path} holds tensors {sorted(set(tensors) ^ set(params))[:4]} "
                             "that do not fit the draft's architecture")
    with torch.no_grad():
        for name, param in params.items():
            if tensors[name].shape != param.shape:
                raise ModelLoadError(f"{weights_path}: {name} has shape {tuple(tensors[name].shape)}, "
                                     f"expected {tuple(param.shape)}")
            param.copy_(tensors[name].to(param.dtype))
            param.requires_grad_(False)
    student.name = meta.name or str(directory)
    return student
