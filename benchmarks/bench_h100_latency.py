"""Latency of AutoJudge's pieces at Llama-3.2-1B / Llama-3.1-8B shapes, and projected tokens/s.

    python benchmarks/bench_h100_latency.py --json-out h100.json

Weights do not change latency, so both models are randomly initialised with the real
shapes (bf16, on the GPU). With our in-process decoder's own calls (``CausalLM``: eager
PyTorch + Hugging Face, KV cache at ``--context`` tokens) it times:

- one draft step: one token through the 1B draft + its greedy head;
- one target verification of W drafted tokens (W + 1 positions) for W in {1, 4, 8, 16, 32, 64},
  and W = 0, which is one step of target-only decoding;
- the judge-accept kernel (plugins/judgeAcceptPlugin) at (Hd, Ht) = (2048, 4096), B = 1, in
  its typical case (one mismatch, rejected) and its worst (all W mismatches accepted);
- a whole decoder cycle (``SpeculativeDecoder.generate`` in lossless mode, random models, so
  about one token per cycle), to measure the loop's overhead beside the sum of its parts.

Projection (explained in benchmarks/README.md): with a per-token acceptance rate a, a cycle
of window W yields tau(W) = (1 - a^(W+1)) / (1 - a) tokens and costs
W * t_draft + t_verify(W) (+ t_judge in judge mode) + the loop overhead;
tokens/s = tau / cycle time, at the best W for each mode. Target-only: 1 / t_verify(0).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from autojudge.decoding import DecodeConfig, SpeculativeDecoder  # noqa: E402
from autojudge.models import CausalLM, crop_cache  # noqa: E402

WINDOWS = (0, 1, 4, 8, 16, 32, 64)
SHAPES = {  # the published configs of the two checkpoints (config.json), weights random
    "Llama-3.2-1B": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
                         num_key_value_heads=8, head_dim=64, tie_word_embeddings=True),
    "Llama-3.1-8B": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                         num_key_value_heads=8, head_dim=128, tie_word_embeddings=False),
    # --tiny: a CPU smoke test of this script
    "tiny-draft": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                       num_key_value_heads=2, head_dim=16, tie_word_embeddings=True),
    "tiny-target": dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                        num_key_value_heads=2, head_dim=32, tie_word_embeddings=False),
}
COMMON = dict(vocab_size=128256, rope_theta=500000.0, max_position_embeddings=131072, rms_norm_eps=1e-5,
              bos_token_id=128000, eos_token_id=128001)


class _NoText:
    """Random models have no tokenizer; the decoder only needs decode() for its text field
    (and a pad id: none, so 0)."""

    pad_token_id = None

    def decode(self, ids, **kwargs) -> str:
        return ""


def random_model(name: str, device: torch.device, dtype: torch.dtype) -> CausalLM:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(**SHAPES[name], **COMMON)
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM._from_config(config, dtype=dtype)
    return CausalLM(name=name, model=model, tokenizer=_NoText(), eos_token_ids=frozenset({COMMON["eos_token_id"]}))


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device, repeats: int) -> float:
    """Median milliseconds of fn() over ``repeats`` runs after two warm-ups."""
    for _ in range(2):
        fn()
    times = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def step_timer(lm: CausalLM, context: int, tokens: int, device: torch.device):
    """A closure that feeds ``tokens`` new tokens after a ``context``-token cache, then crops back."""
    cache = lm.new_cache()
    g = torch.Generator(device="cpu").manual_seed(1)
    lm.hidden_states(torch.randint(0, 32000, (1, context), generator=g).to(device), cache)
    fresh = torch.randint(0, 32000, (1, tokens), generator=g).to(device)

    def step():
        hidden = lm.hidden_states(fresh, cache)
        lm.greedy(hidden)
        crop_cache(cache, context)
    return step


def graph_step_timer(lm: CausalLM, context: int, tokens: int, device: torch.device):
    """The same step (decoder stack + greedy head) replayed as one CUDA graph over a StaticCache:
    the GPU time without Python's per-kernel launch cost (what vLLM/TensorRT-LLM runtimes pay)."""
    from transformers import StaticCache

    decoder = lm.model.get_decoder()
    cache = StaticCache(config=lm.model.config, max_cache_len=context + 128)
    g = torch.Generator(device="cpu").manual_seed(1)
    decoder(input_ids=torch.randint(0, 32000, (1, context), generator=g).to(device), past_key_values=cache,
            cache_position=torch.arange(context, device=device), use_cache=True)
    fresh = torch.randint(0, 32000, (1, tokens), generator=g).to(device)
    positions = torch.arange(context, context + tokens, device=device)
    # A ready-made causal mask over the static cache: transformers would otherwise build it
    # with a host-to-device copy, which a graph replays from freed host memory.
    mask = (torch.arange(context + 128, device=device)[None, :] <= positions[:, None])[None, None]  # [1,1,S,L]

    def body():  # rewrites the same cache slots on every replay: the cache stays at `context`
        hidden = decoder(input_ids=fresh, attention_mask=mask, past_key_values=cache, cache_position=positions,
                         use_cache=True).last_hidden_state
        return lm.logits(hidden).argmax(-1)

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            body()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        output = body()

    def replay():
        graph.replay()
    # A graph does not own the tensors it reads: keep them (and its output) alive with it.
    replay.keep = (graph, cache, fresh, positions, mask, output)
    return replay


def tau(acceptance: float, window: int) -> float:
    return (1 - acceptance ** (window + 1)) / (1 - acceptance) if acceptance < 1 else window + 1.0


def project(report: dict, acceptance: dict[str, float]) -> dict:
    draft = report["draft_step_ms"]
    verify = {int(w): ms for w, ms in report["target_verify_ms"].items()}
    overhead = report["loop_overhead_ms"]
    judge = report["judge_kernel_us"]
    out = {"target": {"tokens_per_s": 1000 / verify[0], "window": 0, "tau": 1.0}}
    for mode, a in acceptance.items():
        best = None
        for w in WINDOWS[1:]:
            t = tau(a, w)
            cycle = w * draft + verify[w] + overhead + (judge[str(w)]["typical"] / 1000 if mode == "judge" else 0)
            candidate = {"tokens_per_s": 1000 * t / cycle, "window": w, "tau": t, "cycle_ms": cycle,
                         "acceptance": a}
            if best is None or candidate["tokens_per_s"] > best["tokens_per_s"]:
                best = candidate
        out[mode] = best
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json-out", type=Path)
    parser.add_argument("--context", type=int, default=512, help="Tokens already in the KV cache.")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--acceptance-lossless", type=float, default=0.75,
                        help="Per-token acceptance of lossless decoding assumed by the projection.")
    parser.add_argument("--acceptance-judge", type=float, default=0.87,
                        help="Per-token acceptance with the judge (0.87 gives 1.5x lossless tau at W=8).")
    parser.add_argument("--graphs", action="store_true",
                        help="Also time the steps as CUDA graphs over a StaticCache, and project from those "
                             "(experimental: on the 2026-11-22 H100 run, graphs of 1-2 target tokens and of the "
                             "draft step replayed, but longer verifications hit a device-side index_copy_ assert "
                             "inside transformers' StaticCache on replay, which poisons the CUDA context: "
                             "StaticLayer writes at its own counter, which every replay advances; the fixed "
                             "path is autojudge/gpu, measured by bench_gpu_h200.py).")
    parser.add_argument("--tiny", action="store_true", help="Tiny models on the CPU: a smoke test of the script.")
    args = parser.parse_args()

    device = torch.device("cpu" if args.tiny else "cuda")
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("bench_h100_latency.py needs a CUDA GPU (or --tiny for a CPU smoke test).")
    dtype = torch.float32 if args.tiny else torch.bfloat16
    names = ("tiny-draft", "tiny-target") if args.tiny else ("Llama-3.2-1B", "Llama-3.1-8B")
    draft, target = (random_model(n, device, dtype) for n in names)
    report = {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
              "torch": torch.__version__, "dtype": str(dtype), "draft": names[0], "target": names[1],
              "context": args.context}
    import transformers
    report["transformers"] = transformers.__version__

    report["draft_step_ms"] = timed(step_timer(draft, args.context, 1, device), device, args.repeats)
    print(f"draft step: {report['draft_step_ms']:.2f} ms", flush=True)
    report["target_verify_ms"] = {}
    for w in WINDOWS:
        ms = timed(step_timer(target, args.context, w + 1, device), device, args.repeats)
        report["target_verify_ms"][str(w)] = ms
        print(f"target forward of {w + 1} tokens (W={w}): {ms:.2f} ms", flush=True)

    if device.type == "cuda" and args.graphs:  # the same steps as CUDA graphs (no Python launch cost)
        try:
            with torch.inference_mode():
                report["graph_draft_step_ms"] = timed(graph_step_timer(draft, args.context, 1, device), device,
                                                      args.repeats)
                report["graph_target_verify_ms"] = {
                    str(w): timed(graph_step_timer(target, args.context, w + 1, device), device, args.repeats)
                    for w in WINDOWS}
            print(f"CUDA graphs: draft step {report['graph_draft_step_ms']:.2f} ms; target "
                  + ", ".join(f"W={w}: {ms:.2f}" for w, ms in report["graph_target_verify_ms"].items()) + " ms",
                  flush=True)
        except Exception as exc:  # capture can fail inside HF (a host sync); keep the eager figures
            report["graph_error"] = f"{type(exc).__name__}: {exc}"[:500]
            print("CUDA graph capture failed:", report["graph_error"], flush=True)

    report["judge_kernel_us"] = {}
    if device.type == "cuda":
        from bench_plugin_kernel import make_inputs, time_call

        from autojudge.acceptance.plugin import KernelCall
        for w in WINDOWS[1:]:
            row = {}
            for label, scenario in (("typical", "reject"), ("worst", "accept_all")):
                inputs, bias = make_inputs(1, w, draft.hidden_size, target.hidden_size, dtype, scenario)
                row[label] = time_call(KernelCall(*inputs, bias=bias, threshold=0.5))
            report["judge_kernel_us"][str(w)] = row
            print(f"judge kernel W={w}: typical {row['typical']:.2f} us, worst {row['worst']:.2f} us", flush=True)
    else:
        report["judge_kernel_us"] = {str(w): {"typical": 0.0, "worst": 0.0} for w in WINDOWS[1:]}

    # The loop's own overhead: a real generate() cycle minus the parts it is made of.
    decoder = SpeculativeDecoder(target, draft)
    prompt = torch.randint(0, 32000, (args.context,), generator=torch.Generator().manual_seed(2)).tolist()
    window = 4
    decoder.generate(prompt, DecodeConfig(mode="lossless", window=window, max_new_tokens=8))  # warm-up
    short, long = (decoder.generate(prompt, DecodeConfig(mode="lossless", window=window, max_new_tokens=n)).metrics
                   for n in (16, 80))
    # The difference of two runs cancels the prefill of the prompt.
    cycles = long.num_target_calls - short.num_target_calls
    per_cycle = (long.wall_time_s - short.wall_time_s) * 1000 / cycles
    parts = window * report["draft_step_ms"] + report["target_verify_ms"][str(window)]
    report["loop"] = {"window": window, "cycles": cycles, "ms_per_cycle": per_cycle, "sum_of_parts_ms": parts}
    report["loop_overhead_ms"] = max(0.0, per_cycle - parts)
    print(f"generate() W={window}: {per_cycle:.2f} ms per cycle, parts {parts:.2f} ms, "
          f"overhead {report['loop_overhead_ms']:.2f} ms", flush=True)

    acceptance = {"lossless": args.acceptance_lossless, "judge": args.acceptance_judge}
    report["projection"] = project(report, acceptance)
    if "graph_target_verify_ms" in report:  # the same projection from the CUDA-graph timings
        graphed = {**report, "draft_step_ms": report["graph_draft_step_ms"],
                   "target_verify_ms": report["graph_target_verify_ms"], "loop_overhead_ms": 0.0}
        report["projection_graphs"] = project(graphed, acceptance)
    for key in ("projection", "projection_graphs"):
        for mode, p in report.get(key, {}).items():
            print(f"{key}: {mode:8s} {p['tokens_per_s']:7.1f} tokens/s (W={p['window']}, tau {p['tau']:.2f})")
    if args.json_out:
        args.json_out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
