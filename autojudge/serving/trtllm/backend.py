"""The decoding backend of the TensorRT-LLM flavour: two executors and the judge-accept engine, one loop.

The served model ``autojudge_stream`` of a TensorRT-LLM repository runs
:class:`autojudge.decoding.SpeculativeLoop` - the loop the in-process decoder runs - over
this backend, which drives the TensorRT-LLM executor bindings
(``tensorrt_llm.bindings.executor``, 1.2.1) for the draft and target engines itself, as
tensorrtllm_backend's own Python model does, and runs the judge-accept engine in process
(:mod:`autojudge.serving.trtllm.judge_engine`). Each cycle, per row:

=========  =======================================================================================
step       request (all greedy: ``SamplingConfig(beam_width=1, top_k=1)``)
=========  =======================================================================================
propose    draft: ``Request(sequence, w [+1 when the judge reads draft states])``; its tokens, and
           ``generation_autojudge_hidden_states`` [1, max_tokens, Hd] whose row k is the state
           computed at generation step k (row 0 at the last context token): rows 1..w are the
           states after reading d_0 .. d_{w-1}
verify     target: a *context pass* ``Request(sequence + drafts, 1)`` asking for
           ``context_autojudge_hidden_states`` [T + w, Ht]; rows T-1 .. T+w-1 are the states the
           target reads t_0 .. t_w from, and its LM head (applied here) gives their logits
accept     lossless / top-K: the rule on those tokens (and logits); judge: the judge-accept engine
commit     nothing: the next requests carry the committed sequence; block reuse finds the prefix
=========  =======================================================================================

Why a context pass, not the executor's external-draft-token step (read in NVIDIA/TensorRT-LLM
1.2.0rc2): with external draft tokens the executor accepts greedily itself and returns logits
only for the drafts it accepted (point 6 of the TensorRT-LLM issue); an engine built with
``gather_context_logits`` gets block reuse turned off at load (trtGptModelInflightBatching.cpp
``fixExecutorConfig``); a context additional output is computed only for tokens the KV cache did
not already hold, and the rows of reused tokens are left unwritten (inflightBatchingUtils.cpp
``copyAdditionalOutputs``). So the target engine returns final-norm states, not logits, and each
row's requests carry a cache salt of their own (``cache_salt_id``): a row then only ever reuses
its own earlier requests, none of which held its last committed token at that position (the
token a cycle commits last is the target's, where the request had a different draft or nothing),
so rows T-1 onwards are always computed.
"""

from __future__ import annotations

import datetime
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch.nn.utils.rnn import pad_sequence

from autojudge.decoding.backend import FusedJudgeAccept, Proposal, Verification
from autojudge.decoding.config import MAX_WINDOW
from autojudge.errors import AutoJudgeError
from autojudge.judge import Judge
from autojudge.serving.trtllm.contract import CONTEXT_HIDDEN, GENERATION_HIDDEN, HIDDEN_OUTPUT

RESPONSE_TIMEOUT_S = 600.0  # one request's longest wait before the cycle fails with an error


@dataclass
class Executors:
    """The executor API module and the two executors it opened."""

    api: object  # tensorrt_llm.bindings.executor, or autojudge.testing.trtllm_executor
    draft: object
    target: object

    def run(self, executor, requests: list) -> list:
        """Enqueue ``requests`` together (the executor batches them in flight); their final results."""
        ids = executor.enqueue_requests(requests)
        results = []
        deadline = datetime.datetime.now() + datetime.timedelta(seconds=RESPONSE_TIMEOUT_S)
        for request_id in ids:
            result = None
            while result is None:
                if datetime.datetime.now() > deadline:
                    raise AutoJudgeError(f"TensorRT-LLM gave no response within {RESPONSE_TIMEOUT_S:.0f} s")
                for response in executor.await_responses(request_id, timeout=datetime.timedelta(milliseconds=100)):
                    if response.has_error():
                        raise AutoJudgeError(f"TensorRT-LLM refused a request: {response.error_msg}")
                    if response.result.is_final:
                        result = response.result
            results.append(result)
        return results


class TensorRTLLMBackend:
    """Draft and target TensorRT-LLM engines (through their executors) and the judge-accept engine."""

    has_draft = True
    window_bound = "the deployment's window (max_window)"

    def __init__(self, executors: Executors, lm_head: Callable[[torch.Tensor], torch.Tensor], vocab: int,
                 tokenizer, eos_token_ids: frozenset[int], judge: Judge | None,
                 judge_accept: FusedJudgeAccept | None, max_window: int = MAX_WINDOW,
                 device: torch.device | str = "cpu"):
        self.executors, self.lm_head, self.vocab = executors, lm_head, vocab
        self.tokenizer, self.eos_token_ids, self.judge = tokenizer, eos_token_ids, judge
        self.judge_accept = judge_accept
        self.max_window, self.device = max_window, torch.device(device)
        self.end_id = min(eos_token_ids) if eos_token_ids else None

    def open(self, batch: int, uses_draft: bool) -> _ExecutorBatch:
        return _ExecutorBatch(self, batch)

    def request(self, tokens: list[int], max_tokens: int, hidden: tuple[str, bool] | None, salt: int | None):
        """One greedy request; ``hidden`` = (output name, gather_context) when the states come back."""
        api = self.executors.api
        outputs = [api.AdditionalModelOutput(hidden[0], gather_context=hidden[1])] if hidden else []
        return api.Request(tokens, max_tokens, sampling_config=api.SamplingConfig(1, top_k=1),
                           output_config=api.OutputConfig(exclude_input_from_output=True,
                                                          additional_model_outputs=outputs),
                           end_id=self.end_id, pad_id=self.end_id, cache_salt_id=salt)


def _output(result, name: str) -> torch.Tensor:
    for output in result.additional_outputs:
        if output.name == name:
            return output.output
    raise AutoJudgeError(f"TensorRT-LLM returned no {name!r} (got {[o.name for o in result.additional_outputs]})")


def verified_rows(context: torch.Tensor, length: int, w: int) -> torch.Tensor:
    """context [length + w, Ht] states of a pass over a sequence of ``length`` tokens + w drafts ->
    [w+1, Ht]: the states after reading its last token and each draft (t_0 .. t_w are read from them)."""
    return context[length - 1: length + w]


class _ExecutorBatch:
    """Stateless but for one cache salt per row; every request carries its row's whole sequence."""

    def __init__(self, backend: TensorRTLLMBackend, batch: int):
        self.b = backend
        self.salts = [random.getrandbits(63) for _ in range(batch)]

    def propose(self, sequences: Sequence[list[int]], w: int, need_hidden: bool) -> Proposal:
        b = self.b
        requests = [b.request(list(seq), w + int(need_hidden), (HIDDEN_OUTPUT, False) if need_hidden else None,
                              None) for seq in sequences]
        rows, states = [], []
        for result in b.executors.run(b.executors.draft, requests):
            generated = torch.tensor(result.output_token_ids[0], dtype=torch.long)  # [L] (L < w+1 after an EOS)
            if need_hidden:
                hidden = _output(result, GENERATION_HIDDEN)[0]  # [max_tokens, Hd], rows >= L never written
                drafted = generated[: min(w, len(generated) - 1)]  # a state after d_k exists for k < L - 1
                states.append(hidden[1: len(drafted) + 1].to(b.device))  # [w', Hd]
            else:
                drafted = generated[:w]
            rows.append(drafted)
        lengths = torch.tensor([len(r) for r in rows])  # [B]
        tokens = pad_sequence(rows, batch_first=True)  # [B, w'] (zero padding: never accepted)
        hidden = pad_sequence(states, batch_first=True) if need_hidden else None  # [B, w', Hd]
        return Proposal(tokens.to(b.device), hidden, lengths.to(b.device))

    def verify(self, sequences: Sequence[list[int]], draft_tokens: torch.Tensor, need_logits: bool) -> Verification:
        b = self.b
        w = draft_tokens.shape[1]
        drafts = draft_tokens.tolist()
        requests = [b.request(list(seq) + row, 1, (HIDDEN_OUTPUT, True), salt)
                    for seq, row, salt in zip(sequences, drafts, self.salts)]
        hidden = torch.stack([verified_rows(_output(result, CONTEXT_HIDDEN), len(seq), w)
                              for seq, result in zip(sequences, b.executors.run(b.executors.target, requests))])
        hidden = hidden.to(b.device)  # [B, w+1, Ht]
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
