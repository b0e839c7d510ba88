"""Artifacts on disk: a directory with a safetensors file and a JSON file that names its
format and the sha256 of the tensors. Judges and distilled drafts are both stored this way.
Writes are atomic; reads check presence, JSON, format, checksum and every metadata field
(type and range, by the artifact's pydantic schema: the error names the field) before any
tensor is used, and every tensor is finite. Never pickle."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from pydantic import BaseModel, ValidationError
from safetensors import SafetensorError
from safetensors.torch import load as safetensors_load
from safetensors.torch import save as safetensors_save

from autojudge.storage.atomic import atomic_write_bytes


def write_artifact(directory: Path, weights_file: str, metadata_file: str,
                   tensors: dict[str, torch.Tensor], metadata: dict) -> Path:
    """Write ``tensors`` and ``metadata`` (plus ``weights_sha256``) into ``directory``."""
    weights = safetensors_save({name: t.contiguous() for name, t in tensors.items()})
    directory.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(directory / weights_file, weights)
    metadata = {**metadata, "weights_sha256": hashlib.sha256(weights).hexdigest()}
    atomic_write_bytes(directory / metadata_file, json.dumps(metadata, indent=2).encode())
    return directory


def read_artifact(directory: Path, weights_file: str, metadata_file: str, fmt: str, kind: str,
                  error: type[Exception], missing_hint: str, schema: type[BaseModel]
                  ) -> tuple[BaseModel, dict[str, torch.Tensor]]:
    """(metadata as ``schema``, tensors) of a verified artifact; ``error`` naming the file and
    the field otherwise."""
    meta_path, weights_path = directory / metadata_file, directory / weights_file
    for required in (meta_path, weights_path):
        if not required.is_file():
            raise error(f"{kind} artifact {directory} has no {required.name}: {missing_hint}")
    try:
        metadata = json.loads(meta_path.read_text())
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError, integers over 4300 digits
        raise error(f"{meta_path} is not valid JSON ({exc}): the {kind} artifact is corrupt") from exc
    if not isinstance(metadata, dict) or metadata.get("format") != fmt:
        found = metadata.get("format") if isinstance(metadata, dict) else None
        raise error(f"{meta_path} is not a {kind} artifact of format {fmt!r} (found format {found!r})")
    weights = weights_path.read_bytes()
    if hashlib.sha256(weights).hexdigest() != metadata.get("weights_sha256"):
        raise error(f"{weights_path} does not match the sha256 recorded in {meta_path}: the {kind} "
                    "weights are corrupt or were replaced")
    try:
        fields = schema.model_validate(metadata)
    except ValidationError as exc:
        problems = "; ".join(f"field '{'.'.join(map(str, e['loc'])) or '(root)'}': {e['msg']}"
                             for e in exc.errors()[:5])
        raise error(f"{meta_path}: {problems}") from None
    try:
        tensors = safetensors_load(weights)
    except (SafetensorError, ValueError, OverflowError) as exc:
        raise error(f"{weights_path} is not a valid safetensors file: {exc}") from exc
    for name, tensor in tensors.items():
        if tensor.is_complex():
            raise error(f"{weights_path}: tensor '{name}' is complex ({tensor.dtype}); expected real values")
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise error(f"{weights_path}: tensor '{name}' holds NaN or infinite values")
    return fields, tensors
