"""OpenMP waits and CPU threads in the served model: target-only tokens/s under each setting,
alone on the cores and beside one process that keeps a core busy.

    python benchmarks/bench_omp_waits.py --seconds 15 --json-out benchmarks/results/omp_waits_cpu.json

A real tritonserver over the embedded pair (one decoding instance unless the setting says
otherwise), closed-loop gRPC-streaming clients sending GSM8K test questions, 64 new tokens;
throughput counts the tokens streamed in ``--seconds`` after ``--warmup`` (``bench_serving.run_load``;
every answer checked against nothing here: this measures speed only). Each setting runs in a
process of its own under ``--limit-s``: a setting that stalls is reported as timed out, not waited
for. Settings:

- ``libgomp``: the server's default, OpenMP's own policy (spin a while between ops, then sleep);
- ``passive``: ``OMP_WAIT_POLICY=PASSIVE`` (workers sleep at once; what the server set before);
- ``spin-1000``: ``GOMP_SPINCOUNT=1000`` (a short spin);
- ``one-thread``: ``torch_threads`` 1 (no OpenMP team at all);
- ``two-instances``: 2 instances of one thread, a batch of 8 rows each.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SETTINGS = {
    "libgomp": ({}, {}),
    "passive": ({"OMP_WAIT_POLICY": "PASSIVE"}, {}),
    "spin-1000": ({"GOMP_SPINCOUNT": "1000"}, {}),
    "one-thread": ({}, {"torch_threads": 1}),
    "two-instances": ({}, {"instances": 2, "max_batch": 8}),
}


def one(setting: str, clients: list[int], seconds: float, warmup: float) -> list[dict]:
    """Start a server with ``setting`` (its environment comes from this process's) and measure."""
    from bench_serving import run_load
    from prompts import gsm8k

    from autojudge.serving.repo import RepoSettings, write_repo
    from autojudge.serving.server import TritonServer

    env, repo = SETTINGS[setting]
    os.environ.update(env)
    questions = gsm8k(16)
    settings = RepoSettings(**{"window": 4, "max_tokens": 64, "instances": 1, "max_batch": 16, "max_queue": 64,
                               **repo})
    with tempfile.TemporaryDirectory() as tmp:
        write_repo(Path(tmp) / "deploy", settings)
        with TritonServer(Path(tmp) / "deploy" / "models", log_file=Path(tmp) / "server.log") as server:
            runs = []
            for c in clients:
                result = run_load(server, questions, lambda prompt, answer: True, {"max_tokens": 64, "mode": "target"},
                                  c, seconds, warmup)
                runs.append({"clients": c, "tokens_per_s": result["tokens_per_s"],
                             "lost": result["lost_or_corrupted"]})
            return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=15, help="Measured, per run.")
    parser.add_argument("--warmup", type=float, default=5)
    parser.add_argument("--concurrency", default="1,16")
    parser.add_argument("--settings", default=",".join(SETTINGS), help="Comma-separated, of: " + ", ".join(SETTINGS))
    parser.add_argument("--busy", default="0,1", help="Run alone (0), beside a busy process (1), or both.")
    parser.add_argument("--limit-s", type=float, default=240, help="Per setting; past it the setting timed out.")
    parser.add_argument("--json-out", type=Path)
    parser.add_argument("--one", help=argparse.SUPPRESS)  # (a child process: one setting, results on stdout)
    args = parser.parse_args()
    clients = [int(c) for c in args.concurrency.split(",")]
    if args.one:
        print(json.dumps(one(args.one, clients, args.seconds, args.warmup)))
        return

    report = {"seconds": args.seconds, "warmup": args.warmup, "cores": os.cpu_count(), "runs": []}
    for busy in (b == "1" for b in args.busy.split(",")):
        for setting in args.settings.split(","):
            burner = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if busy else None
            command = [sys.executable, __file__, "--one", setting, "--seconds", str(args.seconds),
                       "--warmup", str(args.warmup), "--concurrency", args.concurrency]
            child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            try:
                out, err = child.communicate(timeout=args.limit_s)
                runs = json.loads(out.strip().splitlines()[-1]) if child.returncode == 0 else None
                outcome = "ok" if runs is not None else f"failed: {err.strip()[-300:]}"
            except subprocess.TimeoutExpired:
                child.kill()  # its tritonserver dies with it (autojudge.serving.server: the parent-death signal)
                child.communicate()
                runs, outcome = None, f"timed out after {args.limit_s:.0f} s"
                for _ in range(120):  # until the server's model processes are gone (it drains for up to 30 s)
                    if subprocess.run(["pgrep", "-f", "triton_python_backend_stub"], capture_output=True, check=False).returncode:
                        break
                    time.sleep(0.5)
            finally:
                if burner is not None:
                    burner.kill()
            row = {"setting": setting, "busy_neighbour": busy, "outcome": outcome, "runs": runs}
            report["runs"].append(row)
            print(json.dumps(row), flush=True)

    print("| setting | beside a busy process | " + " | ".join(f"{c} client(s), tokens/s" for c in clients) + " |")
    print("|---|---|" + "---:|" * len(clients))
    for row in report["runs"]:
        cells = ([f"{r['tokens_per_s']:.1f}" for r in row["runs"]] if row["runs"]
                 else [row["outcome"]] * len(clients))
        print(f"| {row['setting']} | {'yes' if row['busy_neighbour'] else 'no'} | " + " | ".join(cells) + " |")
    if args.json_out:
        args.json_out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
