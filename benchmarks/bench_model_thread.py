"""Why the served model decodes on the thread that loaded it (:mod:`autojudge.models.model_thread`).

In one process, the same decode cycles (``--rows`` GSM8K prompts, target-only and lossless at
window ``--window``) are timed on the thread that loaded the models and on a second thread,
``--rounds`` times, alternating which goes first; the second thread is new each round and ends
after it, as a thread's OpenMP team lives as long as the thread does.

    python benchmarks/bench_model_thread.py --rows 1,4,16 --rounds 3
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

import click
from prompts import gsm8k

from autojudge.decoding import DecodeConfig, SpeculativeDecoder
from autojudge.decoding.loop import Running
from autojudge.models import encode_prompt, load_draft, load_target, quiet_transformers
from autojudge.models.model_thread import ModelThread


def cycle_seconds(decoder: SpeculativeDecoder, prompts: list[list[int]], config: DecodeConfig, cycles: int) -> float:
    """Median seconds of ``cycles`` decode cycles after the prompts are in (and one unmeasured cycle)."""
    running = Running(decoder.backend, frozenset(), None, uses_draft=config.mode != "target")
    running.join(prompts, config)
    running.cycle()  # the prompts
    running.cycle()
    times = []
    for _ in range(cycles):
        start = time.perf_counter()
        running.cycle()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


@click.command()
@click.option("--rows", default="1,4,16", show_default=True, help="Comma-separated batch sizes.")
@click.option("--window", type=int, default=4, show_default=True)
@click.option("--cycles", type=int, default=20, show_default=True, help="Timed cycles per measurement.")
@click.option("--rounds", type=int, default=3, show_default=True)
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), help="Write the results as JSON here.")
def main(rows, window, cycles, rounds, out):
    quiet_transformers()
    target_lm = load_target("embedded", device="cpu")  # on this (the main) thread
    decoder = SpeculativeDecoder(target_lm, load_draft("embedded", target_lm))
    questions = gsm8k(max(int(b) for b in rows.split(",")))
    prompts = [encode_prompt(target_lm.tokenizer, q) for q in questions]
    configs = {"target": DecodeConfig(mode="target", max_new_tokens=cycles * (window + 1) + 8),
               f"lossless@{window}": DecodeConfig(mode="lossless", window=window,
                                                  max_new_tokens=cycles * (window + 1) + 8)}
    results: dict[str, dict] = {}
    for b in (int(x) for x in rows.split(",")):
        for method, config in configs.items():
            loader, other = [], []
            for r in range(rounds):
                second = ModelThread("second")
                for where in (("loader", "second") if r % 2 == 0 else ("second", "loader")):
                    if where == "loader":
                        loader.append(cycle_seconds(decoder, prompts[:b], config, cycles))
                    else:
                        other.append(second.call(cycle_seconds, decoder, prompts[:b], config, cycles))
                second.close()
                second.thread.join()
            row = {"loader_s": statistics.median(loader), "second_s": statistics.median(other),
                   "loader_per_round": loader, "second_per_round": other}
            row["second_vs_loader"] = row["second_s"] / row["loader_s"]
            results[f"{b}x{method}"] = row
            print(f"rows {b:2d} {method:12s} cycle on the loading thread {row['loader_s'] * 1e3:6.1f} ms, "
                  f"on a second thread {row['second_s'] * 1e3:6.1f} ms: {row['second_vs_loader']:.2f}x", flush=True)
    if out:
        out.write_text(json.dumps({"cycles": cycles, "rounds": rounds, "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
