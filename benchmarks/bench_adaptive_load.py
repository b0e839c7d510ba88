"""Adaptive speculation in a running batch under closed-loop load, in one process.

The served model's batcher (:class:`autojudge.serving.batcher.ContinuousBatcher`) without the
server around it: ``c`` client threads each submit a GSM8K test question, wait for its answer and
submit the next, for ``--seconds`` per run. Methods: ``target`` (plain greedy), ``lossless@W``
(fixed window) and ``adaptive@W`` (window 0..W per row, capped for the batch by the cycle cost).
At one client the methods take turns request by request on one batcher (a method's
throughput: its tokens over its requests' time), so the machine's drift hits them alike; at more,
each run has a fresh batcher. Runs are repeated ``--rounds`` times, the methods' order rotated each
round; each cell reports the median round and the spread. Every lossless and
adaptive answer must equal the target's greedy answer (the script checks it).

Without the tritonserver, its clients and their IPC on the same cores, this isolates what the
schedule itself costs or gains; ``bench_serving.py`` is the served measurement.

    python benchmarks/bench_adaptive_load.py --concurrency 1,4,16 --seconds 20 --rounds 3
"""

from __future__ import annotations

import json
import statistics
import threading
import time
from pathlib import Path

import click
from clients import pooled, run_clients, take_turns
from prompts import CHAT, gsm8k

from autojudge.decoding import DecodeConfig, SpeculativeDecoder
from autojudge.models import encode_prompt, load_draft, load_target, quiet_transformers
from autojudge.models.model_thread import ModelThread
from autojudge.serving.batcher import ContinuousBatcher


def closed_loop(batcher: ContinuousBatcher, prompts: list[list[int]], config: DecodeConfig, clients: int,
                seconds: float, warmup: float, expected: dict[int, list[int]] | None) -> dict:
    """``clients`` threads submit prompts one after another; the tokens committed between ``warmup``
    and ``warmup + seconds`` after the start, per second (answers still running count their part),
    and how many finished answers were not the expected tokens."""
    done: list[tuple[int, list[int], float, float]] = []  # (prompt index, tokens, tau, mean window)
    lock, start = threading.Lock(), time.perf_counter()
    count_from, stop_at, counted = start + warmup, start + warmup + seconds, [0]

    def on_tokens(ids, metrics) -> None:  # on the batch thread
        if count_from <= time.perf_counter() <= stop_at:
            counted[0] += len(ids)

    def client(offset: int) -> None:
        i = offset
        while time.perf_counter() < stop_at:
            result = batcher.generate(prompts[i % len(prompts)], config, on_tokens=on_tokens, timeout=600)
            m = result.metrics
            with lock:
                done.append((i % len(prompts), result.token_ids, m.mean_acceptance_length,
                             m.num_draft_tokens / max(m.num_target_calls, 1)))
            i += clients

    run_clients(client, clients)
    wrong = sum(expected is not None and tokens != expected[i] for i, tokens, _, _ in done)
    return {"tokens_per_s": counted[0] / seconds, "answers": len(done), "wrong": wrong,
            "tau": statistics.fmean(x for *_, x, _ in done) if done else 0.0,
            "mean_window": statistics.fmean(x for *_, x in done) if done else 0.0}


@click.command()
@click.option("--target", default="embedded", show_default=True)
@click.option("--draft", default="embedded", show_default=True)
@click.option("--questions", type=int, default=16, show_default=True, help="Distinct GSM8K test questions cycled.")
@click.option("--prompts", "prompt_set", type=click.Choice(["gsm8k", "chat"]), default="gsm8k", show_default=True,
              help="GSM8K test questions, or off-distribution chat prompts (the draft rarely agrees).")
@click.option("--max-new-tokens", type=int, default=64, show_default=True)
@click.option("--window", type=int, default=4, show_default=True)
@click.option("--concurrency", default="1,4,16", show_default=True, help="Comma-separated client counts.")
@click.option("--seconds", type=float, default=20.0, show_default=True,
              help="Measured, per run (at one client, per method: the methods take turns).")
@click.option("--warmup", type=float, default=3.0, show_default=True,
              help="Seconds at the start of each run whose tokens are not counted (every client joins at once).")
@click.option("--rounds", type=int, default=3, show_default=True, help="Repeats of every (concurrency, method).")
@click.option("--max-batch", type=int, default=16, show_default=True, help="The batcher's batch rows.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), help="Write the results as JSON here.")
def main(target, draft, questions, prompt_set, max_new_tokens, window, concurrency, seconds, warmup, rounds, max_batch,
         out):
    quiet_transformers()
    models = ModelThread()  # loads, checks and decodes: every torch call on one thread, as the server does

    def load() -> SpeculativeDecoder:
        target_lm = load_target(target, device="cpu")
        return SpeculativeDecoder(target_lm, load_draft(draft, target_lm))

    decoder = models.call(load)
    texts = gsm8k(questions) if prompt_set == "gsm8k" else CHAT
    prompts = [encode_prompt(decoder.backend.tokenizer, q) for q in texts]
    configs = {"target": DecodeConfig(mode="target", max_new_tokens=max_new_tokens),
               f"lossless@{window}": DecodeConfig(mode="lossless", window=window, max_new_tokens=max_new_tokens),
               f"adaptive@{window}": DecodeConfig(mode="lossless", window=window, max_new_tokens=max_new_tokens,
                                                  adaptive=True)}
    expected = {i: r.token_ids for i, r in enumerate(models.call(decoder.generate_batch, prompts, configs["target"]))}
    cost_prompt = encode_prompt(decoder.backend.tokenizer, "Hello! How are you today?")  # as the served model does
    levels = [int(c) for c in concurrency.split(",")]
    runs: dict[str, dict[str, list[dict]]] = {str(c): {m: [] for m in configs} for c in levels}

    def measure(config: DecodeConfig, clients: int, seconds: float, warm: float, check) -> tuple[dict, ContinuousBatcher]:
        """One closed-loop run on a fresh batcher: its observed costs start from the machine's model."""
        batcher = ContinuousBatcher(decoder, max_batch=max_batch, max_queue=64, cost_prompt=cost_prompt,
                                    cost_window=window, thread=models)
        try:
            return closed_loop(batcher, prompts, config, clients, seconds, warm, check), batcher
        finally:
            batcher.close()

    for config in configs.values():  # unmeasured: a fresh process's first runs are slower (caches, allocator)
        measure(config, max(levels), 2.0, 0.0, None)
    def observed(batcher: ContinuousBatcher) -> dict[str, float]:
        """(batch rows)x(window) -> the cycle's observed seconds, at the batcher's end."""
        return {f"{b}x{w}": s for (b, w), s in sorted(getattr(batcher.cost, "seen", {}).items())}

    def taking_turns(methods: list[str], seconds: float) -> dict[str, dict]:
        """One client on one batcher, the methods taking turns request by request."""
        batcher = ContinuousBatcher(decoder, max_batch=max_batch, max_queue=64, cost_prompt=cost_prompt,
                                    cost_window=window, thread=models)

        def send(method: str, k: int) -> dict:
            start = time.perf_counter()
            result = batcher.generate(prompts[k % len(prompts)], configs[method], timeout=600)
            m = result.metrics
            return {"tokens": len(result.token_ids), "latency": time.perf_counter() - start,
                    "wrong": result.token_ids != expected[k % len(prompts)], "tau": m.mean_acceptance_length,
                    "window": m.num_draft_tokens / max(m.num_target_calls, 1)}

        try:
            turns = take_turns(send, methods, seconds * len(methods))
        finally:
            batcher.close()
        results = {}
        for method, taken in turns.items():
            busy, done = pooled(taken)
            results[method] = {"tokens_per_s": sum(r["tokens"] for r in done) / busy,
                               "answers": len(done), "wrong": sum(r["wrong"] for r in done),
                               "tau": statistics.fmean(r["tau"] for r in done),
                               "mean_window": statistics.fmean(r["window"] for r in done),
                               "observed_cycle_s": observed(batcher)}
        return results

    for r in range(rounds):
        for c in levels:
            order = list(configs)[r % len(configs):] + list(configs)[:r % len(configs)]
            if c == 1:  # one client: the methods take turns request by request, on one batcher
                results = taking_turns(order, seconds)
            else:
                results = {}
                for method in order:
                    results[method], batcher = measure(configs[method], c, seconds, warmup, expected)
                    results[method]["observed_cycle_s"] = observed(batcher)
            for method, result in results.items():
                runs[str(c)][method].append(result)
                print(f"round {r} clients {c:2d} {method:12s} {result['tokens_per_s']:6.1f} tokens/s  "
                      f"tau {result['tau']:.2f}  window {result['mean_window']:.2f}  wrong {result['wrong']}",
                      flush=True)
    report = {"cycle_cost": models.call(decoder.cycle_cost, cost_prompt, window, batch=max_batch).__dict__,
              "window": window, "max_new_tokens": max_new_tokens, "prompts": prompt_set, "seconds": seconds,
              "rounds": rounds, "runs": runs, "summary": {}}
    for c in levels:
        base = statistics.median(run["tokens_per_s"] for run in runs[str(c)]["target"])
        for method in configs:
            speeds = [run["tokens_per_s"] for run in runs[str(c)][method]]
            ratios = sorted(s / t["tokens_per_s"] for s, t in zip(speeds, runs[str(c)]["target"]))
            row = {"tokens_per_s": statistics.median(speeds), "vs_target": statistics.median(speeds) / base,
                   "vs_target_per_round": ratios, "wrong": sum(run["wrong"] for run in runs[str(c)][method])}
            report["summary"].setdefault(str(c), {})[method] = row
            print(f"clients {c:2d} {method:12s} {row['tokens_per_s']:6.1f} tokens/s  {row['vs_target']:5.2f}x target"
                  f"  (per round {', '.join(f'{x:.2f}' for x in ratios)})  wrong {row['wrong']}")
    if out:
        out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
