"""The judge-accept step as a graph of standard ONNX operators.

For TensorRT builds without custom plugins, and as a second, independent implementation
of the rule (tested against the oracle in onnxruntime). The outputs are exactly the
plugin kernel's, including ``-1`` at positions the judge did not need to evaluate.

Inputs (B and W are dynamic):

=================  ===========  ===================================================
draft_tokens       [B, W]       int32
target_tokens      [B, W+1]     int32
draft_hidden       [B, W, Hd]   float32 / float16 / bfloat16 (draft+target layout only)
target_hidden      [B, W, Ht]   same dtype
scalar_features    [B, W, E]    float32, the judge's E scalar features in its order
                                (:mod:`autojudge.features.scalars`; only when E > 0)
threshold          [B]          float32, one per sequence
=================  ===========  ===================================================

The logit is ``w_d . h_draft + w_t . h_target + w_s . s + b`` (one MatMul per input).

Outputs: ``num_accepted`` [B] int32, ``next_tokens`` [B] int32, ``probabilities`` [B, W]
float32. The judge's weight and bias are initializers (constants): the graph is one judge.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from autojudge.acceptance.plugin import NOT_EVALUATED
from autojudge.errors import MissingDependencyError
from autojudge.judge import Judge

OPSET = 17  # TensorRT 10's ONNX parser and onnxruntime both support it
IR_VERSION = 9  # onnx 1.23 would write IR 14, which onnxruntime 1.30 cannot read
HIDDEN_DTYPES = ("float32", "float16", "bfloat16")


def _onnx():
    try:
        import onnx
    except ImportError as exc:
        raise MissingDependencyError("exporting ONNX needs the `onnx` package: pip install onnx") from exc
    return onnx


def judge_accept_graph(judge: Judge, hidden_dtype: str = "float16"):
    """The ModelProto of the judge-accept step for ``judge``."""
    onnx = _onnx()
    from onnx import TensorProto, helper, numpy_helper

    if hidden_dtype not in HIDDEN_DTYPES:
        raise ValueError(f"hidden_dtype must be one of {HIDDEN_DTYPES}, not {hidden_dtype!r}")
    elem = {"float32": TensorProto.FLOAT, "float16": TensorProto.FLOAT16, "bfloat16": TensorProto.BFLOAT16}[hidden_dtype]
    meta = judge.meta
    weight = judge.weight.float().numpy()  # [F]
    draft_size = meta.draft_hidden_size if judge.uses_draft_hidden else 0
    hidden_end = draft_size + meta.target_hidden_size  # weight = [w_draft ; w_target ; w_scalars]
    scalar_size = len(judge.scalar_features)
    nodes, inits = [], []

    def const(name: str, value) -> str:
        inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def node(op: str, inputs: list[str], output: str, **attrs) -> str:
        nodes.append(helper.make_node(op, inputs, [output], name=output, **attrs))
        return output

    def logit_part(hidden: str, w: np.ndarray, tag: str) -> str:  # [B, W, H] -> [B, W]
        x = node("Cast", [hidden], f"{tag}_fp32", to=TensorProto.FLOAT)
        return node("MatMul", [x, const(f"{tag}_weight", w.astype(np.float32))], f"{tag}_logit")

    inputs = [helper.make_tensor_value_info("draft_tokens", TensorProto.INT32, ["B", "W"]),
              helper.make_tensor_value_info("target_tokens", TensorProto.INT32, ["B", "W_plus_1"])]
    logit = logit_part("target_hidden", weight[draft_size:hidden_end], "target")
    if judge.uses_draft_hidden:
        inputs.append(helper.make_tensor_value_info("draft_hidden", elem, ["B", "W", meta.draft_hidden_size]))
        logit = node("Add", [logit_part("draft_hidden", weight[:draft_size], "draft"), logit], "features_logit")
    inputs.append(helper.make_tensor_value_info("target_hidden", elem, ["B", "W", meta.target_hidden_size]))
    if scalar_size:  # fp32 already: no Cast
        inputs.append(helper.make_tensor_value_info("scalar_features", TensorProto.FLOAT, ["B", "W", scalar_size]))
        scalar_logit = node("MatMul", ["scalar_features", const("scalar_weight", weight[hidden_end:].astype(np.float32))],
                            "scalar_logit")
        logit = node("Add", [logit, scalar_logit], "hidden_and_scalar_logit")
    inputs.append(helper.make_tensor_value_info("threshold", TensorProto.FLOAT, ["B"]))

    # p = sigmoid(w . x + b)                                                     [B, W]
    p = node("Sigmoid", [node("Add", [logit, const("bias", np.float32(judge.bias))], "logit")], "p")
    # mismatch_k = d_k != t_k                                                    [B, W]
    window = node("Shape", ["draft_tokens"], "window", start=1, end=2)  # [1]
    zero, one = const("zero", np.array([0], np.int64)), const("one", np.array([1], np.int64))
    target_at_draft = node("Slice", ["target_tokens", zero, window, one], "target_at_draft")
    mismatch = node("Not", [node("Equal", ["draft_tokens", target_at_draft], "match")], "mismatch")
    # ok_k = match or p <= threshold; n = first k with not ok (W if none)
    threshold = node("Unsqueeze", ["threshold", one], "threshold_column")  # [B, 1]
    judged_ok = node("LessOrEqual", [p, threshold], "judged_ok")
    ok = node("Or", [node("Not", [mismatch], "match_again"), judged_ok], "ok")
    rejected = node("Cast", [node("Not", [ok], "not_ok")], "rejected_f", to=TensorProto.FLOAT)
    sentinel = node("Pad", [rejected, const("pads", np.array([0, 0, 0, 1], np.int64)),
                            const("pad_one", np.float32(1.0))], "rejected_or_end")  # [B, W+1]
    n = node("ArgMax", [sentinel], "n", axis=1, keepdims=1, select_last_index=0)  # [B, 1] int64
    next_tokens = node("GatherElements", ["target_tokens", n], "next_column", axis=1)  # [B, 1]
    nodes.append(helper.make_node("Squeeze", [next_tokens, one], ["next_tokens"], name="next_tokens"))
    n32 = node("Cast", [n], "n32", to=TensorProto.INT32)
    nodes.append(helper.make_node("Squeeze", [n32, one], ["num_accepted"], name="num_accepted"))
    # probabilities: p where evaluated (a mismatch at k <= n), else NOT_EVALUATED
    positions = node("Range", [const("start", np.int64(0)),
                               node("Squeeze", [window, zero], "window_scalar"),
                               const("step", np.int64(1))], "positions")  # [W]
    evaluated = node("And", [mismatch, node("LessOrEqual", [positions, n], "up_to_n")], "evaluated")
    nodes.append(helper.make_node("Where", [evaluated, p, const("not_evaluated", np.float32(NOT_EVALUATED))],
                                  ["probabilities"], name="probabilities"))

    outputs = [helper.make_tensor_value_info("num_accepted", TensorProto.INT32, ["B"]),
               helper.make_tensor_value_info("next_tokens", TensorProto.INT32, ["B"]),
               helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["B", "W"])]
    graph = helper.make_graph(nodes, "autojudge_judge_accept", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="autojudge-trt", doc_string=(
                                  f"AutoJudge judge-accept step: judge for target {meta.target_model!r} "
                                  f"and draft {meta.draft_model!r}, layout {meta.feature_layout}"
                                  + (f", scalar features {', '.join(judge.scalar_features)}."
                                     if scalar_size else ".")))
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model, full_check=True)
    return model


def export_onnx(judge: Judge, path: str | Path, hidden_dtype: str = "float16") -> Path:
    """Write the graph to ``path`` atomically; return the path."""
    path = Path(path)
    model = judge_accept_graph(judge, hidden_dtype)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(model.SerializeToString())
    tmp.replace(path)
    return path
