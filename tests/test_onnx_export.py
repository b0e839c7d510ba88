"""The standard-op ONNX graph of the judge-accept step, run in onnxruntime against the oracle, with
and without the scalar features (E = 0 or 5)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from autojudge.acceptance.onnx import IR_VERSION, export_onnx, judge_accept_graph
from autojudge.features.scalars import SCALAR_FEATURES
from autojudge.judge import Judge, JudgeMetadata

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from test_plugin_kernel import assert_same_as_oracle, assert_scalars_flip, make_case, with_scalars


def make_judge(draft_size: int, target_size: int, bias: float = 0.1, seed: int = 0, scalars: int = 0) -> Judge:
    """A random judge; ``scalars``: the first that many scalar features, their weights of the
    scale with_scalars uses (log-probability features in [-20, 0] give a few logit units)."""
    g = torch.Generator().manual_seed(seed)
    layout = "draft+target" if draft_size else "target"
    meta = JudgeMetadata("target", target_size, "draft", draft_size, feature_layout=layout, threshold=0.5,
                         scalar_features=SCALAR_FEATURES[:scalars])
    weight = torch.randn(draft_size + target_size, generator=g) / (draft_size + target_size) ** 0.5
    weight = torch.cat([weight, 0.15 * torch.randn(scalars, generator=g)])
    return Judge(weight=weight, bias=bias, meta=meta)


def run_graph(session, draft_tokens, target_tokens, draft_hidden, target_hidden, threshold, numpy_dtype,
              scalars=None):
    feeds = {"draft_tokens": draft_tokens.int().numpy(), "target_tokens": target_tokens.int().numpy(),
             "target_hidden": target_hidden.float().numpy().astype(numpy_dtype),
             "threshold": np.broadcast_to(np.float32(threshold), draft_tokens.shape[:1]).astype(np.float32)}
    if draft_hidden is not None:
        feeds["draft_hidden"] = draft_hidden.float().numpy().astype(numpy_dtype)
    if scalars is not None:
        feeds["scalar_features"] = scalars.float().numpy()
    num_accepted, next_tokens, probabilities = session.run(None, feeds)
    return num_accepted, next_tokens, probabilities


@pytest.mark.parametrize("hidden_dtype,numpy_dtype,torch_dtype", [
    ("float32", np.float32, torch.float32), ("float16", np.float16, torch.float16)])
@pytest.mark.parametrize("window,draft_size,target_size", [(1, 8, 16), (64, 24, 40), (8, 0, 32)])
def test_graph_matches_the_oracle_and_the_kernel_in_onnxruntime(tmp_path, hidden_dtype, numpy_dtype, torch_dtype,
                                                                 window, draft_size, target_size):
    judge = make_judge(draft_size, target_size)
    path = export_onnx(judge, tmp_path / "judge_accept.onnx", hidden_dtype)
    model = onnx.load(path)
    onnx.checker.check_model(model, full_check=True)
    assert model.ir_version == IR_VERSION
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    draft_tokens, target_tokens, draft_hidden, target_hidden, _ = make_case(5, window, draft_size, target_size,
                                                                             torch_dtype, seed=window)
    for threshold in (0.0, 0.4, 0.5, 1.0, np.linspace(0, 1, 5).astype(np.float32)):
        num_accepted, next_tokens, probabilities = run_graph(session, draft_tokens, target_tokens, draft_hidden,
                                                             target_hidden, threshold, numpy_dtype)
        inputs = (draft_tokens, target_tokens, draft_hidden, target_hidden, judge.weight)
        # The kernel's host build on the same inputs: identical decisions and sentinel layout.
        kernel = assert_same_as_oracle(inputs, judge.bias, torch.as_tensor(threshold))
        assert num_accepted.tolist() == kernel.num_accepted.tolist()
        assert next_tokens.tolist() == kernel.next_tokens.tolist()
        np.testing.assert_allclose(probabilities, kernel.probabilities.numpy(), rtol=2e-5, atol=1e-6)


@pytest.mark.parametrize("hidden_dtype,numpy_dtype,torch_dtype", [
    ("float32", np.float32, torch.float32), ("float16", np.float16, torch.float16)])
@pytest.mark.parametrize("window,draft_size,target_size", [(1, 8, 16), (64, 24, 40), (8, 0, 32)])
def test_with_scalar_features_the_graph_matches_the_oracle_and_the_kernel(tmp_path, hidden_dtype, numpy_dtype,
                                                                         torch_dtype, window, draft_size, target_size):
    """E = 5: the input scalar_features after the hidden states, its MatMul added to the logit."""
    judge = make_judge(draft_size, target_size, scalars=5, seed=window)
    path = export_onnx(judge, tmp_path / "judge_accept.onnx", hidden_dtype)
    onnx.checker.check_model(onnx.load(path), full_check=True)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    hidden_inputs = ["draft_hidden", "target_hidden"] if draft_size else ["target_hidden"]
    assert [i.name for i in session.get_inputs()] == ["draft_tokens", "target_tokens", *hidden_inputs,
                                                      "scalar_features", "threshold"]
    assert session.get_inputs()[-2].shape == ["B", "W", 5] and session.get_inputs()[-2].type == "tensor(float)"
    base = make_case(5, window, draft_size, target_size, torch_dtype, seed=window)
    _, scalars = with_scalars(base, seed=window)
    inputs = (*base[:4], judge.weight)
    thresholds = (0.0, 0.4, 0.5, 1.0, np.linspace(0, 1, 5).astype(np.float32))
    for threshold in thresholds:
        num_accepted, next_tokens, probabilities = run_graph(session, *base[:4], threshold, numpy_dtype, scalars)
        kernel = assert_same_as_oracle(inputs, judge.bias, torch.as_tensor(threshold), scalars=scalars)
        assert num_accepted.tolist() == kernel.num_accepted.tolist()
        assert next_tokens.tolist() == kernel.next_tokens.tolist()
        np.testing.assert_allclose(probabilities, kernel.probabilities.numpy(), rtol=2e-5, atol=1e-6)
    if window > 1:
        assert_scalars_flip(inputs, scalars, judge.bias, thresholds[:4])
    with pytest.raises(Exception, match="scalar_features"):  # the graph needs its scalar features
        run_graph(session, *base[:4], 0.5, numpy_dtype)


def test_edge_cases_all_match_and_ties(tmp_path):
    judge = make_judge(8, 8, bias=0.0)
    zero_judge = Judge(weight=torch.zeros(16), bias=0.0, meta=judge.meta)  # p = 0.5 exactly
    session = ort.InferenceSession(judge_accept_graph(zero_judge, "float32").SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    draft_tokens, target_tokens, draft_hidden, target_hidden, _ = make_case(2, 4, 8, 8, vocab=2, seed=1)
    target_tokens[0, :4] = draft_tokens[0]  # row 0: all match -> bonus token
    target_tokens[1, :4] = 1 - draft_tokens[1]  # row 1: all mismatch at p = 0.5
    n, nxt, p = run_graph(session, draft_tokens, target_tokens, draft_hidden, target_hidden, 0.5, np.float32)
    assert n.tolist() == [4, 4] and nxt.tolist() == target_tokens[:, 4].tolist()
    assert (p[0] == -1).all() and (p[1] == 0.5).all()
    below = np.nextafter(np.float32(0.5), np.float32(0))
    n, nxt, p = run_graph(session, draft_tokens, target_tokens, draft_hidden, target_hidden, below, np.float32)
    assert n.tolist() == [4, 0] and nxt.tolist() == [int(target_tokens[0, 4]), int(target_tokens[1, 0])]
    assert p[1].tolist() == [0.5, -1, -1, -1]


def test_unknown_hidden_dtype_is_refused():
    with pytest.raises(ValueError, match="hidden_dtype"):
        judge_accept_graph(make_judge(8, 8), "int8")
