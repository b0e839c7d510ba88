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
