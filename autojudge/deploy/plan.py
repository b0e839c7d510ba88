"""The build plan: every step, its commands and its output directory, decided up front.

Steps, in order (the ONNX judge path skips ``judge-plugin``)::

    draft-checkpoint   build/convert_checkpoint.py   HF -> TensorRT-LLM checkpoint (one per TP rank)
    draft-engine       build/build_engine.py         engine, final-norm hidden states marked as an output,
                                                      paged context attention (KV-cache block reuse)
    target-checkpoint  build/convert_checkpoint.py
    target-engine      build/build_engine.py         the same: verified by a context pass over prefix + drafts
                                                      (no external-draft mode, no gathered logits: build_engine.py)
    judge-plugin       cmake                         libautojudge_judge_accept_plugin.so
    judge-engine       autojudge-trt build judge     judge_accept.plan
    triton-repo        autojudge-trt repo            the TensorRT-LLM flavour of the Triton repository

A command's output argument is :data:`OUTPUT`: the runner substitutes a temporary
directory and renames it into place when every command of the step succeeded, so an
interrupted step never leaves an output that a later run trusts.
"""

from __future__ import annotations

import hashlib
import json
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path

from autojudge.deploy.config import DeployConfig
from autojudge.serving.trtllm.contract import HIDDEN_OUTPUT
from autojudge.storage import asset

OUTPUT = "{OUTPUT}"  # placeholder for the step's output directory in its commands
PLUGIN_LIBRARY = "libautojudge_judge_accept_plugin.so"


@dataclass(frozen=True)
class Step:
    name: str
    title: str
    commands: tuple[tuple[str, ...], ...]
    output: Path
    inputs: tuple[str, ...] = ()  # local files/directories whose content the output depends on
    after: tuple[str, ...] = ()  # steps whose outputs this one reads
    env: dict[str, str] = field(default_factory=dict)

    def rendered(self, output: Path | None = None) -> list[list[str]]:
        target = str(output or self.output)
        return [[target if arg == OUTPUT else arg.replace(OUTPUT, target) for arg in command]
                for command in self.commands]

    def shell(self) -> list[str]:
        return [shlex.join(command) for command in self.rendered()]


def engine_paths(config: DeployConfig) -> dict[str, Path]:
    """Where the build puts what the Triton repository points at (one definition for both)."""
    engines = config.output_dir / "engines"
    return {"draft": engines / "draft", "target": engines / "target",
            "judge_accept": engines / "judge_accept" / "judge_accept.plan",
            "plugin": config.output_dir / "plugin" / PLUGIN_LIBRARY}


def plan_line(config: DeployConfig) -> tuple[str, str]:
    """(line, why): the TensorRT-LLM line this build is for (:mod:`autojudge.deploy.lines`)."""
    from autojudge.deploy import lines

    return lines.resolve_line(config.trtllm_line, lines.installed_version("tensorrt_llm"))


def make_plan(config: DeployConfig, config_path: Path) -> list[Step]:
    if plan_line(config)[0] == "pytorch":
        return _pytorch_plan(config, config_path)
    out, scripts, py = config.output_dir, asset("build_steps"), sys.executable
    paths = engine_paths(config)
    cli = (py, "-m", "autojudge.cli")
    steps: list[Step] = []
    for role in ("draft", "target"):
        spec = getattr(config, role)
        checkpoint, engine = out / "checkpoints" / role, paths[role]
        local = (spec.model,) if Path(spec.model).is_dir() else ()
        steps.append(Step(
            f"{role}-checkpoint", f"convert the {role} ({spec.model}) to a TensorRT-LLM checkpoint",
            ((py, str(scripts / "convert_checkpoint.py"), "--model", spec.model, "--dtype", config.dtype,
              "--quantization", config.quantization, "--tp-size", str(config.tp(role)), "--out", OUTPUT),),
            checkpoint, inputs=local))
        engine_args = [py, str(scripts / "build_engine.py"), "--checkpoint", str(checkpoint),
                       "--max-batch-size", str(config.max_batch_size), "--max-input-len", str(config.max_input_len),
                       "--max-seq-len", str(config.max_seq_len), "--hidden-output", HIDDEN_OUTPUT]
        returns = (f"{HIDDEN_OUTPUT} at every context token (a context pass over prefix + drafts verifies; no "
                   "external-draft mode, no gathered logits)" if role == "target"
                   else f"{HIDDEN_OUTPUT} at every generation step")
        steps.append(Step(
            f"{role}-engine", f"build the {role} engine (TP {config.tp(role)}; returns {returns})",
            (tuple(engine_args + ["--out", OUTPUT]),), engine, after=(f"{role}-checkpoint",)))
    judge_args = [*cli, "build", "judge", "--judge", str(config.judge), "--path", config.judge_engine,
                  "--hidden-dtype", config.dtype, "--max-batch", str(config.max_batch_size),
                  "--max-window", str(config.window)]
    judge_after: tuple[str, ...] = ()
    if config.judge_engine == "plugin":
        plugin = paths["plugin"].parent
        steps.append(Step(
            "judge-plugin", "compile the judge-accept TensorRT plugin (CMake, CUDA)",
            (("cmake", "-S", str(asset("plugin")), "-B", OUTPUT, "-DCMAKE_BUILD_TYPE=Release"),
             ("cmake", "--build", OUTPUT, "-j")), plugin, inputs=(str(asset("plugin")),)))
        judge_args += ["--plugin-library", str(paths["plugin"])]
        judge_after = ("judge-plugin",)
    loading = ("served in the decoding model, which registers the plugin with IPluginRegistry.load_library "
               "(getCreators) before it deserializes the plan" if config.judge_engine == "plugin"
               else "served in the decoding model; no plugin to load")
    steps.append(Step("judge-engine", f"build the judge-accept engine ({config.judge_engine} path; {loading})",
                      (tuple(judge_args + ["--out", OUTPUT]),), paths["judge_accept"].parent,
                      inputs=(str(config.judge),), after=judge_after))
    steps.append(_repo_step(config, config_path, "executor", steps))
    return steps


def _repo_step(config: DeployConfig, config_path: Path, runner: str, steps: list[Step]) -> Step:
    launch = "; ".join(f"the {role} {runner} (TP {config.tp(role)}) orchestrates {config.tp(role)} spawned ranks on "
                       f"GPUs {','.join(map(str, range(config.tp(role))))}" if config.tp(role) > 1
                       else f"the {role} {runner} runs in it on GPU 0" for role in ("draft", "target"))
    return Step(
        "triton-repo", f"write the Triton model repository (TensorRT-LLM flavour; served by one tritonserver "
        f"process: {launch})",
        ((sys.executable, "-m", "autojudge.cli", "repo", "--flavour", "tensorrt-llm", "--config",
          str(config_path.resolve()), "--out", OUTPUT, "--force"),),
        config.output_dir / "triton_repo", inputs=(str(config_path.resolve()),),
        after=tuple(step.name for step in steps))


def checkpoint_paths(config: DeployConfig) -> dict[str, Path]:
    """Today's line: where each model's Hugging Face checkpoint is (a local one is used in place)."""
    return {role: Path(getattr(config, role).model) if Path(getattr(config, role).model).is_dir()
            else config.output_dir / "checkpoints" / role for role in ("draft", "target")}


def _pytorch_plan(config: DeployConfig, config_path: Path) -> list[Step]:
    """Today's line: no engines. Hub checkpoints are downloaded, the judge-accept op's CUDA kernel is
    compiled (nvcc; the op's CPU side is the g++ host build), the repository is written."""
    py, steps = sys.executable, []
    for role, path in checkpoint_paths(config).items():
        model = getattr(config, role).model
        if not Path(model).is_dir():
            steps.append(Step(
                f"{role}-checkpoint", f"download the {role} checkpoint ({model}); served by tensorrt_llm.LLM "
                "(PyTorch backend, no engine)",
                ((py, "-c", "import sys; from huggingface_hub import snapshot_download; "
                  "snapshot_download(sys.argv[1], local_dir=sys.argv[2])", model, OUTPUT),), path))
    steps.append(Step(
        "judge-op", "compile the judge-accept op (torch.ops.autojudge.judge_accept: the plugin's CUDA kernel, nvcc)",
        ((py, "-c", "import shutil, sys; from autojudge.acceptance.plugin import build_cuda_library; "
          "shutil.copy(build_cuda_library(), sys.argv[1])", f"{OUTPUT}/libjudgeAcceptKernel.so"),),
        config.output_dir / "judge_op", inputs=(str(asset("plugin")),)))
    steps.append(_repo_step(config, config_path, "LLM", steps))
    return steps


def step_hashes(steps: list[Step]) -> dict[str, str]:
    """A hash per step over its commands, its local inputs' fingerprints and its upstream hashes."""
    hashes: dict[str, str] = {}
    for step in steps:
        record = {"commands": [list(c) for c in step.commands], "output": str(step.output), "env": step.env,
                  "inputs": {path: fingerprint(Path(path)) for path in step.inputs},
                  "after": {name: hashes[name] for name in step.after}}
        hashes[step.name] = hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()
    return hashes


def fingerprint(path: Path) -> str:
    """Content identity of a file or directory: names, sizes and modification times (no reading of
    multi-GB weights); small files (< 1 MiB: configs, judge artifacts) are hashed by content."""
    digest = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else []
    for file in files:
        stat = file.stat()
        digest.update(f"{file.relative_to(path) if file != path else file.name}\0{stat.st_size}\0".encode())
        digest.update(file.read_bytes() if stat.st_size < 2**20 else str(stat.st_mtime_ns).encode())
    return digest.hexdigest()
