"""The ``autojudge-trt`` command line. Heavy imports (torch, transformers) happen inside
commands so that ``--help`` stays instant."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import click

from autojudge.errors import AutoJudgeError

MODE_HELP = (
    "target: plain greedy decoding of the target (baseline). "
    "lossless: greedy speculative decoding, output identical to target. "
    "topk: also accept a draft token in the target's top-K (lossy baseline). "
    "judge: AutoJudge, also accept mismatches the judge calls unimportant (lossy)."
)


class _Group(click.Group):
    """Turns AutoJudgeError into a one-line message and exit status 2, never a traceback."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except AutoJudgeError as exc:
            click.secho(f"error: {exc}", fg="red", err=True)
            sys.exit(2)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="autojudge")
def main() -> None:
    """AutoJudge speculative decoding: a draft proposes, the target verifies, and a tiny
    learned judge accepts the mismatches that do not change the answer (arXiv 2504.20039)."""


def _model_options(f):
    options = [
        click.option("--target", default="embedded", show_default=True,
                     help="Target model: 'embedded' (packaged SmolLM2-135M-Instruct), a local "
                          "checkpoint directory, a .gguf file, or a Hugging Face hub id."),
        click.option("--draft", default=None,
                     help="Draft model: 'layers:N' (the target's first N layers, weights shared) "
                          "or any model spec sharing the target's tokenizer. "
                          "[default: the embedded draft, for the embedded target only]"),
        click.option("--dtype", type=click.Choice(["float32", "bfloat16", "float16"]),
                     default="float32", show_default=True, help="Weights and activations dtype."),
        click.option("--device", default="auto", show_default=True,
                     help="'auto' (cuda if available, else cpu), 'cpu', 'cuda', 'cuda:1', ..."),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def _status(message: str) -> None:
    click.echo(message, err=True)


@main.command()
@click.option("--prompt", "-p", help="The prompt text (a user message when --chat).")
@click.option("--prompt-file", type=click.File("r", encoding="utf-8"),
              help="Read the prompt from this UTF-8 file ('-' reads standard input).")
@_model_options
@click.option("--mode", type=click.Choice(["target", "lossless", "topk", "judge"]),
              default="lossless", show_default=True, help=MODE_HELP)
@click.option("--window", "-w", type=click.IntRange(1, 64), default=8, show_default=True,
              help="Draft tokens proposed per cycle (W). Ignored by --mode target.")
@click.option("--top-k", type=click.IntRange(1), default=4, show_default=True,
              help="K for --mode topk.")
@click.option("--judge", "judge_path", type=click.Path(path_type=Path),
              help="Judge artifact directory (judge.json + judge.safetensors), for --mode judge.")
@click.option("--threshold", type=click.FloatRange(0, 1),
              help="Judge threshold: accept a mismatch iff P(important) <= threshold. "
                   "[default: the artifact's calibrated threshold]")
@click.option("--ignore-judge-models", is_flag=True,
              help="Use a judge whose recorded model names differ from --draft/--target "
                   "(hidden sizes are still checked).")
@click.option("--max-new-tokens", type=click.IntRange(1), default=256, show_default=True,
              help="Stop after this many generated tokens (EOS and --stop may end it sooner).")
@click.option("--stop", multiple=True, help="Stop string (repeatable); the text ends before it.")
@click.option("--chat/--raw", default=True, show_default=True,
              help="Wrap the prompt in the tokenizer's chat template, or feed it raw.")
@click.option("--system", help="System message for --chat.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object: text, tokens, metrics.")
@click.option("--progress/--no-progress", default=True, show_default=True,
              help="Show a progress bar on stderr while generating.")
def generate(prompt, prompt_file, target, draft, dtype, device, mode, window, top_k, judge_path,
             threshold, ignore_judge_models, max_new_tokens, stop, chat, system, as_json, progress):
    """Generate a completion with speculative decoding and report its metrics.

    \b
    Example (embedded SmolLM2-135M-Instruct target and its default draft):
      autojudge-trt generate --prompt "A robe takes 2 bolts of blue fiber and half that much
      white fiber. How many bolts in total does it take?"
    """
    if (prompt is None) == (prompt_file is None):
        raise click.UsageError("give exactly one of --prompt or --prompt-file")
    try:
        text = prompt if prompt is not None else prompt_file.read()
    except UnicodeDecodeError as exc:
        raise click.UsageError(f"{prompt_file.name} is not UTF-8 text ({exc})") from exc
    if not text.strip():
        raise click.UsageError("the prompt is empty")
    if mode == "judge" and judge_path is None:
        raise click.UsageError("--mode judge needs --judge DIR (a judge artifact)")
    if mode != "target" and draft is None and target != "embedded":
        raise click.UsageError(f"--mode {mode} with --target {target} needs --draft (a model "
                               "sharing its tokenizer, or layers:N); only the embedded target "
                               "has a default draft")

    from tqdm import tqdm

    from autojudge.decoding import DecodeConfig, SpeculativeDecoder
    from autojudge.judge import Judge
    from autojudge.models import DEFAULT_DRAFT, encode_prompt, load_draft, load_target, quiet_transformers

    quiet_transformers()
    judge = Judge.load(judge_path) if judge_path else None  # cheap: fail before loading models
    _status(f"Loading target {target} ...")
    target_lm = load_target(target, dtype=dtype, device=device)
    draft_lm = None
    if mode != "target":
        _status(f"Loading draft {draft or DEFAULT_DRAFT} ...")
        draft_lm = load_draft(draft or DEFAULT_DRAFT, target_lm)
    decoder = SpeculativeDecoder(target_lm, draft_lm, judge, check_judge_names=not ignore_judge_models)
    config = DecodeConfig(mode=mode, window=window, max_new_tokens=max_new_tokens, top_k=top_k,
                          threshold=threshold, stop=tuple(stop))
    prompt_ids = encode_prompt(target_lm.tokenizer, text, chat=chat, system=system)

    with tqdm(total=max_new_tokens, desc=f"{mode}", unit="tok", file=sys.stderr,
              disable=not progress, leave=False) as bar:
        result = decoder.generate(prompt_ids, config, on_tokens=lambda ids, _: bar.update(len(ids)))

    if as_json:
        click.echo(json.dumps({**result.to_dict(), "target": target_lm.name,
                               "draft": draft_lm.name if draft_lm else None}, indent=2))
        return
    click.echo(result.text)
    _print_metrics(result)


@main.group()
def draft() -> None:
    """Make and check draft models (distilled from the target itself)."""




@draft.command()
@click.option("--target", default="embedded", show_default=True, help="Target model spec (as in generate).")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Work directory: teacher data, checkpoints, and the draft artifact (OUT/draft). "
                   "Re-running with the same settings resumes where it stopped.")
@click.option("--data", default="train", show_default=True,
              help="A GSM8K split shipped with the package (train, test) or a JSONL file.")
@click.option("--prompts", type=click.IntRange(1), default=1000, show_default=True,
              help="How many training questions the target answers (the teacher data).")
@click.option("--max-new-tokens", type=click.IntRange(8), default=256, show_default=True,
              help="Longest teacher answer.")
@click.option("--teacher-batch", type=click.IntRange(1), default=48, show_default=True,
              help="Prompts per batched teacher generation.")
@click.option("--init-layers", default="0,1,2,3", show_default=True,
              help="Target layers the draft starts from (their count is the draft's depth).")
@click.option("--steps", type=click.IntRange(1), default=1500, show_default=True)
@click.option("--batch", "batch_sequences", type=click.IntRange(1), default=16, show_default=True,
              help="Sequences per training step.")
@click.option("--lr", type=float, default=1e-3, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--full-vocab", is_flag=True,
              help="Let the draft propose any token. By default it proposes only tokens found in "
                   "the teacher answers, computing just those rows of the LM head (much cheaper).")
@click.option("--progress/--no-progress", default=True, show_default=True)
def distill(target, out, data, prompts, max_new_tokens, teacher_batch, init_layers, steps,
            batch_sequences, lr, seed, full_vocab, progress):
    """Distil a small draft from TARGET on the target's own greedy GSM8K answers.

    \b
    1. teacher: the target answers --prompts questions (OUT/teacher.jsonl, append-only);
    2. train: the draft (TARGET's --init-layers, sharing its embedding and LM head) learns
       to predict the target's greedy token (OUT/checkpoint.*, every 50 steps);
    3. export: OUT/draft/ (draft.safetensors fp16 + draft.json with its sha256).
    Use it with: autojudge-trt generate --draft OUT/draft
    """
    from autojudge.distill import DistillConfig, export_draft, teacher_vocabulary, train_student
    from autojudge.models import encode_prompt, load_target, quiet_transformers
    from autojudge.tasks.gsm8k import format_prompt, load_questions
    from autojudge.teacher import generate_teacher_data

    quiet_transformers()
    try:
        layers = tuple(int(x) for x in init_layers.split(","))
    except ValueError as exc:
        raise click.BadParameter("comma-separated layer indices, e.g. 0,1,2,3",
                                 param_hint="--init-layers") from exc
    target_lm = load_target(target)
    questions = load_questions(data, limit=prompts)
    prompt_ids = [encode_prompt(target_lm.tokenizer, format_prompt(q)) for q in questions]
    records = generate_teacher_data(target_lm, prompt_ids, out / "teacher.jsonl",
                                    max_new_tokens=max_new_tokens, batch_size=teacher_batch,
                                    progress=progress)
    config = DistillConfig(init_layers=layers, steps=steps, batch_sequences=batch_sequences,
                           lr=lr, seed=seed)
    student = train_student(target_lm, records, out, config, progress=progress)
    command = "autojudge-trt draft distill " + " ".join(sys.argv[3:]) if len(sys.argv) > 3 else None
    made_by = {"command": command, "config": {**config.__dict__, "init_layers": list(layers)},
               "teacher_prompts": len(records), "data": str(data)}
    vocab = None if full_vocab else teacher_vocabulary(records, target_lm.eos_token_ids)
    path = export_draft(student, target_lm, out / "draft", layers, made_by, greedy_vocab=vocab)
    click.echo(f"draft written to {path}; try: autojudge-trt generate --draft {path}")


@draft.command("eval")
@click.option("--target", default="embedded", show_default=True)
@click.option("--draft", "draft_spec", default=None, help="Draft spec [default: the embedded draft].")
@click.option("--data", default="test", show_default=True,
              help="A GSM8K split shipped with the package (train, test) or a JSONL file.")
@click.option("--prompts", type=click.IntRange(1), default=50, show_default=True)
@click.option("--teacher-file", type=click.Path(dir_okay=False, path_type=Path),
              help="Cache of the target's answers (JSONL, reused and extended).")
@click.option("--max-new-tokens", type=click.IntRange(8), default=256, show_default=True)
@click.option("--json", "as_json", is_flag=True)
def draft_eval(target, draft_spec, data, prompts, teacher_file, max_new_tokens, as_json):
    """Greedy top-1 agreement of a draft with the target on the target's own answers."""
    import tempfile

    from autojudge.distill import greedy_agreement
    from autojudge.models import DEFAULT_DRAFT, encode_prompt, load_draft, load_target, quiet_transformers
    from autojudge.tasks.gsm8k import format_prompt, load_questions
    from autojudge.teacher import generate_teacher_data

    quiet_transformers()
    target_lm = load_target(target)
    draft_lm = load_draft(draft_spec or DEFAULT_DRAFT, target_lm)
    questions = load_questions(data, limit=prompts)
    prompt_ids = [encode_prompt(target_lm.tokenizer, format_prompt(q)) for q in questions]
    path = teacher_file or Path(tempfile.mkdtemp()) / "teacher.jsonl"
    records = generate_teacher_data(target_lm, prompt_ids, path, max_new_tokens=max_new_tokens)
    agreement = greedy_agreement(draft_lm, records)
    report = {"target": target_lm.name, "draft": draft_lm.name, "prompts": len(records),
              "tokens": sum(len(r["completion_ids"]) for r in records), "agreement": agreement}
    click.echo(json.dumps(report, indent=2) if as_json else
               f"{draft_lm.name}: greedy agreement {agreement:.1%} over {report['tokens']} tokens")


def _print_metrics(result) -> None:
    from rich.console import Console
    from rich.table import Table

    m = result.metrics
    table = Table(title="speculative decoding metrics", show_header=False)
    rows = [
        ("mode", m.mode),
        ("finish reason", result.finish_reason),
        ("tokens generated", m.num_generated_tokens),
        ("target calls", m.num_target_calls),
        ("draft calls", m.num_draft_calls),
        ("tau (tokens per target call, bonus incl.)", f"{m.mean_acceptance_length:.2f}"),
        ("draft acceptance rate", f"{m.draft_acceptance_rate:.1%}"),
        ("accepted mismatches (judge / top-K)", m.num_accepted_mismatches),
        ("accepted per position", " ".join(map(str, m.num_accepted_tokens_per_pos)) or "-"),
        ("wall time", f"{m.wall_time_s:.2f} s"),
        ("tokens/s", f"{m.tokens_per_s:.1f}"),
    ]
    for name, value in rows:
        table.add_row(name, str(value))
    Console(stderr=False).print(table)


# ------------------------------------------------------------------ mining and training

def _load_pair(target: str, draft: str | None, dtype: str = "float32", device: str = "auto"):
    from autojudge.models import DEFAULT_DRAFT, load_draft, load_target, quiet_transformers

    if draft is None and target != "embedded":
        raise click.UsageError(f"--target {target} needs --draft (only the embedded target has a default draft)")
    quiet_transformers()
    _status(f"Loading target {target} and draft {draft or DEFAULT_DRAFT} ...")
    target_lm = load_target(target, dtype=dtype, device=device)
    return target_lm, load_draft(draft or DEFAULT_DRAFT, target_lm)


@main.command()
@click.option("--task", "task_spec", default="gsm8k", show_default=True,
              help="gsm8k, humaneval, an entry-point name, or package.module:attribute.")
@click.option("--split", default="train", show_default=True,
              help="The task's split (gsm8k: train, test) or a JSONL file of its format.")
@click.option("--limit", type=click.IntRange(1), help="Mine at most this many examples.")
@click.option("--offset", type=click.IntRange(0), default=0, show_default=True)
@_model_options
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
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.option("--progress/--no-progress", default=True, show_default=True)
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
    target_lm, draft_lm = _load_pair(target, draft, dtype, device)
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


@main.command()
@click.argument("mining_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Directory for the merged dataset (mining.json, dataset.jsonl, dataset.safetensors).")
def merge(mining_dir, out):
    """Join the shards of MINING_DIR into one dataset (one JSONL + one safetensors file)."""
    from autojudge.mining import merge as merge_shards

    data = merge_shards(mining_dir, out)
    click.echo(f"{len(data.labels)} labels from {len(set(data.prompt_index.tolist()))} prompts -> {out}")


@main.command()
@click.option("--data", "data_dir", type=click.Path(exists=True, file_okay=False, path_type=Path),
              required=True, help="A mining directory (or a merged one).")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Judge artifact directory to write (judge.safetensors + judge.json).")
@click.option("--layout", type=click.Choice(["draft+target", "target"]), default="draft+target",
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
@click.option("--json", "as_json", is_flag=True, help="Print the training report as JSON.")
@click.option("--progress/--no-progress", default=True, show_default=True)
def train(data_dir, out, layout, target_recall, val_fraction, seed, cv_folds, as_json, progress):
    """Train the judge (scaler + logistic regression, C by validation AUC) and export it."""
    from dataclasses import asdict

    from autojudge.judge_training import TrainConfig, train_judge
    from autojudge.mining import read_mined

    data = read_mined(data_dir)
    judge, report = train_judge(data, TrainConfig(layout=layout, target_recall=target_recall,
                                                  val_fraction=val_fraction, seed=seed, cv_folds=cv_folds),
                                 progress=progress)
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


def _number_list(text: str, kind, option: str) -> list:
    try:
        return [kind(x) for x in text.split(",") if x.strip()]
    except ValueError as exc:
        raise click.BadParameter(f"comma-separated values, got {text!r}", param_hint=option) from exc


@main.command("eval")
@click.option("--task", "task_spec", default="gsm8k", show_default=True)
@click.option("--split", default="test", show_default=True)
@click.option("--limit", type=click.IntRange(1), default=50, show_default=True)
@click.option("--offset", type=click.IntRange(0), default=0, show_default=True)
@_model_options
@click.option("--judge", "judge_path", type=click.Path(path_type=Path),
              help="Judge artifact: adds judge runs at each --thresholds value.")
@click.option("--window", "-w", type=click.IntRange(1, 64), default=8, show_default=True)
@click.option("--top-k", "top_ks", default="2,4,8", show_default=True, help="K values for the top-K baseline.")
@click.option("--thresholds", default="calibrated,0.05,0.2,0.5", show_default=True,
              help="Judge thresholds; 'calibrated' = the artifact's own.")
@click.option("--max-new-tokens", type=click.IntRange(8), help="[default: the task's]")
@click.option("--batch-size", type=click.IntRange(1), default=8, show_default=True,
              help="Examples decoded at once (same tokens up to float rounding, ~3x the throughput "
                   "at 8 on 2 CPU cores). tokens/s is then the batch's throughput; use 1 for "
                   "single-request speed.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="results.jsonl (resumable), report.json and tradeoff.png go here.")
@click.option("--json", "as_json", is_flag=True)
@click.option("--progress/--no-progress", default=True, show_default=True)
def eval_command(task_spec, split, limit, offset, target, draft, dtype, device, judge_path, window,
                 top_ks, thresholds, max_new_tokens, batch_size, out, as_json, progress):
    """Accuracy vs speed: decode a test split with target, lossless, top-K and judge runs.

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
    runs = sweep(window, _number_list(top_ks, int, "--top-k"), thr, with_judge=judge is not None)
    examples = task.load(split, limit=limit, offset=offset)
    target_lm, draft_lm = _load_pair(target, draft, dtype, device)
    report = evaluate(SpeculativeDecoder(target_lm, draft_lm, judge), task, examples, runs, out,
                      max_new_tokens=max_new_tokens, progress=progress, batch_size=batch_size)
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    _print_tradeoff(report)


def _print_tradeoff(report: dict) -> None:
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


@main.command()
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("out/quickstart"),
              show_default=True, help="Everything goes here; re-running resumes each step.")
@click.option("--mine-prompts", type=click.IntRange(2), default=3, show_default=True,
              help="GSM8K train questions to mine.")
@click.option("--labels-per-prompt", type=click.IntRange(1), default=16, show_default=True,
              help="Mismatches labelled per question (the first ones; ~4 s each on 2 CPU cores).")
@click.option("--eval-prompts", type=click.IntRange(1), default=8, show_default=True,
              help="GSM8K test questions to evaluate on (5 runs each, decoded 8 at a time).")
@click.option("--window", "-w", type=click.IntRange(1, 64), default=4, show_default=True)
@click.option("--max-new-tokens", type=click.IntRange(8), default=256, show_default=True)
@click.option("--progress/--no-progress", default=True, show_default=True)
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
    from autojudge.judge_training import TrainConfig, train_judge
    from autojudge.mining import mine as run_mining
    from autojudge.mining import read_mined
    from autojudge.tasks import get_task

    task = get_task("gsm8k")
    target_lm, draft_lm = _load_pair("embedded", None)
    clock = _PhaseClock()
    _status(f"[1/3] mining {mine_prompts} GSM8K train questions -> {out / 'mined'}")
    summary = run_mining(target_lm, draft_lm, task, task.load("train", limit=mine_prompts), out / "mined",
                         split="train@0", max_new_tokens=max_new_tokens, progress=progress,
                         max_labels=labels_per_prompt, batch_size=min(mine_prompts, 8))
    _status(f"      {summary['labels']} labels, {summary['important_fraction']:.0%} important ({clock.lap('mine')})")
    _status(f"[2/3] training the judge -> {out / 'judge'}")
    judge, report = train_judge(read_mined(out / "mined"), TrainConfig(val_fraction=0.5), progress=progress)
    judge.save(out / "judge")
    _status(f"      validation ROC-AUC {report.val_auc:.3f}, threshold {report.threshold:.3f} "
            f"(rejects {report.val_recall:.0%} of important mismatches, accepts {report.val_acceptance:.0%}; "
            f"{clock.lap('train')})")
    _status(f"[3/3] evaluating on {eval_prompts} GSM8K test questions -> {out / 'eval'}")
    runs = [Run("target"), Run("lossless", window), Run("topk", window, top_k=4),
            Run("judge", window), Run("judge", window, threshold=0.5)]
    result = evaluate(SpeculativeDecoder(target_lm, draft_lm, judge), task, task.load("test", limit=eval_prompts),
                      runs, out / "eval", max_new_tokens=max_new_tokens, progress=progress, batch_size=8)
    _status(f"      {clock.lap('eval')}")
    _print_tradeoff(result)
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
        from autojudge.cache import atomic_write_bytes

        total = sum(self.seconds.values())
        atomic_write_bytes(path, json.dumps({**self.seconds, "total": total}, indent=2).encode())


def _load_judge(path: Path):
    from autojudge.judge import Judge

    return Judge.load(path)


@main.command("export-onnx")
@click.option("--judge", "judge_path", type=click.Path(exists=True, path_type=Path), required=True,
              help="Judge artifact directory (from `autojudge-trt train`).")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=Path("judge_accept.onnx"),
              show_default=True, help="ONNX file to write.")
@click.option("--hidden-dtype", type=click.Choice(["float32", "float16", "bfloat16"]), default="bfloat16",
              show_default=True, help="Element type of the hidden-state inputs (what the models emit).")
@click.option("--json", "as_json", is_flag=True, help="Print what was written as JSON.")
def export_onnx_command(judge_path, out, hidden_dtype, as_json):
    """Write the judge-accept step as a graph of standard ONNX ops (opset 17, IR 9).

    \b
    Inputs: draft_tokens [B, W] int32, target_tokens [B, W+1] int32, draft_hidden [B, W, Hd]
    (draft+target layout), target_hidden [B, W, Ht], threshold [B] fp32. Outputs:
    num_accepted [B], next_tokens [B] (int32) and probabilities [B, W] (-1 where the judge
    was not needed) - exactly the plugin kernel's. For TensorRT without custom plugins,
    onnxruntime, or any ONNX consumer.
    """
    from autojudge.onnx_export import IR_VERSION, OPSET, export_onnx

    judge = _load_judge(judge_path)
    path = export_onnx(judge, out, hidden_dtype)
    info = {"onnx": str(path), "opset": OPSET, "ir_version": IR_VERSION, "hidden_dtype": hidden_dtype,
            "feature_layout": judge.meta.feature_layout, "draft_hidden_size": judge.meta.draft_hidden_size,
            "target_hidden_size": judge.meta.target_hidden_size}
    click.echo(json.dumps(info) if as_json else f"wrote {path} (opset {OPSET}, IR {IR_VERSION}, {hidden_dtype})")


@main.group(invoke_without_command=True)
@click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Deployment description (YAML or JSON): draft, target, judge, output_dir, dtype, "
                   "quantization, tensor_parallel, max_batch_size, max_input_len, max_seq_len, window.")
@click.option("--dry-run", is_flag=True, help="Check the description and print every step, command and output "
                                              "path without running anything.")
@click.option("--json", "as_json", is_flag=True, help="Print the preflight, the plan and the summary as JSON.")
@click.pass_context
def build(ctx, config_path, dry_run, as_json) -> None:
    """Build everything a GPU host needs to serve AutoJudge with TensorRT-LLM.

    \b
    autojudge-trt build --config deploy.yaml            the whole pipeline:
      draft and target checkpoints and engines (hidden states marked as outputs; the
      target for external draft tokens), the judge-accept plugin and engine, and the
      Triton repository (TensorRT-LLM flavour) pointing at them.
    autojudge-trt build --config deploy.yaml --dry-run  the plan, nothing run
    autojudge-trt build judge --judge J --out DIR       only the judge-accept engine

    \b
    Preflight runs first (GPU and compute capability, TensorRT / TensorRT-LLM 1.2.x, CUDA
    toolkit, CMake, disk, judge hidden sizes, window, tokenizers) and stops with what to
    fix. Re-running skips the steps whose outputs are complete (OUTPUT_DIR/manifest.json).
    """
    if ctx.invoked_subcommand is not None:
        if config_path or dry_run:
            raise click.UsageError("--config/--dry-run belong to the pipeline, not to `build "
                                   f"{ctx.invoked_subcommand}`")
        return
    if config_path is None:
        click.echo(ctx.get_help())
        ctx.exit(0)
    from autojudge.deploy.pipeline import run_build

    ctx.exit(run_build(config_path, dry_run=dry_run, as_json=as_json))


@build.command("judge")
@click.option("--judge", "judge_path", type=click.Path(exists=True, path_type=Path), required=True,
              help="Judge artifact directory (from `autojudge-trt train`).")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Output directory: judge_accept.plan, judge_accept.json (and the ONNX file or plugin build).")
@click.option("--path", "build_path", type=click.Choice(["plugin", "onnx"]), default="plugin", show_default=True,
              help="plugin: the AutoJudgeJudgeAccept CUDA kernel (early exit, dot products only at "
                   "mismatches). onnx: the standard-op graph, for TensorRT builds without custom plugins.")
@click.option("--plugin-library", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="A built libautojudge_judge_accept_plugin.so [default: build it with CMake, TENSORRT_ROOT].")
@click.option("--hidden-dtype", type=click.Choice(["float32", "float16", "bfloat16"]), default="bfloat16",
              show_default=True, help="Element type of the hidden-state inputs.")
@click.option("--max-batch", type=click.IntRange(1), default=64, show_default=True)
@click.option("--max-window", type=click.IntRange(1, 1024), default=64, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the engine metadata as JSON.")
def build_judge(judge_path, out, build_path, plugin_library, hidden_dtype, max_batch, max_window, as_json):
    """Build a TensorRT engine of the judge-accept step for one judge artifact.

    Dynamic batch (1..--max-batch) and window (1..--max-window). Where TensorRT is absent
    this stops and says what to install; nothing is faked.
    """
    from autojudge.trt_build import EngineSpec, build_judge_engine, require_tensorrt

    require_tensorrt()  # before any other work
    judge = _load_judge(judge_path)
    spec = EngineSpec(path=build_path, hidden_dtype=hidden_dtype, max_batch=max_batch, max_window=max_window,
                      opt_batch=min(8, max_batch), opt_window=min(8, max_window))
    meta = build_judge_engine(judge, out, spec, plugin_library)
    click.echo(json.dumps(meta) if as_json else f"wrote {meta['engine']} (TensorRT {meta['tensorrt']}, {build_path})")


@main.command()
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Deployment directory to write (models/, artifacts/, deployment.json).")
@click.option("--target", default="embedded", show_default=True, help="Target model spec (as in generate).")
@click.option("--draft", default="", help="Draft model spec [default: the embedded draft, embedded target only].")
@click.option("--judge", "judge_path", type=click.Path(exists=True, path_type=Path),
              help="Judge artifact; copied into the deployment. Enables mode 'judge'.")
@click.option("--mode", "default_mode", type=click.Choice(["lossless", "judge", "topk", "target"]),
              default=None, help="Default mode of requests that name none [default: judge with --judge, "
                                 "else lossless].")
@click.option("--window", type=click.IntRange(1, 64), default=4, show_default=True, help="Default window.")
@click.option("--threshold", type=click.FloatRange(0, 1), help="Default judge threshold [default: the judge's].")
@click.option("--max-tokens", type=click.IntRange(1), default=128, show_default=True,
              help="Default max new tokens per request.")
@click.option("--max-tokens-limit", type=click.IntRange(1), default=1024, show_default=True,
              help="Largest max_tokens a request may ask for.")
@click.option("--instances", type=click.IntRange(1), default=1, show_default=True,
              help="Model instances per model (requests served in parallel, each with its own models).")
@click.option("--device", default="cpu", show_default=True, help="cpu or cuda[:N] (KIND_GPU).")
@click.option("--dtype", type=click.Choice(["float32", "bfloat16", "float16"]), default="float32", show_default=True)
@click.option("--torch-threads", type=click.IntRange(0), default=0, show_default=True,
              help="CPU threads per model instance; 0 = this machine's cores / --instances.")
@click.option("--force", is_flag=True, help="Replace --out if it exists.")
@click.option("--flavour", type=click.Choice(["python", "tensorrt-llm"]), default="python", show_default=True,
              help="python: the in-process decoder (CPU or GPU). tensorrt-llm: draft/target TensorRT-LLM "
                   "engines, the judge-accept engine and a BLS loop (from `autojudge-trt build --config`).")
@click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="tensorrt-llm: the deployment description the engines were built from.")
@click.option("--no-engine-check", is_flag=True, help="tensorrt-llm: write the repository even if the engines "
                                                      "are not built yet.")
def repo(out, target, draft, judge_path, default_mode, window, threshold, max_tokens, max_tokens_limit, instances,
         device, dtype, torch_threads, force, flavour, config_path, no_engine_check):
    """Write a Triton model repository that serves AutoJudge.

    \b
    --flavour python (default): the speculative decoder in process (Python backend).
    --flavour tensorrt-llm --config deploy.yaml: models draft and target (tensorrtllm
      backend), judge_accept (TensorRT plan) and the BLS that runs the same decoding loop
      over them; window, judge and engines come from the description.

    Either way two front models: `autojudge` (one response per request; HTTP or gRPC) and
    `autojudge_stream` (decoupled: one response per decoder cycle; gRPC streaming). Serve
    the python flavour with `autojudge-trt serve --repo OUT`; deployment.json holds the
    command for the TensorRT-LLM flavour.
    """
    from autojudge.serving.repo import RepoSettings, write_repo

    if flavour == "tensorrt-llm":
        if config_path is None:
            raise click.UsageError("--flavour tensorrt-llm needs --config (the deployment description)")
        from autojudge.deploy.config import load_config
        from autojudge.serving.trtllm_repo import serve_command, write_trtllm_repo

        config = load_config(config_path)
        models = write_trtllm_repo(out, config, force=force, check_engines=not no_engine_check,
                                   default_mode=default_mode or "judge", max_tokens=max_tokens)
        click.echo(f"wrote {models} (models: draft, target, judge_accept, autojudge, autojudge_stream); serve it "
                   f"with: {serve_command(config, models.resolve())}")
        return

    settings = RepoSettings(target=target, draft=draft, judge=judge_path,
                            default_mode=default_mode or ("judge" if judge_path else "lossless"),
                            window=window, threshold=threshold, max_tokens=max_tokens,
                            max_tokens_limit=max_tokens_limit, instances=instances, device=device, dtype=dtype,
                            torch_threads=torch_threads)
    models = write_repo(out, settings, force=force)
    click.echo(f"wrote {models} (models: autojudge, autojudge_stream); serve it with: "
               f"autojudge-trt serve --repo {out}")


@main.command()
@click.option("--repo", "repo_path", type=click.Path(exists=True, file_okay=False, path_type=Path), required=True,
              help="A deployment directory from `autojudge-trt repo` (or any Triton model repository).")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to bind. Loopback by default; 0.0.0.0 exposes the server to the network.")
@click.option("--http-port", type=click.IntRange(0, 65535), default=0, help="[default: a free port]")
@click.option("--grpc-port", type=click.IntRange(0, 65535), default=0, help="[default: a free port]")
@click.option("--log-file", type=click.Path(dir_okay=False, path_type=Path), help="Also write the server log here.")
@click.option("--quiet", is_flag=True, help="Do not stream the server log to stderr.")
def serve(repo_path, host, http_port, grpc_port, log_file, quiet):
    """Start tritonserver on REPO, wait until it is ready, stream its log; Ctrl-C stops it."""
    import signal
    from autojudge.serving.repo import model_repository
    from autojudge.serving.server import TritonServer

    server = TritonServer(model_repository(repo_path), host=host, http_port=http_port, grpc_port=grpc_port,
                          log_file=log_file, on_log=None if quiet else (lambda line: click.echo(line, err=True)))
    _status(f"starting tritonserver on {host} (HTTP {server.http_port}, gRPC {server.grpc_port}) ...")

    def terminate(signum, frame):  # SIGTERM: stop the server as Ctrl-C does
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, terminate)
    # Explicitly, not Python's default: a process started in the background of a shell
    # inherits SIGINT *ignored*, and Ctrl-C / kill -INT must still stop the server.
    signal.signal(signal.SIGINT, terminate)
    try:
        server.start()
        click.echo(json.dumps({"ready": True, "http": server.http_url, "grpc": server.grpc_url}), err=False)
        _status("ready; Ctrl-C stops it")
        server.process.wait()  # until the server exits, or Ctrl-C
    except KeyboardInterrupt:
        _status("stopping tritonserver ...")
    finally:
        server.stop()
    if server.process and server.process.returncode not in (0, -2, None):
        raise AutoJudgeError(f"tritonserver exited with status {server.process.returncode}")


@main.command()
@click.option("--url", default=None, help="host:port [default: 127.0.0.1:8000 for HTTP, :8001 for gRPC].")
@click.option("--protocol", type=click.Choice(["http", "grpc", "grpc-stream"]), default="grpc-stream",
              show_default=True, help="grpc-stream prints tokens as the decoder commits them.")
@click.option("--prompt", "-p", "prompts", multiple=True, required=True, help="Prompt (repeatable).")
@click.option("--max-tokens", type=int, help="[default: the deployment's]")
@click.option("--mode", help="lossless | judge | topk | target [default: the deployment's]")
@click.option("--window", type=int, help="[default: the deployment's]")
@click.option("--threshold", type=float, help="Judge threshold override.")
@click.option("--stop", multiple=True, help="Stop string (repeatable).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object per prompt.")
def client(url, protocol, prompts, max_tokens, mode, window, threshold, stop, as_json):
    """Send prompts to a served AutoJudge model; print the text and the request's metrics."""
    from autojudge.serving.client import infer_grpc, infer_http, request_arrays, stream_grpc

    url = url or ("127.0.0.1:8000" if protocol == "http" else "127.0.0.1:8001")
    for prompt in prompts:
        arrays = request_arrays(prompt, max_tokens, mode, window, threshold, stop)
        if protocol == "http":
            answer = infer_http(url, arrays)
        elif protocol == "grpc":
            answer = infer_grpc(url, arrays)
        else:
            streaming = not as_json
            answer = stream_grpc(url, arrays, on_piece=(lambda p: click.echo(p["text"], nl=False)) if streaming
                                 else None)
            if streaming:
                click.echo()
        if as_json:
            click.echo(json.dumps({"prompt": prompt, **answer}))
            continue
        if protocol != "grpc-stream":
            click.echo(answer["text"])
        m = answer["metrics"]
        click.echo(f"[{m['mode']} W={m['window']}] {m['generated_tokens']} tokens, tau {m['tau']:.2f}, "
                   f"acceptance {m['acceptance_rate']:.0%}, judge-accepted mismatches "
                   f"{m['judge_accepted_mismatches']}, {m['tokens_per_s']:.1f} tokens/s, "
                   f"finish {m['finish_reason']}", err=True)


if __name__ == "__main__":
    main()
