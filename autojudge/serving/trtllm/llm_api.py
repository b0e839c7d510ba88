"""Today's TensorRT-LLM line (PyTorch backend, no engines): draft and target behind ``tensorrt_llm.LLM``.

Read in NVIDIA/TensorRT-LLM after the TensorRT-engine backend's removal
(``docs/source/legacy/tensorrt-backend-removal.md``; the last engine line is 1.2.1):
- ``LLM.generate(prompts as token-id lists, SamplingParams, cache_salt=...)`` returns one
  ``RequestOutput`` per prompt; ``outputs[0].token_ids`` are the new tokens
  (tensorrt_llm/llmapi/llm.py); ``cache_salt`` limits KV-cache reuse to requests with the same salt.
- ``SamplingParams(max_tokens, top_k=1, end_id, additional_model_outputs=[names])``: top_k=1 is
  greedy (tensorrt_llm/sampling_params.py).
- ``CompletionOutput.additional_context_outputs[name]`` [context rows, H] and
  ``additional_generation_outputs[name]`` [generated, beam, H], on the CPU
  (tensorrt_llm/executor/result.py, _torch/pyexecutor/llm_request.py). Context rows exist only for
  tokens the KV cache did not hold (handle_additional_outputs.py warns "Because of KV cache reuse,
  not all ... could be produced"); the first generation row is the last context row.
- A name comes back only if the model's forward returns it in its output dict, one row per token
  when its first dimension is the number of tokens of the step (handle_additional_outputs.py); no
  built-in model returns its hidden states (_torch/models/modeling_utils.py, modeling_llama.py):
  :func:`register_hidden_state_model` registers one that does.

Not observed running: no machine we test on has TensorRT-LLM. CI runs this module against
:mod:`autojudge.testing.trtllm_torch`, which encodes the facts above.
"""

from __future__ import annotations

from autojudge.serving.trtllm.contract import HIDDEN_OUTPUT


class LLMClient:
    """A model behind ``tensorrt_llm.LLM`` (:class:`autojudge.serving.trtllm.backend.ModelClient`)."""

    def __init__(self, api, llm, end_id: int | None):
        self.api, self.llm, self.end_id = api, llm, end_id

    def _params(self, max_tokens: int, states: bool):
        return self.api.SamplingParams(max_tokens=max_tokens, top_k=1, end_id=self.end_id,
                                       additional_model_outputs=[HIDDEN_OUTPUT] if states else None)

    def generate(self, sequences, max_tokens, states):
        outputs = self.llm.generate(sequences, self._params(max_tokens, states), use_tqdm=False)
        results = []
        for output in outputs:
            completion = output.outputs[0]
            hidden = None
            if states:  # [generated, beam, H] -> [generated, H]; row 0 at the last context token
                generation = completion.additional_generation_outputs[HIDDEN_OUTPUT]
                hidden = generation.reshape(generation.shape[0], -1, generation.shape[-1])[:, 0]
            results.append((list(completion.token_ids), hidden))
        return results

    def context_states(self, sequences, salts):
        outputs = self.llm.generate(sequences, self._params(1, True), use_tqdm=False,
                                    cache_salt=[f"autojudge-row-{salt}" for salt in salts])
        return [output.outputs[0].additional_context_outputs[HIDDEN_OUTPUT] for output in outputs]  # [R, H]


def register_hidden_state_model(modeling_llama, modeling_utils) -> type:
    """Register, for ``LlamaForCausalLM`` checkpoints, the built-in model with one more output: the
    final-norm states its decoder stack (``self.model``, whose forward ends with the final norm:
    modeling_llama.py) computed, under :data:`HIDDEN_OUTPUT`. External registrations take precedence
    over built-ins (modeling_utils.py); call this before ``LLM(...)`` loads a checkpoint."""
    base = modeling_llama.LlamaForCausalLM

    @modeling_utils.register_auto_model("LlamaForCausalLM")
    class AutoJudgeLlamaForCausalLM(base):
        def forward(self, *args, **kwargs):
            captured = []
            hook = self.model.register_forward_hook(
                lambda module, inputs, output: captured.append(output[0] if isinstance(output, tuple) else output))
            try:
                logits = super().forward(*args, **kwargs)
            finally:
                hook.remove()
            return {"logits": logits, HIDDEN_OUTPUT: captured[-1]}  # [num_tokens, H]: one row per token

    return AutoJudgeLlamaForCausalLM
