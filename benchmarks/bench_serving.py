"""Serving under load, in one run on one machine: a real tritonserver, closed-loop gRPC-streaming clients.

    python benchmarks/bench_serving.py --seconds 20 --rounds 2 --judge out/quickstart-embedded/judge \
        --json-out benchmarks/results/serving_cpu.json

Two servers over the embedded pair, one after the other on the same cores:

- ``continuous``: one decoding instance whose running batch takes up to 16 requests (this
  project's server);
- ``one-at-a-time``: ``--baseline-instances`` instances of one batch row each, as the server
  was before continuous batching (concurrency bought with whole model copies).

On ``continuous``, at concurrency 1, 4 and 16: target only, fixed-window lossless, adaptive
lossless and adaptive judge (with ``--judge``) on GSM8K test questions; target only and
adaptive lossless on off-distribution chat prompts at concurrency 1. On ``one-at-a-time``:
target only and fixed lossless at concurrency 16. The methods take turns on one server, each turn a
burst of the same prompts for every method (at one client one request; at c clients, c x
``--per-client`` requests through c closed-loop clients, as vLLM's ``benchmark_serving
--max-concurrency c`` sends them), the order rotated turn by turn, so the machine's drift hits
every method alike; a method's throughput is its tokens over its turns' time (first request to last
answer, the joining and the drain included). Each run reports throughput, p50/p99 latency and time
to first token (the first streamed piece). ``--closed-loop`` runs one steady closed-loop run per
method after another instead (the tokens streamed in ``--seconds`` after ``--warmup``). With
``--rounds`` > 1 every run is repeated, the methods' order rotated each round, and a method's
ratio to target is the median of its ratios
within rounds (a 2-core VM drifts by 20% between runs minutes apart). Every answer is checked against the
in-process decoder: target-only and lossless answers must be the target's greedy tokens
(token for token); judge answers must be well formed (tokens and a finish reason; how often
they equal the in-process batch-1 judge decode is reported, since an adaptive window depends
on the batch and a lossy rule on the window). A failed, lost or wrong answer is counted.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from clients import pooled, run_clients, take_turns
from prompts import CHAT, gsm8k

from autojudge.decoding import DecodeConfig
from autojudge.serving.client import request_arrays, stream_grpc
from autojudge.serving.repo import STREAM_MODEL, RepoSettings, write_repo
from autojudge.serving.server import TritonServer


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def send(server: TritonServer, prompt: str, fields: dict, check, on_piece=None) -> dict:
    """One streamed request, its answer checked: tokens, latency, time to first piece and metrics
    (``ok`` False: failed, lost or wrong)."""
    first = []

    def piece(p: dict) -> None:
        if not first:
            first.append(time.perf_counter())
        if on_piece:
            on_piece(p)

    start = time.perf_counter()
    try:
        answer = stream_grpc(server.grpc_url, request_arrays(prompt, **fields), on_piece=piece)
        verdict = check(prompt, answer)
        return {"ok": verdict is not False, "same": verdict is True, "tokens": len(answer["token_ids"]),
                "latency": time.perf_counter() - start, "ttft": (first[0] if first else time.perf_counter()) - start,
                "tau": answer["metrics"]["mean_acceptance_length"],
                "window": answer["metrics"]["mean_window"], "batch": answer["metrics"]["mean_batch_size"]}
    except Exception as exc:  # noqa: BLE001 - counted as lost
        return {"ok": False, "error": str(exc)[:200], "tokens": 0, "latency": time.perf_counter() - start}


def run_load(server: TritonServer, prompts: list[str], check, fields: dict, clients: int, seconds: float,
             warmup: float) -> dict:
    """``clients`` threads, each sending the next prompt as soon as its last answer is in, until
    ``warmup + seconds``. Throughput counts the tokens streamed in the last ``seconds`` (every client
    busy: neither the start, when all join at once, nor the drain after it); every answer is checked."""
    started = time.perf_counter()
    count_from, deadline = started + warmup, started + warmup + seconds
    records, lock, streamed = [], threading.Lock(), [0]

    def on_piece(piece: dict) -> None:
        if count_from <= time.perf_counter() <= deadline:
            with lock:
                streamed[0] += len(piece["token_ids"])

    def client(index: int) -> None:
        i = index
        while time.perf_counter() < deadline:
            record = send(server, prompts[i % len(prompts)], fields, check, on_piece)
            i += clients
            with lock:
                records.append(record)

    elapsed = run_clients(client, clients)
    return summary_of(records, clients, elapsed, streamed[0] / seconds)


def run_turns(server: TritonServer, prompts: list[str], checks: dict, fields: dict, seconds: float, clients: int,
              per_client: int) -> dict:
    """The methods (``fields``: method -> request fields) taking turns for ``seconds`` per method, a
    burst of ``clients * per_client`` prompts through ``clients`` clients at a time, the same prompts
    for every method (:func:`clients.take_turns`): each method's throughput is its tokens over its
    turns' time (a turn: from its first request to its last answer)."""
    turns = take_turns(lambda method, i: send(server, prompts[i % len(prompts)], fields[method], checks[method]),
                       list(fields), seconds * len(fields), clients, per_client)
    results = {}
    for method, taken in turns.items():
        busy, done = pooled(taken)
        results[method] = summary_of(done, clients, busy, sum(r["tokens"] for r in done if r["ok"]) / busy)
    return results


def summary_of(records: list[dict], clients: int, elapsed: float, tokens_per_s: float) -> dict:
    done = [r for r in records if r["ok"]]

    def mean(key):
        return statistics.fmean(r[key] for r in done) if done else float("nan")

    return {
        "clients": clients, "seconds": elapsed, "requests": len(records), "lost_or_corrupted": len(records) - len(done),
        "errors": [r["error"] for r in records if "error" in r][:5],
        "same_as_in_process": sum(r["same"] for r in done) / len(done) if done else float("nan"),
        "requests_per_s": len(done) / elapsed, "tokens_per_s": tokens_per_s,
        "latency_p50_s": percentile([r["latency"] for r in done], 0.5),
        "latency_p99_s": percentile([r["latency"] for r in done], 0.99),
        "ttft_p50_s": percentile([r["ttft"] for r in done], 0.5),
        "ttft_p99_s": percentile([r["ttft"] for r in done], 0.99),
        "mean_tau": mean("tau"), "mean_window": mean("window"), "mean_batch_size": mean("batch"),
    }


def references(prompts: list[str], max_tokens: int, window: int, judge: Path | None) -> tuple[dict, dict]:
    """In-process, batch 1: the target's greedy answer and (with a judge) the adaptive judge's, per prompt."""
    from autojudge.decoding import SpeculativeDecoder
    from autojudge.judge import Judge
    from autojudge.models import encode_prompt, load_draft, load_target, quiet_transformers

    quiet_transformers()
    target = load_target("embedded", device="cpu")
    decoder = SpeculativeDecoder(target, load_draft("embedded", target), Judge.load(judge) if judge else None)
    greedy, judged = {}, {}
    for prompt in prompts:
        ids = encode_prompt(target.tokenizer, prompt)
        greedy[prompt] = decoder.generate(ids, DecodeConfig(mode="target", max_new_tokens=max_tokens)).token_ids
        if judge:
            judged[prompt] = decoder.generate(ids, DecodeConfig(mode="judge", window=window, max_new_tokens=max_tokens,
                                                                adaptive=True)).token_ids
    return greedy, judged


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=30,
                        help="Measured per method and run (the methods take turns until each has had about this "
                             "long, at least one turn each after a first, unmeasured one).")
    parser.add_argument("--rounds", type=int, default=1,
                        help="Repeats of every run, the methods' order rotated each round; a method's ratio to "
                             "target is taken within each round (paired), so machine drift hits every method alike.")
    parser.add_argument("--per-client", type=int, default=1,
                        help="At more than one client, requests per client in each method's turn (a burst of "
                             "clients x this many prompts; more: less of a turn is its joining and its drain).")
    parser.add_argument("--closed-loop", action="store_true",
                        help="At more than one client, one closed-loop run per method after another (tokens "
                             "streamed in --seconds after --warmup) instead of taking turns burst by burst.")
    parser.add_argument("--warmup", type=float, default=8,
                        help="With --closed-loop: seconds at the start of each run whose tokens are not counted "
                             "(every client joins at once).")
    parser.add_argument("--questions", type=int, default=16, help="Distinct GSM8K test questions cycled through.")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--window", type=int, default=4)
    parser.add_argument("--concurrency", default="1,4,16")
    parser.add_argument("--baseline-instances", type=int, default=2,
                        help="Instances of the one-at-a-time server (each one batch row, cores shared).")
    parser.add_argument("--no-baseline", action="store_true", help="Skip the one-at-a-time server.")
    parser.add_argument("--methods", help="Comma-separated, of target, lossless, adaptive, adaptive-judge "
                                           "(default: all; adaptive-judge needs --judge; target always runs).")
    parser.add_argument("--judge", type=Path, help="A judge for the embedded pair; without it, no judge runs.")
    parser.add_argument("--json-out", type=Path)
    parser.add_argument("--cycle-log", type=Path,
                        help="Have the continuous server write each cycle of its batch to this JSON-lines file "
                             "(autojudge.serving.cycle_log; each run's wall-clock span is in --json-out to match).")
    args = parser.parse_args()
    names = ("target", "lossless", "adaptive", "adaptive-judge")
    wanted = {"target", *(args.methods.split(",") if args.methods else names[:3] + names[3:] * bool(args.judge))}
    if wanted - set(names):
        parser.error(f"--methods: unknown {sorted(wanted - set(names))}; choose from {', '.join(names)}")
    if "adaptive-judge" in wanted and not args.judge:
        parser.error("--methods adaptive-judge needs --judge")

    questions, chat = gsm8k(args.questions), CHAT
    t0 = time.perf_counter()
    greedy, judged = references(questions + chat, args.max_tokens, args.window, args.judge)
    print(f"references in {time.perf_counter() - t0:.0f} s", flush=True)

    def lossless_check(prompt, answer):
        return answer["token_ids"] == greedy[prompt]

    def judge_check(prompt, answer):  # True: as in process; None: another well-formed answer; False: broken
        if answer["metrics"].get("finish_reason") not in ("eos", "length", "stop") or not answer["token_ids"]:
            return False
        return True if answer["token_ids"] == judged[prompt] else None

    base = {"max_tokens": args.max_tokens}
    methods = {"target": {"mode": "target"}, f"lossless@{args.window}": {"mode": "lossless", "window": args.window},
               f"adaptive@{args.window}": {"mode": "lossless", "window": args.window, "adaptive": True}}
    if args.judge:
        methods[f"adaptive-judge@{args.window}"] = {"mode": "judge", "window": args.window, "adaptive": True}
    methods = {key: fields for key, fields in methods.items() if key.split("@")[0] in wanted}
    concurrency = [int(c) for c in args.concurrency.split(",")]
    report = {"seconds": args.seconds, "rounds": args.rounds, "max_tokens": args.max_tokens, "window": args.window,
              "questions": len(questions), "chat_prompts": len(chat),
              "load": "closed-loop" if args.closed_loop else f"turns of bursts, {args.per_client} per client",
              "runs": []}

    def check_for(fields):
        return judge_check if fields.get("mode") == "judge" else lossless_check

    def record(result):
        report["runs"].append(result)
        print(json.dumps({k: v for k, v in result.items() if k != "errors" or v}), flush=True)

    def measure(server, name, prompt_set, label, keys, clients, round_):
        """Each method in ``keys`` on ``prompt_set``, taking turns burst by burst (or with
        ``--closed-loop``, at more than one client, one closed-loop run after another); a batch holds
        one method's requests."""
        began = time.time()
        if args.closed_loop and clients > 1:
            results = {key: run_load(server, prompt_set, check_for(methods[key]), {**base, **methods[key]}, clients,
                                     args.seconds, args.warmup) for key in keys}
        else:
            fields = {key: {**base, **methods[key]} for key in keys}
            results = run_turns(server, prompt_set, {key: check_for(methods[key]) for key in keys}, fields,
                                args.seconds, clients, 1 if clients == 1 else args.per_client)
        for key, result in results.items():
            record({"server": name, "prompts": label, "method": key, "fields": methods[key], "round": round_,
                    "wall_span": [began, time.time()], **result})

    servers = {"continuous": RepoSettings(judge=args.judge, window=args.window, max_tokens=args.max_tokens,
                                          instances=1, max_batch=16, max_queue=64),
               "one-at-a-time": RepoSettings(judge=args.judge, window=args.window, max_tokens=args.max_tokens,
                                             instances=args.baseline_instances, max_batch=1, max_queue=64)}
    with tempfile.TemporaryDirectory() as tmp:
        for name, settings in servers.items():
            if name == "one-at-a-time" and args.no_baseline:
                continue
            deployment = Path(tmp) / name
            logged = {STREAM_MODEL: {"cycle_log": str(args.cycle_log.resolve())}} if (
                args.cycle_log and name == "continuous") else None
            write_repo(deployment, settings, parameters=logged)
            with TritonServer(deployment / "models", log_file=Path(tmp) / f"{name}.log") as server:
                for r in range(args.rounds):
                    if name == "continuous":
                        for clients in concurrency:
                            measure(server, name, questions, "gsm8k", rotated(list(methods), r), clients, r)
                        on_chat = [key for key in ("target", f"adaptive@{args.window}") if key in methods]
                        if len(on_chat) > 1:
                            measure(server, name, chat, "chat", rotated(on_chat, r), 1, r)
                    else:
                        measure(server, name, questions, "gsm8k",
                                rotated([key for key in ("target", f"lossless@{args.window}") if key in methods], r),
                                max(concurrency), r)

    print_table(report)
    if args.json_out:
        args.json_out.write_text(json.dumps(report, indent=2) + "\n")


def rotated(keys: list[str], r: int) -> list[str]:
    return keys[r % len(keys):] + keys[:r % len(keys)]


def summarize(report: dict) -> list[dict]:
    """One row per (server, prompts, clients, method) over its rounds: tokens/s their mean, the ratio
    to target the median of each round's ratio to that round's target run, latencies the median of
    the rounds', lost or corrupted their sum."""
    cells: dict[tuple, list[dict]] = {}
    for r in report["runs"]:
        cells.setdefault((r["server"], r["prompts"], r["clients"], r["method"]), []).append(r)
    rows = []
    for (server, prompts, clients, method), runs in cells.items():
        targets = {t.get("round", 0): t["tokens_per_s"] for t in cells[(server, prompts, clients, "target")]}
        ratios = sorted(r["tokens_per_s"] / targets[r.get("round", 0)] for r in runs)

        def median(key, runs=runs):
            return statistics.median(r[key] for r in runs)

        rows.append({"server": server, "prompts": prompts, "clients": clients, "method": method,
                     "rounds": len(runs), "tokens_per_s": statistics.fmean(r["tokens_per_s"] for r in runs),
                     "vs_target": statistics.median(ratios), "vs_target_per_round": ratios,
                     **{key: median(key) for key in ("latency_p50_s", "latency_p99_s", "ttft_p50_s", "ttft_p99_s",
                                                     "mean_tau", "mean_window", "mean_batch_size",
                                                     "same_as_in_process")},
                     "lost_or_corrupted": sum(r["lost_or_corrupted"] for r in runs)})
    return rows


def print_table(report: dict) -> None:
    rows = summarize(report)
    report["summary"] = rows
    print("| server | prompts | clients | method | tokens/s | vs target (per round) | p50 latency | p99 latency "
          "| p50 TTFT | p99 TTFT | tau | mean window | batch | lost/corrupted | same as in-process |")
    print("|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        spread = f" ({', '.join(f'{x:.2f}' for x in r['vs_target_per_round'])})" if r["rounds"] > 1 else ""
        print(f"| {r['server']} | {r['prompts']} | {r['clients']} | {r['method']} | {r['tokens_per_s']:.1f} | "
              f"{r['vs_target']:.2f}x{spread} | {r['latency_p50_s']:.2f} s | {r['latency_p99_s']:.2f} s | "
              f"{r['ttft_p50_s']:.2f} s | {r['ttft_p99_s']:.2f} s | {r['mean_tau']:.2f} | {r['mean_window']:.2f} | "
              f"{r['mean_batch_size']:.1f} | {r['lost_or_corrupted']} | {r['same_as_in_process']:.0%} |")
    top = max(r["clients"] for r in rows)
    for method in ("target", f"lossless@{report['window']}"):
        new = [r for r in rows if r["server"] == "continuous" and r["clients"] == top and r["method"] == method]
        old = [r for r in rows if r["server"] == "one-at-a-time" and r["clients"] == top and r["method"] == method]
        if new and old:
            print(f"continuous / one-at-a-time at {top} clients, {method}: "
                  f"{new[0]['tokens_per_s'] / old[0]['tokens_per_s']:.2f}x")


if __name__ == "__main__":
    main()
