"""An emulation of today's TensorRT-LLM (PyTorch backend) LLM API over in-process models.

Importable where ``tensorrt_llm`` is on a GPU host: ``LLM``, ``SamplingParams``, ``llmapi.KvCacheConfig``,
``_torch.models.modeling_utils.register_auto_model`` and ``_torch.models.modeling_llama.LlamaForCausalLM``.
It behaves like the real one where :mod:`autojudge.serving.trtllm.llm_api` depends on it; each
behaviour names the file it was read in (NVIDIA/TensorRT-LLM, PyTorch-backend line). Models answer
from CausalLMs registered with :func:`register_model` (``model="memory:NAME"``) or loaded by spec.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from autojudge.testing.trtllm_torch.llmapi import KvCacheConfig

__version__ = "1.4.0rc4"  # the newest documented build seen when these sources were read (2026-12)
_MODELS: dict[str, object] = {}


def register_model(name: str, lm) -> str:
    _MODELS[name] = lm
    return f"memory:{name}"


@dataclass
class SamplingParams:
    max_tokens: int = 32  # sampling_params.py: default 32
    end_id: int | None = None
    top_k: int | None = None
    top_p: float | None = None
    temperature: float | None = None
    return_context_logits: bool = False
    additional_model_outputs: list[str] | None = None


@dataclass
class CompletionOutput:
    index: int
    token_ids: list[int]
    additional_context_outputs: dict[str, torch.Tensor] | None = None
    additional_generation_outputs: dict[str, torch.Tensor] | None = None


@dataclass
class RequestOutput:
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput]
    cached_tokens: int = 0
    context_logits: torch.Tensor | None = None
    finished: bool = True


class _Metadata:
    """What the emulated forward needs of attn_metadata: the request's KV cache."""

    def __init__(self, cache):
        self.cache = cache


@dataclass
class LLM:
    model: str
    tensor_parallel_size: int = 1
    kv_cache_config: KvCacheConfig = field(default_factory=KvCacheConfig)
    disable_overlap_scheduler: bool = False

    def __post_init__(self):
        from autojudge.testing.trtllm_torch._torch.models import modeling_utils

        if self.model.startswith("memory:"):
            lm = _MODELS[self.model.removeprefix("memory:")]
        else:
            from autojudge.models import load_target

            lm = load_target(self.model, device="cpu")
        # modeling_utils.py: the architecture's registered class (external registrations first)
        self.network = modeling_utils.model_class("LlamaForCausalLM")(lm)
        self.lm = lm
        self._kv: dict[object, list[list[int]]] = {}
        self.requests: list[tuple[list[int], SamplingParams, object]] = []  # for tests to read

    def _cached(self, tokens: list[int], salt) -> int:
        if not self.kv_cache_config.enable_block_reuse:
            return 0
        best = 0
        for seen in self._kv.get(salt, []):
            common = next((i for i, (a, b) in enumerate(zip(tokens, seen)) if a != b), min(len(tokens), len(seen)))
            best = max(best, common)
        return min(best, len(tokens) - 1)  # the last prompt token is always computed

    def _step(self, tokens: list[int], metadata: _Metadata, wanted: list[str]):
        out = self.network(attn_metadata=metadata, input_ids=torch.tensor(tokens))
        outputs = out if isinstance(out, dict) else {"logits": out}
        extra = {}
        for name in wanted:
            if name not in outputs:  # assumed: a name the model does not return is an error
                raise RuntimeError(f"additional model output {name!r} is not returned by the model")
            value = outputs[name]
            # handle_additional_outputs.py: per token iff dim 0 is the step's number of tokens
            extra[name] = value if value.shape[0] == len(tokens) else value.expand(len(tokens), *value.shape[1:])
        return outputs["logits"], extra

    @torch.inference_mode()
    def generate(self, inputs, sampling_params: SamplingParams | None = None, use_tqdm: bool = True,
                 cache_salt=None):
        single = bool(inputs) and isinstance(inputs[0], int)
        prompts = [inputs] if single else list(inputs)
        salts = cache_salt if isinstance(cache_salt, list) else [cache_salt] * len(prompts)
        params = sampling_params or SamplingParams()
        greedy = params.top_k == 1 or (params.top_k is None and params.top_p is None and params.temperature is None)
        if not greedy:
            raise ValueError("the emulation decodes greedily only (top_k=1)")
        results = [self._one(list(p), params, salt) for p, salt in zip(prompts, salts)]
        return results[0] if single else results

    def _one(self, prompt: list[int], params: SamplingParams, salt) -> RequestOutput:
        self.requests.append((prompt, params, salt))
        wanted = params.additional_model_outputs or []
        cached = self._cached(prompt, salt)
        metadata = _Metadata(self.lm.new_cache())
        if cached:
            self.lm.hidden_states(torch.tensor([prompt[:cached]]), metadata.cache)  # the reused blocks' KV
        logits, extra = self._step(prompt[cached:], metadata, wanted)  # only the tokens not in the cache
        context = {name: value.clone() for name, value in extra.items()}  # [len - cached, H]
        generation = {name: [value[-1]] for name, value in extra.items()}  # first row: the last context row
        generated = [int(logits[-1].argmax())]
        while len(generated) < params.max_tokens and generated[-1] != params.end_id:
            logits, extra = self._step(generated[-1:], metadata, wanted)
            generated.append(int(logits[-1].argmax()))
            for name, value in extra.items():
                generation[name].append(value[-1])
        self._kv.setdefault(salt, []).append(prompt + generated[:-1])
        completion = CompletionOutput(0, generated, context or None,
                                      {n: torch.stack(rows)[:len(generated), None] for n, rows in generation.items()}
                                      or None)
        return RequestOutput(prompt, [completion], cached_tokens=cached)
