"""The judge-accept CUDA kernel on a GPU: equality with the oracle, then latency per call.

    python benchmarks/bench_plugin_kernel.py --json-out kernel.json

Compiles ``plugins/judgeAcceptPlugin/judgeAcceptKernel.cu`` with nvcc for this GPU, runs it
from Python (ctypes on torch CUDA tensors), checks it against ``autojudge.acceptance`` on
random and edge-case inputs, then times one call for W in {4, 8, 16, 32, 64}, B in {1, 8, 64}
and (Hd, Ht) in {(2048, 4096), (4096, 8192)} (1B/8B- and 8B/70B-sized hidden states, bf16) in
three scenarios:

- ``match``: every draft token matches (no judge dot product at all);
- ``reject``: one mismatch, mid-window, rejected by the judge (one dot product, then exit);
- ``accept_all``: every position a mismatch and every one accepted (W dot products: the
  worst case).

Latency is GPU time per call: 100 launches captured in a CUDA graph, replayed, timed with
CUDA events (launch gaps included, host launch overhead excluded).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from autojudge.acceptance import judge_accept  # noqa: E402
from autojudge.acceptance.plugin import NOT_EVALUATED, KernelCall, build_cuda_library  # noqa: E402

WINDOWS = (4, 8, 16, 32, 64)
BATCHES = (1, 8, 64)
SIZES = ((2048, 4096), (4096, 8192))
SCENARIOS = ("match", "reject", "accept_all")


def make_inputs(batch, window, draft_size, target_size, dtype, scenario=None, vocab=3, seed=0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    draft = torch.randint(0, vocab, (batch, window), device="cuda", generator=g)
    target = torch.randint(0, vocab, (batch, window + 1), device="cuda", generator=g)
    bias = 0.1
    if scenario == "match":
        target[:, :window] = draft
    elif scenario == "reject":
        target[:, :window] = draft
        target[:, window // 2] = draft[:, window // 2] + 1
        bias = 50.0
    elif scenario == "accept_all":
        target[:, :window] = draft + 1
        bias = -50.0
    draft_hidden = torch.randn(batch, window, draft_size, device="cuda", generator=g).to(dtype) if draft_size else None
    target_hidden = torch.randn(batch, window, target_size, device="cuda", generator=g).to(dtype)
    weight = torch.randn(draft_size + target_size, device="cuda", generator=g) / (draft_size + target_size) ** 0.5
    return (draft, target, draft_hidden, target_hidden, weight), bias


def check_parity(library=None) -> int:
    """Compare with the oracle on the GPU; return the number of cases checked (raise on mismatch)."""
    cases = 0
    shapes = [(1, 8, 16), (4, 64, 64), (64, 24, 40), (7, 13, 29), (16, 0, 32), (32, 2048, 4096), (64, 4096, 8192)]
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        for window, draft_size, target_size in shapes:
            for scenario in (None, *SCENARIOS):
                inputs, bias = make_inputs(5, window, draft_size, target_size, dtype, scenario, seed=cases)
                for threshold in (0.0, 0.3, 0.5, 1.0):
                    got = KernelCall(*inputs, bias=bias, threshold=threshold, cuda_library=library).run()
                    draft_hidden = inputs[2] if inputs[2] is not None else inputs[3][..., :0]
                    want, probs = judge_accept(inputs[0], inputs[1], draft_hidden, inputs[3], inputs[4], bias,
                                               threshold)
                    torch.cuda.synchronize()
                    assert torch.equal(got.num_accepted.long(), want.num_accepted), (dtype, window, scenario)
                    assert torch.equal(got.next_tokens.long(), want.next_tokens), (dtype, window, scenario)
                    mismatch = inputs[0] != inputs[1][:, :window]
                    evaluated = mismatch & (torch.arange(window, device="cuda") <= want.num_accepted.unsqueeze(1))
                    assert torch.equal(got.probabilities == NOT_EVALUATED, ~evaluated)
                    torch.testing.assert_close(got.probabilities[evaluated], probs[evaluated], rtol=1e-4, atol=1e-5)
                    cases += 1
    return cases


def time_call(call: KernelCall, threads: int = 0, launches: int = 100, replays: int = 20, blocks: int = 0) -> float:
    """Microseconds of GPU time per call (``blocks`` per sequence: 0 = the launcher's choice)."""
    for _ in range(3):
        call.run(threads, blocks)
    graph = torch.cuda.CUDAGraph()
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream), torch.cuda.graph(graph, stream=stream):
        for _ in range(launches):
            call.run(threads, blocks)
    graph.replay()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(replays):
        graph.replay()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) * 1000 / (launches * replays)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json-out", type=Path)
    parser.add_argument("--skip-parity", action="store_true")
    parser.add_argument("--skip-grid", action="store_true", help="Skip the W x B x sizes latency grid.")
    parser.add_argument("--variant", action="append", default=[],
                        help="Also time a build with these comma-separated defines "
                             "(e.g. AUTOJUDGE_JUDGE_ACCEPT_THREADS=512); repeatable.")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("bench_plugin_kernel.py needs a CUDA GPU (torch.cuda.is_available() is False).")
    major, minor = torch.cuda.get_device_capability()
    build_cuda_library((f"{major}{minor}",))
    report = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "cuda": torch.version.cuda,
              "compute_capability": f"{major}.{minor}", "hidden_dtype": "bfloat16", "rows": []}
    if not args.skip_parity:
        report["parity_cases"] = check_parity()
        print(f"parity with the oracle: {report['parity_cases']} cases equal", flush=True)
    print("| Hd, Ht | B | W | " + " | ".join(f"{s} (us)" for s in SCENARIOS) + " |")
    print("|---|---:|---:|" + "---:|" * len(SCENARIOS))
    for draft_size, target_size in () if args.skip_grid else SIZES:
        for batch in BATCHES:
            for window in WINDOWS:
                row = {"draft_hidden": draft_size, "target_hidden": target_size, "batch": batch, "window": window}
                for scenario in SCENARIOS:
                    inputs, bias = make_inputs(batch, window, draft_size, target_size, torch.bfloat16, scenario)
                    row[scenario] = round(time_call(KernelCall(*inputs, bias=bias, threshold=0.5)), 2)
                report["rows"].append(row)
                print(f"| {draft_size}, {target_size} | {batch} | {window} | "
                      + " | ".join(f"{row[s]:.2f}" for s in SCENARIOS) + " |", flush=True)
    if args.variant:
        print("\nvariants (Hd, Ht = 4096, 8192; W = 32):")
        print("| variant | B | " + " | ".join(f"{s} (us)" for s in SCENARIOS) + " |")
        print("|---|---:|" + "---:|" * len(SCENARIOS))
        report["variants"] = []
        for variant in ["default", *args.variant]:
            defines = () if variant == "default" else tuple(variant.split(","))
            library = build_cuda_library((f"{major}{minor}",), defines)
            check_parity(library)
            for batch in (1, 64):
                row = {"variant": variant, "batch": batch}
                for scenario in SCENARIOS:
                    inputs, bias = make_inputs(batch, 32, 4096, 8192, torch.bfloat16, scenario)
                    call = KernelCall(*inputs, bias=bias, threshold=0.5, cuda_library=library)
                    row[scenario] = round(time_call(call), 2)
                report["variants"].append(row)
                print(f"| {variant} | {batch} | " + " | ".join(f"{row[s]:.2f}" for s in SCENARIOS) + " |", flush=True)
    if args.json_out:
        args.json_out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
