"""A served request, validated: raw input arrays (:mod:`autojudge.serving.protocol`) in, a
:class:`ServeRequest` out, or a :class:`RequestError` naming the field."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from autojudge.decoding.config import MAX_WINDOW, MODES, range_text
from autojudge.errors import AutoJudgeError


FORMATS = ("chat", "raw", "messages")


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
    max_window: int = MAX_WINDOW  # a TensorRT-LLM deployment: its window
    window_bound: str | None = None  # what sets max_window, in words (None: the decoder)

    @classmethod
    def from_parameters(cls, params: dict[str, str], has_judge: bool, mode: str, window: int,
                        max_window: int = MAX_WINDOW, window_bound: str | None = None) -> ServeDefaults:
        """The defaults a model's config.pbtxt ``parameters`` set (``mode`` and ``window`` when unset)."""
        return cls(mode=params.get("default_mode") or mode, window=int(params.get("default_window") or window),
                   max_tokens=int(params.get("default_max_tokens") or 128),
                   max_tokens_limit=int(params.get("max_tokens_limit") or 1024), has_judge=has_judge,
                   max_window=max_window, window_bound=window_bound)


@dataclass(frozen=True)
class ServeRequest:
    prompt: str
    max_tokens: int
    mode: str
    window: int
    threshold: float | None
    stop: tuple[str, ...]
    format: str = "chat"  # how the prompt becomes the model's input: chat | raw | messages
    adaptive: bool = False  # the window follows the request's acceptance (autojudge.decoding.adaptive)


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
    try:
        array = np.asarray(value).reshape(-1)
    except (TypeError, ValueError) as exc:  # ragged nesting, objects NumPy cannot hold
        raise RequestError(name, f"not an array of values ({exc})") from None
    if array.size != 1:
        raise RequestError(name, f"expected one value, got {array.size}")
    return array[0]


def _number(value, name: str) -> float:
    """A finite or infinite float from a scalar of any type, or RequestError."""
    if isinstance(value, (bytes, str, np.bytes_, np.str_)) or isinstance(value, (bool, np.bool_)):
        raise RequestError(name, f"must be a number, got {value!r}")
    try:
        return float(value)
    except (TypeError, ValueError, OverflowError) as exc:
        raise RequestError(name, f"must be a number, got {value!r} ({exc})") from None


def parse_request(raw: dict[str, np.ndarray | None], defaults: ServeDefaults) -> ServeRequest:
    """Validate raw input arrays (missing optional inputs: absent or None) into a request.
    Total: any input gives a request or a RequestError naming the field, in linear time."""
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

    def integer(name: str, default: int, high: int, bound: str | None = None) -> int:
        value = _scalar(raw, name)
        if value is None:
            return default
        number = _number(value, name)
        if not number.is_integer():  # nan and inf included
            raise RequestError(name, f"must be an integer, got {value}")
        value = int(number)
        if not 1 <= value <= high:
            raise RequestError(name, f"must be in {range_text(high, bound)}, got {value}")
        return value

    max_tokens = integer("max_tokens", defaults.max_tokens, defaults.max_tokens_limit)
    window = integer("window", defaults.window, defaults.max_window, defaults.window_bound)

    threshold = _scalar(raw, "threshold")
    if threshold is not None:
        threshold = _number(threshold, "threshold")
        if math.isnan(threshold) or not 0.0 <= threshold <= 1.0:
            raise RequestError("threshold", f"must be in [0, 1], got {threshold}")

    stop_raw = raw.get("stop")
    try:
        stops = np.asarray(stop_raw).reshape(-1) if stop_raw is not None else ()
    except (TypeError, ValueError) as exc:
        raise RequestError("stop", f"not an array of strings ({exc})") from None
    stop = tuple(_text(s, "stop") for s in stops)
    if any(not s for s in stop):
        raise RequestError("stop", "stop strings must not be empty")
    form = _scalar(raw, "format")
    form = "chat" if form is None else _text(form, "format")
    if form not in FORMATS:
        raise RequestError("format", f"unknown format {form!r}; choose one of {', '.join(FORMATS)}")
    if form == "messages":
        messages_of(prompt)  # refused here, naming the field, not deep in decoding
    adaptive = _scalar(raw, "adaptive")
    if adaptive is not None:
        number = _number(adaptive, "adaptive")
        if number not in (0.0, 1.0):
            raise RequestError("adaptive", f"must be 0 or 1, got {adaptive}")
        adaptive = bool(number)
    return ServeRequest(prompt, max_tokens, mode, window, threshold, stop, form, bool(adaptive))


def messages_of(text: str) -> list[dict]:
    """A request's ``prompt`` in format "messages": a JSON list of {"role", "content"} (RequestError otherwise)."""
    import json

    try:
        messages = json.loads(text)
    except ValueError as exc:
        raise RequestError("prompt", f"format 'messages' needs a JSON list of messages ({exc})") from None
    if not isinstance(messages, list) or not messages or not all(
            isinstance(m, dict) and m.get("role") in ("system", "user", "assistant") and isinstance(m.get("content"), str)
            for m in messages):
        raise RequestError("prompt", "format 'messages' needs a non-empty JSON list of {\"role\": system|user|"
                                     "assistant, \"content\": string}")
    return [{"role": m["role"], "content": m["content"]} for m in messages]
