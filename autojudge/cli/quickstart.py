"""``quickstart``: mine, train and evaluate on the embedded pair in one command, timing each phase."""

from __future__ import annotations

import json
import time
from pathlib import Path

import click

from autojudge.cli.judge import print_tradeoff
from autojudge.cli.options import load_pair, progress_option, status, window_option


@click.command()
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("out/quickstart"),
              show_default=True, help="Everything goes here; re-running resumes each step.")
@click.option("--mine-prompts", type=click.IntRange(2), default=3, show_default=True,
              help="GSM8K train questions to mine.")
@click.option("--labels-per-prompt", type=click.IntRange(1), default=16, show_default=True,
              help="Mismatches labelled per question (the first ones; ~4 s each on 2 CPU cores).")
@click.option("--eval-prompts", type=click.IntRange(1), default=8, show_default=True,
              help="GSM8K test questions to evaluate on (5 runs each, decoded 8 at a time).")
@window_option(4)
@click.option("--max-new-tokens", type=click.IntRange(8), default=256, show_default=True)
@progress_option()
def quickstart(out, mine_prompts, labels_per_prompt, eval_prompts, window, max_new_tokens, progress):
    """The whole AutoJudge pipeline on the embedded default pair, in about 6 minutes on
    2 CPU cores: mine GSM8K train questions, train the judge, evaluate on GSM8K test.

    \b
    The defaults are sized for a first look at every step, not for a good judge: the
    paper mines thousands of prompts. Scale up with --mine-prompts/--eval-prompts, or run
    the steps yourself: autojudge-trt mine / train / eval (see README).
    """
    from autojudge.decoding import SpeculativeDecoder
    from autojudge.evaluation import Run, evaluate
    from autojudge.judge.training import TrainConfig, train_judge
    from autojudge.mining import mine as run_mining
    from autojudge.mining import read_mined
    from autojudge.tasks import get_task

    task = get_task("gsm8k")
    target_lm, draft_lm = load_pair("embedded", None)
    clock = _PhaseClock()
    status(f"[1/3] mining {mine_prompts} GSM8K train questions -> {out / 'mined'}")
    summary = run_mining(target_lm, draft_lm, task, task.load("train", limit=mine_prompts), out / "mined",
                         split="train@0", max_new_tokens=max_new_tokens, progress=progress,
                         max_labels=labels_per_prompt, batch_size=min(mine_prompts, 8))
    status(f"      {summary['labels']} labels, {summary['important_fraction']:.0%} important ({clock.lap('mine')})")
    status(f"[2/3] training the judge -> {out / 'judge'}")
    judge, report = train_judge(read_mined(out / "mined"), TrainConfig(val_fraction=0.5), progress=progress)
    judge.save(out / "judge")
    status(f"      validation ROC-AUC {report.val_auc:.3f}, threshold {report.threshold:.3f} "
           f"(rejects {report.val_recall:.0%} of important mismatches, accepts {report.val_acceptance:.0%}; "
           f"{clock.lap('train')})")
    status(f"[3/3] evaluating on {eval_prompts} GSM8K test questions -> {out / 'eval'}")
    runs = [Run("target"), Run("lossless", window), Run("topk", window, top_k=4),
            Run("judge", window), Run("judge", window, threshold=0.5)]
    result = evaluate(SpeculativeDecoder(target_lm, draft_lm, judge), task, task.load("test", limit=eval_prompts),
                      runs, out / "eval", max_new_tokens=max_new_tokens, progress=progress, batch_size=8)
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
