"""The tensor contract of :mod:`autojudge.serving.trtllm_backend`, served by in-process models.

An executable specification of what the BLS expects from the ``draft`` and ``target``
TensorRT-LLM models and the ``judge_accept`` engine, answered by PyTorch models and the
acceptance oracle. Tests run the TensorRT-LLM orchestration against it on CPU; on a GPU
host the real engines answer the same requests.
"""

from __future__ import annotations

import torch

from autojudge.acceptance import judge_accept, judge_probabilities
from autojudge.judge import Judge
from autojudge.models import CausalLM
from autojudge.serving.trtllm_backend import DRAFT_MODEL, HIDDEN_OUTPUT, JUDGE_MODEL, TARGET_MODEL


class ReferenceModels:
    """``call(model, inputs, outputs)`` for the three models; every request starts from scratch
    (no state between requests, as with the real server)."""

    def __init__(self, target: CausalLM, draft: CausalLM, judge: Judge | None):
        self.target, self.draft, self.judge = target, draft, judge
        self.vocab = min(target.vocab_size, draft.vocab_size)
        self.requests: dict[str, int] = {DRAFT_MODEL: 0, TARGET_MODEL: 0, JUDGE_MODEL: 0}

    @torch.inference_mode()
    def __call__(self, model: str, inputs: dict[str, torch.Tensor], outputs: list[str]) -> dict[str, torch.Tensor]:
        self.requests[model] += 1
        if model == JUDGE_MODEL:
            result = self._judge_accept(inputs)
        else:
            result = self._generate(self.draft if model == DRAFT_MODEL else self.target, inputs)
        return {name: result[name] for name in outputs}

    def _generate(self, lm: CausalLM, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Greedy generation; with draft_input_ids, one pass over input + drafts (the states and
        logits at every draft position, as the target's external-draft-token step computes)."""
        prompt = inputs["input_ids"].to(torch.long)  # [1, T]
        length = int(inputs["request_output_len"].reshape(-1)[0])
        cache = lm.new_cache()
        if "draft_input_ids" in inputs:
            drafts = inputs["draft_input_ids"].to(torch.long)  # [1, w]
            hidden = lm.hidden_states(torch.cat([prompt, drafts], dim=1), cache)[:, -(drafts.shape[1] + 1):]
        else:
            states, fed = [], prompt
            for _ in range(length):
                state = lm.hidden_states(fed, cache)[:, -1:]  # [1, 1, H]
                states.append(state)
                fed = lm.greedy(state, self.vocab)
            hidden = torch.cat(states, dim=1)  # [1, L, H]
        logits = lm.logits(hidden)[..., : self.vocab].float()  # [1, L, V]
        return {"output_ids": logits.argmax(-1).to(torch.int32)[:, None],  # [1, 1, L]
                "sequence_length": torch.tensor([[logits.shape[1]]], dtype=torch.int32),
                "generation_logits": logits[:, None], HIDDEN_OUTPUT: hidden}

    def _judge_accept(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        draft_tokens, target_tokens = inputs["draft_tokens"].long(), inputs["target_tokens"].long()
        threshold = float(inputs["threshold"][0])
        if self.judge.uses_draft_hidden:
            result, probs = judge_accept(draft_tokens, target_tokens, inputs["draft_hidden"], inputs["target_hidden"],
                                         self.judge.weight, self.judge.bias, threshold)
        else:
            from autojudge.acceptance import accept, judge_mismatch_ok

            probs = judge_probabilities(inputs["target_hidden"], self.judge.weight, self.judge.bias)
            result = accept(draft_tokens, target_tokens, judge_mismatch_ok(probs, threshold))
        return {"num_accepted": result.num_accepted.to(torch.int32), "next_tokens": result.next_tokens.to(torch.int32),
                "probabilities": probs}
