"""The accuracy/speed trade-off: every run (target, lossless, top-K, judge) over a task's split."""

from autojudge.evaluation.sweep import TARGET_RUN, Run, evaluate, summarize, sweep

__all__ = ["TARGET_RUN", "Run", "evaluate", "summarize", "sweep"]
