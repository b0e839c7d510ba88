"""Names shared by the TensorRT-LLM deployment: the models of its Triton repository and the engine
output the build marks. Written by :mod:`autojudge.deploy` (engines, repository), read by the BLS
backend (:mod:`autojudge.serving.trtllm.backend`) and the reference engines of the tests."""

DRAFT_MODEL, TARGET_MODEL, JUDGE_MODEL = "draft", "target", "judge_accept"
HIDDEN_OUTPUT = "autojudge_hidden_states"  # engine output of the last-layer hidden states (build/build_engine.py)
# Read in triton-inference-server/tensorrtllm_backend inflight_batcher_llm/src/model_instance_state.cc (v1.2.x):
# fillTritonResponse refuses a request that does not ask for both of these outputs.
GENERATION_OUTPUTS = ["output_ids", "sequence_length"]
# BuildConfig.max_draft_len: read in NVIDIA/TensorRT-LLM tensorrt_llm/builder.py (1.2.x). What the executor
# does with a request carrying more draft tokens was not read (assumed refused): the loop never sends more.
MAX_DRAFT_LEN_BOUND = "the target engine's max_draft_len"  # what bounds a deployment's window, in words
