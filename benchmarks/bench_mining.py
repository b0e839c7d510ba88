"""Mining cost: the fast loop (KV reuse, early stop, lookahead) against the naive reference
loop (full regeneration per mismatch), on the same prompts, in one process.

Both visit the same mismatches and must produce the same labels (checked). Reported per
loop: target forward tokens, target forward passes and seconds per prompt.

    python benchmarks/bench_mining.py --prompts 2 --offset 5004 --out out/bench_mining.json

``--batch-size B`` instead times the fast loop one prompt at a time against B prompts at
once (:func:`autojudge.mining.prefix_cache.run_batched`), on the same prompts: wall seconds per
prompt, and how many prompts got the same labels (batched matmuls round differently, which
can flip a near-tied greedy choice in fp32).

    python benchmarks/bench_mining.py --batch-size 8 --prompts 8 --max-labels 8
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import click
import torch

from autojudge.mining import mine_example, mine_prompts
from autojudge.models import encode_prompt, load_draft, load_target, quiet_transformers
from autojudge.tasks import get_task

LOOPS = {"naive": {"naive": True}, "fast, lookahead 0": {"lookahead": 0}, "fast, lookahead 8": {"lookahead": 8}}


@click.command()
@click.option("--task", "task_name", default="gsm8k", show_default=True)
@click.option("--split", default="train", show_default=True)
@click.option("--prompts", type=int, default=2, show_default=True)
@click.option("--offset", type=int, default=5004, show_default=True)
@click.option("--max-new-tokens", type=int, default=384, show_default=True)
@click.option("--max-labels", type=int, default=None, help="Cap on labels per prompt (both loops).")
@click.option("--batch-size", type=int, default=1, show_default=True,
              help="Above 1: time one prompt at a time against this many at once (fast loop).")
@click.option("--out", type=click.Path(path_type=Path))
def main(task_name, split, prompts, offset, max_new_tokens, max_labels, batch_size, out):
    quiet_transformers()
    target = load_target("embedded", device="cpu")
    draft = load_draft("embedded", target)
    task = get_task(task_name)
    if batch_size > 1:
        return compare_batched(target, draft, task, task.load(split, limit=prompts, offset=offset), max_new_tokens,
                               max_labels, batch_size, out)
    totals = {name: {"target_forward_tokens": 0, "target_forward_calls": 0, "seconds": 0.0} for name in LOOPS}
    labels_equal = True
    with torch.inference_mode():
        for example in task.load(split, limit=prompts, offset=offset):
            prompt = encode_prompt(target.tokenizer, task.prompt(example), system=task.system)
            reference = None
            for name, kwargs in LOOPS.items():
                record = mine_example(target, draft, task, example, prompt, max_new_tokens, max_labels=max_labels,
                                      **kwargs).record
                reference = record["labels"] if reference is None else reference
                labels_equal &= record["labels"] == reference
                for key in totals[name]:
                    totals[name][key] += record[key]
                print(f"{example.id} {name}: {len(record['labels'])} labels, {record['target_forward_tokens']} "
                      f"target tokens, {record['target_forward_calls']} forwards, {record['seconds']:.0f} s",
                      file=sys.stderr, flush=True)
    naive = totals["naive"]
    print(f"\n{'loop':<20}{'tokens/prompt':>15}{'forwards/prompt':>17}{'s/prompt':>10}{'tokens vs naive':>17}")
    for name, t in totals.items():
        print(f"{name:<20}{t['target_forward_tokens'] / prompts:>15.0f}{t['target_forward_calls'] / prompts:>17.0f}"
              f"{t['seconds'] / prompts:>10.0f}{naive['target_forward_tokens'] / t['target_forward_tokens']:>16.2f}x")
    print(f"same labels in every loop: {labels_equal}")
    if out:
        out.write_text(json.dumps({"prompts": prompts, "offset": offset, "totals": totals,
                                   "labels_equal": labels_equal}, indent=2))


@torch.inference_mode()
def compare_batched(target, draft, task, examples, max_new_tokens, max_labels, batch_size, out):
    start = time.perf_counter()
    alone = [mined.record for _, mined in mine_prompts(target, draft, task, examples, range(len(examples)),
                                                       max_new_tokens, max_labels=max_labels)]
    alone_s = time.perf_counter() - start
    print(f"alone: {alone_s:.0f} s", file=sys.stderr, flush=True)

    start = time.perf_counter()
    batched = dict(mine_prompts(target, draft, task, examples, range(len(examples)), max_new_tokens,
                                max_labels=max_labels, batch_size=batch_size))
    batched_s = time.perf_counter() - start
    same = sum(batched[k].record["labels"] == r["labels"] for k, r in enumerate(alone))
    labels = sum(len(r["labels"]) for r in alone)
    result = {"prompts": len(examples), "batch_size": batch_size, "labels": labels, "max_labels": max_labels,
              "alone_s_per_prompt": alone_s / len(examples), "batched_s_per_prompt": batched_s / len(examples),
              "speedup": alone_s / batched_s, "prompts_with_identical_labels": same,
              "threads": torch.get_num_threads()}
    print(f"{len(examples)} prompts, {labels} labels: alone {alone_s / len(examples):.1f} s/prompt, "
          f"batch {batch_size} {batched_s / len(examples):.1f} s/prompt ({alone_s / batched_s:.2f}x); "
          f"identical labels on {same}/{len(examples)} prompts")
    if out:
        out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
