"""``quickstart``: mine, train and evaluate on a packaged pair in one command, timing each phase."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import click

from autojudge.cli.judge import print_tradeoff
from autojudge.cli.options import load_pair, progress_option, status, window_option


@dataclass(frozen=True)
class Preset:
    """What quickstart runs on: a packaged pair, its task, and defaults sized for that pair."""

    task: str
    mine_prompts: int
    labels_per_prompt: int | None
    eval_prompts: int
    max_new_tokens: int | None  # None: the task's
    target_recall: float  # token level: training's threshold, the start of answer calibration
    calibration_prompts: int  # held-out train-split questions decoded for answer calibration
    retention: float  # answer level: the calibrated threshold keeps this share of the target's answers
    ground_truth: bool  # the task knows each mismatch's ground truth (the testbed)


PRESETS = {  # the pair's name is its --target spec; mining reads split "train", evaluation "test"
    "testbed": Preset("testbed", mine_prompts=96, labels_per_prompt=None, eval_prompts=100, max_new_tokens=None,
                      target_recall=0.99, calibration_prompts=100, retention=0.99, ground_truth=True),
    "embedded": Preset("gsm8k", mine_prompts=3, labels_per_prompt=16, eval_prompts=8, max_new_tokens=256,
                       target_recall=0.9, calibration_prompts=8, retention=0.9, ground_truth=False),
}


@click.command()
@click.option("--pair", type=click.Choice(list(PRESETS)), default="testbed", show_default=True,
              help="testbed: the packaged pair trained on synthetic problems (~30 s). embedded: the packaged "
                   "SmolLM2-135M-Instruct pair on GSM8K (~6 min; too weak to answer: shows the mechanism only).")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Everything goes here; re-running resumes each step. [default: out/quickstart-PAIR]")
@click.option("--mine-prompts", type=click.IntRange(2), default=None, help="Train-split questions to mine "
              "[default: testbed 96, embedded 3].")
@click.option("--labels-per-prompt", type=click.IntRange(1), default=None,
              help="Mismatches labelled per question, the first ones [default: testbed all, embedded 16 "
                   "(~4 s each on 2 CPU cores)].")
@click.option("--eval-prompts", type=click.IntRange(1), default=None,
              help="Test-split questions to evaluate on, 5 runs each [default: testbed 100, embedded 8].")
@window_option(4)
@click.option("--max-new-tokens", type=click.IntRange(8), default=None,
              help="Answer budget when mining and evaluating [default: testbed 48 (the task's), embedded 256].")
@click.option("--target-recall", type=click.FloatRange(0, 1), default=None,
              help="The calibrated threshold rejects this fraction of the important mismatches held out "
                   "for validation (`train --target-recall`). An answer meets several mismatches, so "
                   "a recall of 0.9 loses many more than 10% of answers. [default: testbed 0.99, embedded 0.9]")
@click.option("--calibration-prompts", type=click.IntRange(0), default=None,
              help="Held-out train-split questions decoded to calibrate the threshold at the answer level "
                   "(`autojudge-trt calibrate`); 0 keeps the token-level one [default: testbed 100, embedded 8].")
@click.option("--retention", type=click.FloatRange(0, 1), default=None,
              help="The calibrated threshold keeps this share of the target's answers on those questions "
                   "[default: testbed 0.99, embedded 0.9].")
@progress_option()
def quickstart(pair, out, mine_prompts, labels_per_prompt, eval_prompts, window, max_new_tokens, target_recall,
               calibration_prompts, retention, progress):
    """The whole AutoJudge pipeline on a packaged pair in one command: mine the train split,
    train the judge, evaluate on the test split, timing each phase.

    \b
    The default, the testbed, is where the method can be seen working: its target answers
    held-out problems right, its draft disagrees on wording and on some numbers, and the
    ground truth of every mismatch is known, so quickstart also scores mining's labels.
    --pair embedded runs the same steps on SmolLM2-135M-Instruct and GSM8K. The sizes are
    for a first look: scale up with the options, or run mine / train / eval yourself (README).
    """
    from autojudge.decoding import SpeculativeDecoder
    from autojudge.evaluation import Run, evaluate
    from autojudge.judge.training import TrainConfig, train_judge
    from autojudge.mining import mine as run_mining
    from autojudge.mining import read_mined
    from autojudge.tasks import get_task

    preset = PRESETS[pair]
    out = out or Path(f"out/quickstart-{pair}")
    mine_prompts = mine_prompts or preset.mine_prompts
    eval_prompts = eval_prompts or preset.eval_prompts
    labels_per_prompt = labels_per_prompt or preset.labels_per_prompt
    target_recall = preset.target_recall if target_recall is None else target_recall
    calibration_prompts = preset.calibration_prompts if calibration_prompts is None else calibration_prompts
    retention = preset.retention if retention is None else retention
    task = get_task(preset.task)
    max_new_tokens = max_new_tokens or preset.max_new_tokens or task.max_new_tokens
    target_lm, draft_lm = load_pair(pair, None)
    clock = _PhaseClock()
    status(f"[1/4] mining {mine_prompts} {task.name} train questions -> {out / 'mined'}")
    summary = run_mining(target_lm, draft_lm, task, task.load("train", limit=mine_prompts), out / "mined",
                         split="train@0", max_new_tokens=max_new_tokens, progress=progress,
                         max_labels=labels_per_prompt, batch_size=min(mine_prompts, 8))
    status(f"      {summary['labels']} labels, {summary['important_fraction']:.0%} important ({clock.lap('mine')})")
    mined = read_mined(out / "mined")
    if preset.ground_truth:
        from autojudge.testbed.measure import label_report, percent

        labels = label_report(target_lm.tokenizer, mined.labels)
        status(f"      against the ground truth: precision {percent(labels['precision'])}, recall "
               f"{percent(labels['recall'])} (important = the swap changed a number, an operator or an "
               "operation's verb)")
    status(f"[2/4] training the judge -> {out / 'judge'}")
    judge, report = train_judge(mined, TrainConfig(val_fraction=0.5, target_recall=target_recall), progress=progress)
    judge.save(out / "judge")
    status(f"      validation ROC-AUC {report.val_auc:.3f}, threshold {report.threshold:.3f} "
           f"(rejects {report.val_recall:.0%} of important mismatches, accepts {report.val_acceptance:.0%}; "
           f"{clock.lap('train')})")
    if calibration_prompts:
        from autojudge.cli.judge import print_calibration
        from autojudge.judge.calibration import AnswerCalibration, calibrate_answers

        status(f"[3/4] calibrating the threshold on {calibration_prompts} held-out train questions "
               f"(keep {retention:.0%} of the target's answers) -> {out / 'calibration'}")
        judge, record = calibrate_answers(
            target_lm, draft_lm, judge, task, task.load("train", limit=calibration_prompts, offset=mine_prompts),
            AnswerCalibration(retention, window), out / "calibration",
            split=f"train@{mine_prompts}", max_new_tokens=max_new_tokens, progress=progress)
        print_calibration(record, judge.save(out / "judge"))
        status(f"      {clock.lap('calibrate')}")
    status(f"[4/4] evaluating on {eval_prompts} {task.name} test questions -> {out / 'eval'}")
    token_threshold = judge.meta.extra.get("token_threshold", judge.meta.threshold)
    runs = [Run("target"), Run("lossless", window), Run("topk", window, top_k=4), Run("judge", window),
            *([Run("judge", window, threshold=token_threshold)] if calibration_prompts else []),
            Run("judge", window, threshold=0.5)]
    result = evaluate(SpeculativeDecoder(target_lm, draft_lm, judge), task,
                      task.load("test", limit=eval_prompts), runs, out / "eval",
                      max_new_tokens=max_new_tokens, progress=progress, batch_size=8)
    status(f"      {clock.lap('eval')}")
    print_tradeoff(result)
    clock.save(out / "timings.json")


class _PhaseClock:
    """Wall time of each quickstart phase, printed as it ends and saved as JSON."""

    def __init__(self):
        self.seconds: dict[str, float] = {}
        self._last = time.perf_counter()

    def lap(self, phase: str) -> str:
        now = time.perf_counter()
        self.seconds[phase], self._last = now - self._last, now
        minutes, seconds = divmod(round(self.seconds[phase]), 60)
        return f"{minutes}m{seconds:02d}s"

    def save(self, path: Path) -> None:
        from autojudge.storage import atomic_write_bytes

        total = sum(self.seconds.values())
        atomic_write_bytes(path, json.dumps({**self.seconds, "total": total}, indent=2).encode())
