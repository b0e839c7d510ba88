"""The deployment description of ``autojudge-trt build --config deploy.yaml``.

One YAML or JSON file says what to build; :func:`load_config` validates it and every error
names the field (``target.tensor_parallel: ...``). Relative paths are relative to the file.

Example (1B draft / 8B target on one GPU)::

    draft: meta-llama/Llama-3.2-1B-Instruct      # HF id or a local checkpoint directory
    target: meta-llama/Llama-3.1-8B-Instruct
    judge: out/judge                             # a judge artifact (autojudge-trt train)
    output_dir: deploy/llama-1b-8b
    dtype: bfloat16
    quantization: none
    tensor_parallel: 1                           # both models; override per model with
    max_batch_size: 8                            #   target: {model: ..., tensor_parallel: 4}
    max_input_len: 2048
    max_seq_len: 4096
    window: 8                                    # the largest window a request may ask for
    judge_engine: plugin                         # engine line: the plugin's engine, or onnx
    trtllm_line: auto                            # engine (1.2.x), pytorch (today's), auto: the installed
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from autojudge.decoding.config import MAX_WINDOW
from autojudge.errors import AutoJudgeError

# quantization name -> (TensorRT-LLM QuantAlgo, bytes per weight, needs calibration data)
QUANTIZATIONS: dict[str, tuple[str | None, float, bool]] = {
    "none": (None, 2.0, False),
    "fp8": ("FP8", 1.0, True),
    "int8_wo": ("W8A16", 1.0, False),
    "int4_wo": ("W4A16", 0.5, False),
    "int4_awq": ("W4A16_AWQ", 0.5, True),
}


class DeployConfigError(AutoJudgeError):
    """The deployment description is unreadable or invalid; the message names the field."""


class ModelSpec(BaseModel):
    """One model: a Hugging Face hub id or a local checkpoint directory."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1)
    tensor_parallel: int | None = Field(default=None, ge=1, le=64)


class DeployConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    draft: ModelSpec
    target: ModelSpec
    judge: Path
    output_dir: Path
    dtype: Literal["float16", "bfloat16", "float32"] = "bfloat16"
    quantization: Literal["none", "fp8", "int8_wo", "int4_wo", "int4_awq"] = "none"
    tensor_parallel: int = Field(default=1, ge=1, le=64)
    max_batch_size: int = Field(default=8, ge=1, le=4096)
    max_input_len: int = Field(default=2048, ge=1)
    max_seq_len: int = Field(default=4096, ge=2)
    window: int = Field(default=8, ge=1, le=MAX_WINDOW)
    judge_engine: Literal["plugin", "onnx"] = "plugin"
    trtllm_line: Literal["auto", "engine", "pytorch"] = "auto"  # autojudge.deploy.lines

    @field_validator("draft", "target", mode="before")
    @classmethod
    def _model_shorthand(cls, value):
        return {"model": value} if isinstance(value, str) else value

    @model_validator(mode="after")
    def _lengths(self):
        if self.max_input_len >= self.max_seq_len:
            raise ValueError(f"max_input_len ({self.max_input_len}) must be below max_seq_len "
                             f"({self.max_seq_len}): the output needs room")
        return self

    def tp(self, role: str) -> int:
        """Tensor-parallel size of ``role`` ("draft" or "target")."""
        return getattr(self, role).tensor_parallel or self.tensor_parallel

    @property
    def bytes_per_weight(self) -> float:
        return QUANTIZATIONS[self.quantization][1]


def load_config(path: str | Path) -> DeployConfig:
    """Read and validate a YAML or JSON deployment description."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise DeployConfigError(f"cannot read the deployment description {path}: {exc.strerror}") from exc
    raw = _parse(text, path)
    if not isinstance(raw, dict):
        raise DeployConfigError(f"{path}: the top level must be a mapping of fields (draft, target, judge, "
                                f"output_dir, ...), not {type(raw).__name__}")
    try:
        config = DeployConfig.model_validate(raw)
    except ValidationError as exc:
        raise DeployConfigError(f"{path} is not a valid deployment description:\n"
                                + "\n".join(_describe(error) for error in exc.errors())) from None
    base = path.resolve().parent
    updates = {"judge": base / config.judge, "output_dir": base / config.output_dir}
    for role in ("draft", "target"):
        local = base / getattr(config, role).model
        if local.is_dir():  # a local checkpoint; otherwise a hub id, kept as written
            updates[role] = getattr(config, role).model_copy(update={"model": str(local)})
    return config.model_copy(update=updates)


def _parse(text: str, path: Path):
    if path.suffix.lower() == ".json":
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise DeployConfigError(f"{path}:{exc.lineno}:{exc.colno}: not valid JSON: {exc.msg}") from None
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        raise DeployConfigError(f"{where}: not valid YAML: {getattr(exc, 'problem', None) or exc}") from None


def _describe(error: dict) -> str:
    field = ".".join(str(part) for part in error["loc"]) or "(top level)"
    message = error["msg"].removeprefix("Value error, ")
    if error["type"] == "extra_forbidden":
        known = ", ".join(DeployConfig.model_fields) if len(error["loc"]) == 1 else ", ".join(ModelSpec.model_fields)
        return f"  {field}: unknown field (known: {known})"
    if error["type"] == "missing":
        return f"  {field}: required field is missing"
    got = "" if error["type"].startswith("model_") or "input" not in error else f" (got {error['input']!r})"
    return f"  {field}: {message}{got}"
