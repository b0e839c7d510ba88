"""Issue 21 on one GPU: build, check parity, measure; each part under its own time limit.

    python benchmarks/bench_gpu_h200.py --json-out benchmarks/results/gpu_h200.json   # on the GPU (~7 min)
    python benchmarks/bench_gpu_h200.py --dry-run                                      # CPU smoke test (~1 min)

Parts, in order (``--parts`` picks some; ``--budget PART=SECONDS`` changes a limit; a part
that runs out of time stops between measurements and says so; one that fails records its
error and the next one runs):

- ``build``: nvcc build of the judge-accept kernel for this GPU (the op's CUDA path).
- ``op_parity``: ``torch.ops.autojudge.judge_accept`` against the oracle (``autojudge.acceptance``)
  at 32, 256 and 1024 threads per block, one block and a cluster per sequence, random and
  edge-case windows (dry run: the host build, one-thread and threaded host teams).
- ``graph_parity``: :class:`~autojudge.gpu.graphs.GraphDecoder` with CUDA graphs against the same
  decoder eager and against the in-process ``SpeculativeDecoder``, windows 1..64, batch 1 and 4
  (tiny float32 models: equal tokens are expected).
- ``cycle_cost``: at Llama-3.2-1B / Llama-3.1-8B shapes (random weights, bf16, from LlamaConfig):
  one draft step and one verification of W in {1, 2, 4, 8, 16, 32, 64}, batch 1 and 8, as a
  graph replay over the static cache, eager over the static cache, and eager in-process
  (DynamicCache: what the decoder runs today).
- ``judge_op``: the fused judge step as the decoder calls it (``TorchJudgeAccept``, host time
  included) at the pair's hidden sizes.
- ``kernel_worst``: the kernel alone (graph of 100 launches) at B=1, W=32, (Hd, Ht) = (4096, 8192):
  all-match, one rejection, all mismatches accepted; one block vs the launcher's cluster.
- ``end_to_end``: tokens/s of target-only, lossless and judge at tau 2, 3 and 5 (acceptance forced
  through :class:`~autojudge.testing.forced_acceptance.ForcedAcceptance`; the judge rejects every
  mismatch so both modes share tau and the difference is the judge's cost), batch 1 and 8,
  graphs vs eager.
- ``hf_assisted``: Hugging Face ``generate()`` alone and with ``assistant_model`` (the random pair:
  its acceptance is what it is, about none) beside our lossless decoder on the same unforced pair.
- ``mining``: labels per hour of ``mine_example`` (testbed task, random prompts) at these shapes.

Results: one JSON (``--json-out``), the budgets used and every part's status included.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_h100_latency import COMMON, SHAPES, _NoText, step_timer

from autojudge.acceptance import accept, judge_mismatch_ok
from autojudge.acceptance.plugin import NOT_EVALUATED, KernelCall, build_cuda_library
from autojudge.acceptance.torch_op import TorchJudgeAccept
from autojudge.decoding import DecodeConfig, SpeculativeDecoder, SpeculativeLoop
from autojudge.decoding.in_process import InProcessBackend
from autojudge.gpu.graphs import GraphBackend, GraphDecoder, ModelSteps
from autojudge.judge import Judge, JudgeMetadata
from autojudge.models import CausalLM
from autojudge.testing.forced_acceptance import ForcedAcceptance, agreement_for_tau

WINDOWS = (1, 2, 4, 8, 16, 32, 64)
TAUS = (2.0, 3.0, 5.0)
BUDGETS_S = {"build": 45, "op_parity": 20, "graph_parity": 35, "cycle_cost": 80, "judge_op": 10,
             "kernel_worst": 15, "end_to_end": 100, "hf_assisted": 35, "mining": 20}  # 360 s + ~30 s of set-up


class OutOfTime(Exception):
    """A part's time limit passed (raised between measurements)."""


class Bench:
    """What every part shares: the device, the models (made once), the limits, the report."""

    def __init__(self, args: argparse.Namespace):
        self.dry = args.dry_run
        self.device = torch.device("cpu" if self.dry else "cuda")
        self.dtype = torch.float32 if self.dry else torch.bfloat16
        self.names = ("tiny-draft", "tiny-target") if self.dry else ("Llama-3.2-1B", "Llama-3.1-8B")
        self.context = 16 if self.dry else 512  # tokens already in the cache when a step is timed
        self.new_tokens = 12 if self.dry else 96  # per end-to-end run
        self.repeats = 2 if self.dry else 10
        self.batches = (1, 2) if self.dry else (1, 8)
        self.windows = (1, 4, 8) if self.dry else WINDOWS
        self.vocab = 32000 if self.dry else COMMON["vocab_size"]  # step_timer feeds ids < 32000
        defaults = {part: min(seconds, 20) for part, seconds in BUDGETS_S.items()} if self.dry else BUDGETS_S
        self.budgets = {**defaults, **dict(_budget(b) for b in args.budget)}  # the dry run: 20 s each by default
        self.report: dict = {"dry_run": self.dry, "torch": torch.__version__, "budgets_s": self.budgets,
                             "device": torch.cuda.get_device_name() if self.device.type == "cuda" else "cpu"}
        self._models = None
        self.deadline = float("inf")

    def models(self):
        """(draft, target) at the pair's shapes (random weights), made on first use."""
        if self._models is None:
            start = time.perf_counter()
            self._models = tuple(random_model(n, self.device, self.dtype, self.vocab) for n in self.names)
            self.report["model_setup_s"] = time.perf_counter() - start
        return self._models

    def check_time(self) -> None:
        if time.monotonic() > self.deadline:
            raise OutOfTime

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()

    def median_ms(self, fn, repeats: int | None = None) -> float:
        """Median wall milliseconds of fn() (synchronised) after two warm-ups."""
        for _ in range(2):
            fn()
        times = []
        for _ in range(repeats or self.repeats):
            self.sync()
            start = time.perf_counter()
            fn()
            self.sync()
            times.append((time.perf_counter() - start) * 1000)
        return statistics.median(times)


def _budget(text: str) -> tuple[str, float]:
    part, _, seconds = text.partition("=")
    if part not in BUDGETS_S or not seconds:
        raise argparse.ArgumentTypeError(f"--budget takes PART=SECONDS with PART in {', '.join(BUDGETS_S)}")
    return part, float(seconds)


def random_model(name: str, device: torch.device, dtype: torch.dtype, vocab: int) -> CausalLM:
    """The published shapes (bench_h100_latency.SHAPES) with random weights; ``vocab`` smaller for the dry run."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(**SHAPES[name], **{**COMMON, "vocab_size": vocab})
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM._from_config(config, dtype=dtype)
    return CausalLM(name=name, model=model, tokenizer=_NoText(), eos_token_ids=frozenset({COMMON["eos_token_id"]}))


def random_prompts(count: int, length: int, vocab: int, seed: int = 2) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(10, min(vocab, 32000), (count, length), generator=g).tolist()


def reject_all_judge(draft, target) -> Judge:
    """A judge whose every probability is ~1 (bias 50): every mismatch rejected, so tau stays the hook's."""
    meta = JudgeMetadata(target_model=target.name, target_hidden_size=target.hidden_size, draft_model=draft.name,
                         draft_hidden_size=draft.hidden_size, feature_layout="draft+target", threshold=0.5)
    return Judge(weight=torch.zeros(draft.hidden_size + target.hidden_size), bias=50.0, meta=meta)


# ---------------------------------------------------------------------------------------- parts


def part_build(bench: Bench, out: dict) -> None:
    if bench.device.type != "cuda":
        from autojudge.acceptance.plugin import build_host_library
        out.update(host_library=str(build_host_library()), cuda="skipped (dry run)")
        return
    major, minor = torch.cuda.get_device_capability()
    start = time.perf_counter()
    library = build_cuda_library()  # the op's own build (sm_80, sm_90 and PTX), cached for every later part
    out.update(cuda_library=str(library), device_arch=f"sm_{major}{minor}", build_s=time.perf_counter() - start)


def op_cases(device: torch.device):
    """(name, judge, draft [B, W], target [B, W+1], draft_hidden, target_hidden, thresholds) on ``device``."""
    g = torch.Generator().manual_seed(0)
    shapes = [("random", 5, 7, 24, 40, 0.1), ("random", 3, 64, 64, 128, 0.1), ("ragged", 2, 33, 13, 29, 0.1),
              ("match", 1, 32, 256, 512, 0.1), ("reject", 1, 32, 256, 512, 50.0), ("accept_all", 2, 64, 256, 512, -50.0)]
    for name, batch, window, hd, ht, bias in shapes:
        target = torch.randint(0, 3, (batch, window + 1), generator=g)
        draft = torch.randint(0, 3, (batch, window), generator=g)
        if name in ("match", "reject"):
            draft = target[:, :window].clone()
        if name == "reject":
            draft[:, window // 2] += 1
        if name == "accept_all":
            draft = target[:, :window] + 1
        meta = JudgeMetadata("t", ht, "d", hd, "draft+target", threshold=0.5)
        judge = Judge(torch.randn(hd + ht, generator=g) / (hd + ht) ** 0.5, bias, meta)
        hidden = (torch.randn(batch, window, hd, generator=g).bfloat16(),
                  torch.randn(batch, window, ht, generator=g).bfloat16())
        yield name, judge, draft, target, hidden[0], hidden[1]


def part_op_parity(bench: Bench, out: dict) -> None:
    """Decisions equal to the oracle's, evaluated probabilities within fp32 rounding of it."""
    cuda = bench.device.type == "cuda"
    clusters = cuda and torch.cuda.get_device_capability()[0] >= 9
    launches = ([(t, b) for t in (32, 256, 1024) for b in ((1, 0, 2, 8) if clusters else (1, 0))] if cuda
                else [("host", None), ("team", (3, 2)), ("team", (64, 1))])
    failures = out.setdefault("failures", [])
    out["checked"] = 0
    for name, judge, draft, target, draft_hidden, target_hidden in op_cases(bench.device):
        for threshold in (0.2, 0.5, 0.8):
            bench.check_time()
            probabilities = judge.probabilities(draft_hidden, target_hidden)  # [B, W] fp32, the oracle's
            want = accept(draft, target, judge_mismatch_ok(probabilities, threshold))
            for threads, blocks in launches:
                call = KernelCall(draft.to(bench.device), target.to(bench.device), draft_hidden.to(bench.device),
                                  target_hidden.to(bench.device), judge.weight, float(judge.bias), threshold)
                got = call.run_host_team(*blocks) if threads == "team" else call.run(*(() if threads == "host" else
                                                                                       (threads, blocks)))
                window = draft.shape[1]
                evaluated = (draft != target[:, :window]) & (torch.arange(window) <= want.num_accepted[:, None])
                p = got.probabilities.cpu()
                ok = (got.num_accepted.cpu().tolist() == want.num_accepted.tolist()
                      and got.next_tokens.cpu().tolist() == want.next_tokens.tolist()
                      and torch.equal(p == NOT_EVALUATED, ~evaluated)
                      and torch.allclose(p[evaluated], probabilities[evaluated], rtol=1e-4, atol=1e-5))
                out["checked"] += 1
                if not ok:
                    failures.append({"case": name, "threshold": threshold, "threads": threads, "blocks": blocks})
    out["ok"] = not failures


def part_graph_parity(bench: Bench, out: dict) -> None:
    """Graph replays, eager static-cache steps and the in-process decoder: the same tokens. Two drafts:
    the target itself (every token accepted: full windows, the 2-token draft catch-up) and an unrelated
    random one (about nothing accepted: a rejection every cycle), the latter at short windows only."""
    draft, target = (random_model(n, bench.device, torch.float32, bench.vocab) for n in ("tiny-draft", "tiny-target"))
    prompts = random_prompts(4, 9, bench.vocab)
    failures = out.setdefault("differences", [])
    out["checked"] = 0
    for draft_name, lm in (("same", target), ("random", draft)):
        decoders = {"in_process": SpeculativeDecoder(target, lm),
                    "static_eager": GraphDecoder(target, lm, capacity=256, graphs=False)}
        if bench.device.type == "cuda":
            decoders["static_graphs"] = GraphDecoder(target, lm, capacity=256)
        windows = (1, 5, 16) if bench.dry else WINDOWS
        for w in windows if draft_name == "same" else [w for w in windows if w <= 8]:
            for batch in (1, 3):
                bench.check_time()
                config = DecodeConfig(mode="lossless", window=w, max_new_tokens=w + 4)
                outputs = {name: [r.token_ids for r in d.generate_batch(prompts[:batch], config,
                                                                        eos_token_ids=frozenset())]
                           for name, d in decoders.items()}
                out["checked"] += 1
                if any(tokens != outputs["in_process"] for tokens in outputs.values()):
                    # float32 batched matmuls may round a near-tie differently from the in-process path;
                    # graph replays and the static cache's eager steps must agree exactly (the same kernels).
                    failures.append({"draft": draft_name, "window": w, "batch": batch, "graphs_equal_static_eager":
                                     outputs.get("static_graphs", outputs["static_eager"]) == outputs["static_eager"]})
    out["graphs_equal_eager"] = all(f["graphs_equal_static_eager"] for f in failures)


def static_step_timer(bench: Bench, lm, batch: int, tokens: int, graphed: bool):
    """A closure: ``tokens`` new tokens per row through the static cache after ``context``, then cropped back."""
    steps = ModelSteps(lm, batch, bench.context + 80, lm.vocab_size, 0, capture=graphed)
    g = torch.Generator().manual_seed(1)
    prefix = torch.randint(10, 32000, (batch, bench.context), generator=g).to(bench.device)
    steps.read(prefix, torch.ones_like(prefix, dtype=torch.bool), [bench.context] * batch, keep=1, graphed=False)
    fresh = torch.randint(10, 32000, (batch, tokens), generator=g).to(bench.device)
    fed, counts, back = torch.ones_like(fresh, dtype=torch.bool), [tokens] * batch, torch.full((batch,), bench.context)

    def step():
        steps.read(fresh, fed, counts, keep=tokens, graphed=graphed)
        steps.keep(back)
    return step


def part_cycle_cost(bench: Bench, out: dict) -> None:
    draft, target = bench.models()
    variants = {"graphs": True, "static_eager": False} if bench.device.type == "cuda" else {"static_eager": False}
    out["context"] = bench.context
    for batch in bench.batches:
        row: dict = {}
        out[f"batch{batch}"] = row
        for variant, graphed in variants.items():
            bench.check_time()
            row[f"draft_step_ms_{variant}"] = bench.median_ms(static_step_timer(bench, draft, batch, 1, graphed))
        if batch == 1:
            row["draft_step_ms_in_process"] = bench.median_ms(step_timer(draft, bench.context, 1, bench.device))
        for w in bench.windows:
            for variant, graphed in variants.items():
                bench.check_time()
                row.setdefault(f"verify_ms_{variant}", {})[str(w)] = bench.median_ms(
                    static_step_timer(bench, target, batch, w + 1, graphed))
            if batch == 1:
                bench.check_time()
                row.setdefault("verify_ms_in_process", {})[str(w)] = bench.median_ms(
                    step_timer(target, bench.context, w + 1, bench.device))
            print(f"cycle_cost B={batch} W={w}: " + ", ".join(f"{k} {v[str(w)]:.2f}" for k, v in row.items()
                                                            if isinstance(v, dict)), flush=True)


def part_judge_op(bench: Bench, out: dict) -> None:
    draft, target = bench.models()
    judge = reject_all_judge(draft, target)
    step = TorchJudgeAccept(judge, bench.device)
    for batch in bench.batches:
        for w in bench.windows:
            bench.check_time()
            g = torch.Generator().manual_seed(w)
            tokens = torch.randint(0, 3, (batch, w + 1), generator=g).to(bench.device)
            hidden = (torch.randn(batch, w, draft.hidden_size, generator=g).to(bench.device, bench.dtype),
                      torch.randn(batch, w, target.hidden_size, generator=g).to(bench.device, bench.dtype))
            out[f"B{batch}_W{w}_ms"] = bench.median_ms(
                lambda t=tokens, h=hidden, w=w: step(t[:, :w], t, *h, 0.5), repeats=5 * bench.repeats)


def part_kernel_worst(bench: Bench, out: dict) -> None:
    if bench.device.type != "cuda":
        out["skipped"] = "CUDA only"
        return
    from bench_plugin_kernel import make_inputs, time_call

    for scenario in ("match", "reject", "accept_all"):
        for threads in (1024, 256):
            for blocks in (1, 0):
                bench.check_time()
                inputs, bias = make_inputs(1, 32, 4096, 8192, torch.bfloat16, scenario)
                out[f"{scenario}_t{threads}_{'one_block' if blocks == 1 else 'auto'}_us"] = time_call(
                    KernelCall(*inputs, bias=bias, threshold=0.5), threads=threads, blocks=blocks)
    print("kernel worst case (B=1, W=32, 4096/8192):", json.dumps(out), flush=True)


def part_end_to_end(bench: Bench, out: dict) -> None:
    draft, target = bench.models()
    judge = reject_all_judge(draft, target)
    window = 8
    backends = {"eager": InProcessBackend(target, draft, judge)}
    if bench.device.type == "cuda":
        backends["graphs"] = GraphBackend(target, draft, judge, capacity=bench.context + bench.new_tokens + 80)
    else:  # the static-cache backend's eager steps, so the dry run drives every piece
        backends["static_eager"] = GraphBackend(target, draft, judge, capacity=bench.context + bench.new_tokens + 80)
    runs = [("target", None)] + [(mode, tau) for tau in (TAUS[1:2] if bench.dry else TAUS)
                                 for mode in ("lossless", "judge")]
    out.update(window=window, new_tokens=bench.new_tokens, context=bench.context)
    runs_done = out.setdefault("runs", [])
    for batch in bench.batches:
        prompts = random_prompts(batch, bench.context, bench.vocab, seed=batch)
        for mode, tau in runs:
            for name, backend in backends.items():
                bench.check_time()
                p = 0.0 if tau is None else agreement_for_tau(tau, window)
                loop = SpeculativeLoop(ForcedAcceptance(backend, p, seed=batch))
                config = DecodeConfig(mode=mode, window=window, max_new_tokens=bench.new_tokens,
                                      **({"threshold": 0.5} if mode == "judge" else {}))
                if not bench.dry:  # warm-up (captures the graphs)
                    loop.generate_batch(prompts, DecodeConfig(mode=mode, window=window, max_new_tokens=2 * window + 2,
                                                              **({"threshold": 0.5} if mode == "judge" else {})),
                                        eos_token_ids=frozenset())
                bench.sync()
                start = time.perf_counter()
                results = loop.generate_batch(prompts, config, eos_token_ids=frozenset())
                bench.sync()
                seconds = time.perf_counter() - start
                tokens = sum(r.metrics.num_generated_tokens for r in results)
                calls = sum(r.metrics.num_target_calls for r in results)
                record = {"batch": batch, "mode": mode, "tau_asked": tau or 1.0, "backend": name,
                          "tokens_per_s": tokens / seconds, "tau": tokens / max(calls, 1), "seconds": seconds}
                runs_done.append(record)
                print(f"end_to_end B={batch} {mode:8s} tau {record['tau']:.2f} ({tau or 1.0}) {name:12s} "
                      f"{record['tokens_per_s']:8.1f} tokens/s", flush=True)


def part_hf_assisted(bench: Bench, out: dict) -> None:
    draft, target = bench.models()
    prompt = torch.tensor(random_prompts(1, bench.context, bench.vocab, seed=7), device=bench.device)  # [1, P]
    eos = next(iter(target.eos_token_ids))

    new_tokens = bench.new_tokens // 2  # HF's assisted loop drafts 20 tokens a step: the slowest runs here

    def hf(**kwargs):
        ids = target.model.generate(prompt, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                                    do_sample=False, pad_token_id=eos, **kwargs)
        return ids.shape[1] - prompt.shape[1]
    for name, kwargs in (("hf_target", {}), ("hf_assisted", {"assistant_model": draft.model})):
        bench.check_time()
        hf(**kwargs)  # warm-up
        bench.sync()
        start = time.perf_counter()
        tokens = hf(**kwargs)
        bench.sync()
        out[f"{name}_tokens_per_s"] = tokens / (time.perf_counter() - start)
    for mode in ("target", "lossless"):
        bench.check_time()
        decoder = SpeculativeDecoder(target, draft)
        config = DecodeConfig(mode=mode, window=4, max_new_tokens=new_tokens)
        decoder.generate(prompt[0].tolist(), config, eos_token_ids=frozenset())  # warm-up
        result = decoder.generate(prompt[0].tolist(), config, eos_token_ids=frozenset())
        out[f"ours_{mode}_tokens_per_s"] = result.metrics.num_generated_tokens / result.metrics.wall_time_s
        out[f"ours_{mode}_tau"] = result.metrics.mean_acceptance_length
    print("HF beside ours:", json.dumps(out), flush=True)


def part_mining(bench: Bench, out: dict) -> None:
    from autojudge.mining.search import mine_example
    from autojudge.tasks import get_task

    draft, target = bench.models()
    task = get_task("testbed")
    examples = task.load("train", limit=2 if bench.dry else 4)
    out.update(prompts=0, labels=0, mining_s=0.0)
    for example, prompt in zip(examples, random_prompts(len(examples), bench.context // 4, bench.vocab, seed=11)):
        bench.check_time()
        start = time.perf_counter()
        record = mine_example(target, draft, task, example, prompt, max_new_tokens=bench.new_tokens // 2,
                              max_labels=8).record
        out["mining_s"] += time.perf_counter() - start
        out["labels"] += len(record["labels"])
        out["prompts"] += 1
        out["labels_per_hour"] = 3600 * out["labels"] / out["mining_s"]


PARTS = {"build": part_build, "op_parity": part_op_parity, "graph_parity": part_graph_parity,
         "cycle_cost": part_cycle_cost, "judge_op": part_judge_op, "kernel_worst": part_kernel_worst,
         "end_to_end": part_end_to_end, "hf_assisted": part_hf_assisted, "mining": part_mining}


def run_parts(bench: Bench, parts: list[str], json_out: Path | None) -> None:
    for name in parts:
        bench.deadline = time.monotonic() + bench.budgets[name]
        start = time.perf_counter()
        entry: dict = {}  # filled as the part goes: what it measured before a stop or a failure stays
        try:
            PARTS[name](bench, entry)
            entry["status"] = "done"
        except OutOfTime:
            entry["status"] = f"stopped at its {bench.budgets[name]} s limit"
        except Exception as exc:  # noqa: BLE001 -- one part's failure must not lose the others' figures
            entry.update(status="failed", error=f"{type(exc).__name__}: {exc}"[:800],
                         traceback=traceback.format_exc()[-2000:])
        entry["seconds"] = time.perf_counter() - start
        bench.report[name] = entry
        print(f"[{name}] {entry['status']} in {entry['seconds']:.1f} s", flush=True)
        if json_out:  # after every part: a later crash keeps what was measured
            json_out.parent.mkdir(parents=True, exist_ok=True)
            json_out.write_text(json.dumps(bench.report, indent=2, default=str) + "\n")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json-out", type=Path)
    parser.add_argument("--dry-run", action="store_true", help="Tiny models, float32, on the CPU.")
    parser.add_argument("--parts", nargs="+", choices=list(PARTS), default=list(PARTS))
    parser.add_argument("--budget", action="append", default=[], metavar="PART=SECONDS")
    args = parser.parse_args(argv)
    if not args.dry_run and not torch.cuda.is_available():
        sys.exit("bench_gpu_h200.py needs a CUDA GPU (or --dry-run).")
    bench = Bench(args)
    threads = torch.get_num_threads()
    if args.dry_run:  # tiny models: one thread (several spin against each other on a shared 2-core CPU: 100x slower)
        torch.set_num_threads(1)
    try:
        with torch.no_grad():
            run_parts(bench, args.parts, args.json_out)
    finally:
        torch.set_num_threads(threads)
    return bench.report


if __name__ == "__main__":
    main()
