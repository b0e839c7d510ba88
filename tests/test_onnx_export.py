"""The standard-op ONNX graph of the judge-accept step, run in onnxruntime against the oracle."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from autojudge.acceptance.onnx import IR_VERSION, export_onnx, judge_accept_graph
from autojudge.judge import Judge, JudgeMetadata

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from test_plugin_kernel import assert_same_as_oracle, make_case  # noqa: E402


def make_judge(draft_size: int, target_size: int, bias: float = 0.1, seed: int = 0) -> Judge:
    g = torch.Generator().manual_seed(seed)
    layout = "draft+target" if draft_size else "target"
    meta = JudgeMetadata("target", target_size, "draft", draft_size, feature_layout=layout, threshold=0.5)
    weight = torch.randn(draft_size + target_size, generator=g) / (draft_size + target_size) ** 0.5
    return Judge(weight=weight, bias=bias, meta=meta)


def run_graph(session, draft_tokens, target_tokens, draft_hidden, target_hidden, threshold, numpy_dtype):
    feeds = {"draft_tokens": draft_tokens.int().numpy(), "target_tokens": target_tokens.int().numpy(),
             "target_hidden": target_hidden.float().numpy().astype(numpy_dtype),
             "threshold": np.broadcast_to(np.float32(threshold), draft_tokens.shape[:1]).astype(np.float32)}
    if draft_hidden is not None:
        feeds["draft_hidden"] = draft_hidden.float().numpy().astype(numpy_dtype)
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
