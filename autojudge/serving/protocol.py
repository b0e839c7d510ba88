"""What a served request carries, and what every response returns (Triton tensors).

Inputs (all but ``prompt`` optional; the deployment's defaults fill the rest):

==========  ===========  =====  ==========================================================
name        Triton type  dims   meaning
==========  ===========  =====  ==========================================================
prompt      TYPE_STRING  [1]    the user message (wrapped in the chat template)
max_tokens  TYPE_INT32   [1]    most new tokens, 1..the deployment's limit
mode        TYPE_STRING  [1]    lossless | judge | topk | fly | target
window      TYPE_INT32   [1]    draft tokens per cycle, 1..the deployment's max_window
threshold   TYPE_FP32    [1]    judge threshold override, in [0, 1] (mode judge)
stop        TYPE_STRING  [-1]   stop strings; the text ends before the first one found
adaptive    TYPE_INT32   [1]    1: the window follows the request's acceptance, 0..window
format      TYPE_STRING  [1]    chat (the prompt is the user message of the chat template; the
                                default), raw (the prompt as is), messages (a JSON list of
                                {role, content}, rendered by the chat template)
==========  ===========  =====  ==========================================================

Outputs, on every response: ``text`` and ``token_ids`` (the whole answer for a unary
request; the new piece for each streamed response), and ``metrics``: JSON with the keys of
:data:`METRICS` (null ``finish_reason`` until the last streamed response).

The wire format only: requests are validated by :mod:`autojudge.serving.requests`.
"""

from __future__ import annotations

import numpy as np

# name -> (Triton data type, dims, optional); the order is the order clients send them in.
INPUTS: dict[str, tuple[str, list[int], bool]] = {
    "prompt": ("TYPE_STRING", [1], False),
    "max_tokens": ("TYPE_INT32", [1], True),
    "mode": ("TYPE_STRING", [1], True),
    "window": ("TYPE_INT32", [1], True),
    "threshold": ("TYPE_FP32", [1], True),
    "stop": ("TYPE_STRING", [-1], True),
    "format": ("TYPE_STRING", [1], True),
    "adaptive": ("TYPE_INT32", [1], True),
}
OUTPUTS: dict[str, tuple[str, list[int]]] = {
    "text": ("TYPE_STRING", [1]),
    "token_ids": ("TYPE_INT32", [-1]),
    "metrics": ("TYPE_STRING", [1]),
}
# The metrics JSON of every response, on every protocol: key -> meaning (:func:`autojudge.serving.service.
# metrics_dict`). The names are vLLM's spec-decode metric names, as SpecDecodeMetrics has them.
METRICS: dict[str, str] = {
    "mode": "the request's mode",
    "window": "draft tokens per cycle (W)",
    "threshold": "the judge threshold in force (null outside mode judge)",
    "mean_acceptance_length": "tau: generated tokens per target call, bonus token included",
    "draft_acceptance_rate": "accepted draft tokens / proposed draft tokens",
    "num_accepted_mismatches": "accepted draft tokens that differ from the target's (judge, top-K, FLy)",
    "num_generated_tokens": "tokens generated so far",
    "num_prompt_tokens": "tokens of the prompt as the model reads it (chat template included)",
    "num_target_calls": "target forwards so far (the first includes the prompt)",
    "mean_window": "draft tokens proposed per target call (the window used; adaptive: its average)",
    "mean_batch_size": "requests in the running batch, averaged over this request's cycles",
    "mean_batch_window": "the running batch's window (the widest any request drafted), averaged likewise",
    "tokens_per_s": "generated tokens per second of this request's decoding",
    "finish_reason": "eos | length | stop | cancelled; null until the last response",
}
NUMPY_TYPES = {"TYPE_STRING": np.object_, "TYPE_INT32": np.int32, "TYPE_FP32": np.float32}
CLIENT_TYPES = {"TYPE_STRING": "BYTES", "TYPE_INT32": "INT32", "TYPE_FP32": "FP32"}


def response_arrays(text: str, token_ids: list[int], metrics: dict) -> dict[str, np.ndarray]:
    import json

    return {
        "text": np.array([text.encode("utf-8")], dtype=np.object_),
        "token_ids": np.array(token_ids, dtype=np.int32),
        "metrics": np.array([json.dumps(metrics).encode("utf-8")], dtype=np.object_),
    }
