"""The judge-accept engine (``autojudge-trt build judge``) run by TensorRT's runtime in this process.

The TensorRT-LLM flavour's decoding model runs the judge-accept step itself instead of sending
it to a ``tensorrt_plan`` model of the same server. Why (read in the real sources):
triton-inference-server/tensorrt_backend only ``dlopen``s a library named by
``--backend-config=tensorrt,plugins=LIB`` (``src/shared_library.cc``), which registers nothing
for a plugin library that registers its creators through ``getCreators`` (ours:
plugins/judgeAcceptPlugin, loadable by ``IPluginRegistry::loadLibrary`` and
``trtexec --dynamicPlugins``). ``load_library`` below is that call: it asks the library for
its creators and registers them before the plan is deserialized; it also saves a BLS hop per
cycle. The ONNX build path has no plugin layer and loads no library.

``trt`` is the ``tensorrt`` module (TensorRT 10.14 with TensorRT-LLM 1.2.1), or in CI
:mod:`autojudge.testing.tensorrt_runtime`, which runs the plan with the host build of the
plugin's kernel (or the ONNX graph in onnxruntime), not with :mod:`autojudge.acceptance`.

An engine built for a judge with E scalar features has the input ``scalar_features`` [B, W, E]
fp32 (:mod:`autojudge.acceptance.engine`); the call then takes them (``scalars``), else none.
"""

from __future__ import annotations

from pathlib import Path

import torch

from autojudge.acceptance import Acceptance
from autojudge.errors import AutoJudgeError

OUTPUTS = ("num_accepted", "next_tokens", "probabilities")


class TensorRTJudgeAccept:
    """``judge_accept(draft_tokens, target_tokens, draft_hidden, target_hidden, threshold, scalars=None)
    -> Acceptance`` (the loop's fused step, :data:`autojudge.decoding.backend.FusedJudgeAccept`) over one
    engine."""

    def __init__(self, trt, plan: Path, plugin_library: Path | None, device: torch.device):
        self.trt, self.device = trt, device
        if plugin_library is not None:
            # IPluginRegistry.load_library calls the library's getCreators and registers what it returns
            self._library = trt.get_plugin_registry().load_library(str(plugin_library))
            if self._library is None:
                raise AutoJudgeError(f"TensorRT could not load the plugin library {plugin_library}")
        self._runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = self._runtime.deserialize_cuda_engine(Path(plan).read_bytes())
        if self.engine is None:
            raise AutoJudgeError(f"TensorRT could not deserialize the judge-accept engine {plan}"
                                 + ("" if plugin_library else " (a plugin-path engine needs plugin_library)"))
        self.context = self.engine.create_execution_context()
        self.inputs = [name for name in (self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors))
                       if name not in OUTPUTS]
        types = {trt.float32: torch.float32, trt.float16: torch.float16, trt.bfloat16: torch.bfloat16,
                 trt.int32: torch.int32}
        self.dtypes = {name: types[self.engine.get_tensor_dtype(name)] for name in (*self.inputs, *OUTPUTS)}
        # E: the static last dimension of scalar_features [-1, -1, E] (get_tensor_shape: -1 where dynamic)
        self.scalar_feature_size = (int(tuple(self.engine.get_tensor_shape("scalar_features"))[-1])
                                    if "scalar_features" in self.inputs else 0)

    @property
    def uses_draft_hidden(self) -> bool:
        return "draft_hidden" in self.inputs

    def __call__(self, draft_tokens: torch.Tensor, target_tokens: torch.Tensor, draft_hidden: torch.Tensor | None,
                 target_hidden: torch.Tensor, threshold: float, scalars: torch.Tensor | None = None) -> Acceptance:
        batch, w = draft_tokens.shape  # [B, w]; target_tokens [B, w+1]; hidden [B, w, H] at the d_k
        count = None if scalars is None else scalars.shape[-1]  # scalars [B, w, E] fp32
        if (count or 0) != self.scalar_feature_size:
            raise ValueError(f"the judge-accept engine reads {self.scalar_feature_size} scalar features, given {count}")
        given = {"draft_tokens": draft_tokens, "target_tokens": target_tokens, "draft_hidden": draft_hidden,
                 "target_hidden": target_hidden, "scalar_features": scalars,
                 "threshold": torch.full((batch,), threshold)}  # [B]
        bound = {name: given[name].to(self.device, self.dtypes[name]).contiguous() for name in self.inputs}
        shapes = {"num_accepted": (batch,), "next_tokens": (batch,), "probabilities": (batch, w)}
        outputs = {name: torch.empty(shapes[name], dtype=self.dtypes[name], device=self.device) for name in OUTPUTS}
        for name, tensor in bound.items():
            if not self.context.set_input_shape(name, tuple(tensor.shape)):
                raise AutoJudgeError(f"the judge-accept engine refused {name} of shape {list(tensor.shape)} "
                                     "(TensorRT set_input_shape)")
            self.context.set_tensor_address(name, tensor.data_ptr())
        for name, tensor in outputs.items():
            self.context.set_tensor_address(name, tensor.data_ptr())
        stream = torch.cuda.current_stream(self.device).cuda_stream if self.device.type == "cuda" else 0
        if not self.context.execute_async_v3(stream):
            raise AutoJudgeError("the judge-accept engine failed to run (TensorRT execute_async_v3)")
        if self.device.type == "cuda":
            torch.cuda.current_stream(self.device).synchronize()
        num_accepted = outputs["num_accepted"].long()  # [B]
        if not bool(((num_accepted >= 0) & (num_accepted <= w)).all()):
            raise AutoJudgeError(f"the judge-accept engine returned num_accepted {num_accepted.tolist()} "
                                 f"for a window of {w}")
        accepted = torch.arange(w, device=self.device)[None, :] < num_accepted[:, None]  # [B, w]
        mismatch = (draft_tokens.to(self.device) != target_tokens[:, :w].to(self.device)) & accepted
        return Acceptance(num_accepted, outputs["next_tokens"].long(), accepted, mismatch)
