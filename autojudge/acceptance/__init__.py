"""Acceptance: the rule (``rule``, the oracle) and its other implementations, each tested equal to it:
the standard-op ONNX graph (``onnx``), the TensorRT plugin's CUDA kernel built for tests and
benchmarks (``plugin``), and the TensorRT judge-accept engine (``engine``)."""

from autojudge.acceptance.rule import (Acceptance, accept, fly_mismatch_ok, judge_accept, judge_mismatch_ok,
                                       topk_mismatch_ok)

__all__ = ["Acceptance", "accept", "fly_mismatch_ok", "judge_accept", "judge_mismatch_ok", "topk_mismatch_ok"]
