"""The judge artifact: a logistic regression over draft/target hidden states.

On disk a judge is a directory holding two files (never pickle):

- ``judge.safetensors``: ``weight`` [F] fp32 (scaler folded in) and ``bias`` [1] fp32;
- ``judge.json``: metadata: format, model names and hidden sizes, feature layout, the
  scalar features after the hidden states (``scalar_features``, absent = none), threshold, the sha256 of the weights file, and free-form extras (e.g. the recall curve).

The feature layout (which hidden states, in which order) is :mod:`autojudge.features.layout`;
the scalar features (the target's log-probability of the draft token, ...) are
:mod:`autojudge.features.scalars`: ``x = [h_draft ; h_target ; scalars]``.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field

from autojudge.errors import JudgeArtifactError
from autojudge.features import DRAFT_TARGET, LAYOUTS, concat, num_features, uses_draft
from autojudge.features.scalars import LOGIT_FEATURES, SCALAR_FEATURES, check_names, scalar_features
from autojudge.storage import read_artifact, write_artifact

FORMAT = "autojudge.judge/v1"
WEIGHTS_FILE = "judge.safetensors"
METADATA_FILE = "judge.json"


def judge_probabilities(
    features: torch.Tensor,  # [B, W, F] judge features in the judge's layout
    weight: torch.Tensor,  # [F] fp32, scaler already folded in
    bias: float | torch.Tensor,  # scalar
) -> torch.Tensor:  # [B, W] fp32: P(mismatch is important)
    """The judge: sigmoid(w . x + b), computed in fp32 whatever the dtype of the hidden states."""
    return torch.sigmoid(features.float() @ weight.float() + bias)


MAX_HIDDEN_SIZE = 1 << 16  # larger than any model's; bounds F before a weight is allocated


class JudgeFile(BaseModel):
    """The fields of ``judge.json``, type- and range-checked (strict: no "4096" for 4096)."""

    model_config = ConfigDict(strict=True, extra="ignore")
    format: str
    target_model: str
    target_hidden_size: int = Field(ge=1, le=MAX_HIDDEN_SIZE)
    draft_model: str
    draft_hidden_size: int = Field(ge=0, le=MAX_HIDDEN_SIZE)
    feature_layout: Literal[LAYOUTS] = DRAFT_TARGET  # type: ignore[valid-type]
    scalar_features: list[Literal[SCALAR_FEATURES]] = Field(default_factory=list)  # type: ignore[valid-type]
    threshold: float = Field(default=0.5, ge=0.0, le=1.0, allow_inf_nan=False)
    extra: dict[str, Any] = Field(default_factory=dict)


@dataclass(frozen=True)
class JudgeMetadata:
    target_model: str
    target_hidden_size: int
    draft_model: str
    draft_hidden_size: int
    feature_layout: str = DRAFT_TARGET
    threshold: float = 0.5
    extra: dict[str, Any] = field(default_factory=dict)
    scalar_features: tuple[str, ...] = ()  # after the hidden states, in this order

    def __post_init__(self):
        object.__setattr__(self, "scalar_features", check_names(self.scalar_features))

    @property
    def num_features(self) -> int:
        return num_features(self.feature_layout, self.draft_hidden_size, self.target_hidden_size,
                            len(self.scalar_features))


@dataclass(frozen=True)
class Judge:
    weight: torch.Tensor  # [F] fp32
    bias: float
    meta: JudgeMetadata

    @property
    def fingerprint(self) -> str:
        """Identifies the decisions this judge makes: its weights, bias and calibrated threshold."""
        digest = hashlib.sha256(self.weight.detach().float().cpu().contiguous().numpy().tobytes())
        digest.update(f"{float(self.bias)!r}/{self.meta.threshold!r}".encode())
        return digest.hexdigest()[:16]

    @property
    def uses_draft_hidden(self) -> bool:
        return uses_draft(self.meta.feature_layout)

    @property
    def scalar_features(self) -> tuple[str, ...]:
        return self.meta.scalar_features

    @property
    def needs_logits(self) -> bool:
        """Whether its features read the target's logits (the verification must return them)."""
        return any(name in LOGIT_FEATURES for name in self.meta.scalar_features)

    def scalars(self, draft_tokens: torch.Tensor, target_tokens: torch.Tensor,
                target_logits: torch.Tensor | None) -> torch.Tensor | None:
        """[B, W, E] fp32 of its scalar features, None when it uses none."""
        if not self.meta.scalar_features:
            return None
        return scalar_features(self.meta.scalar_features, draft_tokens, target_tokens, target_logits)

    def probabilities(
        self,
        draft_hidden: torch.Tensor | None,  # [B, W, Hd] (unused by the target-only layout)
        target_hidden: torch.Tensor,  # [B, W, Ht]
        scalars: torch.Tensor | None = None,  # [B, W, E] (:meth:`scalars`), when it uses any
    ) -> torch.Tensor:  # [B, W] fp32
        if (0 if scalars is None else scalars.shape[-1]) != len(self.meta.scalar_features):
            raise ValueError(f"the judge reads {len(self.meta.scalar_features)} scalar features "
                             f"{self.meta.scalar_features}, given {None if scalars is None else scalars.shape[-1]}")
        return judge_probabilities(concat(self.meta.feature_layout, draft_hidden, target_hidden, scalars),
                                   self.weight, self.bias)

    def check_models(self, draft_name: str, draft_hidden: int, target_name: str, target_hidden: int,
                     check_names: bool = True) -> None:
        """Raise JudgeArtifactError unless this judge was made for these models."""
        meta = self.meta
        sizes = [("target", meta.target_hidden_size, target_hidden)]
        if self.uses_draft_hidden:
            sizes.append(("draft", meta.draft_hidden_size, draft_hidden))
        for role, expected, actual in sizes:
            if expected != actual:
                raise JudgeArtifactError(
                    f"the judge expects a {role} hidden size of {expected}, but the {role} model "
                    f"has {actual}: this judge was trained for other models "
                    f"(target {meta.target_model!r}, draft {meta.draft_model!r})."
                )
        if not check_names:
            return
        for role, expected, actual in (("target", meta.target_model, target_name),
                                       ("draft", meta.draft_model, draft_name)):
            if role == "draft" and not self.uses_draft_hidden:
                continue
            if expected != actual:
                raise JudgeArtifactError(
                    f"the judge was trained for {role} {expected!r}, not {actual!r}. Train a judge "
                    "for these models, or pass --ignore-judge-models if they are the same "
                    "weights under another name."
                )

    def save(self, directory: str | Path) -> Path:
        tensors = {"weight": self.weight.float(), "bias": torch.tensor([self.bias], dtype=torch.float32)}
        fields = {"format": FORMAT, **asdict(self.meta), "scalar_features": list(self.meta.scalar_features)}
        if not self.meta.scalar_features:  # judge.json as before for a hidden-states-only judge
            del fields["scalar_features"]
        return write_artifact(Path(directory), WEIGHTS_FILE, METADATA_FILE, tensors, fields)

    @classmethod
    def load(cls, path: str | Path) -> Judge:
        """Load from the artifact directory (or either of its two files)."""
        path = Path(path)
        directory = path.parent if path.name in (WEIGHTS_FILE, METADATA_FILE) else path
        fields, tensors = read_artifact(
            directory, WEIGHTS_FILE, METADATA_FILE, FORMAT, "judge", JudgeArtifactError,
            f"a judge is a directory with {METADATA_FILE} and {WEIGHTS_FILE}, as written by "
            "`autojudge-trt train`.", JudgeFile)
        weights_path = directory / WEIGHTS_FILE
        meta = JudgeMetadata(**{**fields.model_dump(exclude={"format"}),
                                "scalar_features": tuple(fields.scalar_features)})
        weight, bias = tensors.get("weight"), tensors.get("bias")
        if weight is None or bias is None or bias.numel() != 1 or not weight.is_floating_point() \
                or not bias.is_floating_point():
            raise JudgeArtifactError(f"{weights_path} must hold float tensors 'weight' [F] and 'bias' [1]")
        if tuple(weight.shape) != (meta.num_features,):
            raise JudgeArtifactError(
                f"{weights_path}: weight has shape {tuple(weight.shape)}, but layout "
                f"{meta.feature_layout!r} with hidden sizes draft={meta.draft_hidden_size}, "
                f"target={meta.target_hidden_size} and {len(meta.scalar_features)} scalar features "
                f"needs ({meta.num_features},)"
            )
        return cls(weight=weight.float(), bias=float(bias.item()), meta=meta)
