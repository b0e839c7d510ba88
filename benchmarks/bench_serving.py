"""Load generator for the served AutoJudge model: N concurrent clients for a bounded time.

    python benchmarks/bench_serving.py --clients 4 --seconds 60 --judge out/quickstart/judge

Writes a deployment (embedded pair, ``--instances`` model instances, the judge if given),
starts a real tritonserver on loopback, and for each mode (lossless, then judge) runs
``--clients`` threads that send GSM8K test questions over gRPC streaming until ``--seconds``
have passed. Reports requests/s, tokens/s, p50/p99 latency and time to first token (the first
streamed piece), and checks every answer token for token against the in-process decoder
(computed once per question): a lost or corrupted request is counted and reported.
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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from autojudge.serving.client import request_arrays, stream_grpc  # noqa: E402
from autojudge.serving.repo import RepoSettings, validate_config, write_repo  # noqa: E402
from autojudge.serving.requests import ServeRequest  # noqa: E402
from autojudge.serving.server import TritonServer  # noqa: E402
from autojudge.serving.service import DecodeService  # noqa: E402
from autojudge.tasks import get_task  # noqa: E402


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def run_load(server: TritonServer, questions: list[str], reference: dict, mode: str, clients: int,
             seconds: float, max_tokens: int, window: int) -> dict:
    deadline = time.monotonic() + seconds
    records, lock = [], threading.Lock()

    def client(index: int) -> None:
        i = index
        while time.monotonic() < deadline:
            question = questions[i % len(questions)]
            i += clients
            first = []
            start = time.perf_counter()
            try:
                answer = stream_grpc(server.grpc_url, request_arrays(question, max_tokens=max_tokens, mode=mode,
                                                                     window=window),
                                     on_piece=lambda piece, first=first: first or first.append(time.perf_counter()))
                record = {"ok": answer["token_ids"] == reference[question], "tokens": len(answer["token_ids"]),
                          "latency": time.perf_counter() - start,
                          "ttft": (first[0] if first else time.perf_counter()) - start,
                          "tau": answer["metrics"]["mean_acceptance_length"]}
            except Exception as exc:  # noqa: BLE001 - counted as lost
                record = {"ok": False, "error": str(exc)[:200], "tokens": 0, "latency": 0.0, "ttft": 0.0}
            with lock:
                records.append(record)

    started = time.perf_counter()
    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - started
    done = [r for r in records if r["ok"]]
    return {
        "mode": mode, "clients": clients, "seconds": elapsed, "requests": len(records),
        "lost_or_corrupted": len(records) - len(done),
        "errors": [r["error"] for r in records if "error" in r][:5],
        "requests_per_s": len(done) / elapsed, "tokens_per_s": sum(r["tokens"] for r in done) / elapsed,
        "latency_p50_s": percentile([r["latency"] for r in done], 0.5),
        "latency_p99_s": percentile([r["latency"] for r in done], 0.99),
        "ttft_p50_s": percentile([r["ttft"] for r in done], 0.5),
        "ttft_p99_s": percentile([r["ttft"] for r in done], 0.99),
        "mean_tau": statistics.fmean(r["tau"] for r in done) if done else float("nan"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--instances", type=int, default=2, help="Model instances (parallel decoders).")
    parser.add_argument("--questions", type=int, default=8, help="Distinct GSM8K test questions cycled through.")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--window", type=int, default=3)
    parser.add_argument("--judge", type=Path, help="Judge artifact; without it only lossless is measured.")
    parser.add_argument("--json-out", type=Path)
    args = parser.parse_args()

    questions = [e.question for e in get_task("gsm8k").load("test", limit=args.questions)]
    modes = ["lossless"] + (["judge"] if args.judge else [])
    with tempfile.TemporaryDirectory() as tmp:
        deployment = Path(tmp) / "deploy"
        write_repo(deployment, RepoSettings(judge=args.judge, window=args.window, max_tokens=args.max_tokens,
                                            instances=args.instances))
        config = validate_config((deployment / "models/autojudge/config.pbtxt").read_text(), "autojudge")
        service = DecodeService.from_parameters({k: v.string_value for k, v in config.parameters.items()},
                                                deployment / "models/autojudge")
        report = {"clients": args.clients, "instances": args.instances, "max_tokens": args.max_tokens,
                  "window": args.window, "questions": len(questions), "runs": []}
        with TritonServer(deployment / "models", log_file=Path(tmp) / "server.log") as server:
            for mode in modes:
                reference = {q: service.run(ServeRequest(q, args.max_tokens, mode, args.window, None, ()))[1]
                             for q in questions}
                result = run_load(server, questions, reference, mode, args.clients, args.seconds,
                                  args.max_tokens, args.window)
                report["runs"].append(result)
                print(json.dumps(result), flush=True)
    print("| mode | requests | lost/corrupted | req/s | tokens/s | p50 latency | p99 latency | p50 TTFT | p99 TTFT | tau |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in report["runs"]:
        print(f"| {r['mode']} | {r['requests']} | {r['lost_or_corrupted']} | {r['requests_per_s']:.2f} | "
              f"{r['tokens_per_s']:.1f} | {r['latency_p50_s']:.2f} s | {r['latency_p99_s']:.2f} s | "
              f"{r['ttft_p50_s']:.2f} s | {r['ttft_p99_s']:.2f} s | {r['mean_tau']:.2f} |")
    if args.json_out:
        args.json_out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
