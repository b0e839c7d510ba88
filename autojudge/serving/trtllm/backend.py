"""The decoding backend of the TensorRT-LLM flavour: draft, target and the judge-accept step, one loop.

The served model ``autojudge_stream`` of a TensorRT-LLM repository runs
:class:`autojudge.decoding.SpeculativeLoop` - the loop the in-process decoder runs - over
this backend, which drives TensorRT-LLM for the draft and target models itself, as
tensorrtllm_backend's own Python model does: through the executor bindings on the engine line
(``tensorrt_llm.bindings.executor``, 1.2.1: :class:`ExecutorClient`) or through the LLM API
on today's PyTorch-backend line (:mod:`autojudge.serving.trtllm.llm_api`). The judge-accept
step runs in process: the TensorRT engine (:mod:`autojudge.serving.trtllm.judge_engine`) or the
PyTorch op (:mod:`autojudge.acceptance.torch_op`). Each cycle, per row:

=========  =======================================================================================
step       request (greedy)
=========  =======================================================================================
propose    draft: w [+1 when the judge reads draft states] new tokens and, when asked, its states
           at each generation step (row 0 at the last prompt token): rows 1..w are the states
           after reading d_0 .. d_{w-1}
verify     target: a *context pass* over sequence + drafts, one new token, returning its
           final-norm states at the context tokens; the last w+1 rows are the states the target
           reads t_0 .. t_w from, and its LM head (applied here) gives their logits
accept     lossless / top-K: the rule on those tokens (and logits); judge: the judge-accept step
commit     nothing: the next requests carry the committed sequence; block reuse finds the prefix
=========  =======================================================================================

Why a context pass, not the executor's external-draft-token step (read in NVIDIA/TensorRT-LLM
1.2.0rc2): with external draft tokens the executor accepts greedily itself and returns logits
only for the drafts it accepted (point 6 of the TensorRT-LLM issue); an engine built with
``gather_context_logits`` gets block reuse turned off at load (trtGptModelInflightBatching.cpp
``fixExecutorConfig``); a context additional output is computed only for tokens the KV cache did
not already hold, and the rows of reused tokens are left unwritten (inflightBatchingUtils.cpp
``copyAdditionalOutputs``; the PyTorch backend likewise returns no context outputs for reused
tokens). So the target returns final-norm states, not logits, and each row's requests carry a
cache salt of their own: a row then only ever reuses its own earlier requests, none of which held
its last committed token at that position (the token a cycle commits last is the target's, where
the request had a different draft or nothing: each pass carries only the drafts its row may
accept, ``verify(windows=)``), so the last w+1 rows are always computed.
"""

from __future__ import annotations

import datetime
import random
import time
from collections.abc import Callable, Sequence
from typing import Protocol

import torch
from torch.nn.utils.rnn import pad_sequence

from autojudge.decoding.backend import FusedJudgeAccept, Proposal, Verification
from autojudge.decoding.config import MAX_WINDOW
from autojudge.errors import AutoJudgeError
from autojudge.judge import Judge
from autojudge.serving.trtllm.contract import CONTEXT_HIDDEN, GENERATION_HIDDEN, HIDDEN_OUTPUT

RESPONSE_TIMEOUT_S = 600.0  # one request's longest wait before the cycle fails with an error


class ModelClient(Protocol):
    """One model served by TensorRT-LLM: the executor bindings (engine line, :class:`ExecutorClient`)
    or the LLM API (PyTorch backend, :mod:`autojudge.serving.trtllm.llm_api`)."""

    def generate(self, sequences: list[list[int]], max_tokens: int,
                 states: bool) -> list[tuple[list[int], torch.Tensor | None]]:
        """Greedy continuations; with ``states``, [>= L, H] rows where row k is the state computed at
        generation step k (row 0 at the last prompt token), for the L tokens generated."""

    def context_states(self, sequences: list[list[int]], salts: list[int]) -> list[torch.Tensor]:
        """One context pass per sequence, its KV reuse limited to requests of the same salt: the states
        of its tokens [R, H], R >= the tokens not found in the cache, the last row the last token's."""


class ExecutorClient:
    """A model behind ``tensorrt_llm.bindings.executor.Executor`` (1.2.x), or its emulation."""

    def __init__(self, api, executor, end_id: int | None):
        self.api, self.executor, self.end_id = api, executor, end_id

    def _request(self, tokens: list[int], max_tokens: int, gather_context: bool | None, salt: int | None):
        api = self.api
        outputs = [] if gather_context is None else [api.AdditionalModelOutput(HIDDEN_OUTPUT,
                                                                               gather_context=gather_context)]
        return api.Request(tokens, max_tokens, sampling_config=api.SamplingConfig(1, top_k=1),
                           output_config=api.OutputConfig(exclude_input_from_output=True,
                                                          additional_model_outputs=outputs),
                           end_id=self.end_id, pad_id=self.end_id, cache_salt_id=salt)

    def _run(self, requests: list) -> list:
        """Enqueue ``requests`` together (the executor batches them in flight); their final results."""
        ids = self.executor.enqueue_requests(requests)
        results = []
        deadline = time.monotonic() + RESPONSE_TIMEOUT_S
        for request_id in ids:
            result = None
            while result is None:
                if time.monotonic() > deadline:
                    raise AutoJudgeError(f"TensorRT-LLM gave no response within {RESPONSE_TIMEOUT_S:.0f} s")
                for response in self.executor.await_responses(request_id,
                                                              timeout=datetime.timedelta(milliseconds=100)):
                    if response.has_error():
                        raise AutoJudgeError(f"TensorRT-LLM refused a request: {response.error_msg}")
                    if response.result.is_final:
                        result = response.result
            results.append(result)
        return results

    def generate(self, sequences, max_tokens, states):
        results = self._run([self._request(seq, max_tokens, False if states else None, None) for seq in sequences])
        return [(result.output_token_ids[0], _output(result, GENERATION_HIDDEN)[0] if states else None)
                for result in results]

    def context_states(self, sequences, salts):
        results = self._run([self._request(seq, 1, True, salt) for seq, salt in zip(sequences, salts)])
        return [_output(result, CONTEXT_HIDDEN) for result in results]  # [T, H], rows of reused tokens unwritten


def _output(result, name: str) -> torch.Tensor:
    for output in result.additional_outputs:
        if output.name == name:
            return output.output
    raise AutoJudgeError(f"TensorRT-LLM returned no {name!r} (got {[o.name for o in result.additional_outputs]})")


class TensorRTLLMBackend:
    """Draft and target served by TensorRT-LLM, and the judge-accept engine or op."""

    has_draft = True
    window_bound = "the deployment's window (max_window)"

    def __init__(self, draft: ModelClient, target: ModelClient, lm_head: Callable[[torch.Tensor], torch.Tensor],
                 vocab: int, tokenizer, eos_token_ids: frozenset[int], judge: Judge | None,
                 judge_accept: FusedJudgeAccept | None, max_window: int = MAX_WINDOW,
                 device: torch.device | str = "cpu"):
        self.draft, self.target, self.lm_head, self.vocab = draft, target, lm_head, vocab
        self.tokenizer, self.eos_token_ids, self.judge = tokenizer, eos_token_ids, judge
        self.judge_accept = judge_accept
        self.max_window, self.device = max_window, torch.device(device)

    def open(self, batch: int, uses_draft: bool) -> _Batch:
        return _Batch(self, batch)


def verified_rows(context: torch.Tensor, w: int) -> torch.Tensor:
    """context [R, Ht] states of a pass over a sequence + w drafts -> [w+1, Ht]: its last w+1 rows, the
    states after reading the sequence's last token and each draft (t_0 .. t_w are read from them)."""
    if context.shape[0] < w + 1:
        raise AutoJudgeError(f"TensorRT-LLM returned {context.shape[0]} context states for a pass that verifies "
                             f"{w + 1} positions")
    return context[context.shape[0] - (w + 1):]


class _Batch:
    """Stateless but for one cache salt per row; every request carries its row's whole sequence."""

    def __init__(self, backend: TensorRTLLMBackend, batch: int):
        self.b = backend
        self.salts = [random.getrandbits(63) for _ in range(batch)]

    def propose(self, sequences: Sequence[list[int]], w: int, need_hidden: bool) -> Proposal:
        b = self.b
        rows, states = [], []
        for generated, hidden in b.draft.generate([list(s) for s in sequences], w + int(need_hidden), need_hidden):
            generated = torch.tensor(generated, dtype=torch.long)  # [L] (L < w+1 after an end token)
            if need_hidden:  # hidden [max_tokens, Hd], rows >= L never written
                drafted = generated[: min(w, len(generated) - 1)]  # a state after d_k exists for k < L - 1
                states.append(hidden[1: len(drafted) + 1].to(b.device))  # [w', Hd]
            else:
                drafted = generated[:w]
            rows.append(drafted)
        lengths = torch.tensor([len(r) for r in rows])  # [B]
        tokens = pad_sequence(rows, batch_first=True)  # [B, w'] (zero padding: never accepted)
        hidden = pad_sequence(states, batch_first=True) if need_hidden else None  # [B, w', Hd]
        return Proposal(tokens.to(b.device), hidden, lengths.to(b.device))

    def verify(self, sequences: Sequence[list[int]], draft_tokens: torch.Tensor, need_logits: bool,
               windows: torch.Tensor | None = None) -> Verification:
        """Each row's pass carries only the drafts it may accept: a draft past its window could equal
        the token the row commits there, and the next pass would then reuse that block unwritten."""
        b = self.b
        w = draft_tokens.shape[1]
        own = [w] * len(sequences) if windows is None else windows.tolist()  # [B] drafts per row
        passes = [list(seq) + row[:k] for seq, row, k in zip(sequences, draft_tokens.tolist(), own)]
        states = [verified_rows(s, k) for s, k in zip(b.target.context_states(passes, self.salts), own)]
        states[0] = torch.cat([states[0], states[0].new_zeros(w + 1 - len(states[0]), states[0].shape[1])])
        hidden = pad_sequence(states, batch_first=True).to(b.device)  # [B, w+1, Ht] (zeros past a row's window)
        logits = b.lm_head(hidden)[..., : b.vocab].float()  # [B, w+1, V]
        return Verification(logits.argmax(-1), hidden, logits[:, :w] if need_logits else None)

    def keep(self, lengths: torch.Tensor) -> None:
        pass  # the next requests carry the committed sequences

    def select(self, rows: torch.Tensor) -> None:
        self.salts = [self.salts[int(r)] for r in rows]

    def join(self, count: int) -> None:
        self.salts += [random.getrandbits(63) for _ in range(count)]


class LMHead:
    """The target's output projection, applied to the final-norm states the target engine returns:
    ``lm_head.weight`` of its Hugging Face checkpoint (``model.embed_tokens.weight`` when tied)."""

    def __init__(self, checkpoint: str, dtype: torch.dtype, device: torch.device):
        import json
        from pathlib import Path

        from huggingface_hub import snapshot_download
        from safetensors import safe_open

        folder = Path(checkpoint) if Path(checkpoint).is_dir() else Path(snapshot_download(
            checkpoint, allow_patterns=["*.json", "*.safetensors"]))
        config = json.loads((folder / "config.json").read_text())
        config = config.get("text_config", config)
        names = ["lm_head.weight"] + (["model.embed_tokens.weight"] if config.get("tie_word_embeddings") else [])
        for file in sorted(folder.glob("*.safetensors")):
            with safe_open(str(file), framework="pt") as weights:
                name = next((n for n in names if n in weights.keys()), None)  # noqa: SIM118 - safe_open has no __contains__
                if name is not None:
                    self.weight = weights.get_tensor(name).to(device, dtype)  # [V, Ht]
                    return
        raise AutoJudgeError(f"{folder}: no {' or '.join(names)} in its safetensors files")

    def __call__(self, hidden: torch.Tensor) -> torch.Tensor:
        return hidden.to(self.weight.dtype) @ self.weight.T  # [..., Ht] -> [..., V]
