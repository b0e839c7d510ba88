"""Which TensorRT-LLM line a deployment builds for, and why.

- ``engine``: TensorRT-LLM 1.2.x (pinned 1.2.1, TensorRT 10.14, tensorrtllm_backend 1.2.1), the last
  line with TensorRT engines: checkpoints -> engines, the judge-accept plugin and its engine.
- ``pytorch``: today's lines (PyTorch is the only backend after 1.2: ``docs/source/legacy/
  tensorrt-backend-removal.md``): no engines; the Hugging Face checkpoints are served by
  ``tensorrt_llm.LLM`` and the judge-accept step is the PyTorch op (:mod:`autojudge.acceptance.torch_op`).

``trtllm_line: auto`` (the default) follows the installed TensorRT-LLM; without one it plans the engine
line and says so.
"""

from __future__ import annotations

import importlib.metadata

from autojudge.serving.trtllm.contract import ENGINE_LINE

LINES = ("engine", "pytorch")


def resolve_line(requested: str, installed: str | None) -> tuple[str, str]:
    """(line, why) for the description's ``trtllm_line`` and the installed tensorrt_llm version."""
    if requested in LINES:
        return requested, f"trtllm_line: {requested} (set in the description)"
    if installed is None:
        return "engine", (f"TensorRT-LLM is not installed here: planning the engine line "
                          f"({ENGINE_LINE['tensorrt_llm']}); set trtllm_line: pytorch for today's line")
    if version_tuple(installed)[:2] <= (1, 2):
        return "engine", f"TensorRT-LLM {installed} is installed: the engine line"
    return "pytorch", f"TensorRT-LLM {installed} is installed: a line without TensorRT engines (PyTorch backend)"


def installed_version(module: str) -> str | None:
    for distribution in (module, module.replace("_", "-")):
        try:
            return importlib.metadata.version(distribution)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def version_tuple(version: str) -> tuple[int, ...]:
    parts = []
    for piece in version.split("."):
        digits = "".join(ch for ch in piece if ch.isdigit())
        if not digits:
            break
        parts.append(int(digits))
        if len(digits) != len(piece):
            break
    return tuple(parts) + (0,) * (2 - len(parts)) if len(parts) < 2 else tuple(parts)
