"""``autojudge-trt repo``: a Triton model repository for one deployment, from ``triton_repo/``.

Output layout (``--out DEPLOY``)::

    DEPLOY/models/autojudge/config.pbtxt          unary (HTTP, gRPC): forwards to autojudge_stream
    DEPLOY/models/autojudge/1/model.py
    DEPLOY/models/autojudge_stream/config.pbtxt   decoupled: gRPC streaming; decodes, one running batch per instance
    DEPLOY/models/autojudge_stream/1/model.py
    DEPLOY/artifacts/judge/                       a copy of the judge artifact (if any)
    DEPLOY/deployment.json                        the settings, for people and tools

Every ``${...}`` of the template is filled or the write fails, naming what is missing; every
config.pbtxt is parsed against Triton's ModelConfig protobuf before anything is written.
The directory appears by one atomic rename: a failed write leaves nothing behind.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

from autojudge.decoding.config import MAX_WINDOW, MODES
from autojudge.errors import AutoJudgeError, MissingDependencyError
from autojudge.storage import asset, atomic_directory

PLACEHOLDER = re.compile(r"\$\{(\w+)\}")
MODELS = {"autojudge": False, "autojudge_stream": True}  # name -> decoupled
STREAM_MODEL = "autojudge_stream"  # the one that decodes; "autojudge" forwards to it


@dataclass(frozen=True)
class RepoSettings:
    target: str = "embedded"
    draft: str = ""  # "" = the target's own draft (a packaged pair: embedded, testbed)
    judge: Path | None = None
    window: int = 4
    threshold: float | None = None  # None: the judge's calibrated threshold
    default_mode: str = "lossless"
    max_tokens: int = 128
    max_tokens_limit: int = 1024
    instances: int = 1  # instances of the decoding model, each with its own running batch
    max_batch: int = 16  # requests decoded together per instance (1 = one request at a time)
    max_queue: int = 64  # requests waiting per instance beyond a full batch; one more is refused
    prefill_chunk: int = 256  # prompt tokens a cycle feeds, shared by the requests joining
    unary_instances: int = 4  # forwarding instances of "autojudge": unary requests in flight (each a process)
    device: str = "cpu"
    dtype: str = "float32"
    torch_threads: int = 0  # per model instance; 0 = the machine's cores / instances
    backend: str = "in-process"  # what the autojudge models decode with: in-process | tensorrt-llm
    max_window: int = MAX_WINDOW  # the largest window a request may ask for (tensorrt-llm: the deployment's)

    def threads(self) -> int:
        import os

        return self.torch_threads or max(1, (os.cpu_count() or 1) // self.instances)

    def check(self) -> None:
        if self.default_mode not in MODES:
            raise AutoJudgeError(f"default mode {self.default_mode!r} is not one of {', '.join(MODES)}")
        if self.default_mode == "judge" and self.judge is None:
            raise AutoJudgeError("default mode 'judge' needs --judge (a judge artifact)")
        if not 1 <= self.max_window <= MAX_WINDOW:
            raise AutoJudgeError(f"max window must be in 1..{MAX_WINDOW}, got {self.max_window}")
        if not 1 <= self.window <= self.max_window:
            raise AutoJudgeError(f"window must be in 1..{self.max_window}, got {self.window}")
        if self.threshold is not None and not 0 <= self.threshold <= 1:
            raise AutoJudgeError(f"threshold must be in [0, 1], got {self.threshold}")
        if not 1 <= self.max_tokens <= self.max_tokens_limit:
            raise AutoJudgeError(f"max tokens {self.max_tokens} must be in 1..{self.max_tokens_limit}")
        for name in ("instances", "max_batch", "prefill_chunk", "unary_instances"):
            if getattr(self, name) < 1:
                raise AutoJudgeError(f"{name.replace('_', ' ')} must be >= 1, got {getattr(self, name)}")
        if self.max_queue < 0:
            raise AutoJudgeError(f"max queue must be >= 0, got {self.max_queue}")


def _pbtxt_string(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"')


def validate_config(text: str, where: str):
    """Parse ``text`` as a Triton ModelConfig (unknown fields, bad enums: errors)."""
    try:
        from google.protobuf import text_format
        from tritonclient.grpc import model_config_pb2
    except ImportError as exc:
        raise MissingDependencyError("validating Triton configs needs tritonclient: "
                                     "pip install 'autojudge[serve]'") from exc
    if PLACEHOLDER.search(text):
        missing = sorted(set(PLACEHOLDER.findall(text)))
        raise AutoJudgeError(f"{where}: placeholders left unfilled: {', '.join(missing)}")
    try:
        return text_format.Parse(text, model_config_pb2.ModelConfig())
    except text_format.ParseError as exc:
        raise AutoJudgeError(f"{where} is not a valid Triton model config: {exc}") from exc


def render(template: str, values: dict[str, str], where: str) -> str:
    missing = sorted(set(PLACEHOLDER.findall(template)) - set(values))
    if missing:
        raise AutoJudgeError(f"{where}: no value for placeholders {', '.join(missing)}")
    return PLACEHOLDER.sub(lambda m: _pbtxt_string(values[m.group(1)]), template)


@dataclass(frozen=True)
class ExtraModel:
    """A model written beside the autojudge models (the TensorRT-LLM flavour's engines)."""

    config: str  # a rendered config.pbtxt
    links: dict[str, Path] = field(default_factory=dict)  # file in the version folder -> where it really is


def write_repo(out: str | Path, settings: RepoSettings, force: bool = False,
               extra_models: dict[str, ExtraModel] | None = None, details: dict | None = None,
               parameters: dict[str, dict[str, str]] | None = None) -> Path:
    """Write the deployment directory ``out`` (see the module doc); return its models/ path.
    ``parameters``: more config.pbtxt parameters, by model name."""
    settings.check()
    out = Path(out)
    if out.exists() and not force:
        raise AutoJudgeError(f"{out} already exists; choose another --out or pass --force to replace it")
    if settings.judge is not None:
        from autojudge.judge import Judge

        Judge.load(settings.judge)  # refuse a broken artifact now, not when the server starts
    source = asset("triton_repo") / "python" / "autojudge"
    template = (source / "config.pbtxt").read_text()
    values = {
        "target": settings.target, "draft": settings.draft,
        # relative to the model's directory; DecodeService resolves it there
        "judge": "../../artifacts/judge" if settings.judge else "",
        "dtype": settings.dtype, "device": settings.device, "default_mode": settings.default_mode,
        "window": str(settings.window), "max_window": str(settings.max_window),
        "threshold": "" if settings.threshold is None else repr(settings.threshold),
        "max_tokens": str(settings.max_tokens), "max_tokens_limit": str(settings.max_tokens_limit),
        "torch_threads": str(settings.threads()), "backend": settings.backend,
        "max_batch": str(settings.max_batch), "max_queue": str(settings.max_queue),
        "prefill_chunk": str(settings.prefill_chunk),
    }
    # KIND_GPU makes one instance per GPU; a TensorRT-LLM executor places itself (device_ids): KIND_CPU
    decoding_kind = "KIND_CPU" if settings.device == "cpu" or settings.backend == "tensorrt-llm" else "KIND_GPU"
    per_model = {"autojudge": {"instances": str(settings.unary_instances), "instance_kind": "KIND_CPU",
                               "forward_to": STREAM_MODEL},
                 STREAM_MODEL: {"instances": str(settings.instances), "instance_kind": decoding_kind, "forward_to": ""}}
    rendered = {}
    for name, decoupled in MODELS.items():
        text = render(template, {**values, **per_model[name], "model_name": name, "decoupled": str(decoupled).lower()},
                      f"{source / 'config.pbtxt'} (as {name})")
        text += "".join(f'parameters {{ key: "{key}" value: {{ string_value: "{_pbtxt_string(value)}" }} }}\n'
                        for key, value in (parameters or {}).get(name, {}).items())
        validate_config(text, f"{name}/config.pbtxt")
        rendered[name] = text
    extra_models = extra_models or {}
    for name, model in extra_models.items():
        validate_config(model.config, f"{name}/config.pbtxt")
    if force and out.exists():
        shutil.rmtree(out)
    with atomic_directory(out) as tmp:
        for name, text in rendered.items():
            (tmp / "models" / name / "1").mkdir(parents=True)
            (tmp / "models" / name / "config.pbtxt").write_text(text)
            shutil.copy2(source / "1" / "model.py", tmp / "models" / name / "1" / "model.py")
        for name, model in extra_models.items():
            (tmp / "models" / name / "1").mkdir(parents=True)
            (tmp / "models" / name / "config.pbtxt").write_text(model.config)
            for file_name, real in model.links.items():
                (tmp / "models" / name / "1" / file_name).symlink_to(Path(real).resolve())
        if settings.judge is not None:
            shutil.copytree(Path(settings.judge), tmp / "artifacts" / "judge")
        flavour = "python" if settings.backend == "in-process" else settings.backend
        manifest = {"format": "autojudge.deployment/v1", "flavour": flavour, "models": [*MODELS, *extra_models],
                    **{k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(settings).items()},
                    **(details or {})}
        (tmp / "deployment.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return out / "models"


def model_repository(path: str | Path) -> Path:
    """Accept a deployment directory (with models/) or a Triton model repository."""
    path = Path(path)
    if (path / "models").is_dir():
        path = path / "models"
    if not path.is_dir() or not any(p.joinpath("config.pbtxt").is_file() for p in path.iterdir() if p.is_dir()):
        raise AutoJudgeError(f"{path} is not a Triton model repository (no <model>/config.pbtxt inside); "
                             "write one with `autojudge-trt repo --out DIR`")
    return path
