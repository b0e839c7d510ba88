"""The TensorRT-LLM flavour's backend, run on CPU through the same loop as flavour 1.

The backend (autojudge.serving.trtllm.backend) drives two executors through the TensorRT-LLM
executor API and runs the judge-accept engine through TensorRT's runtime. Here both are the
emulations of autojudge.testing, which behave like the real components where the backend
depends on them (each behaviour names its source) and answer from tiny in-process models; the
judge-accept step runs the host build of the plugin's kernel or the ONNX graph, not
autojudge.acceptance. Every mode must give exactly what the in-process decoder gives.
"""

from __future__ import annotations

import itertools

import pytest
import torch
from conftest import perturbed, tiny_model

from autojudge.decoding import DecodeConfig, SpeculativeDecoder, SpeculativeLoop
from autojudge.errors import AutoJudgeError
from autojudge.features.scalars import SCALAR_FEATURES
from autojudge.judge import Judge, JudgeMetadata
from autojudge.serving.trtllm import backend as trtllm_backend
from autojudge.testing import tensorrt_runtime, trtllm_executor
from autojudge.testing.trtllm_deployment import emulated_backend

PROMPT = [1, 504, 3458, 314, 253, 1234, 17, 2800, 30]


@pytest.fixture(scope="module")
def pair(make_lm):
    target = tiny_model(0)  # a draft that agrees about half the time (tau ~1.4 at W=4)
    return make_lm(target, "tiny-target"), make_lm(perturbed(target, 0.2, seed=4), "tiny-draft")


@pytest.fixture(scope="module")
def pair64(make_lm):
    target = tiny_model(0).double()  # float64: a batch and a row alone sum alike
    return make_lm(target, "tiny-target"), make_lm(perturbed(target, 0.2, seed=4), "tiny-draft")


def random_judge(target, draft, layout: str, seed: int = 1) -> Judge:
    """``layout`` may end in "+scalars": every scalar feature after the hidden states, weighted
    enough to sway decisions (they read the target logits the backend's LM head gives)."""
    torch.manual_seed(seed)
    scalars = SCALAR_FEATURES if layout.endswith("+scalars") else ()
    meta = JudgeMetadata(target.name, target.hidden_size, draft.name, draft.hidden_size,
                         layout.removesuffix("+scalars"), threshold=0.5, scalar_features=scalars)
    weight, bias = torch.randn(meta.num_features) * 0.3, 0.0
    if scalars:  # centred on typical values at this pair's mismatches: their variation decides
        weight[-len(scalars):] = torch.randn(len(scalars))
        bias = -float(weight[-len(scalars):] @ torch.tensor([-5.0, -4.3, 8.85, 1.0, 0.7]))
    return Judge(weight, bias, meta)


def both_ways(tmp_path, pair, judge, config, judge_path="plugin"):
    target, draft = pair
    in_process = SpeculativeDecoder(target, draft, judge).generate(PROMPT, config, eos_token_ids=frozenset())
    backend = emulated_backend(tmp_path, target, draft, judge, judge_path=judge_path)
    served = SpeculativeLoop(backend).generate(PROMPT, config, eos_token_ids=frozenset())
    return in_process, served, backend


def same_run(served, in_process) -> None:
    """Tokens and the cycle statistics: a backend that drafts fewer tokens than asked passes the
    first, not the second."""
    assert served.token_ids == in_process.token_ids
    for name in ("mean_acceptance_length", "num_accepted_mismatches", "num_target_calls", "num_draft_tokens"):
        assert getattr(served.metrics, name) == pytest.approx(getattr(in_process.metrics, name)), name


def test_lossless_through_the_executors_is_the_targets_greedy_output(pair, tmp_path):
    config = DecodeConfig(mode="lossless", window=4, max_new_tokens=40)
    in_process, served, _ = both_ways(tmp_path, pair, None, config)
    greedy = SpeculativeDecoder(pair[0]).generate(PROMPT, DecodeConfig(mode="target", max_new_tokens=40),
                                                  eos_token_ids=frozenset())
    assert served.token_ids == greedy.token_ids
    same_run(served, in_process)
    assert served.metrics.mean_acceptance_length > 1.0


@pytest.mark.parametrize("layout, judge_path", [("draft+target", "plugin"), ("target", "plugin"),
                                                ("draft+target", "onnx"), ("draft+target+scalars", "plugin"),
                                                ("target+scalars", "onnx")])
def test_judge_mode_through_the_judge_accept_engine_matches_the_in_process_decoder(pair, tmp_path, layout,
                                                                                   judge_path, monkeypatch):
    judge = random_judge(*pair, layout)
    calls = []
    run = tensorrt_runtime._Context.execute_async_v3
    monkeypatch.setattr(tensorrt_runtime._Context, "execute_async_v3",
                        lambda self, stream: calls.append(self.shapes["draft_tokens"]) or run(self, stream))
    config = DecodeConfig(mode="judge", window=5, max_new_tokens=48)
    in_process, served, _ = both_ways(tmp_path, pair, judge, config, judge_path)
    same_run(served, in_process)
    assert served.metrics.num_accepted_mismatches > 0  # the judge accepted some mismatches ...
    assert served.metrics.num_draft_tokens - served.metrics.num_accepted_tokens > 0  # ... and rejected others
    assert served.metrics.num_target_calls - 1 <= len(calls) <= served.metrics.num_target_calls  # the engine decided
    if judge.scalar_features:  # the scalars (from the backend's logits) swayed decisions
        blind = Judge(torch.cat([judge.weight[:-5], torch.zeros(5)]), judge.bias, judge.meta)
        assert SpeculativeDecoder(*pair, blind).generate(PROMPT, config, eos_token_ids=frozenset()).token_ids \
            != in_process.token_ids


def test_topk_through_the_executors_matches_the_in_process_decoder(pair, tmp_path):
    config = DecodeConfig(mode="topk", window=3, top_k=3, max_new_tokens=30)
    in_process, served, _ = both_ways(tmp_path, pair, None, config)
    same_run(served, in_process)
    assert served.metrics.num_accepted_mismatches > 0


@pytest.mark.parametrize("mode", ["lossless", "topk", "judge"])
def test_a_batch_through_the_executors_equals_the_in_process_batch(pair64, tmp_path, mode):
    """Three rows of different lengths: one request per row and step to each executor, and one
    judge-accept engine call for the whole batch, give what the in-process batch gives."""
    target, draft = pair64
    judge = random_judge(target, draft, "draft+target")
    prompts = [PROMPT, PROMPT[:4], [1, 77, 3000, 25, 911, 5, 8]]
    config = DecodeConfig(mode=mode, window=4, top_k=3, max_new_tokens=24)
    in_process = SpeculativeDecoder(target, draft, judge).generate_batch(prompts, config, eos_token_ids=frozenset())
    backend = emulated_backend(tmp_path, target, draft, judge, dtype="float64")
    served = SpeculativeLoop(backend).generate_batch(prompts, config)
    for got, want in zip(served, in_process):
        same_run(got, want)
    if mode in ("topk", "judge"):  # the rule accepted some mismatches and rejected others
        assert sum(r.metrics.num_accepted_mismatches for r in served) > 0
        assert sum(r.metrics.num_draft_tokens - r.metrics.num_accepted_tokens for r in served) > 0


@pytest.mark.parametrize("chunk", [None, 3], ids=["whole-prefill", "chunked-prefill"])
def test_requests_with_their_own_windows_share_the_executors_and_get_what_they_get_alone(pair64, tmp_path, chunk):
    """Continuous batching over the executors: a target-only row, a W=4 and a W=1 lossless row and a
    judge row in one running batch (prompts fed whole or 3 tokens a cycle). A row's pass must carry
    only its own drafts: a draft past its window equal to the token it then commits would make the
    next pass reuse that block, whose context state is never written (copyAdditionalOutputs)."""
    from autojudge.decoding.loop import Running

    target, draft = pair64
    judge = random_judge(target, draft, "draft+target")
    backend = emulated_backend(tmp_path, target, draft, judge, dtype="float64")
    decoder = SpeculativeDecoder(target, draft, judge)
    requests = [(PROMPT, DecodeConfig(mode="target", max_new_tokens=16)),
                ([1, 42, 977, 5, 6], DecodeConfig(mode="lossless", window=4, max_new_tokens=16)),
                (PROMPT, DecodeConfig(mode="lossless", window=1, max_new_tokens=16)),
                (PROMPT[:6], DecodeConfig(mode="judge", window=3, max_new_tokens=16))]
    running = Running(backend, frozenset(), prefill_chunk=chunk)
    index = [running.join([p], c)[0] for p, c in requests]
    while running.active:
        running.cycle()
    for i, (prompt, config) in zip(index, requests):
        same_run(running.pop(i), decoder.generate(prompt, config, eos_token_ids=frozenset()))


def test_every_request_asks_for_what_the_backend_reads(pair, tmp_path):
    """The fields the real executor acts on: greedy sampling, the draft's w (+1) new tokens and its
    generation states, the target's one-token context pass over sequence + drafts with its context
    states, and one cache salt per row, the same for all its cycles."""
    target, draft = pair
    judge = random_judge(target, draft, "draft+target")
    backend = emulated_backend(tmp_path, target, draft, judge)
    prompts = [PROMPT, PROMPT[:5]]
    SpeculativeLoop(backend).generate_batch(prompts, DecodeConfig(mode="judge", window=3, max_new_tokens=12))
    drafts, targets = backend.draft.executor.requests, backend.target.executor.requests
    assert drafts and targets
    for request in drafts + targets:
        assert (request.sampling_config.beam_width, request.sampling_config.top_k) == (1, 1)
        assert request.output_config.exclude_input_from_output
    for request in drafts:
        assert request.max_tokens == 3 + 1  # the judge reads the state after d_{w-1}
        assert [(o.name, o.gather_context) for o in request.output_config.additional_model_outputs] == [
            ("autojudge_hidden_states", False)]
    for request in targets:
        assert request.max_tokens == 1
        assert [(o.name, o.gather_context) for o in request.output_config.additional_model_outputs] == [
            ("autojudge_hidden_states", True)]
    # each draft request's input is verified by a context pass over it + the drafts its row may accept
    # (3, fewer near its budget)
    proposed, passes = [r.input_token_ids for r in drafts], [r.input_token_ids for r in targets]
    extra = [min((len(t) - len(p) for t in passes if t[:len(p)] == p and len(t) - len(p) <= 3), default=None)
             for p in proposed]
    assert None not in extra and extra.count(3) > len(extra) // 2
    rows = {}
    for request in targets:
        rows.setdefault(request.cache_salt_id, []).append(request.input_token_ids)
    assert len(rows) == 2  # one salt per row, kept through its cycles: each pass extends the row's last one
    assert all(a[:-3] == b[: len(a) - 3] for seqs in rows.values() for a, b in itertools.pairwise(seqs))
    assert max(backend.target.executor.prepopulated) > len(PROMPT)  # later cycles reused the row's prefix


def test_reading_the_target_states_one_position_off_is_caught(pair, tmp_path, monkeypatch):
    """The rows the backend reads are exactly the ones the executor computed and the in-process
    decoder uses: one position off, the comparison of the tests above fails."""
    config = DecodeConfig(mode="lossless", window=4, max_new_tokens=24)
    in_process, served, _ = both_ways(tmp_path / "right", pair, None, config)
    same_run(served, in_process)
    monkeypatch.setattr(trtllm_backend, "verified_rows", lambda context, w: context[-(w + 2):-1])
    _, off, _ = both_ways(tmp_path / "off", pair, None, config)
    with pytest.raises(AssertionError):
        same_run(off, in_process)


def test_identical_rows_stay_exact_because_each_row_salts_its_cache(pair, tmp_path, monkeypatch):
    """Two rows with the same prompt send identical context passes: without a salt of its own the
    second finds the first's blocks, and the executor leaves the states of reused tokens unwritten."""
    target, draft = pair
    config = DecodeConfig(mode="lossless", window=4, max_new_tokens=16)
    greedy = SpeculativeDecoder(target).generate(PROMPT, DecodeConfig(mode="target", max_new_tokens=16),
                                                 eos_token_ids=frozenset())
    served = SpeculativeLoop(emulated_backend(tmp_path / "salted", target, draft)).generate_batch([PROMPT, PROMPT],
                                                                                                  config)
    assert [r.token_ids for r in served] == [greedy.token_ids] * 2
    monkeypatch.setattr(trtllm_backend.random, "getrandbits", lambda bits: 7)  # one salt for every row
    unsalted = SpeculativeLoop(emulated_backend(tmp_path / "shared", target, draft)).generate_batch(
        [PROMPT, PROMPT], config)
    assert unsalted[0].token_ids == greedy.token_ids and unsalted[1].token_ids != greedy.token_ids


def test_a_draft_that_stops_early_still_gives_the_targets_tokens(pair64, tmp_path, monkeypatch):
    """A draft request that ends before w tokens (the engine met its end id) leaves that row with
    fewer draft tokens, and rows of its generation states past the end unwritten: the row is
    padded, never accepts the padding, and the judge gets the states of the drafted tokens."""
    target, draft = pair64
    backend = emulated_backend(tmp_path, target, draft, random_judge(target, draft, "draft+target"),
                               dtype="float64")
    generate, short = backend.draft.generate, []

    def stopping(sequences, max_tokens, states):
        results = generate(sequences, max_tokens, states)
        for i, (sequence, (tokens, hidden)) in enumerate(zip(sequences, results)):
            if len(sequence) % 2:  # odd lengths: the engine met its end id after 2 tokens
                short.append(1)
                if hidden is not None:
                    hidden = hidden.clone()
                    hidden[2:] = float("nan")  # never written
                results[i] = (tokens[:2], hidden)
        return results

    monkeypatch.setattr(backend.draft, "generate", stopping)
    prompts = [PROMPT, PROMPT[:4], [1, 77, 3000, 25, 911, 5, 8]]
    proposal = backend.open(3, uses_draft=True).propose(prompts, 4, need_hidden=True)
    assert proposal.lengths.tolist() == [1, 4, 1]  # lengths 9 and 7 are odd: one token has its state
    for row, n in enumerate(proposal.lengths.tolist()):  # a real draft state behind every drafted token
        assert bool(torch.isfinite(proposal.hidden[row, :n]).all())
    greedy = SpeculativeDecoder(target).generate_batch(prompts, DecodeConfig(mode="target", max_new_tokens=24),
                                                       eos_token_ids=frozenset())
    for mode in ("lossless", "judge"):
        served = SpeculativeLoop(backend).generate_batch(prompts, DecodeConfig(mode=mode, window=4,
                                                                                max_new_tokens=24))
        if mode == "lossless":
            assert [r.token_ids for r in served] == [r.token_ids for r in greedy]
        assert all(len(r.token_ids) == 24 for r in served)
    assert short


def test_a_window_beyond_the_deployments_is_a_clear_error(pair, tmp_path):
    backend = emulated_backend(tmp_path, *pair, max_window=4)
    with pytest.raises(AutoJudgeError, match=r"window must be in 1\.\.4 \(the deployment's window \(max_window\)\), "
                                             r"got 8"):
        SpeculativeLoop(backend).generate(PROMPT, DecodeConfig(mode="lossless", window=8))


# ----------------------------------------------------------------------------- the emulations' own contract


def engine(tmp_path, lm, *build_args, dtype="float32", tp=1):
    from autojudge.testing.trtllm_builder import build_engine, write_checkpoint

    checkpoint = write_checkpoint(tmp_path / "ckpt", trtllm_executor.register_model(f"m{id(lm)}", lm), dtype, tp)
    build_engine("--checkpoint", checkpoint, "--out", tmp_path / "engine", *build_args)
    return tmp_path / "engine"


def executor(path, outputs=(("autojudge_hidden_states", True),), **config):
    api = trtllm_executor
    return api.Executor(path, api.ModelType.DECODER_ONLY, api.ExecutorConfig(
        additional_model_outputs=[api.AdditionalModelOutput(n, gather_context=g) for n, g in outputs], **config))


def greedy_request(tokens, max_tokens=1, **output):
    api = trtllm_executor
    return api.Request(tokens, max_tokens, sampling_config=api.SamplingConfig(1, top_k=1),
                       output_config=api.OutputConfig(exclude_input_from_output=True, **output))


def test_the_executor_emulation_refuses_what_the_real_executor_refuses(pair, tmp_path):
    import json

    api = trtllm_executor
    path = engine(tmp_path, pair[0])
    build = json.loads((path / "config.json").read_text())["build_config"]
    assert build["speculative_decoding_mode"] == "NONE" and not build["gather_context_logits"]
    assert build["plugin_config"]["use_paged_context_fmha"]
    run = executor(path)
    # context logits from an engine built without gather_context_logits: that request fails, alone
    ids = run.enqueue_requests([greedy_request(PROMPT, return_context_logits=True), greedy_request(PROMPT)])
    (refused,), (served,) = run.await_responses(ids[0]), run.await_responses(ids[1])
    assert "Return context logit need to build engine with gather_context_logits" in refused.error_msg
    assert not served.has_error() and len(served.result.output_token_ids[0]) == 1
    # an additional output the ExecutorConfig does not list (or lists without gather_context) fails every
    # active request, not only the one that asked
    outputs = [api.AdditionalModelOutput("autojudge_hidden_states", gather_context=True)]
    for configured, message in (((), "Additional context output tensor not found"),
                                ((("autojudge_hidden_states", False),), "Additional context output tensor not gathered")):
        other = executor(path, outputs=configured)
        ids = other.enqueue_requests([greedy_request(PROMPT), greedy_request(PROMPT, additional_model_outputs=outputs)])
        for request_id in ids:
            assert message in other.await_responses(request_id)[0].error_msg
    with pytest.raises(RuntimeError, match="not an output of the engine"):
        executor(path, outputs=(("logits_of_everything", True),))
    with pytest.raises(RuntimeError, match="MPI world size is 1"):
        executor(engine(tmp_path / "tp2", pair[0], tp=2))
    assert run.reuse
    config = json.loads((path / "config.json").read_text())
    config["build_config"]["gather_context_logits"] = True  # an engine that gathers context logits ...
    (path / "config.json").write_text(json.dumps(config))
    assert not executor(path).reuse  # ... gets block reuse turned off at load


def test_a_plugin_library_that_is_only_dlopened_registers_nothing(pair, tmp_path, monkeypatch):
    """tensorrt_backend's --backend-config=tensorrt,plugins=LIB only dlopens LIB: our library registers
    through getCreators, so the plan cannot deserialize there; IPluginRegistry.load_library can."""
    from autojudge.serving.trtllm.judge_engine import TensorRTJudgeAccept

    judge = random_judge(*pair, "draft+target")
    plan = tensorrt_runtime.write_plan(judge, tmp_path, "plugin", "float32")
    library = tensorrt_runtime.write_plugin_library(tmp_path / "lib.json")
    monkeypatch.setattr(tensorrt_runtime, "_REGISTRY", tensorrt_runtime._Registry())
    tensorrt_runtime.dlopen(str(library))
    with pytest.raises(AutoJudgeError, match="could not deserialize"):
        TensorRTJudgeAccept(tensorrt_runtime, plan, None, torch.device("cpu"))
    assert TensorRTJudgeAccept(tensorrt_runtime, plan, library, torch.device("cpu")).uses_draft_hidden


# ----------------------------------------------------------------------------- the repository


def deployment(tmp_path, layout="draft+target", extra=""):
    from test_deploy import write_judge, write_model

    write_model(tmp_path, "llama-3.2-1b")
    write_model(tmp_path, "llama-3.1-8b")
    if layout == "draft+target":
        write_judge(tmp_path / "judge", 2048, 4096)
    else:
        meta = JudgeMetadata("t", 4096, "", 0, "target", threshold=0.4)
        Judge(torch.zeros(4096), 0.0, meta).save(tmp_path / "judge")
    path = tmp_path / "deploy.yaml"
    path.write_text(f"draft: llama-3.2-1b\ntarget: llama-3.1-8b\njudge: judge\noutput_dir: out\nwindow: 6\n{extra}")
    return path


def test_the_tensorrt_llm_repository_is_generated_and_every_config_parses(tmp_path):
    """Two Python models: autojudge_stream opens the engines (one server process, whatever the
    tensor parallelism), autojudge forwards to it; no tensorrtllm or tensorrt backend model."""
    import json

    from click.testing import CliRunner

    from autojudge.cli import main
    from autojudge.serving.repo import validate_config

    path = deployment(tmp_path, extra="tensor_parallel: 2\ndraft: {model: llama-3.2-1b, tensor_parallel: 1}\n")
    refused = CliRunner().invoke(main, ["repo", "--flavour", "tensorrt-llm", "--config", str(path),
                                        "--out", str(tmp_path / "deploy")])
    assert refused.exit_code == 2 and "engines missing" in refused.output and "engines/target" in refused.output
    assert not (tmp_path / "deploy").exists()
    result = CliRunner().invoke(main, ["repo", "--flavour", "tensorrt-llm", "--config", str(path),
                                       "--out", str(tmp_path / "deploy"), "--no-engine-check"])
    assert result.exit_code == 0, result.output
    models = tmp_path / "deploy" / "models"
    configs = {m.name: validate_config((m / "config.pbtxt").read_text(), m.name) for m in models.iterdir()}
    assert sorted(configs) == ["autojudge", "autojudge_stream"]
    assert all(c.backend == "python" and c.instance_group[0].kind == c.instance_group[0].KIND_CPU
               for c in configs.values())
    stream = {k: v.string_value for k, v in configs["autojudge_stream"].parameters.items()}
    out = tmp_path / "out"
    assert stream["target_engine"] == str(out / "engines" / "target")
    assert stream["draft_engine"] == str(out / "engines" / "draft")
    assert (stream["target_tp"], stream["target_device_ids"], stream["draft_tp"]) == ("2", "0,1", "1")
    assert stream["judge_plan"] == str(out / "engines" / "judge_accept" / "judge_accept.plan")
    assert stream["plugin_library"] == str(out / "plugin" / "libautojudge_judge_accept_plugin.so")
    assert (stream["backend"], stream["default_window"], stream["max_window"]) == ("tensorrt-llm", "6", "6")
    assert stream["default_mode"] == "judge" and configs["autojudge_stream"].model_transaction_policy.decoupled
    assert configs["autojudge"].parameters["forward_to"].string_value == "autojudge_stream"
    manifest = json.loads((tmp_path / "deploy" / "deployment.json").read_text())
    assert manifest["flavour"] == "tensorrt-llm"
    assert manifest["serve"] == f"tritonserver --model-repository {models.resolve()}"  # no mpirun, no plugins=


def test_a_tensor_parallel_engine_is_orchestrated_from_the_one_server_process(pair, tmp_path):
    """Point 8: a TP 2 engine cannot be led from a one-process MPI world (the Python model); the
    loader opens it in orchestrator mode, which spawns its ranks from the executor worker."""
    from autojudge.serving.trtllm.loader import open_executor

    path = engine(tmp_path, pair[0], "--hidden-output", "autojudge_hidden_states", tp=2)
    with pytest.raises(RuntimeError, match="MPI world size is 1"):
        executor(path)
    with pytest.raises(RuntimeError, match="does not exist"):
        open_executor(trtllm_executor, str(path), True, 2, [0, 1], 0.5, str(tmp_path / "no-worker"))
    worker = tmp_path / "executorWorker"
    worker.write_text("")
    opened = open_executor(trtllm_executor, str(path), True, 2, [0, 1], 0.5, str(worker))
    assert opened.config.parallel_config.communication_mode == trtllm_executor.CommunicationMode.ORCHESTRATOR
    assert opened.config.parallel_config.device_ids == [0, 1]


# ----------------------------------------------------------------------------- today's line (PyTorch backend)


def llm_backend(pair, judge=None, registered=True):
    """The backend over two emulated tensorrt_llm.LLM (PyTorch backend) with the judge-accept op."""
    from autojudge.acceptance.torch_op import TorchJudgeAccept
    from autojudge.serving.trtllm.backend import TensorRTLLMBackend
    from autojudge.serving.trtllm.llm_api import LLMClient, register_hidden_state_model
    from autojudge.testing import trtllm_torch
    from autojudge.testing.trtllm_torch._torch.models import modeling_llama, modeling_utils

    target, draft = pair
    if registered:
        register_hidden_state_model(modeling_llama, modeling_utils)
    clients = [LLMClient(trtllm_torch, trtllm_torch.LLM(model=trtllm_torch.register_model(f"llm-{id(lm)}", lm)),
                         None) for lm in (draft, target)]
    return TensorRTLLMBackend(*clients, target.logits, target.vocab_size, target.tokenizer, frozenset(), judge,
                              TorchJudgeAccept(judge, "cpu") if judge else None)


@pytest.fixture
def fresh_registry(monkeypatch):
    from autojudge.testing.trtllm_torch._torch.models import modeling_utils

    monkeypatch.setattr(modeling_utils, "_EXTERNAL", {})


@pytest.mark.parametrize("mode", ["lossless", "topk", "judge"])
def test_todays_line_through_the_llm_api_matches_the_in_process_decoder(pair, mode, fresh_registry):
    target, draft = pair
    judge = random_judge(target, draft, "draft+target")
    config = DecodeConfig(mode=mode, window=4, top_k=3, max_new_tokens=32)
    prompts = [PROMPT, PROMPT[:5]]
    in_process = SpeculativeDecoder(target, draft, judge).generate_batch(prompts, config, eos_token_ids=frozenset())
    backend = llm_backend(pair, judge)
    served = SpeculativeLoop(backend).generate_batch(prompts, config)
    for got, want in zip(served, in_process):
        same_run(got, want)
    if mode != "lossless":
        assert sum(r.metrics.num_accepted_mismatches for r in served) > 0
    salts = {salt for _, _, salt in backend.target.llm.requests}
    assert len(salts) == 2  # a salt per row; later passes found the row's prefix in the cache
    assert max(len(p) for p, _, _ in backend.target.llm.requests) > len(PROMPT)


def test_todays_line_needs_a_model_that_returns_its_hidden_states(pair, fresh_registry):
    """No built-in PyTorch-backend model returns its final-norm states: without the registered model the
    request for them fails, as it would on a GPU host (modeling_utils.py / handle_additional_outputs.py)."""
    backend = llm_backend(pair, random_judge(*pair, "draft+target"), registered=False)
    with pytest.raises(RuntimeError, match="not returned by the model"):
        SpeculativeLoop(backend).generate(PROMPT, DecodeConfig(mode="judge", window=4, max_new_tokens=8))
