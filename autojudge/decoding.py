"""One greedy speculative decoding loop for every mode.

Each cycle:  propose W draft tokens -> verify them in one target forward -> accept (the rule
in :mod:`autojudge.acceptance`) -> commit ``n + 1`` tokens and crop both KV caches to the
accepted length. Nothing is re-prefilled: each model only ever reads the tokens its cache
has not seen yet.

Modes (all the same loop):

- ``target``: plain greedy decoding of the target, the baseline (a window of 0).
- ``lossless``: standard greedy speculative decoding; output identical to ``target``.
- ``topk``: a draft token also passes if it is in the target's top-K (a lossy baseline).
- ``judge``: AutoJudge; a mismatch also passes if the judge calls it unimportant.
  **Intentionally lossy**: the output may differ from the target's own.

The loop (:class:`SpeculativeLoop`) does not know where the models run: it talks to a
backend's per-request :class:`Session` (propose, verify, accept, commit). In-process
PyTorch models are :class:`InProcessBackend` (what :class:`SpeculativeDecoder` wraps);
the TensorRT-LLM flavour of the Triton repository drives the same loop with
:mod:`autojudge.serving.trtllm_backend` (draft/target engines and the judge-accept engine).

Cache invariant (in-process): after a cycle the target cache holds every committed token
but the last (which the next verification feeds first); the draft cache holds a prefix of
the committed tokens and lags by whatever it has not read yet.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch

from autojudge.acceptance import Acceptance, accept, judge_mismatch_ok, topk_mismatch_ok
from autojudge.errors import AutoJudgeError
from autojudge.judge import Judge
from autojudge.metrics import SpecDecodeMetrics
from autojudge.models import CausalLM, crop_cache

MODES = ("target", "lossless", "topk", "judge")
MAX_WINDOW = 64


@dataclass(frozen=True)
class DecodeConfig:
    mode: str = "lossless"
    window: int = 8  # W: draft tokens proposed per cycle
    max_new_tokens: int = 256
    top_k: int = 4  # mode topk only
    threshold: float | None = None  # mode judge only; None = the judge artifact's threshold
    stop: tuple[str, ...] = ()  # stop strings; the text is cut before the first one

    def validate(self, has_draft: bool, judge: Judge | None) -> None:
        if self.mode not in MODES:
            raise AutoJudgeError(f"unknown mode {self.mode!r}: choose one of {', '.join(MODES)}")
        if self.mode != "target":
            if not has_draft:
                raise AutoJudgeError(f"mode {self.mode!r} needs a draft model")
            if not 1 <= self.window <= MAX_WINDOW:
                raise AutoJudgeError(f"window must be in 1..{MAX_WINDOW}, got {self.window}")
        if self.max_new_tokens < 1:
            raise AutoJudgeError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.mode == "topk" and self.top_k < 1:
            raise AutoJudgeError(f"top_k must be >= 1, got {self.top_k}")
        if self.mode == "judge" and judge is None:
            raise AutoJudgeError("mode 'judge' needs a judge artifact (--judge DIR)")
        if self.threshold is not None and not 0.0 <= self.threshold <= 1.0:
            raise AutoJudgeError(f"threshold must be in [0, 1], got {self.threshold}")
        if any(not s for s in self.stop):
            raise AutoJudgeError("stop strings must not be empty")


@dataclass
class GenerationResult:
    token_ids: list[int]  # generated tokens only (no prompt)
    text: str
    finish_reason: str  # "eos" | "length" | "stop"
    metrics: SpecDecodeMetrics

    def to_dict(self) -> dict:
        return {"text": self.text, "token_ids": self.token_ids,
                "finish_reason": self.finish_reason, "metrics": self.metrics.to_dict()}


class Session(Protocol):
    """One request's view of a backend: the four operations of a cycle. Shapes: B = 1."""

    def propose(self, tokens: torch.Tensor, w: int, need_hidden: bool
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Greedy-draft w tokens after ``tokens`` [B, T]: draft tokens [B, w] and, if asked, the
        draft hidden states [B, w, Hd] after reading d_0 .. d_{w-1} (the judge's draft features)."""

    def verify(self, tokens: torch.Tensor, draft_tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One target pass over ``tokens`` + ``draft_tokens`` [B, w]: target tokens t_0 .. t_w
        [B, w+1] and the target hidden states [B, w+1, Ht] they were read from."""

    def accept(self, config: DecodeConfig, threshold: float | None, draft_tokens: torch.Tensor,
               target_tokens: torch.Tensor, draft_hidden: torch.Tensor | None,
               target_hidden: torch.Tensor) -> Acceptance:
        """The acceptance rule of ``config.mode`` (autojudge.acceptance is the oracle)."""

    def commit(self, length: int) -> None:
        """The sequence is now ``length`` tokens long: forget any state past it."""


class Backend(Protocol):
    has_draft: bool
    judge: Judge | None
    tokenizer: object  # a Hugging Face tokenizer (decode, for text and stop strings)
    eos_token_ids: frozenset[int]
    device: torch.device  # where the loop keeps the token tensor

    def start(self, uses_draft: bool) -> Session: ...


class InProcessBackend:
    """Draft, target (and judge) as PyTorch models in this process; KV caches kept per request."""

    def __init__(self, target: CausalLM, draft: CausalLM | None = None, judge: Judge | None = None):
        self.target, self.draft, self.judge = target, draft, judge
        self.has_draft = draft is not None
        self.tokenizer, self.eos_token_ids, self.device = target.tokenizer, target.eos_token_ids, target.device
        # Tokens past the smaller vocabulary are padding rows, never real tokens.
        self.vocab = min(target.vocab_size, draft.vocab_size) if draft else target.vocab_size

    def start(self, uses_draft: bool) -> _InProcessSession:
        return _InProcessSession(self, uses_draft)

    def draft_greedy(self, read: Callable[[torch.Tensor], torch.Tensor], unread: torch.Tensor, w: int,
                     need_hidden: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Greedy-draft w tokens: ``read(ids [B, S]) -> [B, S, Hd]`` runs the draft on tokens it has
        not seen (its cache grows), starting with ``unread`` [B, S]. Returns the draft tokens
        [B, w] and, if asked, the states after reading d_0 .. d_{w-1} [B, w, Hd]; the state at
        d_{w-1} costs one extra draft forward, made only when it is needed."""
        fed, drafted, states = unread, [], []
        for step in range(w + int(need_hidden)):
            hidden = read(fed)[:, -1:]  # [B, 1, Hd]
            if step:
                states.append(hidden)  # the state after reading d_{step-1}
            if step == w:
                break
            fed = self.draft.greedy(hidden, self.vocab)  # [B, 1]
            drafted.append(fed)
        return torch.cat(drafted, dim=1), (torch.cat(states, dim=1) if need_hidden else None)

    def accept(self, config: DecodeConfig, threshold: float | None, draft_tokens: torch.Tensor,
               target_tokens: torch.Tensor, draft_hidden: torch.Tensor | None,
               target_hidden: torch.Tensor) -> Acceptance:
        """The acceptance rule of ``config.mode`` on every row: [B, w] drafts, [B, w+1] targets."""
        w = draft_tokens.shape[1]
        mismatch_ok = None  # lossy modes only rewrite the mismatch mask
        if w and config.mode == "topk":
            logits = self.target.logits(target_hidden[:, :w])[..., : self.vocab]  # [B, w, V]
            mismatch_ok = topk_mismatch_ok(draft_tokens, logits, config.top_k)
        elif w and config.mode == "judge":
            probs = self.judge.probabilities(draft_hidden, target_hidden[:, 1:])  # [B, w]
            mismatch_ok = judge_mismatch_ok(probs, threshold)
        return accept(draft_tokens, target_tokens, mismatch_ok)


class _InProcessSession:
    def __init__(self, backend: InProcessBackend, uses_draft: bool):
        self.b = backend
        self.target_cache = backend.target.new_cache()
        self.draft_cache = backend.draft.new_cache() if uses_draft else None

    def propose(self, tokens, w, need_hidden):
        cache = self.draft_cache
        fed = tokens[:, cache.get_seq_length():]  # [B, S] tokens the draft has not read yet
        return self.b.draft_greedy(lambda ids: self.b.draft.hidden_states(ids, cache), fed, w, need_hidden)

    def verify(self, tokens, draft_tokens):
        w = draft_tokens.shape[1]
        fresh = torch.cat([tokens[:, self.target_cache.get_seq_length():], draft_tokens], dim=1)
        hidden = self.b.target.hidden_states(fresh, self.target_cache)[:, -(w + 1):]  # [B, w+1, Ht]
        return self.b.target.greedy(hidden, self.b.vocab), hidden

    def accept(self, config, threshold, draft_tokens, target_tokens, draft_hidden, target_hidden):
        return self.b.accept(config, threshold, draft_tokens, target_tokens, draft_hidden, target_hidden)

    def commit(self, length):
        crop_cache(self.target_cache, length)
        if self.draft_cache is not None:
            crop_cache(self.draft_cache, length)


class SpeculativeLoop:
    """Greedy speculative decoding over any :class:`Backend`."""

    def __init__(self, backend: Backend):
        self.backend = backend

    @torch.inference_mode()
    def generate(
        self,
        prompt_ids: Sequence[int],
        config: DecodeConfig = DecodeConfig(),
        eos_token_ids: frozenset[int] | None = None,
        on_tokens: Callable[[list[int], SpecDecodeMetrics], None] | None = None,
    ) -> GenerationResult:
        """Decode from ``prompt_ids``; ``on_tokens(ids, metrics)`` gets each cycle's committed
        tokens and the metrics so far (for streaming)."""
        backend = self.backend
        config.validate(backend.has_draft, backend.judge)
        if not prompt_ids:
            raise AutoJudgeError("the prompt is empty")
        eos = backend.eos_token_ids if eos_token_ids is None else eos_token_ids
        window = 0 if config.mode == "target" else config.window
        threshold, need_draft_hidden = judge_settings(config, backend.judge)
        stops = StopStrings(backend.tokenizer, config.stop)
        metrics = SpecDecodeMetrics(mode=config.mode, window=window)

        start = time.perf_counter()
        tokens = torch.tensor([list(prompt_ids)], dtype=torch.long, device=backend.device)  # [B, T]
        prompt_len = tokens.shape[1]
        session = backend.start(uses_draft=bool(window))
        finish_reason = "length"

        while (generated := tokens.shape[1] - prompt_len) < config.max_new_tokens:
            committed = tokens.shape[1]
            w = min(window, config.max_new_tokens - generated - 1)  # a cycle emits <= w + 1

            # --- propose: w greedy draft tokens, with the draft's hidden state at each
            draft_tokens = tokens.new_empty((1, 0))  # [B, w]
            draft_hidden = None  # [B, w, Hd]
            proposed = bool(w)
            if proposed:
                draft_tokens, draft_hidden = session.propose(tokens, w, need_draft_hidden)
                draft_tokens = draft_tokens.to(tokens.device)
                w = draft_tokens.shape[1]  # a backend may draft fewer (the draft ended its answer)

            # --- verify: one target pass over the unseen suffix + the w draft tokens
            target_tokens, target_hidden = session.verify(tokens, draft_tokens)  # [B, w+1], [B, w+1, Ht]

            # --- accept
            result = session.accept(config, threshold, draft_tokens, target_tokens, draft_hidden, target_hidden)
            n = int(result.num_accepted[0])
            metrics.record_cycle(w if proposed else None, int(need_draft_hidden), n,
                                 int(result.mismatch_accepted[0].sum()))

            # --- commit n + 1 tokens; the backend keeps only what is still valid
            new = torch.cat([draft_tokens[:, :n], result.next_tokens.reshape(1, 1).to(tokens)], dim=1)  # [B, n+1]
            tokens = torch.cat([tokens, new], dim=1)
            session.commit(committed + n)

            new_ids = new[0].tolist()
            cut, reason = first_stop(new_ids, eos)
            if reason is None and stops:
                cut, reason = stops.check(tokens[0, prompt_len:].tolist(), len(new_ids))
            if cut < len(new_ids):
                tokens = tokens[:, : committed + cut]
                new_ids = new_ids[:cut]
            if on_tokens and new_ids:
                metrics.num_generated_tokens = tokens.shape[1] - prompt_len
                metrics.wall_time_s = time.perf_counter() - start
                on_tokens(new_ids, metrics)
            if reason:
                finish_reason = reason
                break

        token_ids = tokens[0, prompt_len:].tolist()
        metrics.num_generated_tokens = len(token_ids)
        metrics.wall_time_s = time.perf_counter() - start
        text = backend.tokenizer.decode(token_ids, skip_special_tokens=True)
        if finish_reason == "stop":
            text = stops.cut_text(text)
        return GenerationResult(token_ids, text, finish_reason, metrics)


class SpeculativeDecoder(SpeculativeLoop):
    """Greedy speculative decoding of ``target`` with ``draft`` (and optionally a judge), in process."""

    def __init__(self, target: CausalLM, draft: CausalLM | None = None, judge: Judge | None = None,
                 check_judge_names: bool = True):
        if judge is not None:
            judge.check_models(draft.name if draft else "", draft.hidden_size if draft else 0,
                               target.name, target.hidden_size, check_names=check_judge_names)
        super().__init__(InProcessBackend(target, draft, judge))
        self.target, self.draft, self.judge = target, draft, judge


def judge_settings(config: DecodeConfig, judge: Judge | None) -> tuple[float | None, bool]:
    """(the judge threshold in force, whether the judge reads draft hidden states)."""
    if config.mode != "judge":
        return config.threshold, False
    threshold = judge.meta.threshold if config.threshold is None else config.threshold
    return threshold, judge.uses_draft_hidden


def first_stop(new_ids: list[int], eos: frozenset[int]) -> tuple[int, str | None]:
    """(how many of new_ids to keep, 'eos' or None): EOS is kept, what follows is dropped."""
    for i, token in enumerate(new_ids):
        if token in eos:
            return i + 1, "eos"
    return len(new_ids), None


class StopStrings:
    """User stop strings; the output text is cut before the first one (as vLLM does)."""

    def __init__(self, tokenizer, stop: Sequence[str]):
        self.tokenizer, self.stop = tokenizer, tuple(stop)

    def __bool__(self) -> bool:
        return bool(self.stop)

    def _find(self, text: str) -> int:
        hits = [i for i in (text.find(s) for s in self.stop) if i >= 0]
        return min(hits) if hits else -1

    def check(self, generated: list[int], num_new: int) -> tuple[int, str | None]:
        """(how many of the newest num_new tokens to keep, 'stop' or None)."""
        decode = self.tokenizer.decode
        if self._find(decode(generated, skip_special_tokens=True)) < 0:
            return num_new, None
        old = len(generated) - num_new
        for keep in range(1, num_new + 1):  # the first token that completes a stop string
            if self._find(decode(generated[: old + keep], skip_special_tokens=True)) >= 0:
                return keep, "stop"
        return num_new, "stop"

    def cut_text(self, text: str) -> str:
        index = self._find(text)
        return text if index < 0 else text[:index]
