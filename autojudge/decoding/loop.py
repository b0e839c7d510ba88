"""The speculative decoding loop: one loop over a batch of sequences, for every backend and mode.

Each cycle, for every row of the batch at once::

    propose W draft tokens -> verify them in one target forward -> accept -> commit n + 1

``accept`` is the rule of :mod:`autojudge.acceptance` (the oracle), fed the mismatch mask of
the mode (:func:`mismatch_ok`); a backend may instead offer a fused judge-accept step (an
engine, a GPU op) tested equal to it. The loop handles stops, budgets and metrics once;
the backend (:mod:`autojudge.decoding.backend`) only runs models and keeps its caches to
the committed length. Batch 1 is a batch of one; a row leaves when it ends (EOS, its
budget, a stop string), and :class:`Running` lets new rows join between cycles.

Rows accept different numbers of tokens, so their sequences have different lengths. A row
near its budget uses only its first ``row_w`` positions: acceptance at position k depends
on positions <= k alone, so clamping its count gives what the row would get by itself.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from autojudge.acceptance import Acceptance, accept, fly_mismatch_ok, judge_mismatch_ok, topk_mismatch_ok
from autojudge.decoding.backend import Backend, BatchState, Verification
from autojudge.decoding.adaptive import CycleCost, WindowController
from autojudge.decoding.config import LOGIT_MODES, DecodeConfig, GenerationResult
from autojudge.decoding.metrics import SpecDecodeMetrics
from autojudge.decoding.stops import StopStrings, first_stop
from autojudge.errors import AutoJudgeError

# on_tokens(row, new token ids, metrics so far): each cycle's committed tokens (for streaming)
OnTokens = Callable[[int, list[int], SpecDecodeMetrics], None]


@dataclass
class _Row:
    tokens: list[int]  # prompt + committed
    prompt_len: int
    metrics: SpecDecodeMetrics
    finish_reason: str | None = None
    index: int = 0  # the order it joined in (results come back in this order)
    controller: WindowController | None = None  # adaptive speculation: this row's window

    @property
    def generated(self) -> list[int]:
        return self.tokens[self.prompt_len:]


@dataclass
class Running:
    """A batch being decoded: ``join`` adds sequences, ``cycle`` advances every active row."""

    backend: Backend
    config: DecodeConfig
    eos: frozenset[int]
    on_tokens: OnTokens | None = None
    cost: CycleCost | None = None  # adaptive speculation: the measured cost of a cycle's parts
    rows: list[_Row] = field(default_factory=list)  # every row that joined, in order
    active: list[_Row] = field(default_factory=list)  # batch row -> its _Row
    state: BatchState | None = None

    def __post_init__(self) -> None:
        backend, config = self.backend, self.config
        config.validate(backend.has_draft, backend.judge, backend.max_window, backend.window_bound)
        self.window = 0 if config.mode == "target" else config.window
        self.threshold = config.judge_threshold(backend.judge)
        self.need_draft_hidden = config.mode == "judge" and backend.judge.uses_draft_hidden
        self.stops = StopStrings(backend.tokenizer, config.stop)
        self.start = time.perf_counter()

    @torch.inference_mode()
    def join(self, prompts: Sequence[Sequence[int]]) -> None:
        """New rows, one per prompt, take part from the next cycle on."""
        if any(not p for p in prompts):
            raise AutoJudgeError("every prompt must have at least one token")
        adaptive = self.config.adaptive and self.window > 0
        new = [_Row(list(p), len(p), SpecDecodeMetrics(mode=self.config.mode, window=self.window),
                    index=len(self.rows) + i, controller=WindowController(self.window, self.cost) if adaptive else None)
               for i, p in enumerate(prompts)]
        if self.state is None:
            self.state = self.backend.open(len(new), uses_draft=bool(self.window))
        else:
            self.state.join(len(new))
        self.rows += new
        self.active += new

    @torch.inference_mode()
    def cycle(self) -> None:
        """One propose -> verify -> accept -> commit for every active row."""
        backend, config, rows, state = self.backend, self.config, self.active, self.state
        device = backend.device
        sequences = [row.tokens for row in rows]
        committed = torch.tensor([len(s) for s in sequences], device=device)  # [B]
        room = torch.tensor([config.max_new_tokens - len(row.generated) for row in rows], device=device)  # [B] >= 1
        row_w = (room - 1).clamp(max=self.window)  # [B] the window each row would use alone
        if self.config.adaptive and self.window:  # each row's own window, from its measured acceptance
            row_w = torch.minimum(row_w, torch.tensor([row.controller.window() for row in rows], device=device))

        # --- propose: w greedy draft tokens per row, with the draft's hidden state at each
        draft_tokens = committed.new_empty((len(rows), 0))  # [B, w]
        draft_hidden = None  # [B, w, Hd]
        if int(row_w.max()):
            proposal = state.propose(sequences, int(row_w.max()), self.need_draft_hidden)
            draft_tokens, draft_hidden = proposal.tokens.to(device), proposal.hidden
            row_w = row_w.clamp(max=draft_tokens.shape[1])  # a backend may draft fewer
            if proposal.lengths is not None:
                row_w = torch.minimum(row_w, proposal.lengths.to(device))
        w = draft_tokens.shape[1]

        # --- verify: one target pass over each row's unseen tokens + its w draft tokens
        verification = state.verify(sequences, draft_tokens, need_logits=bool(w) and config.mode in LOGIT_MODES)

        # --- accept
        result = self._accept(draft_tokens, draft_hidden, verification)
        num_accepted = torch.minimum(result.num_accepted.to(device), row_w)  # [B]
        next_tokens = verification.tokens.to(device).gather(1, num_accepted[:, None])[:, 0]  # [B] t_n
        in_row = torch.arange(w, device=device)[None, :] < num_accepted[:, None]  # [B, w]
        mismatches = (result.mismatch_accepted.to(device) & in_row).sum(dim=1)  # [B]

        # --- commit n + 1 tokens; the backend keeps only what is still valid
        state.keep(committed + num_accepted)
        still = []
        for b, (row, n, next_token, drafted, mismatched, window) in enumerate(zip(
                rows, num_accepted.tolist(), next_tokens.tolist(), draft_tokens.tolist(), mismatches.tolist(),
                row_w.tolist())):
            row.metrics.record_cycle(window or None, int(self.need_draft_hidden), n, mismatched)
            if row.controller is not None:
                row.controller.update(window, n)
            if self._commit(row, drafted[:n] + [next_token]):
                still.append(b)
        if len(still) < len(rows):
            state.select(torch.tensor(still, dtype=torch.long, device=device))
            self.active = [rows[b] for b in still]

    def _accept(self, draft_tokens: torch.Tensor, draft_hidden: torch.Tensor | None,
                verification: Verification) -> Acceptance:
        """The rule of ``config.mode``: the oracle with the mode's mismatch mask, or the
        backend's fused judge-accept step."""
        judge_accept = self.backend.judge_accept
        if self.config.mode == "judge" and draft_tokens.shape[1] and judge_accept is not None:
            return judge_accept(draft_tokens, verification.tokens, draft_hidden, verification.hidden[:, 1:],
                                self.threshold)
        return accept(draft_tokens, verification.tokens.to(draft_tokens.device),
                      mismatch_ok(self.config, self.backend, self.threshold, draft_tokens, draft_hidden, verification))

    def _commit(self, row: _Row, new_ids: list[int]) -> bool:
        """Append a cycle's tokens to ``row`` (cut at EOS or a stop string); False once it has
        ended (EOS, stop string, or its max_new_tokens reached)."""
        cut, reason = first_stop(new_ids, self.eos)
        if reason is None and self.stops:
            cut, reason = self.stops.check(row.generated + new_ids, len(new_ids))
        new_ids = new_ids[:cut]
        row.tokens += new_ids  # a row never drafts past its budget (row_w)
        if reason is None and len(row.generated) >= self.config.max_new_tokens:
            reason = "length"
        if self.on_tokens and new_ids:
            row.metrics.num_generated_tokens = len(row.generated)
            row.metrics.wall_time_s = time.perf_counter() - self.start
            self.on_tokens(row.index, new_ids, row.metrics)
        row.finish_reason = reason
        return reason is None

    def results(self) -> list[GenerationResult]:
        """Every row's result, in the order they joined (``wall_time_s``: the batch's time so far)."""
        seconds = time.perf_counter() - self.start
        results = []
        for row in self.rows:
            token_ids = row.generated
            row.metrics.num_generated_tokens, row.metrics.wall_time_s = len(token_ids), seconds
            text = self.backend.tokenizer.decode(token_ids, skip_special_tokens=True)
            if row.finish_reason == "stop":
                text = self.stops.cut_text(text)
            results.append(GenerationResult(token_ids, text, row.finish_reason or "length", row.metrics))
        return results


def mismatch_ok(config: DecodeConfig, backend: Backend, threshold: float | None, draft_tokens: torch.Tensor,
                draft_hidden: torch.Tensor | None, verification: Verification) -> torch.Tensor | None:
    """The mask a lossy mode lets mismatches through with [B, w] (None: lossless, the rule unchanged)."""
    if not draft_tokens.shape[1] or config.mode in ("target", "lossless"):
        return None
    if config.mode == "topk":
        return topk_mismatch_ok(draft_tokens, verification.logits.to(draft_tokens.device), config.top_k)
    if config.mode == "fly":
        return fly_mismatch_ok(draft_tokens, verification.tokens.to(draft_tokens.device),
                               verification.logits.to(draft_tokens.device), config.fly_entropy, config.fly_window)
    probabilities = backend.judge.probabilities(draft_hidden, verification.hidden[:, 1:])  # [B, w]
    return judge_mismatch_ok(probabilities, threshold).to(draft_tokens.device)


class SpeculativeLoop:
    """Greedy speculative decoding over any :class:`~autojudge.decoding.backend.Backend`."""

    def __init__(self, backend: Backend):
        self.backend = backend
        self._costs: dict[int, CycleCost] = {}

    def cycle_cost(self, prompt: list[int], window: int) -> CycleCost:
        """The cost of a cycle's parts on this machine, measured once per window (adaptive speculation)."""
        if window not in self._costs:
            self._costs[window] = CycleCost.measure(self.backend, prompt, window)
        return self._costs[window]

    def generate_batch(self, prompts: Sequence[Sequence[int]], config: DecodeConfig = DecodeConfig(),
                       eos_token_ids: frozenset[int] | None = None, on_tokens: OnTokens | None = None
                       ) -> list[GenerationResult]:
        """Decode every prompt together; results in prompt order (``wall_time_s`` of each is the
        whole batch's time). ``on_tokens(row, ids, metrics)`` gets each cycle's committed tokens."""
        if not prompts:
            raise AutoJudgeError("every prompt must have at least one token (no prompts given)")
        eos = self.backend.eos_token_ids if eos_token_ids is None else eos_token_ids
        cost = self.cycle_cost(list(prompts[0]), config.window) if config.adaptive and config.mode != "target" else None
        running = Running(self.backend, config, eos, on_tokens, cost)
        running.join(prompts)
        while running.active:
            running.cycle()
        return running.results()

    def generate(self, prompt_ids: Sequence[int], config: DecodeConfig = DecodeConfig(),
                 eos_token_ids: frozenset[int] | None = None,
                 on_tokens: Callable[[list[int], SpecDecodeMetrics], None] | None = None) -> GenerationResult:
        """Decode one prompt (a batch of one); ``on_tokens(ids, metrics)`` gets each cycle's
        committed tokens and the metrics so far (for streaming)."""
        if not prompt_ids:
            raise AutoJudgeError("the prompt is empty")
        stream = (lambda row, ids, metrics: on_tokens(ids, metrics)) if on_tokens else None
        return self.generate_batch([prompt_ids], config, eos_token_ids, stream)[0]
