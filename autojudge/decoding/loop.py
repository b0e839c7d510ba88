"""The speculative decoding loop: one loop over a batch of sequences, for every backend and mode.

Each cycle, for every row of the batch at once::

    propose W draft tokens -> verify them in one target forward -> accept -> commit n + 1

``accept`` is the rule of :mod:`autojudge.acceptance` (the oracle), fed the mismatch mask of
the mode (:func:`mismatch_ok`); a backend may instead offer a fused judge-accept step (an
engine, a GPU op) tested equal to it. The loop handles stops, budgets and metrics once;
the backend (:mod:`autojudge.decoding.backend`) only runs models and keeps its caches to
the committed length. Batch 1 is a batch of one; a row leaves when it ends (EOS, its
budget, a stop string, a cancel), and :class:`Running` lets new rows join between cycles, each
with its own request (mode, window, threshold, stop strings, budget; continuous batching).

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
from autojudge.decoding.adaptive import BatchProbes, CycleCost, ObservedCost, PooledPrior, WindowController
from autojudge.decoding.backend import Backend, BatchState, Verification
from autojudge.decoding.config import LOGIT_MODES, DecodeConfig, GenerationResult
from autojudge.decoding.metrics import SpecDecodeMetrics
from autojudge.decoding.stops import StopStrings, first_stop
from autojudge.errors import AutoJudgeError
from autojudge.judge import Judge

# on_tokens(row, new token ids, metrics so far): each cycle's committed tokens (for streaming)
OnTokens = Callable[[int, list[int], SpecDecodeMetrics], None]
SMALL_CATCH_UP = 32  # draft tokens over the batch whose catch-up read costs a few draft steps at most


@dataclass(frozen=True)
class CycleRecord:
    """What one cycle of a :class:`Running` batch did (for ``on_cycle``: a schedule seen cycle by cycle)."""

    rows: int  # batch rows in the cycle
    feeding: int  # of them, rows fed a prompt chunk (still prefilling when it began)
    drafting: int  # of them, rows that drafted (window > 0)
    window: int  # the batch's window w: draft tokens proposed per row (0: plain target decoding)
    seconds: float  # the whole cycle
    read_s: float  # of it, the draft reading a long lag apart before it proposed (0.0: none)


@dataclass
class _Row:
    tokens: list[int]  # prompt + committed
    prompt_len: int
    config: DecodeConfig  # this row's request: mode, window, budget, threshold, stop strings
    threshold: float | None  # the judge threshold in force (mode judge)
    stops: StopStrings
    metrics: SpecDecodeMetrics
    controller: WindowController  # its acceptance estimate (adaptive rows follow it)
    on_tokens: OnTokens | None = None
    index: int = 0  # the order it joined in (results come back in this order)
    fed: int = 0  # prompt tokens the caches have been given (chunked prefill; = prompt_len once done)
    draft_read: int = 0  # tokens of this row the draft had read at the last cycle that drafted
    started: float = 0.0  # perf_counter() at join
    cancelled: bool = False
    finish_reason: str | None = None

    @property
    def generated(self) -> list[int]:
        return self.tokens[self.prompt_len:]

    @property
    def window(self) -> int:
        return 0 if self.config.mode == "target" else self.config.window

    @property
    def prefilling(self) -> bool:
        return self.fed < self.prompt_len

    def rule(self) -> tuple:
        """Rows with equal rules are accepted together."""
        c = self.config
        return c.mode, c.top_k, c.fly_entropy, c.fly_window, self.threshold


@dataclass
class Running:
    """A batch being decoded: ``join`` adds requests (each with its own config), ``cycle``
    advances every active row, ``cancel`` makes one leave. ``prefill_chunk``: a cycle feeds at most
    this many prompt tokens, shared equally by the rows still feeding theirs, so a joining prompt never stalls
    the others for long however many join at once (and one joining alone is read in few cycles: at
    four clients on 2 cores, 64 tokens per row a cycle fed lone joiners' prompts in twice the cycles
    that joiners arriving together took, which cost adaptive rows, never in step, 6% of their time).
    ``cost``: the cycle cost adaptive rows are scheduled with (None: no adaptive rows allowed)."""

    backend: Backend
    eos: frozenset[int]
    cost: CycleCost | ObservedCost | None = None
    prefill_chunk: int | None = None
    uses_draft: bool = True  # False: the batch never drafts (target mode only), no draft cache
    observe_costs: bool = False  # adaptive rows: correct ``cost`` by timing the batch's own cycles (a server)
    rows: dict[int, _Row] = field(default_factory=dict)  # every row not yet popped, by index
    active: list[_Row] = field(default_factory=list)  # batch row -> its _Row
    state: BatchState | None = None
    joined: int = 0  # rows that ever joined
    probes: BatchProbes = field(default_factory=BatchProbes)  # when adaptive rows of a batch may probe
    prior: PooledPrior = field(default_factory=PooledPrior)  # where a new row's acceptance estimate starts
    last_window: int = 0  # the batch's window in its last cycle
    # seconds per token of the draft's catch-up read, what a probe costs before it drafts: learned from the
    # reads made apart; until then the start-up draft step's cost per row more (None: not known, not priced)
    read_cost: float | None = None
    on_cycle: Callable[[CycleRecord], None] | None = None  # called after every cycle (on the decoding thread)

    def __post_init__(self) -> None:
        if self.observe_costs and isinstance(self.cost, CycleCost):
            self.cost = ObservedCost(self.cost)
        model = self.cost.model if isinstance(self.cost, ObservedCost) else self.cost
        if self.read_cost is None and model is not None and model.draft_per_row > 0:
            self.read_cost = model.draft_per_row

    @torch.inference_mode()
    def join(self, prompts: Sequence[Sequence[int]], config: DecodeConfig = DecodeConfig(),
             on_tokens: OnTokens | None = None) -> list[int]:
        """New rows, one per prompt, all with ``config``, take part from the next cycle on;
        returns their indices."""
        backend = self.backend
        config.validate(backend.has_draft, backend.judge, backend.max_window, backend.window_bound)
        if any(not p for p in prompts):
            raise AutoJudgeError("every prompt must have at least one token")
        if config.mode != "target" and not self.uses_draft:
            raise AutoJudgeError("this batch was opened without the draft (target mode only)")
        if self.prefill_chunk is not None and self.prefill_chunk < 1:
            raise AutoJudgeError(f"prefill_chunk must be >= 1 (or None: whole prompts), got {self.prefill_chunk}")
        if config.adaptive and config.mode != "target" and self.cost is None:
            raise AutoJudgeError("adaptive speculation needs the measured cycle cost (Running(cost=...))")
        now, threshold = time.perf_counter(), config.judge_threshold(backend.judge)
        stops = StopStrings(backend.tokenizer, config.stop)
        window = 0 if config.mode == "target" else config.window
        chunked = self.prefill_chunk is not None
        new = [_Row(list(p), len(p), config, threshold, stops, SpecDecodeMetrics(mode=config.mode, window=window),
                    self.prior.controller(config.mode, window, self.cost), on_tokens, index=self.joined + i,
                    fed=0 if chunked else len(p), started=now)
               for i, p in enumerate(prompts)]
        self.joined += len(new)
        if self.state is None:
            self.state = backend.open(len(new), uses_draft=self.uses_draft and backend.has_draft)
        else:
            self.state.join(len(new))
        self.rows.update((row.index, row) for row in new)
        self.active += new
        return [row.index for row in new]

    def cancel(self, index: int) -> None:
        """Row ``index`` leaves at the next cycle (finish reason "cancelled"), freeing its batch row."""
        if index in self.rows and self.rows[index].finish_reason is None:
            self.rows[index].cancelled = True

    @torch.inference_mode()
    def cycle(self) -> list[int]:
        """One propose -> verify -> accept -> commit for every active row; returns the indices of
        the rows that ended (or were cancelled) in it."""
        ended = self._drop_cancelled()
        if not self.active:
            return ended
        backend, rows, state = self.backend, self.active, self.state
        device, started = backend.device, time.perf_counter()
        joining = sum(row.prefilling for row in rows)  # they share the cycle's prefill_chunk prompt tokens
        chunk = max(1, (self.prefill_chunk or 0) // max(joining, 1))
        fed = [min(row.prompt_len, row.fed + chunk) if row.prefilling else len(row.tokens) for row in rows]
        sequences = [row.tokens[:n] for row, n in zip(rows, fed)]
        feeding = [row.prefilling and n < row.prompt_len for row, n in zip(rows, fed)]  # no token this cycle
        decode_only = not any(row.prefilling for row in rows)  # every row feeds 1 token + its drafts
        committed = torch.tensor(fed, device=device)  # [B]
        row_w = torch.tensor(self._windows(rows, feeding), device=device)  # [B] each row's window

        # --- propose: w greedy draft tokens per row, with the draft's hidden state at each
        need_draft_hidden = any(r.config.mode == "judge" and backend.judge.uses_draft_hidden for r in rows)
        draft_tokens = committed.new_empty((len(rows), 0))  # [B, w]
        draft_hidden = None  # [B, w, Hd]
        long_lag = False  # a row's draft lags far behind (a new row's prompt, idle cycles' tokens)
        apart_s = None  # seconds the draft took to read that lag apart from the proposal (None: not apart)
        proposed_s = 0.0  # seconds the proposal took
        if int(row_w.max()):
            catch_up = max(len(seq) - row.draft_read for row, seq in zip(rows, sequences))
            unread = _draft_unread(rows, [len(seq) for seq in sequences])
            for row, seq in zip(rows, sequences):
                row.draft_read = len(seq)
            # a steady cycle's draft lags by at most the last cycle's commit (its window + 1) + 1; any more
            # is read apart where the backend can (at one row a probe's 8-30 idle tokens cost the draft
            # a third of a plain cycle, and timed with its proposal made w = 1 look 1.3x dearer than it is)
            lagging = catch_up > self.last_window + 2
            long_lag = lagging and catch_up * len(rows) > SMALL_CATCH_UP
            if lagging and getattr(state, "catch_up", None) is not None:
                reading = time.perf_counter()
                state.catch_up(sequences)
                apart_s = time.perf_counter() - reading
                if unread >= SMALL_CATCH_UP:  # a read long enough to time per token
                    per_token = apart_s / unread
                    self.read_cost = per_token if self.read_cost is None else 0.7 * self.read_cost + 0.3 * per_token
            proposing = time.perf_counter()
            proposal = state.propose(sequences, int(row_w.max()), need_draft_hidden)
            proposed_s = time.perf_counter() - proposing
            draft_tokens, draft_hidden = proposal.tokens.to(device), proposal.hidden
            row_w = row_w.clamp(max=draft_tokens.shape[1])  # a backend may draft fewer
            if proposal.lengths is not None:
                row_w = torch.minimum(row_w, proposal.lengths.to(device))
        w = draft_tokens.shape[1]

        # --- verify: one target pass over each row's unseen tokens + its w draft tokens
        need_logits = bool(w) and any(r.config.mode in LOGIT_MODES or (r.config.mode == "judge"
                                                                        and backend.judge.needs_logits) for r in rows)
        verification = state.verify(sequences, draft_tokens, need_logits=need_logits, windows=row_w)

        # --- accept, each group of rows by its own rule
        num_accepted, mismatch_accepted = self._accept(rows, draft_tokens, draft_hidden, verification)
        num_accepted = torch.minimum(num_accepted, row_w)  # [B]
        next_tokens = verification.tokens.to(device).gather(1, num_accepted[:, None])[:, 0]  # [B] t_n
        in_row = torch.arange(w, device=device)[None, :] < num_accepted[:, None]  # [B, w]
        mismatches = (mismatch_accepted & in_row).sum(dim=1)  # [B]

        # --- commit n + 1 tokens (none for a row still feeding its prompt); the backend keeps what is valid
        state.keep(committed + num_accepted)
        still = []
        for b, (row, n, next_token, drafted, mismatched, window, part) in enumerate(zip(
                rows, num_accepted.tolist(), next_tokens.tolist(), draft_tokens.tolist(), mismatches.tolist(),
                row_w.tolist(), feeding)):
            row.fed = fed[b] if row.prefilling else row.fed
            if part:
                still.append(b)
                continue
            row.metrics.record_cycle(window or None, int(need_draft_hidden and row.config.mode == "judge"), n,
                                     mismatched, batch=len(rows), batch_window=w)
            if window or row.config.adaptive:
                row.controller.update(window, n)
            if self._commit(row, drafted[:n] + [next_token]):
                still.append(b)
            else:
                ended.append(row.index)
                self.prior.learn(row.config.mode, row.controller)
        self._keep_rows(still)
        # A prompt chunk's cost is not the window's, so only decode-only cycles are timed. Nor is the draft
        # catching up on a long lag (a one-off read). A cycle that caught up (a probe after a long wait,
        # which is the only drafting a busy batch does) is timed without that read; where the backend
        # cannot read it apart, without its proposal, the model's draft steps standing in (which
        # undercounts a busy batch's drafting): a batch never timed drafting would go by the start-up
        # model for ever.
        took = time.perf_counter() - started
        if self.cost is not None:  # a probe's cycle past a plain one (its catch-up read too) counts against the budget
            self.probes.record(took, took - self.cost.cycle(0, len(rows)) if decode_only else apart_s or 0.0)
        if isinstance(self.cost, ObservedCost) and decode_only:
            seconds = took
            if apart_s is not None:
                seconds -= apart_s
            elif long_lag:
                seconds += self.cost.model.draft_steps(w, len(rows)) - proposed_s
            self.cost.observe(w, len(rows), seconds)
        self.last_window = w
        if self.on_cycle is not None:
            self.on_cycle(CycleRecord(len(rows), joining, int((row_w > 0).sum()), w, took, apart_s or 0.0))
        return ended

    def _windows(self, rows: list[_Row], feeding: list[bool]) -> list[int]:
        """Each row's window this cycle: 0 while feeding its prompt; never past its budget; adaptive
        rows by :func:`~autojudge.decoding.adaptive.batch_windows` over the whole batch, and 0 in the
        cycle that feeds the rest of their prompt (chunked prefill, a server's batch): to draft there the
        draft would first read the whole prompt, wasted where the batch grows by the next cycle past what
        drafting pays for (a burst's first request, joining alone: measured at 4 clients in process, 9 of
        12 bursts began with such a cycle, 215-404 ms against 174-294 ms plain, the batch's only drafting
        bar two probes)."""
        most = [0 if part or (row.config.adaptive and row.prefilling)
                else max(0, min(row.window, row.config.max_new_tokens - len(row.generated) - 1))
                for row, part in zip(rows, feeding)]
        if not any(row.config.adaptive and row.window for row in rows):
            self.probes.probed = False
            return most
        # before it drafts the draft reads what it has not (priced as its learned cost per token); in a cycle
        # that feeds a prompt it would read the chunks too, and a probe's cost would hide in the chunk's: no probe
        upfront = (self.read_cost or 0.0) * _draft_unread(rows, [len(row.tokens) for row in rows])
        left = [row.config.max_new_tokens - len(row.generated) for row in rows if row.config.adaptive and row.window]
        return self.probes.windows([(row.controller, m, row.config.adaptive and bool(row.window))
                                    for row, m in zip(rows, most)], self.cost, upfront, sum(left) / len(left),
                                   probe_now=not any(row.prefilling for row in rows))

    def _accept(self, rows: list[_Row], draft_tokens: torch.Tensor, draft_hidden: torch.Tensor | None,
                verification: Verification) -> tuple[torch.Tensor, torch.Tensor]:
        """(num_accepted [B], mismatch_accepted [B, w]): each group of rows that shares a rule
        (mode and its parameters) accepted by it, all at once when the batch has one rule."""
        device = draft_tokens.device
        groups: dict[tuple, list[int]] = {}
        for b, row in enumerate(rows):
            groups.setdefault(row.rule(), []).append(b)
        if len(groups) == 1:
            result = self._accept_rule(rows[0], draft_tokens, draft_hidden, verification)
            return result.num_accepted.to(device), result.mismatch_accepted.to(device)
        num_accepted = torch.zeros(len(rows), dtype=torch.long, device=device)  # [B]
        mismatch_accepted = torch.zeros(draft_tokens.shape, dtype=torch.bool, device=device)  # [B, w]
        for members in groups.values():
            idx = torch.tensor(members, device=device)
            part = Verification(verification.tokens[idx.to(verification.tokens.device)],
                                verification.hidden[idx.to(verification.hidden.device)],
                                None if verification.logits is None else
                                verification.logits[idx.to(verification.logits.device)])
            hidden = None if draft_hidden is None else draft_hidden[idx.to(draft_hidden.device)]
            result = self._accept_rule(rows[members[0]], draft_tokens[idx], hidden, part)
            num_accepted[idx] = result.num_accepted.to(device)
            mismatch_accepted[idx] = result.mismatch_accepted.to(device)
        return num_accepted, mismatch_accepted

    def _accept_rule(self, row: _Row, draft_tokens: torch.Tensor, draft_hidden: torch.Tensor | None,
                     verification: Verification) -> Acceptance:
        """The rule of ``row``'s mode: the oracle with the mode's mismatch mask, or the backend's
        fused judge-accept step."""
        judge_accept = self.backend.judge_accept
        if row.config.mode == "judge" and draft_tokens.shape[1] and judge_accept is not None:
            return judge_accept(draft_tokens, verification.tokens, draft_hidden, verification.hidden[:, 1:],
                                row.threshold, judge_scalars(self.backend.judge, draft_tokens, verification))
        return accept(draft_tokens, verification.tokens.to(draft_tokens.device),
                      mismatch_ok(row.config, self.backend, row.threshold, draft_tokens, draft_hidden, verification))

    def _drop_cancelled(self) -> list[int]:
        gone = [row for row in self.active if row.cancelled]
        for row in gone:
            row.finish_reason = "cancelled"
            self.prior.learn(row.config.mode, row.controller)
        if gone:
            self._keep_rows([b for b, row in enumerate(self.active) if not row.cancelled])
        return [row.index for row in gone]

    def _keep_rows(self, still: list[int]) -> None:
        """Only the batch rows ``still`` stay; an empty batch lets its caches go."""
        if not still:
            self.active, self.state = [], None
        elif len(still) < len(self.active):
            self.state.select(torch.tensor(still, dtype=torch.long, device=self.backend.device))
            self.active = [self.active[b] for b in still]

    def _commit(self, row: _Row, new_ids: list[int]) -> bool:
        """Append a cycle's tokens to ``row`` (cut at EOS or a stop string); False once it has
        ended (EOS, stop string, or its max_new_tokens reached)."""
        cut, reason = first_stop(new_ids, self.eos)
        if reason is None and row.stops:
            cut, reason = row.stops.check(row.generated + new_ids, len(new_ids))
        new_ids = new_ids[:cut]
        row.tokens += new_ids  # a row never drafts past its budget (its window)
        if reason is None and len(row.generated) >= row.config.max_new_tokens:
            reason = "length"
        if row.on_tokens and new_ids:
            row.metrics.num_generated_tokens = len(row.generated)
            row.metrics.wall_time_s = time.perf_counter() - row.started
            row.on_tokens(row.index, new_ids, row.metrics)
        row.finish_reason = reason
        return reason is None

    def result(self, index: int) -> GenerationResult:
        """Row ``index``'s result so far (``wall_time_s``: since it joined)."""
        row = self.rows[index]
        token_ids = row.generated
        row.metrics.num_generated_tokens = len(token_ids)
        row.metrics.wall_time_s = time.perf_counter() - row.started
        text = self.backend.tokenizer.decode(token_ids, skip_special_tokens=True)
        if row.finish_reason == "stop":
            text = row.stops.cut_text(text)
        return GenerationResult(token_ids, text, row.finish_reason or "length", row.metrics)

    def pop(self, index: int) -> GenerationResult:
        """Row ``index``'s result; the batch forgets the row (it must have ended)."""
        result = self.result(index)
        del self.rows[index]
        return result

    def results(self) -> list[GenerationResult]:
        """Every row's result, in the order they joined."""
        return [self.result(index) for index in sorted(self.rows)]


def _draft_unread(rows: list[_Row], lengths: list[int]) -> int:
    """Tokens the draft's catch-up would read (each row's ``lengths`` but its last token, past what it read)."""
    return sum(max(n - 1 - row.draft_read, 0) for row, n in zip(rows, lengths))


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
    scalars = judge_scalars(backend.judge, draft_tokens, verification)  # [B, w, E] | None
    probabilities = backend.judge.probabilities(draft_hidden, verification.hidden[:, 1:], scalars)  # [B, w]
    return judge_mismatch_ok(probabilities, threshold).to(draft_tokens.device)


def judge_scalars(judge: Judge, draft_tokens: torch.Tensor, verification: Verification) -> torch.Tensor | None:
    """[B, w, E] fp32 scalar features of ``judge`` (from the verification's logits and tokens), on
    the device of the target's hidden states; None for a judge that uses none."""
    if not judge.scalar_features:
        return None
    device = verification.hidden.device
    logits = None if verification.logits is None else verification.logits.to(device)
    return judge.scalars(draft_tokens.to(device), verification.tokens.to(device), logits)


class SpeculativeLoop:
    """Greedy speculative decoding over any :class:`~autojudge.decoding.backend.Backend`."""

    def __init__(self, backend: Backend):
        self.backend = backend
        self._costs: dict[int, CycleCost] = {}
        self.prior = PooledPrior()  # where each new request's acceptance estimate starts, over every batch

    def cycle_cost(self, prompt: list[int], window: int, batch: int = 1) -> CycleCost:
        """The cost of a cycle's parts on this machine (at 1 and at ``batch`` rows), measured once per
        window and batch (adaptive speculation)."""
        key = window if batch == 1 else (window, batch)
        if key not in self._costs:
            self._costs[key] = CycleCost.measure(self.backend, prompt, window, batch=batch)
        return self._costs[key]

    def generate_batch(self, prompts: Sequence[Sequence[int]], config: DecodeConfig = DecodeConfig(),
                       eos_token_ids: frozenset[int] | None = None, on_tokens: OnTokens | None = None
                       ) -> list[GenerationResult]:
        """Decode every prompt together; results in prompt order (``wall_time_s`` of each is the
        whole batch's time). ``on_tokens(row, ids, metrics)`` gets each cycle's committed tokens."""
        if not prompts:
            raise AutoJudgeError("every prompt must have at least one token (no prompts given)")
        eos = self.backend.eos_token_ids if eos_token_ids is None else eos_token_ids
        cost = self.cycle_cost(list(prompts[0]), config.window) if config.adaptive and config.mode != "target" else None
        running = Running(self.backend, eos, cost, uses_draft=config.mode != "target", prior=self.prior)
        running.join(prompts, config, on_tokens)
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
