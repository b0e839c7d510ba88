"""An emulation of the part of TensorRT's Python runtime (10.x) that runs the judge-accept engine.

:class:`autojudge.serving.trtllm.judge_engine.TensorRTJudgeAccept` takes the ``tensorrt``
module; in CI it takes this one. Plans and plugin libraries here are JSON stand-ins written by
:func:`write_plan` and :func:`write_plugin_library`; what runs them is independent of
:mod:`autojudge.acceptance`: the plugin path calls the **host build of the plugin's kernel**
(plugins/judgeAcceptPlugin/judgeAcceptHost.cpp) on the very addresses the caller bound, the
ONNX path runs the exported graph in **onnxruntime**. Behaviours encoded (TensorRT 10.x Python
API docs, and triton-inference-server/tensorrt_backend ``src/shared_library.cc``):
- ``IPluginRegistry.load_library(path)`` registers the creators the library returns from
  ``getCreators``;
- a loader that only ``dlopen``s a library (:func:`dlopen`, as tensorrt_backend does for
  ``--backend-config=tensorrt,plugins=LIB``) registers only what the library registers itself
  from static initializers;
- ``deserialize_cuda_engine`` returns None when a plugin layer's creator is not registered;
- ``execute_async_v3`` reads inputs and writes outputs at the addresses given by
  ``set_tensor_address``, with the shapes given by ``set_input_shape``;
- ``set_input_shape`` returns False for a name that is not an input, or a shape whose rank or
  static dimensions differ from the network's (NvInferRuntime.h, TensorRT 10.14, ``IExecutionContext::setInputShape``:
  "Each dimension must agree with the network dimension unless the latter was -1");
- ``get_tensor_shape`` gives the network's shape, -1 in place of each dynamic dimension
  (NvInferRuntime.h, TensorRT 10.14, ``ICudaEngine::getTensorShape``).

A judge with E scalar features gets the input ``scalar_features`` [B, W, E] fp32 after the hidden
states on both paths, as :mod:`autojudge.acceptance.engine` builds it (the plugin path with the
plugin field ``scalar_feature_size`` = E, which the plan records).
"""

from __future__ import annotations

import ctypes
import json
import re
from pathlib import Path

import numpy as np
import torch

PLAN_FORMAT = "autojudge.emulated-tensorrt-plan/v1"
LIBRARY_FORMAT = "autojudge.emulated-plugin-library/v1"
CREATOR = "autojudge::AutoJudgeJudgeAccept/1"


class DataType:
    def __init__(self, name: str, torch_dtype: torch.dtype):
        self.name, self.torch = name, torch_dtype

    def __repr__(self) -> str:
        return f"DataType.{self.name.upper()}"


float32, float16, bfloat16, int32 = (DataType("float", torch.float32), DataType("half", torch.float16),
                                     DataType("bf16", torch.bfloat16), DataType("int32", torch.int32))
_TYPES = {"float32": float32, "float16": float16, "bfloat16": bfloat16, "int32": int32}


class Logger:
    WARNING = 2

    def __init__(self, severity: int = WARNING):
        self.severity = severity


class _Registry:
    def __init__(self):
        self.creators: set[str] = set()

    def load_library(self, path: str):
        library = _read_library(Path(path))
        if library is None or not library["getCreators"]:
            return None  # loadLibrary needs the getCreators entry point
        self.creators.update(library["getCreators"] + library["static"])
        return object()  # the library handle


_REGISTRY = _Registry()


def get_plugin_registry() -> _Registry:
    return _REGISTRY


def dlopen(path: str) -> None:
    """What tensorrt_backend does with ``plugins=LIB``: dlopen only; static registrars run, nothing else."""
    library = _read_library(Path(path))
    if library is not None:
        _REGISTRY.creators.update(library["static"])


def _read_library(path: Path) -> dict | None:
    try:
        library = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return library if library.get("format") == LIBRARY_FORMAT else None


class Runtime:
    def __init__(self, logger: Logger):
        self.logger = logger

    def deserialize_cuda_engine(self, blob: bytes):
        plan = json.loads(blob)
        if plan.get("format") != PLAN_FORMAT:
            return None
        if plan["path"] == "plugin" and CREATOR not in _REGISTRY.creators:
            return None  # "Cannot deserialize plugin AutoJudgeJudgeAccept": its creator is not registered
        return _Engine(plan)


OUTPUTS = ("num_accepted", "next_tokens", "probabilities")


class _Engine:
    def __init__(self, plan: dict):
        self.plan = plan
        hidden = _TYPES[plan["hidden_dtype"]]
        self.scalar_feature_size = plan.get("scalar_feature_size", 0)  # E; plans without the key: 0
        # I/O tensors in the order the network declares them, inputs first; their network shapes
        self.tensors = {"draft_tokens": int32, "target_tokens": int32}
        self.shapes = {"draft_tokens": (-1, -1), "target_tokens": (-1, -1)}
        if plan["uses_draft_hidden"]:
            self.tensors["draft_hidden"] = hidden
            self.shapes["draft_hidden"] = (-1, -1, plan["draft_hidden_size"])
        self.tensors["target_hidden"] = hidden
        self.shapes["target_hidden"] = (-1, -1, plan["target_hidden_size"])
        if self.scalar_feature_size:
            self.tensors["scalar_features"] = float32
            self.shapes["scalar_features"] = (-1, -1, self.scalar_feature_size)
        self.tensors.update(threshold=float32, num_accepted=int32, next_tokens=int32, probabilities=float32)
        self.shapes.update(threshold=(-1,), num_accepted=(-1,), next_tokens=(-1,), probabilities=(-1, -1))
        self.weight = torch.tensor(plan["weight"], dtype=torch.float32)  # [Hd + Ht + E] (the network constant)
        self.bias = torch.tensor([plan["bias"]], dtype=torch.float32)

    @property
    def num_io_tensors(self) -> int:
        return len(self.tensors)

    def get_tensor_name(self, index: int) -> str:
        return list(self.tensors)[index]

    def get_tensor_dtype(self, name: str) -> DataType:
        return self.tensors[name]

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:  # NvInferRuntime.h (10.14) getTensorShape: -1 if dynamic
        return self.shapes[name]

    def create_execution_context(self):
        return _Context(self)


def _array(address: int, shape: tuple[int, ...], dtype: DataType) -> torch.Tensor:
    """A copy of the tensor at ``address`` (host memory: the CI engines run on the CPU)."""
    count = int(np.prod(shape))
    raw = {torch.float32: ctypes.c_float, torch.int32: ctypes.c_int32}.get(dtype.torch, ctypes.c_uint16)
    values = np.ctypeslib.as_array((raw * count).from_address(address)).copy()
    tensor = torch.from_numpy(values.view(np.int16) if raw is ctypes.c_uint16 else values)
    return (tensor.view(dtype.torch) if raw is ctypes.c_uint16 else tensor).reshape(shape)


class _Context:
    def __init__(self, engine: _Engine):
        self.engine = engine
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.addresses: dict[str, int] = {}

    def set_input_shape(self, name: str, shape: tuple[int, ...]) -> bool:
        # NvInferRuntime.h (10.14) setInputShape: False for a non-input, or a dimension that is not -1 and differs
        network = None if name in OUTPUTS else self.engine.shapes.get(name)
        if network is None or len(shape) != len(network) or any(n not in (-1, d) for n, d in zip(network, shape)):
            return False
        self.shapes[name] = tuple(shape)
        return True

    def set_tensor_address(self, name: str, address: int) -> bool:
        self.addresses[name] = int(address)
        return True

    def execute_async_v3(self, stream_handle: int) -> bool:
        inputs = [name for name in self.engine.tensors if name not in OUTPUTS]
        if any(name not in self.shapes or name not in self.addresses for name in inputs):
            return False
        batch, window = self.shapes["draft_tokens"]
        if self.engine.plan["path"] == "plugin":
            return self._host_kernel(batch, window)
        return self._onnx(inputs, batch, window)

    def _host_kernel(self, batch: int, window: int) -> bool:
        from autojudge.acceptance.plugin import HIDDEN_TYPES, JudgeAcceptArgs, _library, build_host_library

        plan, a = self.engine.plan, self.addresses
        hidden = self.engine.tensors["target_hidden"].torch
        # judgeAcceptPlugin.cpp onShapeChange: inputs must agree on B and W, else -1 and the enqueue fails
        want = {"target_tokens": (batch, window + 1), "threshold": (batch,)}
        if any(self.shapes[name][:len(want.get(name, (batch, window)))] != want.get(name, (batch, window))
               for name in self.engine.shapes if name not in OUTPUTS):
            return False
        args = JudgeAcceptArgs(  # what judgeAcceptPlugin.cpp's enqueue passes the kernel
            draftTokens=a["draft_tokens"], targetTokens=a["target_tokens"], draftHidden=a.get("draft_hidden", 0),
            targetHidden=a["target_hidden"], scalarFeatures=a.get("scalar_features", 0),
            weight=self.engine.weight.data_ptr(), bias=self.engine.bias.data_ptr(),
            threshold=a["threshold"], numAccepted=a["num_accepted"], nextTokens=a["next_tokens"],
            probabilities=a["probabilities"], batch=batch, window=window,
            draftHiddenSize=plan["draft_hidden_size"] if plan["uses_draft_hidden"] else 0,
            targetHiddenSize=plan["target_hidden_size"], scalarFeatureSize=self.engine.scalar_feature_size,
            hiddenType=HIDDEN_TYPES[hidden])
        host = _library(str(build_host_library())).autojudgeJudgeAcceptHost
        host.restype = ctypes.c_char_p
        return not host(ctypes.byref(args))

    def _onnx(self, inputs: list[str], batch: int, window: int) -> bool:
        import onnxruntime

        feeds = {}
        for name in inputs:
            tensor = _array(self.addresses[name], self.shapes[name], self.engine.tensors[name])
            feeds[name] = (tensor.float() if tensor.dtype == torch.bfloat16 else tensor).numpy()
        session = onnxruntime.InferenceSession(self.engine.plan["onnx"], providers=["CPUExecutionProvider"])
        for name, value in zip(OUTPUTS, session.run(list(OUTPUTS), feeds)):
            value = np.ascontiguousarray(value, dtype=np.int32 if name != "probabilities" else np.float32)
            ctypes.memmove(self.addresses[name], value.ctypes.data, value.nbytes)
        return True


def write_plan(judge, out_dir: Path, path: str = "plugin", hidden_dtype: str = "bfloat16") -> Path:
    """The stand-in for ``autojudge-trt build judge --path PATH``: ``out_dir/judge_accept.plan``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    plan = {"format": PLAN_FORMAT, "path": path, "hidden_dtype": hidden_dtype,
            "uses_draft_hidden": judge.uses_draft_hidden, "draft_hidden_size": judge.meta.draft_hidden_size,
            "target_hidden_size": judge.meta.target_hidden_size,
            "scalar_feature_size": len(judge.scalar_features),  # the plugin field scalar_feature_size
            "weight": judge.weight.float().tolist(), "bias": float(judge.bias)}
    if path == "onnx":
        from autojudge.acceptance.onnx import export_onnx

        # onnxruntime on CPU runs the graph in float32; bf16 hidden states are widened before it
        plan["onnx"] = str(export_onnx(judge, out_dir / "judge_accept.onnx",
                                       "float32" if hidden_dtype == "bfloat16" else hidden_dtype))
    (out_dir / "judge_accept.plan").write_text(json.dumps(plan))
    return out_dir / "judge_accept.plan"


def write_plugin_library(path: Path) -> Path:
    """The stand-in for the compiled plugin library, registering the way our C++ source does:
    ``getCreators`` if judgeAcceptPlugin.cpp exports it, a static registrar if it has one."""
    from autojudge.storage import asset

    source = (Path(asset("plugin")) / "judgeAcceptPlugin.cpp").read_text()
    exports = bool(re.search(r'extern "C"[^\n]*getCreators\s*\(', source))
    static = bool(re.search(r"REGISTER_TENSORRT_PLUGIN\s*\(|PluginRegistrar\s*<", source))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"format": LIBRARY_FORMAT, "getCreators": [CREATOR] if exports else [],
                                "static": [CREATOR] if static else []}))
    return path
