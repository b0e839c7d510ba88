"""``autojudge-trt repo --flavour tensorrt-llm``: the Triton repository of a TensorRT-LLM build.

Output layout (``--out DEPLOY``; engine paths from the deployment description)::

    DEPLOY/models/autojudge_stream/   decoupled Python model: SpeculativeLoop over TensorRTLLMBackend, which
                                      opens the draft and target executors and the judge-accept engine
    DEPLOY/models/autojudge/          Python model answering one response per request (HTTP, gRPC) by
                                      forwarding to autojudge_stream: the engines are loaded once
    DEPLOY/artifacts/judge/           the judge's metadata (threshold, layout)
    DEPLOY/deployment.json            settings and the command that serves it

No model of the repository uses the tensorrtllm or tensorrt backends: the stock tensorrtllm
backend returns neither marked engine outputs nor the target's numbers at rejected draft
positions, and the tensorrt backend only dlopens plugin libraries (see
:mod:`autojudge.serving.trtllm.backend` and :mod:`autojudge.serving.trtllm.judge_engine`).
Every config.pbtxt is parsed against Triton's ModelConfig before anything is written.
"""

from __future__ import annotations

from pathlib import Path

from autojudge.deploy.config import DeployConfig
from autojudge.deploy.plan import checkpoint_paths, engine_paths, plan_line
from autojudge.errors import AutoJudgeError
from autojudge.serving.repo import RepoSettings, write_repo

KV_CACHE_FRACTION = {"draft": "0.2", "target": "0.6"}  # of free GPU memory when each executor opens
STREAM_MODEL = "autojudge_stream"


def serve_command(models: Path) -> str:
    """One server process for any tensor parallelism: a TP > 1 executor orchestrates its own workers."""
    return f"tritonserver --model-repository {models}"


def engine_parameters(config: DeployConfig, line: str) -> dict[str, str]:
    """What the decoding model opens (:mod:`autojudge.serving.trtllm.loader`) on ``line``."""
    if line == "pytorch":
        params = {"trtllm_line": "pytorch"}
        for role, path in checkpoint_paths(config).items():
            params.update({f"{role}_model": str(path), f"{role}_tp": str(config.tp(role)),
                           f"{role}_kv_fraction": KV_CACHE_FRACTION[role]})
        return params
    paths = engine_paths(config)
    params = {"trtllm_line": "engine", "judge_plan": str(paths["judge_accept"]),
              "plugin_library": str(paths["plugin"]) if config.judge_engine == "plugin" else ""}
    for role in ("draft", "target"):
        tp = config.tp(role)
        params.update({f"{role}_engine": str(paths[role]), f"{role}_tp": str(tp),
                       f"{role}_device_ids": ",".join(str(i) for i in range(tp)),
                       f"{role}_kv_fraction": KV_CACHE_FRACTION[role]})
    return params


def _built_paths(config: DeployConfig, line: str) -> dict[str, Path]:
    if line == "pytorch":
        return checkpoint_paths(config)
    return {key: p for key, p in engine_paths(config).items() if key != "plugin" or config.judge_engine == "plugin"}


def write_trtllm_repo(out: str | Path, config: DeployConfig, force: bool = False, check_engines: bool = True,
                      default_mode: str = "judge", max_tokens: int = 128, device: str = "cuda",
                      runtime: dict[str, str] | None = None) -> Path:
    """Write the repository; with ``check_engines`` every engine must exist already. ``runtime``
    names other executor / TensorRT modules (``executor_api``, ``tensorrt_api``: CI's emulations)."""
    line = plan_line(config)[0]
    paths = _built_paths(config, line)
    if check_engines:
        missing = [str(p) for p in paths.values() if not p.exists()]
        if missing:
            raise AutoJudgeError(f"engines missing: {', '.join(missing)}. Build them first (autojudge-trt build "
                                 "--config ...), or pass --no-engine-check to write the repository anyway.")
    target = str(checkpoint_paths(config)["target"]) if line == "pytorch" else config.target.model
    settings = RepoSettings(target=target, draft=config.draft.model, judge=config.judge,
                            window=config.window, default_mode=default_mode, max_tokens=max_tokens,
                            max_tokens_limit=config.max_seq_len - 1, instances=1, device=device,
                            dtype=config.dtype, torch_threads=1, backend="tensorrt-llm",
                            max_window=config.window, max_batch=config.max_batch_size, unary_instances=2)
    out = Path(out)
    details = {"trtllm_line": line, "engines" if line == "engine" else "checkpoints": {k: str(p) for k, p in paths.items()},
               "serve": serve_command(out.resolve() / "models")}
    return write_repo(out, settings, force=force, details=details,
                      parameters={STREAM_MODEL: {**engine_parameters(config, line), **(runtime or {})}})
