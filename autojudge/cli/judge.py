"""The judge's life cycle: ``mine`` its labels, ``merge`` the shards, ``train`` it, ``eval`` the
accuracy/speed trade-off (and the trade-off table, which ``quickstart`` prints too)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from autojudge.cli.options import (
    DTYPES,
    json_option,
    load_pair,
    model_options,
    number_list,
    progress_option,
    status,
    window_option,
)
from autojudge.decoding.config import MAX_WINDOW, DecodeConfig
from autojudge.features.layout import DRAFT_TARGET, LAYOUTS
from autojudge.features.scalars import SCALAR_FEATURES


@click.command()
@click.option("--task", "task_spec", default="gsm8k", show_default=True,
              help="gsm8k, humaneval, an entry-point name, or package.module:attribute.")
@click.option("--split", default="train", show_default=True,
              help="The task's split (gsm8k: train, test) or a JSONL file of its format.")
@click.option("--limit", type=click.IntRange(1), help="Mine at most this many examples.")
@click.option("--offset", type=click.IntRange(0), default=0, show_default=True)
@model_options
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Mining directory: shards, features and mining.json (created; resumed if it exists).")
@click.option("--num-shards", type=click.IntRange(1), default=1, show_default=True,
              help="Split the examples into this many shards (one process or host each).")
@click.option("--shard-id", type=click.IntRange(0), default=0, show_default=True,
              help="The shard this process mines: examples with index % num_shards == shard_id.")
@click.option("--max-new-tokens", type=click.IntRange(8), help="Answer budget [default: the task's].")
@click.option("--naive", is_flag=True,
              help="The reference loop (regenerate the whole answer per mismatch, no KV reuse, no "
                   "early stop), to measure what the fast loop saves. Same labels, far slower.")
@click.option("--lookahead", type=click.IntRange(0, 64), default=8, show_default=True,
              help="Verify this many tokens of the pre-swap answer per target forward when "
                   "continuing after a swap (same labels; 0 = one token per forward).")
@click.option("--max-labels-per-prompt", type=click.IntRange(1), default=None,
              help="Stop a prompt's search after its first N mismatches: bounds the cost of prompts "
                   "with a long run of important mismatches [default: no bound].")
@click.option("--batch-size", type=click.IntRange(1), default=8, show_default=True,
              help="Search this many prompts at once, their target forwards batched (same labels up "
                   "to floating-point rounding; a finished prompt's row takes the next at once). "
                   "1 = one prompt at a time.")
@json_option("Print the summary as JSON.")
@progress_option()
def mine(task_spec, split, limit, offset, target, draft, dtype, device, out, num_shards, shard_id,
         max_new_tokens, naive, lookahead, max_labels_per_prompt, batch_size, as_json, progress):
    """Label the draft's mismatches important or not, self-supervised (AutoJudge mining).

    \b
    For each example the target answers greedily; then, left to right, each draft token
    that differs from the answer is swapped in and the target finishes: if the task's
    result changes the mismatch is IMPORTANT, otherwise UNIMPORTANT (and the swap stays).
    Output: OUT/shard-*.jsonl (one line per prompt) and OUT/shard-*.features/ (draft and
    target hidden states at each label, fp16). Interrupt any time; re-run to resume.
    Parallel: run --num-shards N --shard-id 0..N-1 with the same --out, then
    `autojudge-trt merge OUT` (or train on OUT directly).
    """
    from autojudge.mining import mine as run_mining
    from autojudge.tasks import get_task

    task = get_task(task_spec)
    examples = task.load(split, limit=limit, offset=offset)
    if not examples:
        raise click.UsageError(f"no examples in {task.name} split {split!r} at offset {offset}")
    target_lm, draft_lm = load_pair(target, draft, dtype, device)
    summary = run_mining(target_lm, draft_lm, task, examples, out, split=f"{split}@{offset}",
                         num_shards=num_shards, shard_id=shard_id, max_new_tokens=max_new_tokens,
                         naive=naive, lookahead=lookahead, progress=progress, max_labels=max_labels_per_prompt,
                         batch_size=batch_size)
    if as_json:
        click.echo(json.dumps(summary, indent=2))
    else:
        click.echo(f"{summary['shard']}: {summary['prompts']} prompts, {summary['labels']} labels "
                   f"({summary['important_fraction']:.1%} important), "
                   f"{summary['target_forward_tokens_per_prompt']:.0f} target forward tokens per prompt")


@click.command()
@click.argument("mining_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Directory for the merged dataset (mining.json, dataset.jsonl, dataset.safetensors).")
def merge(mining_dir, out):
    """Join the shards of MINING_DIR into one dataset (one JSONL + one safetensors file)."""
    from autojudge.mining import merge as merge_shards

    data = merge_shards(mining_dir, out)
    click.echo(f"{len(data.labels)} labels from {len(set(data.prompt_index.tolist()))} prompts -> {out}")


@click.command()
@click.option("--data", "data_dir", type=click.Path(exists=True, file_okay=False, path_type=Path),
              required=True, help="A mining directory (or a merged one).")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Judge artifact directory to write (judge.safetensors + judge.json).")
@click.option("--layout", type=click.Choice(LAYOUTS), default=DRAFT_TARGET,
              show_default=True, help="Features: both models' hidden states, or the target's only "
                                      "(for drafters without hidden states).")
@click.option("--target-recall", type=click.FloatRange(0, 1), default=0.9, show_default=True,
              help="Pick the threshold that still rejects this fraction of important mismatches.")
@click.option("--val-fraction", type=click.FloatRange(0.05, 0.5), default=0.2, show_default=True,
              help="Fraction of prompts held out for choosing C and the threshold.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--cv-folds", type=click.IntRange(0), default=5, show_default=True,
              help="Also report the ROC-AUC at the chosen C cross-validated over this many "
                   "prompt-grouped folds (steadier than one split when prompts are few); 0 skips.")
@click.option("--scalar-features", default="none", show_default=True,
              help="Cheap features after the hidden states: 'none', 'auto' (forward selection by the "
                   "prompt-grouped cross-validated AUC), or a comma list of " + ", ".join(SCALAR_FEATURES)
                   + ". They are computed from one target pass per mined prompt (needs --target, the model "
                     "the labels were mined with) and cached in the mining directory.")
@click.option("--scalar-window", type=click.IntRange(1, MAX_WINDOW), default=DecodeConfig.window, show_default=True,
              help="The decode window whose positions window_agreement is computed at.")
@click.option("--target", default="embedded", show_default=True,
              help="The target the labels were mined with (only read for scalar features).")
@click.option("--dtype", type=click.Choice(DTYPES), default="float32", show_default=True)
@click.option("--device", default="auto", show_default=True)
@json_option("Print the training report as JSON.")
@progress_option()
def train(data_dir, out, layout, target_recall, val_fraction, seed, cv_folds, scalar_features, scalar_window,
          target, dtype, device, as_json, progress):
    """Train the judge (scaler + logistic regression, C by validation AUC) and export it."""
    from dataclasses import asdict

    from autojudge.features.scalars import check_names
    from autojudge.judge.training import TrainConfig, train_judge
    from autojudge.mining import read_mined

    names = scalar_features.strip()
    if names not in ("none", "auto"):
        try:
            names = check_names([n.strip() for n in names.split(",") if n.strip()])
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--scalar-features") from exc
    data = read_mined(data_dir)
    scalars = None
    if names != "none":
        from autojudge.mining.scalars import mined_scalar_features, task_prompts
        from autojudge.models import load_target, quiet_transformers
        from autojudge.tasks import get_task

        quiet_transformers()
        status(f"Loading target {target} for the scalar features ...")
        target_lm = load_target(target, dtype=dtype, device=device)
        prompts = task_prompts(target_lm, get_task(data.manifest["task"]), data)
        scalars = mined_scalar_features(target_lm, data, prompts, scalar_window, data_dir, progress=progress)
    judge, report = train_judge(data, TrainConfig(layout=layout, target_recall=target_recall,
                                                  val_fraction=val_fraction, seed=seed, cv_folds=cv_folds,
                                                  scalar_features=() if names == "none" else names),
                                progress=progress, scalars=scalars)
    path = judge.save(out)
    if as_json:
        summary = {k: v for k, v in asdict(report).items() if k != "curve"}
        click.echo(json.dumps({"judge": str(path), **summary}, indent=2))
        return
    click.echo(f"judge written to {path}")
    click.echo(f"labels: {report.train_labels} train / {report.val_labels} validation "
               f"({report.important_fraction:.1%} important)")
    click.echo(f"validation ROC-AUC {report.val_auc:.3f} at C={report.best_c:.0e}; threshold "
               f"{report.threshold:.4f} rejects {report.val_recall:.1%} of important mismatches and "
               f"accepts {report.val_acceptance:.1%} of all mismatches")
    if report.cv_auc is not None:
        click.echo(f"cross-validated ROC-AUC {report.cv_auc:.3f} +/- {report.cv_auc_std:.3f} "
                   f"({report.cv_folds} prompt-grouped folds, C={report.best_c:.0e})")
    for tried in report.selection:
        click.echo(f"  hidden states + [{', '.join(tried['scalar_features'])}]: cross-validated ROC-AUC "
                   f"{tried['cv_auc']:.3f} +/- {tried['cv_auc_std']:.3f}")
    if names != "none":
        click.echo(f"scalar features: {', '.join(report.scalar_features) or 'none'}")


@click.command()
@click.option("--judge", "judge_path", type=click.Path(exists=True, file_okay=False, path_type=Path), required=True,
              help="The judge artifact to calibrate (autojudge-trt train).")
@click.option("--task", "task_spec", default="gsm8k", show_default=True)
@click.option("--split", default="train", show_default=True,
              help="Where the held-out prompts come from: never the prompts the judge was trained on.")
@click.option("--offset", type=click.IntRange(0), required=True,
              help="First example of --split to decode (past the mined ones: mine --offset + --limit).")
@click.option("--prompts", type=click.IntRange(1), default=64, show_default=True,
              help="Held-out prompts to decode; retention is measured in steps of 1/prompts.")
@click.option("--retention", type=click.FloatRange(0, 1), default=0.95, show_default=True,
              help="Keep at least this share of the target's answers (task results equal to the target's own).")
@model_options
@window_option(8)
@click.option("--points", type=click.IntRange(2, 64), default=10, show_default=True,
              help="Thresholds decoded, spread over the judge's validation probabilities.")
@click.option("--max-new-tokens", type=click.IntRange(8), help="[default: the task's]")
@click.option("--batch-size", type=click.IntRange(1), default=8, show_default=True)
@click.option("--out", type=click.Path(file_okay=False, path_type=Path),
              help="Write the calibrated judge here [default: update --judge in place]. The decodes go to "
                   "a folder beside it, OUT.calibration (resumable).")
@json_option()
@progress_option()
def calibrate(judge_path, task_spec, split, offset, prompts, retention, target, draft, dtype, device, window, points,
              max_new_tokens, batch_size, out, as_json, progress):
    """Answer-level calibration: pick the judge threshold that keeps --retention of the target's
    answers on held-out prompts, and make it the artifact's calibrated threshold.

    \b
    Decodes the prompts with the target and with the judge at a grid of thresholds (window
    --window), stores the curve threshold -> (retention, tau) in judge.json beside the
    token-level one, and sets the threshold to the largest grid point up to which every point
    keeps the retention, refined by 3 bisection steps toward the first point that does not.
    `train` chooses its threshold by a token-level recall, which does not bound how many answers
    change.
    """
    from autojudge.judge import Judge
    from autojudge.judge.calibration import AnswerCalibration, calibrate_answers
    from autojudge.tasks import get_task

    task = get_task(task_spec)
    judge = Judge.load(judge_path)
    target_lm, draft_lm = load_pair(target, draft, dtype, device)
    judge.check_models(draft_lm.name, draft_lm.hidden_size, target_lm.name, target_lm.hidden_size)
    out = out or judge_path
    examples = task.load(split, limit=prompts, offset=offset)
    calibrated, record = calibrate_answers(
        target_lm, draft_lm, judge, task, examples, AnswerCalibration(retention, window, points),
        out.with_name(out.name + ".calibration"), split=f"{split}@{offset}", max_new_tokens=max_new_tokens,
        batch_size=batch_size, progress=progress)
    path = calibrated.save(out)
    if as_json:
        click.echo(json.dumps({"judge": str(path), **record}, indent=2))
        return
    print_calibration(record, path)


def print_calibration(record: dict, path: Path) -> None:
    from autojudge.cli.options import status

    chosen = record["chosen"]
    status(f"answer calibration on {record['prompts']} held-out prompts ({record['split']}, W{record['window']}):")
    for point in record["curve"]:
        mark = "  <- calibrated" if point is chosen or point == chosen else ""
        status(f"  threshold {point['threshold']:.4f}: {point['retention']:.1%} of the target's answers kept, "
               f"tau {point['tau']:.2f}{mark}")
    if not record["met"]:
        status(f"  no threshold kept {record['retention']:.0%}: the smallest one is used")
    status(f"judge written to {path} (threshold {chosen['threshold']:.4f})")


@click.command("eval")
@click.option("--task", "task_spec", default="gsm8k", show_default=True)
@click.option("--split", default="test", show_default=True)
@click.option("--limit", type=click.IntRange(1), default=50, show_default=True)
@click.option("--offset", type=click.IntRange(0), default=0, show_default=True)
@model_options
@click.option("--judge", "judge_path", type=click.Path(path_type=Path),
              help="Judge artifact: adds judge runs at each --thresholds value.")
@window_option(8)
@click.option("--top-k", "top_ks", default="2,4,8", show_default=True, help="K values for the top-K baseline.")
@click.option("--fly", "fly_entropies", default="0.3", show_default=True,
              help="Entropy gates (nats) of the FLy baseline (training-free; its deferred window of 6 needs "
                   "--window >= 7); empty for none.")
@click.option("--thresholds", default="calibrated,0.05,0.2,0.5", show_default=True,
              help="Judge thresholds; 'calibrated' = the artifact's own.")
@click.option("--max-new-tokens", type=click.IntRange(8), help="[default: the task's]")
@click.option("--batch-size", type=click.IntRange(1), default=8, show_default=True,
              help="Examples decoded at once (same tokens up to float rounding, ~3x the throughput "
                   "at 8 on 2 CPU cores). tokens/s is then the batch's throughput; use 1 for "
                   "single-request speed.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="results.jsonl (resumable), report.json and tradeoff.png go here.")
@json_option()
@progress_option()
def eval_command(task_spec, split, limit, offset, target, draft, dtype, device, judge_path, window,
                 top_ks, fly_entropies, thresholds, max_new_tokens, batch_size, out, as_json, progress):
    """Accuracy vs speed: decode a test split with target, lossless, top-K, FLy and judge runs.

    \b
    Per run: gold accuracy, agreement with the target's own answers, tau (tokens per
    target call, bonus included), target calls per token, tokens/s. Writes
    OUT/report.json and OUT/tradeoff.png (accuracy vs tau); interrupted runs resume.
    """
    from autojudge.decoding import SpeculativeDecoder
    from autojudge.evaluation import evaluate, sweep
    from autojudge.judge import Judge
    from autojudge.tasks import get_task

    task = get_task(task_spec)
    judge = Judge.load(judge_path) if judge_path else None
    thr = [None if t.strip() == "calibrated" else float(t) for t in thresholds.split(",") if t.strip()]
    if any(t is not None and not 0 <= t <= 1 for t in thr):
        raise click.BadParameter("thresholds must be in [0, 1] or 'calibrated'", param_hint="--thresholds")
    from autojudge.acceptance.rule import FLY_WINDOW
    from autojudge.cli.options import status

    fly = number_list(fly_entropies, float, "--fly") if fly_entropies.strip() else []
    if fly and window <= FLY_WINDOW:
        status(f"no FLy runs: its deferred window ({FLY_WINDOW}) needs --window >= {FLY_WINDOW + 1} (at "
               f"--window {window} it would accept nothing and equal lossless)")
        fly = []
    runs = sweep(window, number_list(top_ks, int, "--top-k"), thr, with_judge=judge is not None, fly_entropies=fly)
    examples = task.load(split, limit=limit, offset=offset)
    target_lm, draft_lm = load_pair(target, draft, dtype, device)
    report = evaluate(SpeculativeDecoder(target_lm, draft_lm, judge), task, examples, runs, out,
                      max_new_tokens=max_new_tokens, progress=progress, batch_size=batch_size)
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    print_tradeoff(report)


def print_tradeoff(report: dict) -> None:
    """The evaluation report as a table, one row per run, and where its plot is."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{report['task']}: {report['examples']} examples, {report['target']} + {report['draft']}")
    for column in ("run", "accuracy", "agrees w/ target", "tau", "target calls/token", "tokens/s"):
        table.add_column(column, justify="left" if column == "run" else "right", no_wrap=column == "run")
    for r in report["runs"]:
        table.add_row(r["name"], f"{r['accuracy']:.1%}", f"{r['agreement_with_target']:.1%}", f"{r['tau']:.2f}",
                      f"{r['target_calls_per_token']:.3f}", f"{r['tokens_per_s']:.1f}")
    Console(stderr=False).print(table)
    click.echo(f"plot: {report['plot']}")
