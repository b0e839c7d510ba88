"""Open a TensorRT-LLM deployment's backend from the served model's parameters.

Parameters (config.pbtxt of ``autojudge_stream``, written by ``autojudge-trt repo --flavour
tensorrt-llm``): ``target`` (Hugging Face checkpoint: tokenizer and LM head), ``draft_engine``,
``target_engine``, ``draft_tp``, ``target_tp``, ``draft_device_ids``, ``target_device_ids``,
``draft_kv_fraction``, ``target_kv_fraction``, ``judge_plan``, ``plugin_library`` (empty on the
ONNX path), ``executor_worker`` (TP > 1; default: the wheel's), ``dtype``, ``device``,
``max_window``, and ``executor_api`` / ``tensorrt_api`` (the modules to drive; CI points them
at the emulations in :mod:`autojudge.testing`).
"""

from __future__ import annotations

import importlib
from pathlib import Path

import torch

from autojudge.errors import AutoJudgeError, MissingDependencyError
from autojudge.serving.trtllm.backend import ExecutorClient, LMHead, TensorRTLLMBackend
from autojudge.serving.trtllm.contract import ENGINE_LINE, EXECUTOR_API, EXECUTOR_WORKER, HIDDEN_OUTPUT, TENSORRT_API
from autojudge.serving.trtllm.judge_engine import TensorRTJudgeAccept

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


def _module(name: str, what: str):
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        raise MissingDependencyError(
            f"serving the TensorRT-LLM flavour needs {what} ({name}), from TensorRT-LLM {ENGINE_LINE['tensorrt_llm']} "
            f"with TensorRT {ENGINE_LINE['tensorrt']}: run it in nvcr.io/nvidia/tritonserver:<yy.mm>-trtllm-python-py3 "
            "or pip install 'autojudge[trt]' on a GPU host") from exc


def _device_ids(text: str, tp: int) -> list[int]:
    ids = [int(part) for part in text.split(",") if part.strip()] if text else list(range(tp))
    if len(ids) != tp:
        raise AutoJudgeError(f"{len(ids)} device ids ({text!r}) for an engine with tensor parallelism {tp}")
    return ids


def open_executor(api, engine_dir: str, gather_context: bool, tp: int, device_ids: list[int], kv_fraction: float,
                  worker: str | None):
    """One executor over an engine directory, returning the hidden-state output the backend reads."""
    if tp > 1:
        # One process (the Triton Python model) cannot be the MPI world of a TP > 1 engine in leader mode
        # (executorImpl.cpp validateParallelConfig, 1.2.0rc2): the executor orchestrates, spawning tp workers
        # (MPI_Comm_spawn of worker_executable_path) on device_ids.
        parallel = api.ParallelConfig(api.CommunicationType.MPI, api.CommunicationMode.ORCHESTRATOR,
                                      device_ids=device_ids,
                                      orchestrator_config=api.OrchestratorConfig(True, worker))
    else:
        parallel = api.ParallelConfig(device_ids=device_ids)
    config = api.ExecutorConfig(
        max_beam_width=1,
        # block reuse keeps each row's prefix between cycles (on by default; stated because the design needs it)
        kv_cache_config=api.KvCacheConfig(enable_block_reuse=True, free_gpu_memory_fraction=kv_fraction),
        # the same name and gather_context as every request asks for (a request naming an output that the
        # config lacks fails every active request: inflightBatchingUtils.cpp copyAdditionalOutputs)
        additional_model_outputs=[api.AdditionalModelOutput(HIDDEN_OUTPUT, gather_context=gather_context)],
        parallel_config=parallel)
    return api.Executor(Path(engine_dir), api.ModelType.DECODER_ONLY, config)


def _worker(params: dict[str, str]) -> str | None:
    if params.get("executor_worker"):
        return params["executor_worker"]
    if max(int(params.get("draft_tp", 1)), int(params.get("target_tp", 1))) == 1:
        return None
    import tensorrt_llm

    worker = Path(tensorrt_llm.__file__).parent / EXECUTOR_WORKER
    if not worker.is_file():
        raise AutoJudgeError(f"tensor-parallel engines need TensorRT-LLM's executor worker, not found at {worker}: "
                             "set the executor_worker parameter to its path")
    return str(worker)


def load_tokenizer(spec: str):
    """The target's tokenizer and end-of-sequence ids (as the in-process loader finds them),
    from its checkpoint directory or hub id."""
    from transformers import AutoConfig, AutoTokenizer, GenerationConfig

    from autojudge.models import eos_ids_of

    tokenizer = AutoTokenizer.from_pretrained(spec)
    try:
        generation = GenerationConfig.from_pretrained(spec)
    except OSError:  # no generation_config.json
        generation = None
    return tokenizer, eos_ids_of(generation, AutoConfig.from_pretrained(spec), tokenizer)


def open_backend(params: dict[str, str], judge, model_dir: Path) -> TensorRTLLMBackend:
    """The engine line (``trtllm_line`` "engine", the default) or today's (``trtllm_line`` "pytorch")."""
    if params.get("trtllm_line") == "pytorch":
        return open_llm_backend(params, judge)
    api = _module(params.get("executor_api") or EXECUTOR_API, "the TensorRT-LLM executor bindings")
    device = torch.device(params.get("device") or "cuda")
    worker = _worker(params)
    executors = {}
    for role, gather_context in (("draft", False), ("target", True)):
        tp = int(params.get(f"{role}_tp", 1))
        executors[role] = open_executor(api, params[f"{role}_engine"], gather_context, tp,
                                        _device_ids(params.get(f"{role}_device_ids", ""), tp),
                                        float(params.get(f"{role}_kv_fraction", 0.4)), worker)
    tokenizer, eos = load_tokenizer(params["target"])
    lm_head = LMHead(params["target"], DTYPES[params.get("dtype") or "bfloat16"], device)
    judge_accept = None
    if judge is not None:
        trt = _module(params.get("tensorrt_api") or TENSORRT_API, "TensorRT's Python runtime")
        plugin = params.get("plugin_library") or None
        judge_accept = TensorRTJudgeAccept(trt, model_dir / params["judge_plan"], plugin and model_dir / plugin,
                                           device)
        if judge_accept.uses_draft_hidden != judge.uses_draft_hidden \
                or judge_accept.scalar_feature_size != len(judge.scalar_features):
            raise AutoJudgeError(f"the judge-accept engine {params['judge_plan']} was built for another judge "
                                 f"layout ({judge_accept.scalar_feature_size} scalar features) than the "
                                 f"deployment's judge ({len(judge.scalar_features)}): rebuild it "
                                 "(autojudge-trt build judge)")
    end_id = min(eos) if eos else None
    return TensorRTLLMBackend(ExecutorClient(api, executors["draft"], end_id),
                              ExecutorClient(api, executors["target"], end_id), lm_head,
                              int(lm_head.weight.shape[0]), tokenizer, eos, judge, judge_accept,
                              max_window=int(params["max_window"]), device=device)


def open_llm_backend(params: dict[str, str], judge) -> TensorRTLLMBackend:
    """Today's line: draft and target as two ``tensorrt_llm.LLM`` (PyTorch backend) from their Hugging
    Face checkpoints (``draft_model``, ``target_model``), the judge-accept step as the PyTorch op."""
    from autojudge.acceptance.torch_op import TorchJudgeAccept
    from autojudge.serving.trtllm.llm_api import LLMClient, register_hidden_state_model

    root = params.get("llm_api") or "tensorrt_llm"
    api = _module(root, "TensorRT-LLM's LLM API")
    register_hidden_state_model(_module(f"{root}._torch.models.modeling_llama", "TensorRT-LLM's PyTorch models"),
                                _module(f"{root}._torch.models.modeling_utils", "TensorRT-LLM's model registry"))
    kv_cache = _module(f"{root}.llmapi", "TensorRT-LLM's LLM API").KvCacheConfig
    device = torch.device(params.get("device") or "cuda")
    tokenizer, eos = load_tokenizer(params["target"])
    end_id = min(eos) if eos else None
    clients = {role: LLMClient(api, api.LLM(
        model=params[f"{role}_model"], tensor_parallel_size=int(params.get(f"{role}_tp", 1)),
        kv_cache_config=kv_cache(enable_block_reuse=True,
                                 free_gpu_memory_fraction=float(params.get(f"{role}_kv_fraction", 0.4)))), end_id)
        for role in ("draft", "target")}
    lm_head = LMHead(params["target"], DTYPES[params.get("dtype") or "bfloat16"], device)
    judge_accept = TorchJudgeAccept(judge, device) if judge is not None else None
    return TensorRTLLMBackend(clients["draft"], clients["target"], lm_head, int(lm_head.weight.shape[0]), tokenizer,
                              eos, judge, judge_accept, max_window=int(params["max_window"]), device=device)
