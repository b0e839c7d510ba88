"""Throughput of the batched speculative loop beside one-at-a-time decoding, same process.

For each batch size B: the same B GSM8K test questions decoded one by one
(``SpeculativeDecoder.generate``) and then all at once (``generate_batch``), in
the same mode and window; reports tokens/s of each, the ratio, and how many rows came out
token-for-token identical (float rounding of batched matmuls may flip a near-tied greedy
choice; in float64 all are identical, see tests/test_batch_decoding.py).

    python benchmarks/bench_batch_decoding.py --batch-sizes 8,16 --mode lossless --window 4
"""

from __future__ import annotations

import json
import time

import click

from autojudge.decoding import DecodeConfig, SpeculativeDecoder
from autojudge.models import encode_prompt, load_draft, load_target, quiet_transformers
from autojudge.tasks import get_task


@click.command()
@click.option("--batch-sizes", default="8,16", show_default=True)
@click.option("--mode", type=click.Choice(["target", "lossless", "topk"]), default="lossless", show_default=True)
@click.option("--window", default=4, show_default=True)
@click.option("--max-new-tokens", default=160, show_default=True)
@click.option("--offset", default=20, show_default=True, help="First GSM8K test question used.")
@click.option("--out", type=click.Path(dir_okay=False), help="Also write the rows as JSON here.")
def main(batch_sizes, mode, window, max_new_tokens, offset, out):
    quiet_transformers()
    target = load_target("embedded", device="cpu")
    decoder = SpeculativeDecoder(target, load_draft("embedded", target))
    task = get_task("gsm8k")
    config = DecodeConfig(mode=mode, window=window, max_new_tokens=max_new_tokens)
    rows = []
    for size in (int(b) for b in batch_sizes.split(",")):
        examples = task.load("test", limit=size, offset=offset)
        prompts = [encode_prompt(target.tokenizer, task.prompt(e), system=task.system) for e in examples]
        start = time.perf_counter()
        one = [decoder.generate(p, config) for p in prompts]
        one_s = time.perf_counter() - start
        start = time.perf_counter()
        many = decoder.generate_batch(prompts, config)
        many_s = time.perf_counter() - start
        tokens = sum(len(r.token_ids) for r in one)
        row = {"batch": size, "mode": mode, "window": window, "tokens": tokens,
               "one_at_a_time_tokens_per_s": tokens / one_s,
               "batched_tokens_per_s": sum(len(r.token_ids) for r in many) / many_s,
               "identical_rows": sum(a.token_ids == b.token_ids for a, b in zip(one, many)),
               "same_result": sum(task.same(task.result(e, a.text), task.result(e, b.text))
                                  for e, a, b in zip(examples, one, many))}
        row["speedup"] = row["batched_tokens_per_s"] / row["one_at_a_time_tokens_per_s"]
        rows.append(row)
        click.echo(f"B={size:3d} {mode}/W{window}: one at a time {row['one_at_a_time_tokens_per_s']:.1f} tok/s, "
                   f"batched {row['batched_tokens_per_s']:.1f} tok/s ({row['speedup']:.2f}x); "
                   f"identical rows {row['identical_rows']}/{size}, same result {row['same_result']}/{size}")
    if out:
        with open(out, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
