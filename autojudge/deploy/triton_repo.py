"""``autojudge-trt repo --flavour tensorrt-llm``: the Triton repository of a TensorRT-LLM build.

Output layout (``--out DEPLOY``; engine paths from the deployment description)::

    DEPLOY/models/draft/config.pbtxt          tensorrtllm backend -> output_dir/engines/draft
    DEPLOY/models/target/config.pbtxt         tensorrtllm backend -> output_dir/engines/target
    DEPLOY/models/judge_accept/config.pbtxt   TensorRT plan; 1/model.plan links to the engine
    DEPLOY/models/autojudge[_stream]/         the BLS: SpeculativeLoop over TensorRTLLMBackend
    DEPLOY/artifacts/judge/                   the judge's metadata (threshold, layout)
    DEPLOY/deployment.json                    settings and the command that serves it

Every config.pbtxt is parsed against Triton's ModelConfig before anything is written.
"""

from __future__ import annotations

from pathlib import Path

from autojudge.deploy.config import DeployConfig
from autojudge.deploy.model_info import read_model_info
from autojudge.deploy.plan import engine_paths
from autojudge.errors import AutoJudgeError
from autojudge.judge import Judge
from autojudge.serving.repo import ExtraModel, RepoSettings, render, write_repo
from autojudge.serving.trtllm.contract import HIDDEN_OUTPUT
from autojudge.storage import asset

HIDDEN_TYPES = {"bfloat16": "TYPE_BF16", "float16": "TYPE_FP16"}
KV_CACHE_FRACTION = {"draft": "0.2", "target": "0.6"}  # of free GPU memory when each loads


def serve_command(config: DeployConfig, models: Path) -> str:
    world = max(config.tp("draft"), config.tp("target"))
    launch = f"mpirun --allow-run-as-root -n {world} " if world > 1 else ""
    plugins = (f" --backend-config=tensorrt,plugins={engine_paths(config)['plugin']}"
               if config.judge_engine == "plugin" else "")
    return f"{launch}tritonserver --model-repository {models}{plugins}"


def write_trtllm_repo(out: str | Path, config: DeployConfig, force: bool = False, check_engines: bool = True,
                      default_mode: str = "judge", max_tokens: int = 128) -> Path:
    """Write the repository; with ``check_engines`` every engine must exist already."""
    paths = engine_paths(config)
    if check_engines:
        missing = [str(p) for key, p in paths.items() if not p.exists() and (key != "plugin" or
                                                                             config.judge_engine == "plugin")]
        if missing:
            raise AutoJudgeError(f"engines missing: {', '.join(missing)}. Build them first (autojudge-trt build "
                                 "--config ...), or pass --no-engine-check to write the repository anyway.")
    judge = Judge.load(config.judge)
    hidden_type = HIDDEN_TYPES[config.dtype]
    sizes = {"draft": judge.meta.draft_hidden_size, "target": judge.meta.target_hidden_size}
    for role in ("draft", "target"):  # the judge's sizes are the models' (preflight checks it)
        info = read_model_info(getattr(config, role).model)
        if info is not None:
            sizes[role] = info.hidden_size
    root = asset("triton_repo") / "tensorrt_llm"
    llm_template = (root / "llm" / "config.pbtxt").read_text()
    extra = {role: ExtraModel(render(llm_template, {
        "model_name": role, "max_batch_size": str(config.max_batch_size), "hidden_output": HIDDEN_OUTPUT,
        "hidden_type": hidden_type, "hidden_size": str(sizes[role]), "engine_dir": str(paths[role]),
        "kv_cache_fraction": KV_CACHE_FRACTION[role]}, f"{root / 'llm' / 'config.pbtxt'} (as {role})"))
        for role in ("draft", "target")}
    draft_hidden = (f'\n  {{ name: "draft_hidden" data_type: {hidden_type} dims: [ -1, -1, {sizes["draft"]} ] }},'
                    if judge.uses_draft_hidden else "")
    judge_template = (root / "judge_accept" / "config.pbtxt").read_text()
    # draft_hidden_input is pbtxt, not a string value: substitute it before render() escapes values
    judge_text = render(judge_template.replace("${draft_hidden_input}", draft_hidden),
                        {"hidden_type": hidden_type, "target_hidden_size": str(sizes["target"])},
                        str(root / "judge_accept" / "config.pbtxt"))
    extra["judge_accept"] = ExtraModel(judge_text, {"model.plan": paths["judge_accept"]})
    settings = RepoSettings(target=config.target.model, draft=config.draft.model, judge=config.judge,
                            window=config.window, default_mode=default_mode, max_tokens=max_tokens,
                            max_tokens_limit=config.max_seq_len - 1, instances=1, device="cpu",
                            dtype=config.dtype, torch_threads=1, backend="tensorrt-llm",
                            max_window=config.window)  # the target engine's max_draft_len
    out = Path(out)
    details = {"engines": {key: str(p) for key, p in paths.items()},
               "serve": serve_command(config, out.resolve() / "models")}
    return write_repo(out, settings, force=force, extra_models=extra, details=details)
