"""Names and versions shared by the TensorRT-LLM deployment: written by :mod:`autojudge.deploy`
(engines, repository), read by the serving backend (:mod:`autojudge.serving.trtllm.backend`) and
by the emulations of :mod:`autojudge.testing`."""

HIDDEN_OUTPUT = "autojudge_hidden_states"  # engine output of the final-norm hidden states (build/build_engine.py)
# NVIDIA/TensorRT-LLM 1.2.0rc2, llmRequest.h allocAdditionalOutputs / createResult: an additional output comes
# back as "generation_<name>" [beams, max_tokens, ...] and, with gather_context, as "context_<name>" [prompt, ...]
GENERATION_HIDDEN = "generation_" + HIDDEN_OUTPUT
CONTEXT_HIDDEN = "context_" + HIDDEN_OUTPUT

# The engine line whose sources were read (the TensorRT-LLM issue's facts; build/README.md lists them).
ENGINE_LINE = {"tensorrt_llm": "1.2.1", "tensorrt": "10.14", "tensorrtllm_backend": "1.2.1"}
EXECUTOR_API = "tensorrt_llm.bindings.executor"  # the module the serving backend drives
TENSORRT_API = "tensorrt"  # the runtime that runs the judge-accept engine
# Where TensorRT-LLM's orchestrator finds the worker it spawns per rank (assumed, not read: the executor
# worker binary of the wheel); a deployment may name another with the executor_worker parameter.
EXECUTOR_WORKER = "bin/executorWorker"
