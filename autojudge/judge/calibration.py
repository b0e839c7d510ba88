"""Answer-level calibration: the judge threshold that keeps a requested share of the target's answers.

Training picks a threshold for a token-level recall of important mismatches, which does not
bound how many answers change: an answer meets many mismatches. Here the judge decodes
held-out prompts (never used to fit it) at a grid of thresholds, beside the target alone;
**retention** at a threshold is the share of prompts whose task result equals the target's
own, and tau the tokens per target call. The answer-calibrated threshold is the largest grid
threshold up to which every threshold keeps at least the requested retention (so a lucky
point past a failing one is not taken), refined by bisection between it and the first grid
point that fails (``refine`` more decodes: a confident judge's probabilities cluster near 0 and
1, so the grid, spread over them, can jump from a threshold of 0.006 to 0.98). It becomes the
artifact's ``threshold`` - what ``calibrated`` means - and the curve is stored in ``judge.json``
beside the token-level one:

    extra["answer_calibration"] = {"retention": 0.95, "chosen": {...}, "curve": [
        {"threshold", "retention", "tau", "accepted_mismatches"}, ...], "prompts", "split", "window", ...}
    extra["token_threshold"] = the threshold training chose (token-level recall)
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from autojudge.errors import AutoJudgeError
from autojudge.judge.artifact import Judge


@dataclass(frozen=True)
class AnswerCalibration:
    retention: float = 0.95  # share of the target's answers to keep
    window: int = 8
    points: int = 10  # thresholds decoded (the grid), besides 0 and the token-level one
    refine: int = 3  # bisection steps between the chosen grid point and the first failing one


def threshold_grid(judge: Judge, points: int) -> list[float]:
    """``points`` thresholds spread over the judge's validation probabilities (the thresholds of its
    token-level curve), plus 0 (no mismatch accepted) and the token-level threshold; ascending."""
    curve = judge.meta.extra.get("recall_acceptance_curve") or []
    known = sorted({float(p["threshold"]) for p in curve}) or list(np.linspace(0.0, 1.0, 21))
    picks = [known[int(i)] for i in np.linspace(0, len(known) - 1, points).round()]
    return sorted({0.0, float(judge.meta.threshold), *picks})


def choose(curve: list[dict], retention: float) -> dict:
    """The last point of the leading run of points that keep ``retention`` (curve ascending)."""
    chosen = None
    for point in curve:
        if point["retention"] < retention:
            break
        chosen = point
    return chosen or curve[0]


def refine(curve: list[dict], retention: float, steps: int, decode_at) -> list[dict]:
    """The curve with up to ``steps`` more points, each halfway between the chosen point and the
    next one above it (the first that fails), decoded by ``decode_at(threshold) -> point``; ascending."""
    curve = sorted(curve, key=lambda p: p["threshold"])
    for _ in range(steps):
        chosen = choose(curve, retention)
        above = [p for p in curve if p["threshold"] > chosen["threshold"]]
        if chosen["retention"] < retention or not above:
            break
        curve = sorted([*curve, decode_at((chosen["threshold"] + above[0]["threshold"]) / 2)],
                       key=lambda p: p["threshold"])
    return curve


def token_calibrated(judge: Judge) -> Judge:
    """The judge as training left it (its token-level threshold), whatever calibration came since."""
    token = judge.meta.extra.get("token_threshold")
    return judge if token is None else replace(judge, meta=replace(judge.meta, threshold=float(token)))


def calibrate_answers(target, draft, judge: Judge, task, examples: list, config: AnswerCalibration, out_dir: Path,
                      split: str, max_new_tokens: int | None = None, batch_size: int = 8,
                      progress: bool = True) -> tuple[Judge, dict]:
    """Decode ``examples`` (held out from the judge's training) with the target and with the judge at
    each grid threshold (resumable in ``out_dir``); return the judge with the answer-calibrated
    threshold and the calibration record stored in its metadata."""
    from autojudge.decoding import SpeculativeDecoder
    from autojudge.evaluation import Run, evaluate

    judge = token_calibrated(judge)  # the decodes (and their resume check) do not depend on a past calibration
    decoder = SpeculativeDecoder(target, draft, judge)
    if not examples:
        raise AutoJudgeError("answer calibration needs held-out prompts (--calibration-prompts >= 1)")
    def decode(thresholds: list[float]) -> tuple[dict, list[dict]]:
        runs = [Run("target"), *(Run("judge", config.window, threshold=t) for t in thresholds)]
        report = evaluate(decoder, task, examples, runs, out_dir, max_new_tokens=max_new_tokens,
                          progress=progress, batch_size=batch_size)
        return report, [{"threshold": row["threshold"], "retention": row["agreement_with_target"], "tau": row["tau"],
                         "accepted_mismatches": row["accepted_mismatches"]}
                        for row in report["runs"] if row["mode"] == "judge"]

    report, curve = decode(threshold_grid(judge, config.points))
    curve = refine(curve, config.retention, config.refine, lambda t: decode([t])[1][0])
    report, _ = decode([p["threshold"] for p in curve])  # all resumed: the folder's report holds every point
    chosen = choose(curve, config.retention)
    record = {"retention": config.retention, "chosen": chosen, "curve": curve, "prompts": len(examples),
              "split": split, "window": config.window, "max_new_tokens": report["max_new_tokens"],
              "met": chosen["retention"] >= config.retention}
    extra = {**judge.meta.extra, "token_threshold": judge.meta.extra.get("token_threshold", judge.meta.threshold),
             "answer_calibration": record}
    return replace(judge, meta=replace(judge.meta, threshold=float(chosen["threshold"]), extra=extra)), record
