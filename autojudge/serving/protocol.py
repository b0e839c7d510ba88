"""What a served request carries, and what every response returns (Triton tensors).

Inputs (all but ``prompt`` optional; the deployment's defaults fill the rest):

==========  ===========  =====  ==========================================================
name        Triton type  dims   meaning
==========  ===========  =====  ==========================================================
prompt      TYPE_STRING  [1]    the user message (wrapped in the chat template)
max_tokens  TYPE_INT32   [1]    most new tokens, 1..the deployment's limit
mode        TYPE_STRING  [1]    lossless | judge | topk | target
window      TYPE_INT32   [1]    draft tokens per cycle, 1..64
threshold   TYPE_FP32    [1]    judge threshold override, in [0, 1] (mode judge)
stop        TYPE_STRING  [-1]   stop strings; the text ends before the first one found
==========  ===========  =====  ==========================================================

Outputs, on every response: ``text`` and ``token_ids`` (the whole answer for a unary
request; the new piece for each streamed response), and ``metrics``: JSON with the mode,
window, tau (``mean_acceptance_length``), the draft acceptance rate, the judge-accepted
mismatches, tokens/s, and ``finish_reason`` (null until the last streamed response).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from autojudge.errors import AutoJudgeError

MODES = ("lossless", "judge", "topk", "target")
MAX_WINDOW = 64

# name -> (Triton data type, dims, optional); the order is the order clients send them in.
INPUTS: dict[str, tuple[str, list[int], bool]] = {
    "prompt": ("TYPE_STRING", [1], False),
    "max_tokens": ("TYPE_INT32", [1], True),
    "mode": ("TYPE_STRING", [1], True),
    "window": ("TYPE_INT32", [1], True),
    "threshold": ("TYPE_FP32", [1], True),
    "stop": ("TYPE_STRING", [-1], True),
}
OUTPUTS: dict[str, tuple[str, list[int]]] = {
    "text": ("TYPE_STRING", [1]),
    "token_ids": ("TYPE_INT32", [-1]),
    "metrics": ("TYPE_STRING", [1]),
}
NUMPY_TYPES = {"TYPE_STRING": np.object_, "TYPE_INT32": np.int32, "TYPE_FP32": np.float32}
CLIENT_TYPES = {"TYPE_STRING": "BYTES", "TYPE_INT32": "INT32", "TYPE_FP32": "FP32"}


class RequestError(AutoJudgeError):
    """A request field is invalid; the message names the field."""

    def __init__(self, name: str, problem: str):
        super().__init__(f"invalid request field '{name}': {problem}")
        self.field = name


@dataclass(frozen=True)
class ServeDefaults:
    """A deployment's defaults and limits (from the model's config.pbtxt parameters)."""

    mode: str = "lossless"
    window: int = 4
    max_tokens: int = 128
    max_tokens_limit: int = 1024
    has_judge: bool = False


@dataclass(frozen=True)
class ServeRequest:
    prompt: str
    max_tokens: int
    mode: str
    window: int
    threshold: float | None
    stop: tuple[str, ...]


def _text(value: object, name: str) -> str:
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise RequestError(name, f"not UTF-8 ({exc})") from exc
    return str(value)


def _scalar(raw: dict, name: str):
    value = raw.get(name)
    if value is None:
        return None
    array = np.asarray(value).reshape(-1)
    if array.size != 1:
        raise RequestError(name, f"expected one value, got {array.size}")
    return array[0]


def parse_request(raw: dict[str, np.ndarray | None], defaults: ServeDefaults) -> ServeRequest:
    """Validate raw input arrays (missing optional inputs: absent or None) into a request."""
    prompt = _scalar(raw, "prompt")
    if prompt is None:
        raise RequestError("prompt", "missing")
    prompt = _text(prompt, "prompt")
    if not prompt.strip():
        raise RequestError("prompt", "empty")

    mode = _scalar(raw, "mode")
    mode = defaults.mode if mode is None else _text(mode, "mode")
    if mode not in MODES:
        raise RequestError("mode", f"unknown mode {mode!r}; choose one of {', '.join(MODES)}")
    if mode == "judge" and not defaults.has_judge:
        raise RequestError("mode", "'judge' needs a judge artifact, and this deployment has none")

    def integer(name: str, default: int, low: int, high: int) -> int:
        value = _scalar(raw, name)
        if value is None:
            return default
        if not float(value).is_integer():
            raise RequestError(name, f"must be an integer, got {value}")
        value = int(value)
        if not low <= value <= high:
            raise RequestError(name, f"must be in {low}..{high}, got {value}")
        return value

    max_tokens = integer("max_tokens", defaults.max_tokens, 1, defaults.max_tokens_limit)
    window = integer("window", defaults.window, 1, MAX_WINDOW)

    threshold = _scalar(raw, "threshold")
    if threshold is not None:
        threshold = float(threshold)
        if math.isnan(threshold) or not 0.0 <= threshold <= 1.0:
            raise RequestError("threshold", f"must be in [0, 1], got {threshold}")

    stop_raw = raw.get("stop")
    stop = tuple(_text(s, "stop") for s in np.asarray(stop_raw).reshape(-1)) if stop_raw is not None else ()
    if any(not s for s in stop):
        raise RequestError("stop", "stop strings must not be empty")
    return ServeRequest(prompt, max_tokens, mode, window, threshold, stop)


def response_arrays(text: str, token_ids: list[int], metrics: dict) -> dict[str, np.ndarray]:
    import json

    return {
        "text": np.array([text.encode("utf-8")], dtype=np.object_),
        "token_ids": np.array(token_ids, dtype=np.int32),
        "metrics": np.array([json.dumps(metrics).encode("utf-8")], dtype=np.object_),
    }
