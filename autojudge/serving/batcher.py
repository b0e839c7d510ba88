"""Continuous batching: one running batch per model instance, decoded by one thread.

A request joins the running batch at the next cycle (a cycle feeds at most ``prefill_chunk``
prompt tokens, shared by the requests joining, so a long prompt never stalls the others for
long), streams its tokens as cycles commit them, and leaves when it ends, or within ``CANCEL_CHECK_S`` of its client going away. Each keeps its
own mode, window, threshold, stop strings and budget (:class:`autojudge.decoding.loop.Running`).

Admission: at most ``max_batch`` requests decode at once; up to ``max_queue`` more wait, and
one more is refused at once with :class:`ServerFull`, naming the limit (never a hang).
Adaptive requests are scheduled with a cycle cost measured when the batcher starts, at one
row and at ``max_batch`` rows, corrected by the batch's own timed cycles
(:class:`autojudge.decoding.adaptive.ObservedCost`, :func:`~autojudge.decoding.adaptive.batch_windows`).

The batch decodes on ``thread``, a :class:`~autojudge.models.model_thread.ModelThread`, which
should be the thread that loaded the models: torch calls made from two threads of one process
each run slower (that module says why and by how much).

Glossary
- **ticket**: a submitted request's callbacks; it lives until ``on_done`` has been called.
- **on_tokens(ids, metrics)**: called from the batch thread with each cycle's committed tokens.
- **on_done(result, error)**: called once, from the batch thread (or from ``submit`` itself when
  the request is refused after queueing is impossible): a GenerationResult, or an error text.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from autojudge.decoding import DecodeConfig, SpeculativeLoop
from autojudge.decoding.config import GenerationResult
from autojudge.decoding.loop import CycleRecord, Running
from autojudge.decoding.metrics import SpecDecodeMetrics
from autojudge.errors import AutoJudgeError
from autojudge.models.model_thread import ModelThread

OnTokens = Callable[[list[int], SpecDecodeMetrics], None]
CANCEL_CHECK_S = 0.2  # how often the batch asks whether decoding requests' clients are still there
OnDone = Callable[[GenerationResult | None, str | None], None]


class ServerFull(AutoJudgeError):
    """The queue is at its limit: the request was not taken."""


@dataclass
class _Ticket:
    prompt: list[int]
    config: DecodeConfig
    on_tokens: OnTokens | None
    on_done: OnDone
    is_cancelled: Callable[[], bool] | None


class ContinuousBatcher:
    """``thread``: the :class:`ModelThread` the batch measures its cycle cost and decodes on (the one
    the models were loaded on; by default a new one, closed with the batcher). A thread serves one
    batcher at a time: another one's work waits until that batcher is closed. ``on_cycle``: called
    on that thread with each cycle's :class:`~autojudge.decoding.loop.CycleRecord`."""

    def __init__(self, loop: SpeculativeLoop, max_batch: int = 16, max_queue: int = 64, prefill_chunk: int = 256,
                 cost_prompt: Sequence[int] | None = None, cost_window: int = 8,
                 thread: ModelThread | None = None, on_cycle: Callable[[CycleRecord], None] | None = None):
        if max_batch < 1 or max_queue < 0 or prefill_chunk < 1:
            raise AutoJudgeError(f"max_batch >= 1, max_queue >= 0 and prefill_chunk >= 1 are needed, got "
                                 f"{max_batch}, {max_queue}, {prefill_chunk}")
        self.loop, self.max_batch, self.max_queue = loop, max_batch, max_queue
        self.model_thread, self.owns_thread = thread or ModelThread("autojudge-batch"), thread is None
        backend = loop.backend
        cost = None
        if backend.has_draft and cost_prompt:  # the machine's cycle cost, at 1 and at max_batch rows
            cost = self.model_thread.call(loop.cycle_cost, list(cost_prompt), min(cost_window, backend.max_window),
                                          batch=max_batch)
        self.running = Running(backend, backend.eos_token_ids, cost, prefill_chunk=prefill_chunk,
                               uses_draft=backend.has_draft, observe_costs=True, prior=loop.prior, on_cycle=on_cycle)
        self.queue: deque[_Ticket] = deque()
        self.tickets: dict[int, _Ticket] = {}  # running row index -> its ticket
        self.pending: list[_Ticket] = []  # taken off the queue, not yet in ``tickets``
        self.checked = 0.0  # when clients were last asked whether they are still there
        self.cond = threading.Condition()
        self.closed = False
        self.served = self.model_thread.submit(self._serve)  # runs until close()

    @property
    def cost(self):
        return self.running.cost

    def submit(self, prompt: Sequence[int], config: DecodeConfig, on_done: OnDone, on_tokens: OnTokens | None = None,
               is_cancelled: Callable[[], bool] | None = None) -> None:
        """Queue one request. Raises AutoJudgeError for a request the loop refuses (checked now,
        not when it joins) and ServerFull when ``max_queue`` requests are already waiting."""
        backend = self.loop.backend
        config.validate(backend.has_draft, backend.judge, backend.max_window, backend.window_bound)
        if not prompt:
            raise AutoJudgeError("the prompt is empty")
        if config.adaptive and config.mode != "target" and self.cost is None:
            raise AutoJudgeError("adaptive speculation is not available here (no cycle cost was measured)")
        with self.cond:
            if self.closed:
                raise AutoJudgeError("the model is shutting down")
            waiting, decoding = len(self.queue), len(self.tickets) + len(self.pending)
            if waiting >= max(0, self.max_batch - decoding) + self.max_queue:
                raise ServerFull(f"server is full: {decoding} of {self.max_batch} batch rows decoding and "
                                 f"{waiting} waiting (max_queue {self.max_queue}); retry later, or raise max_queue "
                                 "or the instances")
            self.queue.append(_Ticket(list(prompt), config, on_tokens, on_done, is_cancelled))
            self.cond.notify()

    def generate(self, prompt: Sequence[int], config: DecodeConfig, on_tokens: OnTokens | None = None,
                 timeout: float | None = None) -> GenerationResult:
        """Submit and wait (for callers without a thread of their own; never from a callback, which
        runs on the batch thread this would wait for)."""
        if threading.current_thread() is self.model_thread.thread:
            raise AutoJudgeError("generate() called from the batch thread (a callback) would wait for itself")
        done = threading.Event()
        box: dict = {}

        def on_done(result, error):
            box.update(result=result, error=error)
            done.set()

        self.submit(prompt, config, on_done, on_tokens)
        if not done.wait(timeout):
            raise AutoJudgeError(f"no answer within {timeout} s")
        if box["error"]:
            raise AutoJudgeError(box["error"])
        return box["result"]

    def close(self) -> None:
        """Stop: requests still decoding or waiting get "the model is shutting down"."""
        with self.cond:
            self.closed = True
            self.cond.notify()
        self.served.result()
        if self.owns_thread:
            self.model_thread.close()

    @property
    def load(self) -> tuple[int, int]:
        """(requests decoding, requests waiting)."""
        with self.cond:
            return len(self.tickets), len(self.queue)

    # ------------------------------------------------------------------ the batch thread
    def _serve(self) -> None:
        while True:
            with self.cond:
                while not self.closed and not self.queue and not self.running.active:
                    self.cond.wait()
                if self.closed:
                    break
                self._drop_abandoned()
                room = self.max_batch - len(self.running.active)
                self.pending = [self.queue.popleft() for _ in range(min(len(self.queue), room))]
            try:
                self._step()
            except Exception as exc:  # noqa: BLE001 - a failing cycle fails its rows, never the thread
                self._fail_all(f"internal error: {type(exc).__name__}: {exc}")
        self._fail_all("the model is shutting down")
        with self.cond:
            waiting, self.queue = list(self.queue), deque()
        for ticket in waiting:
            _quietly(ticket.on_done, None, "the model is shutting down")

    def _step(self) -> None:
        """Let the pending requests in, drop the rows whose clients left, run one cycle, hand out
        what ended."""
        while self.pending:
            self._join(self.pending[0])
        now = time.monotonic()
        if now - self.checked >= CANCEL_CHECK_S:  # each check is a round trip to the server (Triton IPC)
            self.checked = now
            for index, ticket in list(self.tickets.items()):
                if ticket.is_cancelled is not None and _quietly(ticket.is_cancelled, failed=True):
                    self.running.cancel(index)
        ended = self.running.cycle()
        for index in ended:
            ticket = self.tickets.pop(index, None)
            result = self.running.pop(index)
            if ticket is not None:
                _quietly(ticket.on_done, result, None)

    def _drop_abandoned(self) -> None:
        """Waiting requests whose clients have left give up their places (under the lock)."""
        gone = [t for t in self.queue if t.is_cancelled is not None and _quietly(t.is_cancelled, failed=True)]
        for ticket in gone:
            self.queue.remove(ticket)
            _quietly(ticket.on_done, None, "cancelled while waiting")

    def _join(self, ticket: _Ticket) -> None:
        stream = None
        if ticket.on_tokens is not None:
            def stream(row, ids, metrics, on_tokens=ticket.on_tokens):
                try:
                    on_tokens(ids, metrics)
                except Exception:  # noqa: BLE001 - a client we cannot send to has gone: its row leaves
                    self.running.cancel(row)
        try:  # (an AutoJudgeError is a refusal, raised before the batch changes; anything else fails it)
            index = self.running.join([ticket.prompt], ticket.config, stream)[0]
        except AutoJudgeError as exc:
            with self.cond:
                self.pending.pop(0)
            _quietly(ticket.on_done, None, str(exc))
            return
        with self.cond:
            self.tickets[index] = self.pending.pop(0)

    def _fail_all(self, error: str) -> None:
        """Every decoding request gets ``error``; the batch starts afresh (new row indices, new caches)."""
        old = self.running
        with self.cond:
            tickets, self.tickets, pending, self.pending = self.tickets, {}, self.pending, []
        self.running = Running(old.backend, old.eos, old.cost, prefill_chunk=old.prefill_chunk,  # what it learned stays
                               uses_draft=old.uses_draft, observe_costs=True, prior=old.prior, read_cost=old.read_cost,
                               on_cycle=old.on_cycle)
        for ticket in [*tickets.values(), *pending]:
            _quietly(ticket.on_done, None, error)


def _quietly(call: Callable, *args, failed: bool = False) -> bool:
    """``call(*args)`` as a bool, ``failed`` when it raised: a callback that fails must not stop
    the batch (and a sender that cannot say whether its client is there has lost it)."""
    try:
        return bool(call(*args))
    except Exception:  # noqa: BLE001
        return failed
