"""The decoding backend of the TensorRT-LLM flavour: three served models, one loop.

The BLS model ``autojudge`` of a TensorRT-LLM repository runs
:class:`autojudge.decoding.SpeculativeLoop` - the loop the in-process decoder runs - over
this backend, whose session turns each step of a cycle into one request to another model
of the same Triton server:

===========  ===============================  =============================================
step         model                            tensors (B = 1)
===========  ===============================  =============================================
propose      ``draft`` (tensorrt_llm)         in: input_ids [1, T], request_output_len = w
                                              (+1 when the judge needs the state after
                                              d_{w-1}); out: output_ids [1, 1, L],
                                              autojudge_hidden_states [1, L, Hd]
verify       ``target`` (tensorrt_llm,        in: input_ids [1, T], draft_input_ids [1, w],
             external draft tokens)           request_output_len = w + 1,
                                              return_generation_logits; out:
                                              generation_logits [1, 1, w+1, V],
                                              autojudge_hidden_states [1, w+1, Ht]
accept       ``judge_accept`` (TensorRT plan,  in: draft_tokens, target_tokens, draft_hidden,
             the plugin's kernel)             target_hidden, threshold [1]; out:
                                              num_accepted [1], next_tokens [1]
commit       (nothing)                        every request carries the whole sequence;
                                              TensorRT-LLM's KV-cache reuse finds the prefix
===========  ===============================  =============================================

Lossless and top-K acceptance need no judge and run here on the W tokens (the oracle of
:mod:`autojudge.acceptance`); judge mode calls the judge-accept engine. The transport is a
``call(model, inputs, outputs)`` function: inside Triton it makes BLS requests
(:func:`bls_call`); tests pass one that serves the same tensor contract from in-process
models, which is how this orchestration is tested without a GPU.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from autojudge.acceptance import Acceptance, accept, topk_mismatch_ok
from autojudge.decoding import DecodeConfig
from autojudge.deploy.plan import HIDDEN_OUTPUT  # the engine output build/build_engine.py marks
from autojudge.errors import AutoJudgeError
from autojudge.judge import Judge

DRAFT_MODEL, TARGET_MODEL, JUDGE_MODEL = "draft", "target", "judge_accept"

# call(model name, input tensors, output names) -> output tensors
Call = Callable[[str, dict[str, torch.Tensor], list[str]], dict[str, torch.Tensor]]


def _scalar(value: int) -> torch.Tensor:
    return torch.tensor([[value]], dtype=torch.int32)  # [1, 1]


class TensorRTLLMBackend:
    """Draft and target TensorRT-LLM engines and the judge-accept engine, reached through ``call``."""

    has_draft = True
    device = torch.device("cpu")  # the loop's token tensor; the engines live on the GPU

    def __init__(self, call: Call, tokenizer, eos_token_ids: frozenset[int], judge: Judge | None):
        self.call, self.tokenizer, self.eos_token_ids, self.judge = call, tokenizer, eos_token_ids, judge

    def start(self, uses_draft: bool) -> _TensorRTLLMSession:
        return _TensorRTLLMSession(self)


class _TensorRTLLMSession:
    def __init__(self, backend: TensorRTLLMBackend):
        self.b = backend

    def _generate(self, model: str, tokens: torch.Tensor, new_tokens: int,
                  extra: dict[str, torch.Tensor], outputs: list[str]) -> dict[str, torch.Tensor]:
        inputs = {"input_ids": tokens.to(torch.int32), "input_lengths": _scalar(tokens.shape[1]),
                  "request_output_len": _scalar(new_tokens), "runtime_top_k": _scalar(1), **extra}
        return self.b.call(model, inputs, outputs)

    def propose(self, tokens, w, need_hidden):
        out = self._generate(DRAFT_MODEL, tokens, w + int(need_hidden), {},
                             ["output_ids", HIDDEN_OUTPUT] if need_hidden else ["output_ids"])
        drafted = out["output_ids"].reshape(1, -1)[:, :w].to(torch.long)  # [1, w'] (w' < w after a draft EOS)
        if not need_hidden:
            return drafted, None
        hidden = out[HIDDEN_OUTPUT].reshape(1, -1, out[HIDDEN_OUTPUT].shape[-1])  # [1, L, Hd]
        # generation step k reads d_{k-1}: the states after reading d_0 .. d_{w'-1} are steps 1 .. w'
        return drafted, hidden[:, 1: drafted.shape[1] + 1]

    def verify(self, tokens, draft_tokens):
        w = draft_tokens.shape[1]
        extra = {"return_generation_logits": torch.tensor([[True]])}
        if w:
            extra["draft_input_ids"] = draft_tokens.to(torch.int32)
        out = self._generate(TARGET_MODEL, tokens, w + 1, extra, ["generation_logits", HIDDEN_OUTPUT])
        logits = out["generation_logits"].reshape(w + 1, -1)  # [w+1, V]
        hidden = out[HIDDEN_OUTPUT].reshape(1, w + 1, -1)  # [1, w+1, Ht]
        self.logits = logits  # for top-K
        return logits.argmax(dim=-1).unsqueeze(0), hidden  # [1, w+1]

    def accept(self, config: DecodeConfig, threshold, draft_tokens, target_tokens, draft_hidden, target_hidden):
        w = draft_tokens.shape[1]
        if not w or config.mode in ("target", "lossless"):
            return accept(draft_tokens, target_tokens)
        if config.mode == "topk":
            return accept(draft_tokens, target_tokens, topk_mismatch_ok(draft_tokens, self.logits[None, :w],
                                                                        config.top_k))
        inputs = {"draft_tokens": draft_tokens.to(torch.int32), "target_tokens": target_tokens.to(torch.int32),
                  "target_hidden": target_hidden[:, 1:], "threshold": torch.tensor([threshold], dtype=torch.float32)}
        if self.b.judge.uses_draft_hidden:
            inputs["draft_hidden"] = draft_hidden
        out = self.b.call(JUDGE_MODEL, inputs, ["num_accepted", "next_tokens"])
        n = int(out["num_accepted"].reshape(-1)[0])
        if not 0 <= n <= w:
            raise AutoJudgeError(f"{JUDGE_MODEL} returned num_accepted {n} for a window of {w}")
        accepted = torch.arange(w) < n  # [w]
        mismatch = (draft_tokens[0] != target_tokens[0, :w]) & accepted
        return Acceptance(torch.tensor([n]), out["next_tokens"].reshape(1).to(torch.long), accepted[None],
                          mismatch[None])

    def commit(self, length):
        pass  # stateless: the next requests carry the committed sequence


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


def bls_call(pb_utils) -> Call:
    """``call`` inside a Triton Python model: a BLS request per step, tensors via DLPack (bf16 too)."""
    from torch.utils.dlpack import from_dlpack

    def call(model: str, inputs: dict[str, torch.Tensor], outputs: list[str]) -> dict[str, torch.Tensor]:
        request = pb_utils.InferenceRequest(
            model_name=model, requested_output_names=outputs,
            inputs=[pb_utils.Tensor.from_dlpack(name, tensor.contiguous()) for name, tensor in inputs.items()])
        response = request.exec()
        if response.has_error():
            raise AutoJudgeError(f"model {model!r} failed: {response.error().message()}")
        return {name: from_dlpack(pb_utils.get_output_tensor_by_name(response, name).to_dlpack())
                for name in outputs}

    return call
