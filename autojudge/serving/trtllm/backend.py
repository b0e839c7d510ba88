"""The decoding backend of the TensorRT-LLM flavour: three served models, one loop.

The BLS model ``autojudge`` of a TensorRT-LLM repository runs
:class:`autojudge.decoding.SpeculativeLoop` - the loop the in-process decoder runs - over
this backend, which turns each step of a cycle into one request per row to another model
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

from collections.abc import Callable, Sequence

import torch
from torch.nn.utils.rnn import pad_sequence

from autojudge.acceptance import Acceptance
from autojudge.decoding.backend import Proposal, Verification
from autojudge.decoding.config import MAX_WINDOW
from autojudge.errors import AutoJudgeError
from autojudge.judge import Judge
from autojudge.serving.trtllm.contract import (DRAFT_MODEL, GENERATION_OUTPUTS, HIDDEN_OUTPUT, JUDGE_MODEL,
                                              MAX_DRAFT_LEN_BOUND, TARGET_MODEL)

# call(model name, input tensors, output names) -> output tensors
Call = Callable[[str, dict[str, torch.Tensor], list[str]], dict[str, torch.Tensor]]


def _scalar(value: int) -> torch.Tensor:
    return torch.tensor([[value]], dtype=torch.int32)  # [1, 1]


class TensorRTLLMBackend:
    """Draft and target TensorRT-LLM engines and the judge-accept engine, reached through ``call``."""

    has_draft = True
    device = torch.device("cpu")  # the loop's small tensors; the engines live on the GPU
    window_bound = MAX_DRAFT_LEN_BOUND

    def __init__(self, call: Call, tokenizer, eos_token_ids: frozenset[int], judge: Judge | None,
                 max_window: int = MAX_WINDOW):
        self.call, self.tokenizer, self.eos_token_ids, self.judge = call, tokenizer, eos_token_ids, judge
        self.max_window = max_window  # the target engine's max_draft_len

    def open(self, batch: int, uses_draft: bool) -> _TensorRTLLMBatch:
        return _TensorRTLLMBatch(self)

    def judge_accept(self, draft_tokens: torch.Tensor, target_tokens: torch.Tensor,
                     draft_hidden: torch.Tensor | None, target_hidden: torch.Tensor, threshold: float) -> Acceptance:
        """The judge-accept engine (the plugin's kernel): [B, w] drafts, [B, w+1] targets, states at d_k."""
        batch, w = draft_tokens.shape
        inputs = {"draft_tokens": draft_tokens.to(torch.int32), "target_tokens": target_tokens.to(torch.int32),
                  # threshold [B]: our engine's input (triton_repo/tensorrt_llm/judge_accept/config.pbtxt)
                  "target_hidden": target_hidden, "threshold": torch.full((batch,), threshold, dtype=torch.float32)}
        if self.judge.uses_draft_hidden:
            inputs["draft_hidden"] = draft_hidden
        out = self.call(JUDGE_MODEL, inputs, ["num_accepted", "next_tokens"])
        num_accepted = out["num_accepted"].reshape(batch).to(torch.long)  # [B]
        if not bool(((num_accepted >= 0) & (num_accepted <= w)).all()):
            raise AutoJudgeError(f"{JUDGE_MODEL} returned num_accepted {num_accepted.tolist()} for a window of {w}")
        accepted = torch.arange(w)[None, :] < num_accepted[:, None]  # [B, w]
        mismatch = (draft_tokens != target_tokens[:, :w]) & accepted
        return Acceptance(num_accepted, out["next_tokens"].reshape(batch).to(torch.long), accepted, mismatch)


class _TensorRTLLMBatch:
    """Stateless: every request carries its row's whole sequence (TensorRT-LLM's KV-cache reuse
    finds the prefix), one request per row and step."""

    def __init__(self, backend: TensorRTLLMBackend):
        self.b = backend

    def _generate(self, model: str, sequence: list[int], new_tokens: int,
                  extra: dict[str, torch.Tensor], outputs: list[str]) -> dict[str, torch.Tensor]:
        inputs = {"input_ids": torch.tensor([sequence], dtype=torch.int32), "input_lengths": _scalar(len(sequence)),
                  "request_output_len": _scalar(new_tokens), "runtime_top_k": _scalar(1), **extra}
        return self.b.call(model, inputs, outputs)

    def propose(self, sequences: Sequence[list[int]], w: int, need_hidden: bool) -> Proposal:
        rows, states = [], []
        for sequence in sequences:
            out = self._generate(DRAFT_MODEL, sequence, w + int(need_hidden), {},
                                 GENERATION_OUTPUTS + ([HIDDEN_OUTPUT] if need_hidden else []))
            # Assumed, not read: an engine that meets its end id returns fewer than w tokens (the reference
            # engines of the tests never stop early; a test with a shortened reference covers this path).
            drafted = out["output_ids"].reshape(-1)[:w].to(torch.long)  # [w'] (w' < w after a draft EOS)
            if need_hidden:
                hidden = out[HIDDEN_OUTPUT].reshape(-1, out[HIDDEN_OUTPUT].shape[-1])  # [L, Hd]
                # generation step k reads d_{k-1}: the states after reading d_0 .. d_{w'-1} are steps 1 .. w';
                # a draft that stopped early has no state after its last token: propose one token fewer
                drafted = drafted[: hidden.shape[0] - 1]
                states.append(hidden[1: len(drafted) + 1])
            rows.append(drafted)
        lengths = torch.tensor([len(r) for r in rows])  # [B]
        tokens = pad_sequence(rows, batch_first=True)  # [B, w'] (zero padding: never accepted)
        hidden = pad_sequence(states, batch_first=True) if need_hidden else None  # [B, w', Hd]
        return Proposal(tokens, hidden, lengths)

    def verify(self, sequences: Sequence[list[int]], draft_tokens: torch.Tensor, need_logits: bool) -> Verification:
        w = draft_tokens.shape[1]
        tokens, hidden, logits = [], [], []
        for sequence, drafts in zip(sequences, draft_tokens):
            extra = {"return_generation_logits": torch.tensor([[True]])}
            if w:
                extra["draft_input_ids"] = drafts[None].to(torch.int32)
            out = self._generate(TARGET_MODEL, sequence, w + 1, extra,
                                 GENERATION_OUTPUTS + ["generation_logits", HIDDEN_OUTPUT])
            row_logits = out["generation_logits"].reshape(w + 1, -1)  # [w+1, V]
            tokens.append(row_logits.argmax(dim=-1))
            hidden.append(out[HIDDEN_OUTPUT].reshape(w + 1, -1))  # [w+1, Ht]
            logits.append(row_logits[:w])
        return Verification(torch.stack(tokens), torch.stack(hidden), torch.stack(logits) if need_logits else None)

    def keep(self, lengths: torch.Tensor) -> None:
        pass  # stateless: the next requests carry the committed sequences

    def select(self, rows: torch.Tensor) -> None:
        pass

    def join(self, count: int) -> None:
        pass


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
