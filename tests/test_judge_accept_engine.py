"""The judge-accept engine run in process (TensorRTJudgeAccept, the TensorRT-LLM flavour's fused
step) over the emulated TensorRT runtime, on both build paths: the plugin path runs the host
build of the plugin's kernel on the bound addresses, the ONNX path the exported graph in
onnxruntime. Each is compared with the oracle ``rule.judge_accept`` with and without the judge's
scalar features (E = 0 or 5), on inputs where the scalar part turns decisions around."""

from __future__ import annotations

import shutil

import pytest
import torch

from autojudge.acceptance import judge_accept
from autojudge.errors import AutoJudgeError
from autojudge.features.scalars import SCALAR_FEATURES
from autojudge.judge import Judge, JudgeMetadata
from autojudge.serving.trtllm.judge_engine import TensorRTJudgeAccept
from autojudge.testing import tensorrt_runtime

pytestmark = pytest.mark.skipif(shutil.which("g++") is None, reason="needs g++ for the host build")
HD, HT = 24, 40


def make_judge(layout: str, scalars: int, seed: int = 0) -> Judge:
    g = torch.Generator().manual_seed(seed)
    draft_size = HD if layout == "draft+target" else 0
    meta = JudgeMetadata("t", HT, "d" if draft_size else "", draft_size, layout, threshold=0.5,
                         scalar_features=SCALAR_FEATURES[:scalars])
    weight = torch.cat([torch.randn(draft_size + HT, generator=g) / (draft_size + HT) ** 0.5,
                        0.15 * torch.randn(scalars, generator=g)])  # scalar part: a few logit units
    return Judge(weight, 0.1, meta)


def make_inputs(batch: int, window: int, scalars: int, dtype: torch.dtype, seed: int = 0):
    """Tokens with frequent mismatches, hidden states, and scalar features of the real ones'
    scale (log probabilities in [-20, 0], the last in [0, 1]); None for E = 0."""
    g = torch.Generator().manual_seed(seed)
    target = torch.randint(0, 3, (batch, window + 1), generator=g)
    draft = torch.randint(0, 3, (batch, window), generator=g)
    draft_hidden = torch.randn(batch, window, HD, generator=g).to(dtype)
    target_hidden = torch.randn(batch, window, HT, generator=g).to(dtype)
    features = None
    if scalars:
        features = -20.0 * torch.rand(batch, window, scalars, generator=g)
        features[..., -1] = torch.rand(batch, window, generator=g)
    return draft, target, draft_hidden, target_hidden, features


def oracle(judge: Judge, draft, target, draft_hidden, target_hidden, threshold, scalars):
    if not judge.uses_draft_hidden:
        draft_hidden = target_hidden[..., :0]
    return judge_accept(draft, target, draft_hidden, target_hidden, judge.weight, judge.bias, threshold,
                        scalars=scalars)[0]


def engine(tmp_path, judge: Judge, path: str, dtype: str) -> TensorRTJudgeAccept:
    plan = tensorrt_runtime.write_plan(judge, tmp_path / "engine", path, dtype)
    library = tensorrt_runtime.write_plugin_library(tmp_path / "lib.json") if path == "plugin" else None
    return TensorRTJudgeAccept(tensorrt_runtime, plan, library, torch.device("cpu"))


@pytest.mark.parametrize("path,dtype", [("plugin", "float32"), ("plugin", "bfloat16"), ("onnx", "float32"),
                                        ("onnx", "bfloat16")])
@pytest.mark.parametrize("layout", ["draft+target", "target"])
@pytest.mark.parametrize("scalars", [0, 5])
def test_the_engine_equals_the_oracle(tmp_path, path, dtype, layout, scalars):
    if path == "onnx":
        pytest.importorskip("onnxruntime")
    judge = make_judge(layout, scalars, seed=scalars)
    run = engine(tmp_path, judge, path, dtype)
    assert run.uses_draft_hidden == (layout == "draft+target")
    assert run.scalar_feature_size == scalars
    assert ("scalar_features" in run.inputs) == bool(scalars)
    flips = 0
    for seed, (batch, window) in enumerate([(1, 1), (3, 7), (4, 16), (2, 33)]):
        draft, target, draft_hidden, target_hidden, features = make_inputs(batch, window, scalars,
                                                                           tensorrt_runtime._TYPES[dtype].torch, seed)
        hidden_only = Judge(judge.weight[:judge.weight.numel() - scalars], judge.bias, make_judge(layout, 0).meta)
        for threshold in (0.2, 0.5, 0.8):
            want = oracle(judge, draft, target, draft_hidden, target_hidden, threshold, features)
            extra = {} if features is None else {"scalars": features}
            got = run(draft, target, draft_hidden if run.uses_draft_hidden else None, target_hidden, threshold, **extra)
            assert got.num_accepted.tolist() == want.num_accepted.tolist(), (seed, threshold)
            assert got.next_tokens.tolist() == want.next_tokens.tolist(), (seed, threshold)
            assert torch.equal(got.mismatch_accepted, want.mismatch_accepted)
            without = oracle(hidden_only, draft, target, draft_hidden, target_hidden, threshold, None)
            flips += int((without.num_accepted != want.num_accepted).sum())
    if scalars:
        assert flips > 0, "the scalar features decide nothing here: an engine that ignored them would pass"


@pytest.mark.parametrize("path", ["plugin", "onnx"])
def test_a_scalar_feature_count_the_engine_was_not_built_for_is_refused(tmp_path, path):
    if path == "onnx":
        pytest.importorskip("onnxruntime")
    draft, target, draft_hidden, target_hidden, features = make_inputs(2, 4, 5, torch.float32)
    with_scalars = engine(tmp_path / "e5", make_judge("draft+target", 5), path, "float32")
    without = engine(tmp_path / "e0", make_judge("draft+target", 0), path, "float32")
    with pytest.raises(ValueError, match="reads 5 scalar features, given None"):
        with_scalars(draft, target, draft_hidden, target_hidden, 0.5)
    with pytest.raises(ValueError, match="reads 5 scalar features, given 4"):
        with_scalars(draft, target, draft_hidden, target_hidden, 0.5, scalars=features[..., :4])
    with pytest.raises(ValueError, match="reads 0 scalar features, given 5"):
        without(draft, target, draft_hidden, target_hidden, 0.5, scalars=features)
    with pytest.raises(AutoJudgeError, match="refused scalar_features of shape \\[2, 4, 6\\]"):
        _bind_anyway(with_scalars, draft, target, draft_hidden, target_hidden, torch.zeros(2, 4, 6))
    if path == "plugin":  # B and W disagree: the plugin's onShapeChange fails the enqueue
        with pytest.raises(AutoJudgeError, match="failed to run"):
            _bind_anyway(with_scalars, draft, target, draft_hidden, target_hidden, torch.zeros(2, 3, 5))


def _bind_anyway(run: TensorRTJudgeAccept, draft, target, draft_hidden, target_hidden, scalars):
    """The call with the engine's own count checked away: what the runtime itself does with the shape."""
    size, run.scalar_feature_size = run.scalar_feature_size, scalars.shape[-1]
    try:
        return run(draft, target, draft_hidden, target_hidden, 0.5, scalars=scalars)
    finally:
        run.scalar_feature_size = size


def test_the_emulated_runtime_keeps_the_network_shapes(tmp_path):
    """set_input_shape refuses what IExecutionContext::setInputShape refuses; get_tensor_shape has -1
    where the network's dimension is dynamic."""
    judge = make_judge("draft+target", 5)
    run = engine(tmp_path, judge, "plugin", "float32")
    assert tuple(run.engine.get_tensor_shape("scalar_features")) == (-1, -1, 5)
    assert tuple(run.engine.get_tensor_shape("target_hidden")) == (-1, -1, HT)
    context = run.engine.create_execution_context()
    assert context.set_input_shape("scalar_features", (3, 7, 5))
    assert not context.set_input_shape("scalar_features", (3, 7, 4))  # a static dimension differs
    assert not context.set_input_shape("scalar_features", (3, 7))  # another rank
    assert not context.set_input_shape("probabilities", (3, 7))  # not an input
