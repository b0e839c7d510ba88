"""TensorRT engines of the judge-accept step (``autojudge-trt build judge``).

Two paths to the same engine, both with dynamic batch B and window W:

- ``plugin``: one AutoJudgeJudgeAccept plugin layer (``plugins/judgeAcceptPlugin``) whose
  weight and bias are network constants: the custom kernel, early exit included;
- ``onnx``: the standard-op graph of :mod:`autojudge.acceptance.onnx`, parsed by TensorRT's ONNX
  parser: for TensorRT builds that may not load custom plugins.

A judge with E scalar features (``judge.scalar_features``) gets one more input on either path,
``scalar_features`` [B, W, E] fp32, after the hidden states (the plugin: field
``scalar_feature_size`` = E).

TensorRT is an optional dependency (``pip install 'autojudge[trt]'`` on a GPU host, or an NGC
container). Without it, :func:`require_tensorrt` says exactly what is missing; nothing is
faked.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path

from autojudge.acceptance.onnx import export_onnx
from autojudge.errors import AutoJudgeError, MissingDependencyError
from autojudge.judge import Judge
from autojudge.storage import asset

PATHS = ("plugin", "onnx")
MIN_TENSORRT = (10, 0)
INSTALL_HINT = ("On a GPU host: pip install 'autojudge[trt]' (TensorRT wheels come from NVIDIA's index, "
                "https://pypi.nvidia.com), or run inside the NGC container nvcr.io/nvidia/tensorrt:<yy.mm>-py3.")


def require_tensorrt():
    """Import the full TensorRT builder, or raise MissingDependencyError saying what is missing."""
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise MissingDependencyError(
            f"building a TensorRT engine needs TensorRT >= {MIN_TENSORRT[0]} (the `tensorrt` Python package), "
            f"which is not installed. {INSTALL_HINT}") from exc
    if not hasattr(trt, "Builder"):
        raise MissingDependencyError(
            f"the installed TensorRT ({getattr(trt, '__version__', '?')}) is a runtime without a Builder (lean or "
            f"dispatch runtime): engines cannot be built with it. Install the full `tensorrt` package. {INSTALL_HINT}")
    version = tuple(int(part) for part in trt.__version__.split(".")[:2])
    if version < MIN_TENSORRT:
        raise MissingDependencyError(f"TensorRT {trt.__version__} is too old: IPluginV3 and the engine settings "
                                     f"used here need TensorRT >= {'.'.join(map(str, MIN_TENSORRT))}.")
    return trt


@dataclass(frozen=True)
class EngineSpec:
    path: str = "plugin"  # "plugin" or "onnx"
    hidden_dtype: str = "bfloat16"  # float32 / float16 / bfloat16
    max_batch: int = 64
    max_window: int = 64
    opt_batch: int = 8
    opt_window: int = 8


def build_plugin_library(build_dir: Path) -> Path:
    """CMake build of the plugin library (TENSORRT_ROOT or the NGC layout)."""
    if shutil.which("cmake") is None:
        raise MissingDependencyError("building the plugin library needs CMake >= 3.24 (pip install cmake).")
    source = asset("plugin")
    for step in (["cmake", "-S", str(source), "-B", str(build_dir), "-DCMAKE_BUILD_TYPE=Release"],
                 ["cmake", "--build", str(build_dir), "-j", str(os.cpu_count() or 2)]):
        done = subprocess.run(step, check=False, capture_output=True, text=True)
        if done.returncode != 0:
            raise AutoJudgeError(f"$ {' '.join(step)}\n{(done.stderr or done.stdout).strip()}")
    return build_dir / "libautojudge_judge_accept_plugin.so"


def _profile(builder, judge: Judge, spec: EngineSpec, input_names: list[str]):
    """One optimization profile over B in 1..max_batch and W in 1..max_window."""
    sizes = {"draft_hidden": judge.meta.draft_hidden_size, "target_hidden": judge.meta.target_hidden_size,
             "scalar_features": len(judge.scalar_features)}
    profile = builder.create_optimization_profile()
    for name in input_names:
        def shape(b: int, w: int, name: str = name) -> tuple[int, ...]:
            if name == "draft_tokens":
                return (b, w)
            if name == "target_tokens":
                return (b, w + 1)
            if name == "threshold":
                return (b,)
            return (b, w, sizes[name])
        profile.set_shape(name, shape(1, 1), shape(spec.opt_batch, spec.opt_window),
                          shape(spec.max_batch, spec.max_window))
    return profile


def _input_names(judge: Judge) -> list[str]:
    """The engine's inputs in order (the ONNX graph's, and the plugin's before its constants)."""
    hidden = ["draft_hidden", "target_hidden"] if judge.uses_draft_hidden else ["target_hidden"]
    scalars = ["scalar_features"] if judge.scalar_features else []
    return ["draft_tokens", "target_tokens", *hidden, *scalars, "threshold"]


def _plugin_network(trt, builder, judge: Judge, spec: EngineSpec, library: Path):
    import numpy as np

    registry = trt.get_plugin_registry()
    registry.load_library(str(library))
    creator = registry.get_creator("AutoJudgeJudgeAccept", "1", "autojudge")
    if creator is None:
        raise AutoJudgeError(f"{library} does not provide the AutoJudgeJudgeAccept plugin creator.")
    network = builder.create_network(0)
    hidden_type = {"float32": trt.float32, "float16": trt.float16, "bfloat16": trt.bfloat16}[spec.hidden_dtype]
    tensors = {
        "draft_tokens": network.add_input("draft_tokens", trt.int32, (-1, -1)),
        "target_tokens": network.add_input("target_tokens", trt.int32, (-1, -1)),
    }
    if judge.uses_draft_hidden:
        tensors["draft_hidden"] = network.add_input("draft_hidden", hidden_type, (-1, -1, judge.meta.draft_hidden_size))
    tensors["target_hidden"] = network.add_input("target_hidden", hidden_type, (-1, -1, judge.meta.target_hidden_size))
    scalar_size = len(judge.scalar_features)
    if scalar_size:
        tensors["scalar_features"] = network.add_input("scalar_features", trt.float32, (-1, -1, scalar_size))
    weight = judge.weight.float().numpy()
    bias = np.array([judge.bias], dtype=np.float32)
    constants = [network.add_constant(weight.shape, trt.Weights(weight)).get_output(0),
                 network.add_constant(bias.shape, trt.Weights(bias)).get_output(0)]
    tensors["threshold"] = network.add_input("threshold", trt.float32, (-1,))
    fields = trt.PluginFieldCollection([
        trt.PluginField("threads", np.array([0], np.int32), trt.PluginFieldType.INT32),
        trt.PluginField("scalar_feature_size", np.array([scalar_size], np.int32), trt.PluginFieldType.INT32)])
    plugin = creator.create_plugin("judge_accept", fields, trt.TensorRTPhase.BUILD)
    if plugin is None:
        raise AutoJudgeError(f"the AutoJudgeJudgeAccept creator of {library} refused the fields threads=0, "
                             f"scalar_feature_size={scalar_size} (see the TensorRT log above).")
    inputs = [tensors[n] for n in _input_names(judge)[:-1]] + constants + [tensors["threshold"]]
    layer = network.add_plugin_v3(inputs, [], plugin)
    for i, name in enumerate(("num_accepted", "next_tokens", "probabilities")):
        layer.get_output(i).name = name
        network.mark_output(layer.get_output(i))
    return network, (weight, bias)  # the arrays must outlive the build


def build_judge_engine(judge: Judge, out_dir: str | Path, spec: EngineSpec,
                       plugin_library: Path | None = None) -> dict:
    """Build ``out_dir/judge_accept.plan`` (+ ``.json``); return the metadata written."""
    trt = require_tensorrt()
    if spec.path not in PATHS:
        raise AutoJudgeError(f"unknown build path {spec.path!r}; choose one of {PATHS}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    logger = trt.Logger(trt.Logger.WARNING)
    try:
        builder = trt.Builder(logger)
    except Exception as exc:  # TensorRT raises a bare RuntimeError without a usable GPU
        raise MissingDependencyError(f"TensorRT could not start a builder ({exc}): a CUDA GPU and driver are "
                                     "needed to build engines.") from exc
    keep = None
    if spec.path == "plugin":
        library = plugin_library or build_plugin_library(out_dir / "plugin-build")
        network, keep = _plugin_network(trt, builder, judge, spec, library)
    else:
        library = None
        onnx_path = export_onnx(judge, out_dir / "judge_accept.onnx", spec.hidden_dtype)
        network = builder.create_network(0)
        parser = trt.OnnxParser(network, logger)
        if not parser.parse_from_file(str(onnx_path)):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise AutoJudgeError(f"TensorRT's ONNX parser rejected {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.add_optimization_profile(_profile(builder, judge, spec, _input_names(judge)))
    if spec.path == "plugin":
        config.plugins_to_serialize = [str(library)]  # the engine then loads without --dynamicPlugins
    serialized = builder.build_serialized_network(network, config)
    del keep
    if serialized is None:
        raise AutoJudgeError("TensorRT failed to build the judge-accept engine (see the log above).")
    plan = out_dir / "judge_accept.plan"
    tmp = plan.with_name(plan.name + ".tmp")
    tmp.write_bytes(bytes(serialized))
    tmp.replace(plan)
    meta = {"engine": str(plan), "tensorrt": trt.__version__, "spec": asdict(spec),
            "plugin_library": str(library) if library else None, "inputs": _input_names(judge),
            "outputs": ["num_accepted", "next_tokens", "probabilities"],
            "judge": {"target_model": judge.meta.target_model, "draft_model": judge.meta.draft_model,
                      "feature_layout": judge.meta.feature_layout,
                      "scalar_features": list(judge.scalar_features), "threshold": judge.meta.threshold}}
    (out_dir / "judge_accept.json").write_text(json.dumps(meta, indent=2) + "\n")
    return meta
