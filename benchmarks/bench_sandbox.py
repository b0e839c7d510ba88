"""What a sandboxed run costs: wall time of run_python on a trivial program (bwrap start-up,
the runner, the interpreter), median and min over repeated runs.

    python benchmarks/bench_sandbox.py --runs 20
"""

from __future__ import annotations

import json
import statistics
import time

import click

from autojudge.tasks.sandbox import SandboxLimits, _interpreter, run_python


@click.command()
@click.option("--runs", default=20, show_default=True)
@click.option("--proof/--no-proof", default=True, show_default=True, help="Ask for the completion proof (HumanEval).")
def main(runs: int, proof: bool) -> None:
    limits = SandboxLimits(timeout_s=5, memory_mb=512)
    run_python("pass", limits)  # the one-time bwrap probe
    seconds = []
    for _ in range(runs):
        start = time.perf_counter()
        result = run_python("print(sum(range(1000)))", limits, prove_completion=proof)
        seconds.append(time.perf_counter() - start)
        assert result.ok and result.stdout == "499500\n", result
    click.echo(json.dumps({"interpreter": _interpreter()[0], "runs": runs, "proof": proof,
                           "median_ms": round(statistics.median(seconds) * 1000, 1),
                           "min_ms": round(min(seconds) * 1000, 1)}))


if __name__ == "__main__":
    main()
