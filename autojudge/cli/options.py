"""What the commands share: option decorators, the mode help, status lines and model loading.

Only click and torch-free constants are imported here; model loading imports its heavy
modules when called.
"""

from __future__ import annotations

from pathlib import Path

import click

from autojudge.decoding.config import MAX_WINDOW, MODES

DTYPES = ("float32", "bfloat16", "float16")
MODE_CHOICE = click.Choice(MODES)
MODE_HELP = (
    "target: plain greedy decoding of the target (baseline). "
    "lossless: greedy speculative decoding, output identical to target. "
    "topk: also accept a draft token in the target's top-K (lossy baseline). "
    "judge: AutoJudge, also accept mismatches the judge calls unimportant (lossy). "
    "fly: FLy, also accept a mismatch where the target is uncertain and agrees with the draft at the next 5 "
    "positions (training-free lossy baseline; needs --window >= 7)."
)


def model_options(f):
    """--target, --draft, --dtype and --device, in that order."""
    options = [
        click.option("--target", default="embedded", show_default=True,
                     help="Target model: 'embedded' (packaged SmolLM2-135M-Instruct), 'testbed' (the packaged "
                          "testbed pair, trained on synthetic problems), a local checkpoint directory, "
                          "a .gguf file, or a Hugging Face hub id."),
        click.option("--draft", default=None,
                     help="Draft model: 'layers:N' (the target's first N layers, weights shared) "
                          "or any model spec sharing the target's tokenizer. "
                          "[default: the packaged target's own draft (embedded, testbed)]"),
        click.option("--dtype", type=click.Choice(DTYPES),
                     default="float32", show_default=True, help="Weights and activations dtype."),
        click.option("--device", default="auto", show_default=True,
                     help="'auto' (cuda if available, else cpu), 'cpu', 'cuda', 'cuda:1', ..."),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def window_option(default: int, help: str | None = None, *, short: bool = True):
    """--window (and -w unless short=False), bounded by the decoder's MAX_WINDOW."""
    names = ("--window", "-w") if short else ("--window",)
    return click.option(*names, type=click.IntRange(1, MAX_WINDOW), default=default, show_default=True,
                        help=help)


def progress_option(help: str | None = None):
    return click.option("--progress/--no-progress", default=True, show_default=True, help=help)


def json_option(help: str | None = None):
    return click.option("--json", "as_json", is_flag=True, help=help)


def status(message: str) -> None:
    """A progress line for the user, on stderr (stdout carries the result)."""
    click.echo(message, err=True)


def number_list(text: str, kind, option: str) -> list:
    try:
        return [kind(x) for x in text.split(",") if x.strip()]
    except ValueError as exc:
        raise click.BadParameter(f"comma-separated values, got {text!r}", param_hint=option) from exc


def load_pair(target: str, draft: str | None, dtype: str = "float32", device: str = "auto"):
    from autojudge.models import draft_spec_for, load_draft, load_target, quiet_transformers

    draft = draft_spec_for(target, draft)
    quiet_transformers()
    status(f"Loading target {target} and draft {draft} ...")
    target_lm = load_target(target, dtype=dtype, device=device)
    return target_lm, load_draft(draft, target_lm)


def load_judge(path: Path):
    from autojudge.judge import Judge

    return Judge.load(path)
