"""benchmarks/bench_gpu_h200.py --dry-run: every part of the H200 script runs on the CPU (tiny
models, float32) and reports what the GPU run will report, so the script that cannot be tried
here fails here, not on the lent GPU."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_gpu_h200.py"


def test_the_dry_run_exercises_every_part(tmp_path):
    spec = importlib.util.spec_from_file_location("bench_gpu_h200", BENCH)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "dry.json"
    # Generous limits: the test checks the code paths, not the speed of a shared CPU.
    budgets = [f"--budget={part}=600" for part in bench.PARTS]
    report = bench.main(["--dry-run", "--json-out", str(out), *budgets])
    assert json.loads(out.read_text())["dry_run"] is True
    assert {name: report[name]["status"] for name in bench.PARTS} == {name: "done" for name in bench.PARTS}
    assert report["op_parity"]["ok"] and report["op_parity"]["checked"] > 0
    assert report["graph_parity"]["checked"] > 0 and report["graph_parity"]["differences"] == []
    assert set(report["cycle_cost"]["batch1"]) >= {"draft_step_ms_static_eager", "verify_ms_static_eager",
                                                   "verify_ms_in_process"}
    runs = report["end_to_end"]["runs"]
    assert {(r["mode"], r["backend"], r["batch"]) for r in runs} == {
        (mode, backend, batch) for mode in ("target", "lossless", "judge")
        for backend in ("eager", "static_eager") for batch in (1, 2)}
    forced = [r for r in runs if r["mode"] != "target"]
    assert all(r["tau"] > 1.0 for r in forced)  # the hook made the target agree
    assert report["hf_assisted"]["hf_assisted_tokens_per_s"] > 0
    assert report["mining"]["labels"] > 0
