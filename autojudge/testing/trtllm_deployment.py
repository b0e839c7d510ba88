"""A TensorRT-LLM deployment whose engines are the emulations of :mod:`autojudge.testing`.

:func:`emulated_backend` gives the serving backend over in-memory models (tests of the
orchestration); :func:`build_emulated_engines` runs the build plan's own engine commands
(``build/build_engine.py``) against the emulated builder and writes the judge-accept plan and
plugin library stand-ins where a real build puts them, so a repository written by
``write_trtllm_repo`` serves in a real tritonserver on a CPU.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import torch

from autojudge.serving.trtllm.backend import ExecutorClient, TensorRTLLMBackend
from autojudge.serving.trtllm.contract import HIDDEN_OUTPUT
from autojudge.serving.trtllm.judge_engine import TensorRTJudgeAccept
from autojudge.serving.trtllm.loader import open_executor
from autojudge.testing import tensorrt_runtime, trtllm_executor
from autojudge.testing.trtllm_builder import build_engine, write_checkpoint

RUNTIME = {"executor_api": trtllm_executor.__name__, "tensorrt_api": tensorrt_runtime.__name__}
_names = itertools.count()


def emulated_backend(root: Path, target, draft, judge=None, dtype: str = "float32", judge_path: str = "plugin",
                     max_window: int = 64, eos_token_ids: frozenset[int] = frozenset()) -> TensorRTLLMBackend:
    """The serving backend over engines built (emulated) from two in-memory CausalLMs."""
    engines = {}
    for role, lm in (("draft", draft), ("target", target)):
        spec = trtllm_executor.register_model(f"{role}-{next(_names)}", lm)
        checkpoint = write_checkpoint(root / "checkpoints" / role, spec, dtype)
        engines[role] = root / "engines" / role
        build_engine("--checkpoint", checkpoint, "--hidden-output", HIDDEN_OUTPUT, "--out", engines[role])
    api = trtllm_executor
    end_id = min(eos_token_ids) if eos_token_ids else None
    draft_client = ExecutorClient(api, open_executor(api, str(engines["draft"]), False, 1, [0], 0.2, None), end_id)
    target_client = ExecutorClient(api, open_executor(api, str(engines["target"]), True, 1, [0], 0.6, None), end_id)
    judge_accept = None
    if judge is not None:
        hidden = "float32" if dtype == "float64" else dtype  # the kernel reads fp32/fp16/bf16 states
        plan = tensorrt_runtime.write_plan(judge, root / "judge_accept", judge_path, hidden)
        library = tensorrt_runtime.write_plugin_library(root / "plugin" / "lib.json") if judge_path == "plugin" else None
        judge_accept = TensorRTJudgeAccept(tensorrt_runtime, plan, library, torch.device("cpu"))
    return TensorRTLLMBackend(draft_client, target_client, target.logits, min(target.vocab_size, draft.vocab_size), target.tokenizer,
                              eos_token_ids, judge, judge_accept, max_window=max_window)


def build_emulated_engines(config, config_path: Path, target: str, draft: str) -> None:
    """The engines, plugin library and judge-accept plan of ``config``'s build, emulated: the engine
    steps run the plan's own ``build_engine.py`` command lines."""
    from autojudge.deploy.plan import engine_paths, make_plan
    from autojudge.judge import Judge

    steps = {step.name: step for step in make_plan(config, config_path)}
    paths = engine_paths(config)
    for role, spec in (("draft", draft), ("target", target)):
        write_checkpoint(config.output_dir / "checkpoints" / role, spec, config.dtype, config.tp(role),
                         draft_of=target if role == "draft" else None)
        (command,) = steps[f"{role}-engine"].rendered(paths[role])
        build_engine(*command[2:])  # the plan's arguments, after the interpreter and the script
    judge = Judge.load(config.judge)
    tensorrt_runtime.write_plan(judge, paths["judge_accept"].parent, config.judge_engine, config.dtype)
    if config.judge_engine == "plugin":
        tensorrt_runtime.write_plugin_library(paths["plugin"])
