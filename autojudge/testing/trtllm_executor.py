"""An emulation of ``tensorrt_llm.bindings.executor`` (TensorRT-LLM 1.2.x) over in-process models.

The TensorRT-LLM flavour's backend (:mod:`autojudge.serving.trtllm.backend`) drives two
executors, draft and target, through this API. On a GPU host the module is the real
``tensorrt_llm.bindings.executor``; in CI it is this one, which answers from PyTorch models
and behaves like the real executor wherever the backend depends on it. Every such behaviour
names the source it was read in (NVIDIA/TensorRT-LLM at 1.2.0rc2, commit b35ac1b, unless a
line says otherwise). Written from our reading; no code of those sources is in it.

An "engine directory" here is what ``build/build_engine.py`` writes (``config.json`` with the
``build_config``), run against :mod:`autojudge.testing.trtllm_builder`, which adds
``emulation.json`` naming the checkpoint the engine answers from and the outputs it marked.

Glossary
- **prepopulated length**: how many leading prompt tokens a request found in the KV cache
  (block reuse). Their context outputs are never computed, so never written.
"""

from __future__ import annotations

import enum
import itertools
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch

log = logging.getLogger(__name__)
_MODELS: dict[str, object] = {}  # name -> CausalLM, for engines that answer from in-memory models (tests)
NOT_WRITTEN = float("nan")  # what the emulation puts where the real executor leaves memory unwritten


def register_model(name: str, lm) -> str:
    """Let engine directories answer from an in-memory CausalLM (``"checkpoint": "memory:NAME"``)."""
    _MODELS[name] = lm
    return f"memory:{name}"


class ModelType(enum.Enum):
    DECODER_ONLY = 0


class CommunicationType(enum.Enum):
    MPI = 0


class CommunicationMode(enum.Enum):
    LEADER = 0
    ORCHESTRATOR = 1


@dataclass
class KvCacheConfig:
    # nanobind executorConfig.cpp (near 1.2): enable_block_reuse defaults to True
    enable_block_reuse: bool = True
    max_tokens: int | None = None
    max_attention_window: list[int] | None = None
    sink_token_length: int | None = None
    free_gpu_memory_fraction: float | None = None


@dataclass
class OrchestratorConfig:
    is_orchestrator: bool = True
    worker_executable_path: str = ""
    orch_leader_comm: object = None
    spawn_processes: bool = True


@dataclass
class ParallelConfig:
    communication_type: CommunicationType = CommunicationType.MPI
    communication_mode: CommunicationMode = CommunicationMode.LEADER
    device_ids: list[int] | None = None
    participant_ids: list[int] | None = None
    orchestrator_config: OrchestratorConfig | None = None
    num_nodes: int | None = None


@dataclass
class AdditionalModelOutput:
    name: str
    gather_context: bool = False


@dataclass
class ExecutorConfig:
    max_beam_width: int = 1
    kv_cache_config: KvCacheConfig = field(default_factory=KvCacheConfig)
    parallel_config: ParallelConfig | None = None
    additional_model_outputs: list[AdditionalModelOutput] | None = None
    gather_generation_logits: bool = False
    max_batch_size: int | None = None
    max_num_tokens: int | None = None


@dataclass
class SamplingConfig:
    beam_width: int = 1
    top_k: int | None = None
    top_p: float | None = None
    temperature: float | None = None


@dataclass
class OutputConfig:
    return_log_probs: bool | None = None
    return_context_logits: bool | None = None
    return_generation_logits: bool | None = None
    exclude_input_from_output: bool | None = None
    return_encoder_output: bool | None = None
    return_perf_metrics: bool | None = None
    additional_model_outputs: list[AdditionalModelOutput] | None = None


class Request:
    # pybind executor/request.cpp: input_token_ids and max_tokens positional, the rest keyword-only
    def __init__(self, input_token_ids, max_tokens, *, streaming=False, sampling_config=None, output_config=None,
                 end_id=None, pad_id=None, external_draft_tokens_config=None, cache_salt_id=None, **unsupported):
        if unsupported:
            raise TypeError(f"the emulation does not implement Request fields {sorted(unsupported)}")
        self.input_token_ids, self.max_tokens = list(input_token_ids), max_tokens
        self.streaming, self.end_id, self.pad_id = streaming, end_id, pad_id
        self.sampling_config = sampling_config or SamplingConfig()
        self.output_config = output_config or OutputConfig()
        self.external_draft_tokens_config, self.cache_salt_id = external_draft_tokens_config, cache_salt_id


@dataclass
class AdditionalOutput:
    name: str
    output: torch.Tensor


@dataclass
class Result:
    is_final: bool
    output_token_ids: list[list[int]]
    context_logits: torch.Tensor | None = None
    generation_logits: torch.Tensor | None = None
    additional_outputs: list[AdditionalOutput] = field(default_factory=list)


@dataclass
class Response:
    request_id: int
    result: Result | None = None
    error_msg: str = ""

    def has_error(self) -> bool:
        return bool(self.error_msg)


class _Engine:
    """What an engine directory says: its build settings, and the model that answers for it."""

    def __init__(self, path: Path):
        config_file = path / "config.json"
        if not config_file.is_file():
            raise RuntimeError(f"no engine at {path}: config.json is missing")
        config = json.loads(config_file.read_text())
        self.build = config["build_config"]
        self.pretrained = config["pretrained_config"]
        emulation = json.loads((path / "emulation.json").read_text())
        self.marked_outputs: list[str] = emulation["marked_outputs"]
        spec, draft_of = emulation["checkpoint"], emulation.get("draft_of")
        if spec.startswith("memory:"):
            self.lm = _MODELS[spec.removeprefix("memory:")]
        else:
            from autojudge.models import load_draft, load_target

            self.lm = load_draft(spec, load_target(draft_of)) if draft_of else load_target(spec, device="cpu")
        # float64 exists only here: tests that compare with a float64 in-process decoder
        self.dtype = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float64": torch.float64}.get(
            self.pretrained.get("dtype"), torch.float32)
        mapping = self.pretrained.get("mapping", {})
        self.world = int(mapping.get("tp_size", 1)) * int(mapping.get("pp_size", 1))


class Executor:
    """Requests are run when they are enqueued; ``await_responses`` hands back their responses."""

    _ids = itertools.count(1)

    def __init__(self, model_path, model_type: ModelType, executor_config: ExecutorConfig):
        self.engine = _Engine(Path(model_path))
        self.config = executor_config
        kv = executor_config.kv_cache_config
        build = self.engine.build
        # trtGptModelInflightBatching.cpp fixExecutorConfig: an engine that gathers context logits cannot return
        # them for reused tokens, so block reuse is turned off (a warning, not an error); likewise without paged
        # context FMHA
        self.reuse = kv.enable_block_reuse
        if self.reuse and build.get("gather_context_logits"):
            log.warning("Fixing executorConfig: KV cache reuse disabled because model was built to return "
                        "context logits")
            self.reuse = False
        if self.reuse and not build.get("plugin_config", {}).get("use_paged_context_fmha", True):
            self.reuse = False
        # trtGptModelInflightBatching.cpp: a draft_tokens_external target needs block reuse
        if build.get("speculative_decoding_mode") == "DRAFT_TOKENS_EXTERNAL" and not self.reuse:
            raise RuntimeError("KV cache block reuse must be enabled for speculative decoding target model")
        self._check_parallel(executor_config.parallel_config)
        # RuntimeBuffers::create allocates each configured additional output by its engine tensor
        # (engine.getTensorDataType(name)): a name the engine did not mark cannot be configured
        self.outputs = {o.name: o for o in executor_config.additional_model_outputs or []}
        for name in self.outputs:
            if name not in self.engine.marked_outputs:
                raise RuntimeError(f"additional model output {name!r} is not an output of the engine at "
                                   f"{model_path} (marked: {self.engine.marked_outputs})")
        self.requests: list[Request] = []  # every request enqueued, for tests to read
        self.prepopulated: list[int] = []  # each request's reused prompt length, likewise
        self._responses: dict[int, list[Response]] = {}
        self._kv: dict[object, list[list[int]]] = {}  # cache salt -> token sequences whose KV is cached
        self._shut = False

    def _check_parallel(self, parallel: ParallelConfig | None) -> None:
        """executorImpl.cpp validateParallelConfig / initializeCommAndWorkers: one process (world size 1)
        serves a TP > 1 engine only as an orchestrator that spawns its workers."""
        world = self.engine.world
        mode = parallel.communication_mode if parallel else CommunicationMode.LEADER
        if mode == CommunicationMode.LEADER:
            if world != 1:  # leader mode without participant ids: MPI world size must equal tp * pp * cp
                raise RuntimeError(f"the engine needs {world} ranks, but this process's MPI world size is 1: "
                                   "use ORCHESTRATOR mode (or launch one process per rank)")
        else:
            orchestrator = parallel.orchestrator_config
            if orchestrator is None:
                raise RuntimeError("ORCHESTRATOR mode requires an OrchestratorConfig")
            if orchestrator.spawn_processes and parallel.participant_ids:
                raise RuntimeError("participant ids must not be set when the orchestrator spawns its workers")
            if not Path(orchestrator.worker_executable_path).is_file():
                raise RuntimeError(f"executor worker {orchestrator.worker_executable_path!r} does not exist")
        if parallel and parallel.device_ids is not None and len(parallel.device_ids) != world:
            raise RuntimeError(f"{len(parallel.device_ids)} device ids for an engine of {world} ranks")

    # ------------------------------------------------------------------ API
    def can_enqueue_requests(self) -> bool:
        return not self._shut

    def enqueue_request(self, request: Request) -> int:
        return self.enqueue_requests([request])[0]

    def enqueue_requests(self, requests: list[Request]) -> list[int]:
        if self._shut:
            raise RuntimeError("Shutdown called")
        ids = [next(self._ids) for _ in requests]
        self.requests.extend(requests)
        results: dict[int, Response] = {}
        for request_id, request in zip(ids, requests):
            try:
                results[request_id] = Response(request_id, self._run(request))
            except _RequestError as exc:
                # executorImpl.cpp fetchNewRequests: a request refused there fails alone, as an error response
                results[request_id] = Response(request_id, error_msg=f"Encountered an error when fetching new "
                                                                     f"request: {exc}")
            except _ForwardError as exc:
                # inflightBatchingUtils.cpp copyAdditionalOutputs throws inside forwardAsync, and
                # terminateActiveRequests then fails every active request
                message = f"Encountered an error in forwardAsync function: {exc}"
                results = {i: Response(i, error_msg=message) for i in ids}
                break
        for request_id in ids:
            self._responses[request_id] = [results[request_id]]
        return ids

    def await_responses(self, id=None, timeout=None) -> list[Response]:  # the real keyword
        if self._shut:
            raise RuntimeError("Shutdown called")
        if id is None:
            ready = [r for responses in self._responses.values() for r in responses]
            self._responses.clear()
            return ready
        if id not in self._responses:
            # executorImpl.cpp awaitResponses: an id already terminated gets an error response
            return [Response(id, error_msg=f"ReqId {id} has already been processed and was terminated.")]
        return self._responses.pop(id)

    def cancel_request(self, id) -> None:
        self._responses.pop(id, None)

    def shutdown(self) -> None:
        self._shut = True

    # ------------------------------------------------------------------ one request
    def _check(self, request: Request) -> None:
        sampling, output = request.sampling_config, request.output_config
        if not isinstance(request.max_tokens, int) or request.max_tokens < 1:
            raise _RequestError(f"max_tokens must be a positive integer, got {request.max_tokens!r}")
        vocab = self.engine.lm.vocab_size
        if not request.input_token_ids or not all(isinstance(t, int) and 0 <= t < vocab
                                                  for t in request.input_token_ids):
            raise _RequestError("input_token_ids must be a non-empty list of token ids within the vocabulary")
        if sampling.beam_width != 1 or sampling.top_k != 1:
            raise _RequestError("the emulation decodes greedily only: SamplingConfig(beam_width=1, top_k=1)")
        if request.external_draft_tokens_config is not None:
            raise _RequestError("the emulation does not implement external draft tokens (the executor would "
                                "accept them greedily itself)")
        # executorImpl.cpp fetchNewRequests: context logits need an engine built with gather_context_logits;
        # generation logits need ExecutorConfig.gather_generation_logits
        if output.return_context_logits and not self.engine.build.get("gather_context_logits"):
            raise _RequestError("Return context logit need to build engine with gather_context_logits")
        if output.return_generation_logits and not self.config.gather_generation_logits:
            raise _RequestError("To return generation logits, gather_generation_logits must be enabled in "
                                "ExecutorConfig")

    def _prepopulated(self, request: Request) -> int:
        """kvCacheManager.cpp: leading tokens found in cached blocks of the same cache salt (partial
        block reuse is on by default, so at token granularity); the last prompt token is always computed."""
        if not self.reuse:
            return 0
        tokens, best = request.input_token_ids, 0
        for cached in self._kv.get(request.cache_salt_id, []):
            common = next((i for i, (a, b) in enumerate(zip(tokens, cached)) if a != b), min(len(tokens), len(cached)))
            best = max(best, common)
        return min(best, len(tokens) - 1)

    @torch.inference_mode()
    def _run(self, request: Request) -> Result:
        self._check(request)
        output = request.output_config
        for asked in output.additional_model_outputs or []:
            configured = self.outputs.get(asked.name)
            if configured is None:
                raise _ForwardError(f"Additional {'context' if asked.gather_context else 'generation'} output "
                                    f"tensor not found: {asked.name}")
            if asked.gather_context and not configured.gather_context:
                raise _ForwardError(f"Additional context output tensor not gathered: {asked.name}")
        lm, prompt = self.engine.lm, request.input_token_ids
        prepopulated = self._prepopulated(request)
        self.prepopulated.append(prepopulated)
        cache = lm.new_cache()
        context = lm.hidden_states(torch.tensor([prompt]), cache)[0]  # [T, H]
        states, generated, state = [context[-1]], [], context[-1:]
        while True:
            token = int(lm.greedy(state[None])[0, -1])
            generated.append(token)
            if len(generated) == request.max_tokens or token == request.end_id:
                break
            state = lm.hidden_states(torch.tensor([[token]]), cache)[0]  # [1, H]
            states.append(state[0])
        # the KV of the prompt and of every generated token but the last is now cached (kvCacheManager.cpp
        # stores a finished request's blocks for reuse), keyed by the request's cache salt
        self._kv.setdefault(request.cache_salt_id, []).append(prompt + generated[:-1])
        result = Result(is_final=True, output_token_ids=[generated if output.exclude_input_from_output
                                                         else prompt + generated])
        if output.return_context_logits:
            logits = lm.logits(context).float()  # [T, V]
            logits[:prepopulated] = NOT_WRITTEN  # handleContextLogits.cpp writes from the reused length on
            result.context_logits = logits
        for asked in output.additional_model_outputs or []:
            # llmRequest.h allocAdditionalOutputs: every requested output comes back as "generation_<name>"
            # [beams, max_tokens, H] and, with gather_context, also as "context_<name>" [prompt_len, H]
            rows = torch.full((1, request.max_tokens, context.shape[-1]), NOT_WRITTEN, dtype=self.engine.dtype)
            # inflightBatchingUtils.cpp copyAdditionalOutputs: row 0 at the last context token, row k at step k
            rows[0, : len(states)] = torch.stack(states).to(self.engine.dtype)
            result.additional_outputs.append(AdditionalOutput("generation_" + asked.name, rows))
            if asked.gather_context:
                full = context.to(self.engine.dtype).clone()
                full[:prepopulated] = NOT_WRITTEN  # rows of reused tokens are never computed, never written
                result.additional_outputs.append(AdditionalOutput("context_" + asked.name, full))
        return result


class _RequestError(Exception):
    pass


class _ForwardError(Exception):
    pass
