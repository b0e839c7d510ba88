"""Checks that run before any expensive build step, each with what to do when it fails.

Two kinds:

- ``config``: about the deployment itself (judge sizes against the models, window,
  lengths, tensor-parallel split, tokenizers). They fail ``--dry-run`` too: a plan that
  cannot work is not printed as if it could.
- ``host``: about this machine (GPU, compute capability, TensorRT, TensorRT-LLM, CUDA
  toolkit, CMake, free disk). A real build stops on them; a dry run reports them.

A check whose input is not available offline (a hub model never downloaded) is
``unknown``, never silently ``ok``.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import asdict, dataclass

from autojudge.deploy import lines
from autojudge.deploy.config import DeployConfig
from autojudge.deploy.lines import version_tuple
from autojudge.deploy.model_info import SUPPORTED_ARCHITECTURES, ModelInfo, read_model_info

TENSORRT_LLM_LINE = (1, 2)  # the last line with the TensorRT-engine (trtllm-build) workflow
MIN_TENSORRT = (10, 14)
PYTORCH_LINE = (1, 3)  # TensorRT-LLM lines without TensorRT engines start after 1.2
MIN_COMPUTE_CAPABILITY = (8, 0)
FP8_COMPUTE_CAPABILITY = (8, 9)
TRT_INSTALL = ("pip install 'autojudge[trt]' (tensorrt-llm 1.2.x pulls TensorRT 10.14; Python 3.12, from "
               "https://pypi.nvidia.com) or run inside nvcr.io/nvidia/tritonserver:<yy.mm>-trtllm-python-py3")


@dataclass(frozen=True)
class Check:
    name: str
    kind: str  # "config" or "host"
    status: str  # "ok", "fail" or "unknown"
    detail: str
    fix: str = ""


@dataclass(frozen=True)
class GpuInfo:
    name: str
    compute_capability: tuple[int, int]
    memory_mib: int


class Preflight:
    """All checks for one deployment; models are read once."""

    def __init__(self, config: DeployConfig):
        self.config = config
        self.models: dict[str, ModelInfo | None] = {role: read_model_info(getattr(config, role).model)
                                                    for role in ("draft", "target")}

    def run(self) -> list[Check]:
        return self.config_checks() + self.host_checks()

    # ------------------------------------------------------------------ config
    def config_checks(self) -> list[Check]:
        checks = [self._model(role) for role in ("draft", "target")]
        checks += [self._judge(), self._lengths(), self._tensor_parallel(), self._tokenizers()]
        return checks

    def _model(self, role: str) -> Check:
        spec, info = getattr(self.config, role).model, self.models[role]
        name = f"{role} model"
        if info is None:
            return Check(name, "config", "unknown", f"{spec}: no config.json here (not a local checkpoint and not in "
                         "the Hugging Face cache); its shape is checked when the convert step downloads it",
                         f"huggingface-cli download {spec} (or give a local checkpoint directory) to check it now")
        if info.architecture not in SUPPORTED_ARCHITECTURES:
            return Check(name, "config", "fail", f"{spec}: architecture {info.architecture} is not one this build "
                         "converts", f"use a model of: {', '.join(SUPPORTED_ARCHITECTURES)}")
        return Check(name, "config", "ok", f"{spec}: {info.architecture}, hidden {info.hidden_size}, "
                     f"{info.num_layers} layers, {info.num_parameters / 1e9:.2f}B parameters")

    def _judge(self) -> Check:
        from autojudge.errors import AutoJudgeError
        from autojudge.judge import Judge

        try:
            judge = Judge.load(self.config.judge)
        except AutoJudgeError as exc:
            return Check("judge", "config", "fail", str(exc), "train one with `autojudge-trt train` and set judge:")
        meta = judge.meta
        wanted = [("target", meta.target_hidden_size)]
        if judge.uses_draft_hidden:
            wanted.append(("draft", meta.draft_hidden_size))
        problems, unknown = [], []
        for role, size in wanted:
            info = self.models[role]
            if info is None:
                unknown.append(role)
            elif info.hidden_size != size:
                problems.append(f"the judge expects {role} hidden size {size}, {info.name} has {info.hidden_size}")
        if problems:
            return Check("judge", "config", "fail", f"{self.config.judge}: " + "; ".join(problems),
                         "train the judge on this draft/target pair (autojudge-trt mine + train) or fix draft:/target:")
        if unknown:
            return Check("judge", "config", "unknown", f"{meta.feature_layout} judge; the {' and '.join(unknown)} "
                         "hidden size is unknown offline")
        sizes = " + ".join(f"{role} {size}" for role, size in reversed(wanted))
        return Check("judge", "config", "ok", f"{meta.feature_layout} judge, hidden sizes {sizes} match")

    def _lengths(self) -> Check:
        c = self.config
        for role in ("draft", "target"):
            info = self.models[role]
            if info and info.max_position_embeddings and c.max_seq_len > info.max_position_embeddings:
                return Check("lengths", "config", "fail", f"max_seq_len {c.max_seq_len} exceeds the {role}'s "
                             f"max_position_embeddings {info.max_position_embeddings}",
                             f"set max_seq_len <= {info.max_position_embeddings}")
        return Check("lengths", "config", "ok", f"window {c.window}, input <= {c.max_input_len}, "
                     f"sequence <= {c.max_seq_len}, batch <= {c.max_batch_size}")

    def _tensor_parallel(self) -> Check:
        for role in ("draft", "target"):
            info, tp = self.models[role], self.config.tp(role)
            if info is None or tp == 1:
                continue
            if info.num_heads % tp:
                return Check("tensor parallel", "config", "fail", f"{role}: {info.num_heads} attention heads do not "
                             f"split over tensor_parallel {tp}", f"use a tensor_parallel that divides {info.num_heads}")
            if info.num_kv_heads % tp and tp % info.num_kv_heads:
                return Check("tensor parallel", "config", "fail", f"{role}: {info.num_kv_heads} KV heads neither "
                             f"split over nor replicate onto {tp} GPUs", "use a tensor_parallel that divides (or is a "
                             f"multiple of) {info.num_kv_heads}")
        return Check("tensor parallel", "config", "ok",
                     f"draft x{self.config.tp('draft')}, target x{self.config.tp('target')}")

    def _tokenizers(self) -> Check:
        from autojudge.models import first_vocabulary_difference

        vocabularies = {}
        for role in ("draft", "target"):
            info = self.models[role]
            tokenizer_file = info.directory / "tokenizer.json" if info and info.directory else None
            if tokenizer_file is None or not tokenizer_file.is_file():
                return Check("tokenizers", "config", "unknown", f"the {role}'s tokenizer.json is not available "
                             "offline; TensorRT-LLM speculative decoding needs one shared tokenizer")
            from tokenizers import Tokenizer

            vocabularies[role] = Tokenizer.from_file(str(tokenizer_file)).get_vocab(with_added_tokens=True)
        difference = first_vocabulary_difference(vocabularies["draft"], vocabularies["target"])
        if difference:
            return Check("tokenizers", "config", "fail", f"draft and target tokenizers differ: {difference}",
                         "pick a draft from the target's model family (same tokenizer)")
        return Check("tokenizers", "config", "ok", f"identical vocabularies ({len(vocabularies['target'])} tokens)")

    # ------------------------------------------------------------------ host
    def host_checks(self) -> list[Check]:
        from autojudge.deploy.plan import plan_line
        from autojudge.serving.trtllm.contract import ENGINE_LINE

        line, why = plan_line(self.config)
        gpus = detect_gpus()
        if line == "pytorch":
            return [Check("TensorRT-LLM line", "host", "ok", f"pytorch: {why}"), self._gpu(gpus),
                    self._package("tensorrt_llm", PYTORCH_LINE, None), self._hidden_states(),
                    self._tool("nvcc", "the CUDA toolkit (nvcc) builds the judge-accept op",
                               "install the CUDA toolkit or use an NGC container; put nvcc on PATH"),
                    self._disk()]
        pinned = ", ".join(f"{name} {version}" for name, version in ENGINE_LINE.items())
        return [Check("TensorRT-LLM line", "host", "ok", f"engine: {why}; sources read at {pinned}"), self._gpu(gpus),
                self._package("tensorrt", MIN_TENSORRT, None),
                self._package("tensorrt_llm", TENSORRT_LLM_LINE, TENSORRT_LLM_LINE),
                self._tool("nvcc", "the CUDA toolkit (nvcc) builds the judge-accept plugin",
                           "install the CUDA toolkit or use an NGC container; put nvcc on PATH"),
                self._tool("cmake", "CMake >= 3.24 builds the judge-accept plugin", "pip install cmake"),
                self._disk()]

    def _hidden_states(self) -> Check:
        """Today's line lacks what the judge reads: say exactly what, where, and what autojudge does about it."""
        gap = ("no PyTorch-backend model returns its final-norm hidden states (LlamaForCausalLM.forward returns "
               "only logits: tensorrt_llm/_torch/models/modeling_utils.py, modeling_llama.py), and "
               "SamplingParams.additional_model_outputs returns only what a model's forward puts in its output dict "
               "(tensorrt_llm/_torch/pyexecutor/handle_additional_outputs.py)")
        architectures = {role: info.architecture for role, info in self.models.items() if info is not None}
        other = {role: arch for role, arch in architectures.items() if arch != "LlamaForCausalLM"}
        if other:
            return Check("hidden states", "host", "fail", f"{gap}; autojudge registers a LlamaForCausalLM that does, "
                         f"but {', '.join(f'the {r} is {a}' for r, a in other.items())}",
                         "use Llama-architecture models on today's line, or the engine line (trtllm_line: engine)")
        return Check("hidden states", "host", "unknown", f"{gap}; autojudge registers a LlamaForCausalLM that adds "
                     "them (autojudge/serving/trtllm/llm_api.py register_hidden_state_model): read in source, not "
                     "observed running", "check on the GPU host: autojudge-trt serve a request in judge mode")

    def _gpu(self, gpus: list[GpuInfo]) -> Check:
        needed = max(self.config.tp("draft"), self.config.tp("target"))
        if not gpus:
            return Check("GPU", "host", "fail", "no NVIDIA GPU visible (nvidia-smi found none)",
                         "run the build on the GPU host that will serve the engines")
        first = gpus[0]
        cc = ".".join(map(str, first.compute_capability))
        minimum = FP8_COMPUTE_CAPABILITY if self.config.quantization == "fp8" else MIN_COMPUTE_CAPABILITY
        if first.compute_capability < minimum:
            why = "fp8 needs Ada or Hopper" if self.config.quantization == "fp8" else "TensorRT-LLM 1.2 needs Ampere+"
            return Check("GPU", "host", "fail", f"{first.name} has compute capability {cc}; {why} "
                         f"(>= {'.'.join(map(str, minimum))})", "use a newer GPU or quantization: none")
        if len(gpus) < needed:
            return Check("GPU", "host", "fail", f"tensor_parallel {needed} needs {needed} GPUs; {len(gpus)} visible",
                         "lower tensor_parallel or build on a host with more GPUs (CUDA_VISIBLE_DEVICES)")
        target = self.models["target"]
        if target is not None:
            weights_mib = target.num_parameters * self.config.bytes_per_weight / self.config.tp("target") / 2**20
            if weights_mib > first.memory_mib:
                return Check("GPU", "host", "fail", f"the target's weights take ~{weights_mib / 1024:.0f} GiB per GPU "
                             f"at tensor_parallel {self.config.tp('target')}; {first.name} has "
                             f"{first.memory_mib / 1024:.0f} GiB", "raise tensor_parallel or quantize")
        return Check("GPU", "host", "ok", f"{len(gpus)} x {first.name} (compute capability {cc}, "
                     f"{first.memory_mib / 1024:.0f} GiB)")

    @staticmethod
    def _package(module: str, minimum: tuple[int, int], line: tuple[int, int] | None) -> Check:
        version = lines.installed_version(module)
        wanted = f"{'.'.join(map(str, line))}.x" if line else f">= {'.'.join(map(str, minimum))}"
        if version is None:
            return Check(module, "host", "fail", f"{module} is not installed (needed: {wanted})", TRT_INSTALL)
        parts = version_tuple(version)
        if parts < minimum or (line is not None and parts[:2] != line):
            note = (" - later lines dropped the TensorRT-engine workflow this build uses" if module == "tensorrt_llm"
                    else "")
            return Check(module, "host", "fail", f"{module} {version} is installed; this build needs {wanted}{note}",
                         TRT_INSTALL)
        return Check(module, "host", "ok", f"{module} {version}")

    @staticmethod
    def _tool(tool: str, why: str, fix: str) -> Check:
        path = shutil.which(tool)
        if path is None:
            return Check(tool, "host", "fail", f"{tool} not found on PATH: {why}", fix)
        return Check(tool, "host", "ok", path)

    def _disk(self) -> Check:
        needed = self.disk_estimate()
        existing = self.config.output_dir
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent
        free = shutil.disk_usage(existing).free
        if needed is None:
            return Check("disk", "host", "unknown", f"{free / 2**30:.0f} GiB free at {existing}; the models' sizes "
                         "are unknown offline")
        if free < needed:
            return Check("disk", "host", "fail", f"{free / 2**30:.1f} GiB free at {existing}; checkpoints and engines "
                         f"need ~{needed / 2**30:.1f} GiB", "free space or point output_dir at a larger disk")
        return Check("disk", "host", "ok", f"{free / 2**30:.0f} GiB free, ~{needed / 2**30:.1f} GiB needed")

    def disk_estimate(self) -> int | None:
        """Bytes for the converted checkpoints plus the engines of both models (x1.1 headroom)."""
        if any(info is None for info in self.models.values()):
            return None
        weights = sum(info.num_parameters for info in self.models.values()) * self.config.bytes_per_weight
        return int(2 * weights * 1.1)


def detect_gpus() -> list[GpuInfo]:
    """GPUs from nvidia-smi (no CUDA context is created); [] when there is none."""
    if shutil.which("nvidia-smi") is None:
        return []
    done = subprocess.run(["nvidia-smi", "--query-gpu=name,compute_cap,memory.total",
                           "--format=csv,noheader,nounits"], capture_output=True, text=True, check=False)
    gpus = []
    for line in done.stdout.splitlines() if done.returncode == 0 else []:
        name, cc, memory = (part.strip() for part in line.split(","))
        gpus.append(GpuInfo(name, version_tuple(cc)[:2], int(float(memory))))
    return gpus


def checks_as_json(checks: list[Check]) -> list[dict]:
    return [asdict(check) for check in checks]

