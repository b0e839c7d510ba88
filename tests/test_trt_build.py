"""The TensorRT-facing commands where TensorRT is absent: clear errors, real ONNX, real CMake."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess

import pytest
from click.testing import CliRunner
from test_onnx_export import make_judge

from autojudge.cli import main
from autojudge.storage import asset

HAS_TENSORRT = importlib.util.find_spec("tensorrt") is not None


@pytest.fixture
def judge_dir(tmp_path):
    return make_judge(24, 40).save(tmp_path / "judge")


def test_export_onnx_command_writes_a_graph_onnxruntime_runs(tmp_path, judge_dir):
    ort = pytest.importorskip("onnxruntime")
    out = tmp_path / "judge_accept.onnx"
    result = CliRunner().invoke(main, ["export-onnx", "--judge", str(judge_dir), "--out", str(out),
                                       "--hidden-dtype", "float16", "--json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.output)
    assert info["onnx"] == str(out) and info["draft_hidden_size"] == 24 and info["target_hidden_size"] == 40
    names = [i.name for i in ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).get_inputs()]
    assert names == ["draft_tokens", "target_tokens", "draft_hidden", "target_hidden", "threshold"]


@pytest.mark.skipif(HAS_TENSORRT, reason="TensorRT is installed here")
def test_build_judge_without_tensorrt_says_what_is_missing(tmp_path, judge_dir):
    result = CliRunner().invoke(main, ["build", "judge", "--judge", str(judge_dir), "--out", str(tmp_path / "e")])
    assert result.exit_code == 2
    assert "TensorRT >= 10" in result.output and "pip install 'autojudge[trt]'" in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "e").exists()  # nothing half-built


@pytest.mark.skipif(shutil.which("cmake") is None, reason="needs cmake")
def test_cmake_without_tensorrt_stops_with_a_clear_message(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TENSORRT_ROOT"}
    done = subprocess.run(["cmake", "-S", str(asset("plugin")), "-B", str(tmp_path / "b")],
                          capture_output=True, text=True, env=env, check=False)
    if "TensorRT headers not found" not in done.stderr and done.returncode == 0:
        pytest.skip("TensorRT headers are installed on this machine")
    assert done.returncode != 0
    assert "TensorRT headers not found" in done.stderr and "TENSORRT_ROOT" in done.stderr


@pytest.mark.skipif(shutil.which("cmake") is None, reason="needs cmake")
def test_cmake_host_only_build_needs_neither_tensorrt_nor_cuda(tmp_path):
    build = tmp_path / "b"
    for step in (["cmake", "-S", str(asset("plugin")), "-B", str(build), "-DAUTOJUDGE_HOST_ONLY=ON"],
                 ["cmake", "--build", str(build)]):
        done = subprocess.run(step, capture_output=True, text=True, check=False)
        assert done.returncode == 0, done.stdout + done.stderr
    assert (build / "libjudgeAcceptHost.so").is_file()


# ------------------------------------------------------------ the network build_judge_engine makes


class _Recorder:
    """Just enough of the ``tensorrt`` builder API for build_judge_engine to run, recording the
    network it declares (names, types, shapes), the plugin's inputs and fields, and the profile.
    It checks nothing about TensorRT itself: what it pins is our side of each call."""

    __version__ = "10.14.1"
    float32, float16, bfloat16, int32 = "float32", "float16", "bfloat16", "int32"

    class Logger:
        WARNING = 2

        def __init__(self, severity):
            pass

    class PluginFieldType:
        INT32 = "int32"

    class TensorRTPhase:
        BUILD = "build"

    def __init__(self):
        self.inputs, self.plugin_inputs, self.fields, self.profile = {}, [], {}, {}
        recorder = self

        class Tensor:
            def __init__(self, name, dtype, shape):
                self.name, self.dtype, self.shape = name, dtype, tuple(shape)

        class Layer:
            def __init__(self, outputs):
                self.outputs = outputs

            def get_output(self, i):
                return self.outputs[i]

        class Network:
            def add_input(self, name, dtype, shape):
                recorder.inputs[name] = Tensor(name, dtype, shape)
                return recorder.inputs[name]

            def add_constant(self, shape, weights):
                return Layer([Tensor("constant", "float32", weights.shape)])

            def add_plugin_v3(self, inputs, shape_inputs, plugin):
                recorder.plugin_inputs = [(t.name, t.shape) for t in inputs]
                return Layer([Tensor(f"out{i}", None, ()) for i in range(3)])

            def mark_output(self, tensor):
                pass

        class Profile:
            def set_shape(self, name, low, opt, high):
                recorder.profile[name] = (tuple(low), tuple(opt), tuple(high))

        class Config:
            def add_optimization_profile(self, profile):
                pass

        class Builder:
            def __init__(self, logger):
                pass

            def create_network(self, flags):
                return Network()

            def create_optimization_profile(self):
                return Profile()

            def create_builder_config(self):
                return Config()

            def build_serialized_network(self, network, config):
                return b"plan"

        class Creator:
            def create_plugin(self, name, fields, phase):
                recorder.fields = {f.name: int(f.data[0]) for f in fields}
                return object()

        class Registry:
            def load_library(self, path):
                return object()

            def get_creator(self, name, version, namespace):
                return Creator()

        class OnnxParser:
            """Declares the graph's inputs, symbolic dimensions as -1 (as TensorRT's parser does)."""

            num_errors = 0

            def __init__(self, network, logger):
                self.network = network

            def parse_from_file(self, path):
                import onnx

                for value in onnx.load(path).graph.input:
                    dims = [d.dim_value if d.HasField("dim_value") else -1 for d in value.type.tensor_type.shape.dim]
                    self.network.add_input(value.name, value.type.tensor_type.elem_type, dims)
                return True

        self.Builder, self.OnnxParser = Builder, OnnxParser
        self.get_plugin_registry = Registry
        self.PluginField = lambda name, data, kind: type("Field", (), {"name": name, "data": data})
        self.PluginFieldCollection = list
        self.Weights = lambda array: array


@pytest.mark.parametrize("path", ["plugin", "onnx"])
@pytest.mark.parametrize("scalars", [0, 5])
def test_the_engine_network_declares_the_scalar_features_with_a_profile(tmp_path, monkeypatch, path, scalars):
    pytest.importorskip("onnx")
    from autojudge.acceptance import engine

    recorder = _Recorder()
    monkeypatch.setattr(engine, "require_tensorrt", lambda: recorder)
    judge = make_judge(24, 40, scalars=scalars)
    spec = engine.EngineSpec(path=path, max_batch=64, max_window=32, opt_batch=8, opt_window=4)
    meta = engine.build_judge_engine(judge, tmp_path / "e", spec, plugin_library=tmp_path / "lib.so")
    names = ["draft_tokens", "target_tokens", "draft_hidden", "target_hidden"] + (
        ["scalar_features"] if scalars else []) + ["threshold"]
    assert list(recorder.inputs) == names == meta["inputs"]
    assert set(recorder.profile) == set(names)  # every input has its range in the profile
    if scalars:
        assert recorder.inputs["scalar_features"].shape == (-1, -1, 5)
        assert recorder.profile["scalar_features"] == ((1, 1, 5), (8, 4, 5), (64, 32, 5))
        assert meta["judge"]["scalar_features"] == list(judge.scalar_features)
    if path == "plugin":
        assert recorder.inputs["scalar_features" if scalars else "target_hidden"].dtype == (
            "float32" if scalars else "bfloat16")
        assert recorder.fields == {"threads": 0, "scalar_feature_size": scalars}
        # the plugin's inputs: the network's, then the weight [Hd + Ht + E] and bias, then the threshold
        assert [name for name, _ in recorder.plugin_inputs] == names[:-1] + ["constant", "constant", "threshold"]
        assert recorder.plugin_inputs[-3][1] == (24 + 40 + scalars,)
    assert (tmp_path / "e" / "judge_accept.plan").read_bytes() == b"plan"


def _tensorrt_include() -> str | None:
    """A folder holding NvInferRuntime.h: TENSORRT_ROOT's include/, else where NGC containers have it."""
    root = os.environ.get("TENSORRT_ROOT")
    for folder in ([os.path.join(root, "include"), root] if root else []) + ["/usr/include/x86_64-linux-gnu"]:
        if os.path.isfile(os.path.join(folder, "NvInferRuntime.h")):
            return folder
    return None


def _cuda_home() -> str | None:
    nvcc = shutil.which("nvcc") or "/usr/local/cuda/bin/nvcc"
    home = os.path.dirname(os.path.dirname(os.path.realpath(nvcc)))
    for candidate in (home, "/usr/local/cuda"):
        if os.path.isfile(os.path.join(candidate, "include", "cuda_runtime_api.h")):
            return candidate
    return None


@pytest.mark.skipif(_tensorrt_include() is None or _cuda_home() is None or shutil.which("g++") is None,
                    reason="needs the TensorRT headers (TENSORRT_ROOT), the CUDA toolkit's headers and g++")
def test_the_plugin_wrapper_runs_on_the_cpu_in_every_input_form(tmp_path):
    """checkWrapper.cpp: the creator, configurePlugin, supportsFormatCombination, onShapeChange and
    enqueue (its launch replaced by the host build of the rule) with and without draft_hidden and
    scalar_features; the wrapper compiled with -Werror."""
    cuda = _cuda_home()
    binary = tmp_path / "checkWrapper"
    build = subprocess.run(["g++", "-std=c++17", "-Wall", "-Wextra", "-Werror", "-DAUTOJUDGE_WITH_CUDA_RUNTIME",
                            "-isystem", _tensorrt_include(), "-isystem", os.path.join(cuda, "include"),
                            "checkWrapper.cpp", "judgeAcceptPlugin.cpp", "judgeAcceptHost.cpp",
                            "-L" + os.path.join(cuda, "lib64"), "-lcudart_static", "-ldl", "-lrt", "-pthread",
                            "-o", str(binary)], cwd=asset("plugin"), capture_output=True, text=True, check=False)
    assert build.returncode == 0, build.stderr
    done = subprocess.run([str(binary)], capture_output=True, text=True, check=False)
    assert done.returncode == 0 and "0 failure(s)" in done.stdout, done.stdout + done.stderr
    assert "target, E = 5: num_accepted 0, 6" in done.stdout
