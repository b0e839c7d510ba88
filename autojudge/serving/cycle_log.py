"""A served batch's schedule, cycle by cycle: one JSON line per cycle (the deployment parameter
``cycle_log``, a file path; append-only, so a restarted server adds to it; instances
sharing one file are told apart by ``pid``).

Each line holds what the cycle did (:class:`~autojudge.decoding.loop.CycleRecord`) and what the
adaptive schedule knew after it: the cycle cost it prices windows with at this many rows (a plain
cycle, a W=1 cycle and their ratio), the lowest acceptance at which drafting pays here
(``break_even``), the probe budget (seconds spent on probes against seconds decoded, both decayed),
how many earlier requests the prior remembers per mode (and their pooled acceptance per bin), and each row still decoding: its mode, its
tokens so far, its acceptance estimate, its own measured acceptance and its probe wait. This is for
seeing why a served request's window moved, which its response's ``mean_window`` only summarises.
"""

from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import asdict
from pathlib import Path

from autojudge.decoding.adaptive import break_even
from autojudge.decoding.loop import CycleRecord, Running


class CycleLog:
    """``log(record, running)`` appends the line for one cycle of ``running`` (called on its decoding thread)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = self.path.open("a", buffering=1)  # line-buffered: each cycle's line is written whole
        self._lock = threading.Lock()

    def __call__(self, record: CycleRecord, running: Running) -> None:
        line = {"time": time.time(), "pid": os.getpid(), **asdict(record), **_schedule(running, record.rows)}
        with self._lock:
            if not self._file.closed:
                self._file.write(json.dumps(line) + "\n")

    def close(self) -> None:
        with self._lock:
            self._file.close()


def _remembered(bins: dict) -> dict:
    """What the prior remembers of one mode: how many requests, and their pooled acceptance per bin."""
    kept = [ended for requests in bins.values() for ended in requests]
    return {"requests": len(kept), "bins": {str(b): sum(a for a, _ in r) / max(sum(t for _, t in r), 1)
                                            for b, r in sorted(bins.items()) if r}}


def _schedule(running: Running, batch: int) -> dict:
    """What the adaptive schedule of ``running`` knows about a cycle of ``batch`` rows."""
    cost, probes = running.cost, running.probes
    rows = [{"index": row.index, "mode": row.config.mode, "adaptive": row.config.adaptive,
             "generated": len(row.generated), "acceptance": row.controller.acceptance,
             "measured": row.controller.measured, "idle": row.controller.idle, "wait": row.controller.wait}
            for row in running.active]
    known = {"probe_spent_s": probes.spent, "probe_elapsed_s": probes.elapsed, "read_cost_s": running.read_cost,
             "prior": {mode: _remembered(bins) for mode, bins in running.prior.ended.items()}, "active": rows}
    if cost is None:
        return known
    plain, one = cost.cycle(0, batch), cost.cycle(1, batch)
    widest = max((row.window for row in running.active if row.config.adaptive), default=0)
    return {"plain_s": plain, "w1_s": one, "w1_over_plain": one / plain if plain > 0 else None,
            "break_even": break_even(cost, batch, widest) if widest else None, **known}
