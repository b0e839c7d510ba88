"""Clients of a served AutoJudge model: HTTP (one response) and gRPC streaming (a response per
decoder cycle). Both return the same dict: text, token_ids, metrics (of the last response)."""

from __future__ import annotations

import json
import queue
from collections.abc import Callable
from typing import Any

import numpy as np

from autojudge.errors import AutoJudgeError, MissingDependencyError
from autojudge.serving.protocol import CLIENT_TYPES, INPUTS, NUMPY_TYPES

INSTALL_HINT = "pip install 'autojudge[serve]'"


class ServingError(AutoJudgeError):
    """The server answered with an error (the message is the server's)."""


def request_arrays(prompt: str, max_tokens: int | None = None, mode: str | None = None,
                   window: int | None = None, threshold: float | None = None,
                   stop: list[str] | tuple[str, ...] = (), form: str | None = None,
                   adaptive: bool | None = None) -> dict[str, np.ndarray]:
    """The input arrays of one request; None leaves a field to the deployment's default
    (``form``: the request's ``format``, chat | raw | messages)."""
    values: dict[str, Any] = {"prompt": [prompt.encode("utf-8")], "max_tokens": max_tokens, "mode": mode,
                              "window": window, "threshold": threshold,
                              "stop": [s.encode("utf-8") for s in stop] or None, "format": form,
                              "adaptive": None if adaptive is None else int(adaptive)}
    arrays = {}
    for name, (triton_type, _, _) in INPUTS.items():
        value = values[name]
        if value is None:
            continue
        if triton_type == "TYPE_STRING" and isinstance(value, str):
            value = [value.encode("utf-8")]
        arrays[name] = np.array(value if isinstance(value, list) else [value], dtype=NUMPY_TYPES[triton_type])
    return arrays


def _inputs(module, arrays: dict[str, np.ndarray]) -> list:
    inputs = []
    for name, array in arrays.items():
        tensor = module.InferInput(name, list(array.shape), CLIENT_TYPES[INPUTS[name][0]])
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    return inputs


def _decode(result) -> dict:
    text = result.as_numpy("text")[0]
    return {"text": text.decode("utf-8") if isinstance(text, bytes) else str(text),
            "token_ids": result.as_numpy("token_ids").tolist(),
            "metrics": json.loads(result.as_numpy("metrics")[0])}


def _grpc_message(error, url: str) -> str:
    message = error.message() if hasattr(error, "message") else str(error)
    if "StatusCode.UNAVAILABLE" in str(error) or "failed to connect" in message.lower():
        return f"cannot reach a Triton server over gRPC at {url}: {message}"
    return message


def _tritonclient(protocol: str):
    """(tritonclient.http or .grpc, InferenceServerException), or a message saying what to install."""
    try:
        import importlib

        from tritonclient.utils import InferenceServerException
        return importlib.import_module(f"tritonclient.{protocol}"), InferenceServerException
    except ImportError as exc:
        raise MissingDependencyError(f"the {protocol} client needs tritonclient: {INSTALL_HINT}") from exc


def infer_http(url: str, arrays: dict[str, np.ndarray], model: str = "autojudge", timeout_s: float = 600) -> dict:
    """One request over HTTP to the unary model."""
    http, InferenceServerException = _tritonclient("http")
    client = http.InferenceServerClient(url, network_timeout=timeout_s, connection_timeout=timeout_s)
    try:
        return _decode(client.infer(model, _inputs(http, arrays)))
    except InferenceServerException as exc:
        raise ServingError(exc.message()) from exc
    except OSError as exc:
        raise ServingError(f"cannot reach a Triton server over HTTP at {url}: {exc}") from exc
    finally:
        client.close()


def infer_grpc(url: str, arrays: dict[str, np.ndarray], model: str = "autojudge") -> dict:
    """One request over gRPC to the unary model."""
    grpc, InferenceServerException = _tritonclient("grpc")
    client = grpc.InferenceServerClient(url)
    try:
        return _decode(client.infer(model, _inputs(grpc, arrays)))
    except InferenceServerException as exc:
        raise ServingError(_grpc_message(exc, url)) from exc
    finally:
        client.close()


def stream_grpc(url: str, arrays: dict[str, np.ndarray], model: str = "autojudge_stream",
                on_piece: Callable[[dict], None] | None = None, timeout_s: float = 600) -> dict:
    """One streamed request: ``on_piece`` gets every response; returns the joined answer."""
    grpc, InferenceServerException = _tritonclient("grpc")
    responses: queue.Queue = queue.Queue()
    client = grpc.InferenceServerClient(url)
    client.start_stream(callback=lambda result, error: responses.put((result, error)))
    try:
        try:
            client.async_stream_infer(model, _inputs(grpc, arrays), enable_empty_final_response=True)
        except InferenceServerException:  # the stream broke; the reason arrives in the callback
            pass
        text, ids, metrics = [], [], {}
        while True:
            try:
                result, error = responses.get(timeout=timeout_s)
            except queue.Empty as exc:
                raise ServingError(f"no response from {url} in {timeout_s:.0f} s") from exc
            if error is not None:
                raise ServingError(_grpc_message(error, url))
            final = result.get_response().parameters.get("triton_final_response")
            if result.as_numpy("text") is not None:
                piece = _decode(result)
                text.append(piece["text"])
                ids.extend(piece["token_ids"])
                metrics = piece["metrics"]
                if on_piece:
                    on_piece(piece)
            if final is not None and final.bool_param:
                return {"text": "".join(text), "token_ids": ids, "metrics": metrics}
    finally:
        client.stop_stream()
        client.close()
