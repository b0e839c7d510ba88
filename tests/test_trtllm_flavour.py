"""The TensorRT-LLM flavour's orchestration, run on CPU through the same loop as flavour 1.

The BLS session (autojudge.serving.trtllm.backend) talks to the draft, target and
judge-accept models only through their tensor contract; ReferenceModels answers that
contract with tiny in-process models. Every mode must give exactly what the in-process
decoder gives.
"""

from __future__ import annotations

import pytest
import torch
from conftest import perturbed, tiny_model

from autojudge.decoding import DecodeConfig, SpeculativeDecoder, SpeculativeLoop
from autojudge.judge import Judge, JudgeMetadata
from autojudge.serving.trtllm.backend import JUDGE_MODEL, TensorRTLLMBackend
from autojudge.serving.trtllm.contract import DRAFT_MODEL, HIDDEN_OUTPUT
from autojudge.testing.trtllm_reference import ReferenceModels

PROMPT = [1, 504, 3458, 314, 253, 1234, 17, 2800, 30]


@pytest.fixture(scope="module")
def pair(make_lm):
    target = tiny_model(0)  # a draft that agrees about half the time (tau ~1.4 at W=4)
    return make_lm(target, "tiny-target"), make_lm(perturbed(target, 0.2, seed=4), "tiny-draft")


def random_judge(target, draft, layout: str, seed: int = 0) -> Judge:
    torch.manual_seed(seed)
    meta = JudgeMetadata(target.name, target.hidden_size, draft.name, draft.hidden_size, layout, threshold=0.5)
    return Judge(torch.randn(meta.num_features) * 0.3, 0.0, meta)


def both_ways(pair, judge, config):
    target, draft = pair
    in_process = SpeculativeDecoder(target, draft, judge).generate(PROMPT, config)
    models = ReferenceModels(target, draft, judge)
    backend = TensorRTLLMBackend(models, target.tokenizer, frozenset(), judge)
    served = SpeculativeLoop(backend).generate(PROMPT, config, eos_token_ids=frozenset())
    return in_process, served, models


def test_lossless_through_the_trtllm_contract_is_the_targets_greedy_output(pair):
    config = DecodeConfig(mode="lossless", window=4, max_new_tokens=40)
    in_process, served, models = both_ways(pair, None, config)
    greedy = SpeculativeDecoder(pair[0]).generate(PROMPT, DecodeConfig(mode="target", max_new_tokens=40),
                                                  eos_token_ids=frozenset())
    assert served.token_ids == greedy.token_ids
    assert served.metrics.mean_acceptance_length == in_process.metrics.mean_acceptance_length > 1.0
    assert models.requests[JUDGE_MODEL] == 0  # lossless needs no judge engine


@pytest.mark.parametrize("layout", ["draft+target", "target"])
def test_judge_mode_through_the_judge_accept_engine_matches_the_in_process_decoder(pair, layout):
    judge = random_judge(*pair, layout)
    config = DecodeConfig(mode="judge", window=5, max_new_tokens=48)
    in_process, served, models = both_ways(pair, judge, config)
    assert served.token_ids == in_process.token_ids
    assert served.metrics.num_accepted_mismatches == in_process.metrics.num_accepted_mismatches > 0
    assert served.metrics.num_target_calls == in_process.metrics.num_target_calls
    assert models.requests[JUDGE_MODEL] == served.metrics.num_target_calls


def test_topk_through_the_trtllm_contract_matches_the_in_process_decoder(pair):
    config = DecodeConfig(mode="topk", window=3, top_k=3, max_new_tokens=30)
    in_process, served, _ = both_ways(pair, None, config)
    assert served.token_ids == in_process.token_ids
    assert served.metrics.num_accepted_mismatches == in_process.metrics.num_accepted_mismatches


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
    import json

    from click.testing import CliRunner

    from autojudge.cli import main
    from autojudge.serving.repo import validate_config

    path = deployment(tmp_path, extra="tensor_parallel: 2\n")
    refused = CliRunner().invoke(main, ["repo", "--flavour", "tensorrt-llm", "--config", str(path),
                                        "--out", str(tmp_path / "deploy")])
    assert refused.exit_code == 2 and "engines missing" in refused.output and "engines/target" in refused.output
    assert not (tmp_path / "deploy").exists()
    result = CliRunner().invoke(main, ["repo", "--flavour", "tensorrt-llm", "--config", str(path),
                                       "--out", str(tmp_path / "deploy"), "--no-engine-check"])
    assert result.exit_code == 0, result.output
    models = tmp_path / "deploy" / "models"
    configs = {m.name: validate_config((m / "config.pbtxt").read_text(), m.name) for m in models.iterdir()}
    assert sorted(configs) == ["autojudge", "autojudge_stream", "draft", "judge_accept", "target"]
    for role, hidden in (("draft", 2048), ("target", 4096)):
        config = configs[role]
        assert config.backend == "tensorrtllm"
        assert config.parameters["gpt_model_path"].string_value == str(tmp_path / "out" / "engines" / role)
        assert config.parameters["enable_kv_cache_reuse"].string_value == "true"
        hidden_output = next(o for o in config.output if o.name == "autojudge_hidden_states")
        assert list(hidden_output.dims) == [-1, hidden]
    judge = configs["judge_accept"]
    assert judge.platform == "tensorrt_plan"
    assert [i.name for i in judge.input] == ["draft_tokens", "target_tokens", "draft_hidden", "target_hidden",
                                             "threshold"]
    assert list(judge.input[3].dims) == [-1, -1, 4096]
    plan = models / "judge_accept" / "1" / "model.plan"
    assert plan.is_symlink() and plan.readlink() == tmp_path / "out" / "engines" / "judge_accept" / "judge_accept.plan"
    bls = configs["autojudge"].parameters
    assert (bls["backend"].string_value, bls["default_window"].string_value) == ("tensorrt-llm", "6")
    assert bls["max_window"].string_value == "6"  # requests are bounded by the target engine's max_draft_len
    assert bls["default_mode"].string_value == "judge"
    assert configs["autojudge_stream"].model_transaction_policy.decoupled
    manifest = json.loads((tmp_path / "deploy" / "deployment.json").read_text())
    assert manifest["flavour"] == "tensorrt-llm"
    assert manifest["serve"].startswith("mpirun --allow-run-as-root -n 2 tritonserver --model-repository ")
    assert "--backend-config=tensorrt,plugins=" in manifest["serve"]


def test_the_engine_models_carry_the_parameters_the_tensorrtllm_backend_reads_without_a_default(tmp_path):
    """Issue 17, point 3: the real backend fails to load a model whose config lacks tokenizer_dir,
    xgrammar_tokenizer_info_path or guided_decoding_backend; the emulation refuses the same."""
    from click.testing import CliRunner

    from autojudge.cli import main
    from autojudge.errors import AutoJudgeError
    from autojudge.testing.trtllm_reference import use_reference_engines

    result = CliRunner().invoke(main, ["repo", "--flavour", "tensorrt-llm", "--config", str(deployment(tmp_path)),
                                       "--out", str(tmp_path / "deploy"), "--no-engine-check"])
    assert result.exit_code == 0, result.output
    models = tmp_path / "deploy" / "models"
    for role in ("draft", "target"):
        text = (models / role / "config.pbtxt").read_text()
        for key in ("tokenizer_dir", "xgrammar_tokenizer_info_path", "guided_decoding_backend"):
            assert f'parameters {{ key: "{key}" value: {{ string_value: "" }} }}' in text
    config = models / "target" / "config.pbtxt"
    kept = [line for line in config.read_text().splitlines() if "xgrammar_tokenizer_info_path" not in line]
    config.write_text("\n".join(kept))
    with pytest.raises(AutoJudgeError, match="Cannot find parameter with name: xgrammar_tokenizer_info_path"):
        use_reference_engines(models, "embedded", "embedded")


def test_a_target_only_judge_gets_a_judge_accept_model_without_draft_hidden(tmp_path):
    from autojudge.deploy.config import load_config
    from autojudge.deploy.triton_repo import write_trtllm_repo
    from autojudge.serving.repo import validate_config

    models = write_trtllm_repo(tmp_path / "deploy", load_config(deployment(tmp_path, layout="target")),
                               check_engines=False)
    judge = validate_config((models / "judge_accept" / "config.pbtxt").read_text(), "judge_accept")
    assert [i.name for i in judge.input] == ["draft_tokens", "target_tokens", "target_hidden", "threshold"]


@pytest.fixture(scope="module")
def pair64(make_lm):
    target = tiny_model(0).double()  # float64: a batch and a row alone sum alike
    return make_lm(target, "tiny-target"), make_lm(perturbed(target, 0.2, seed=4), "tiny-draft")


@pytest.mark.parametrize("mode", ["lossless", "topk", "judge"])
def test_a_batch_through_the_trtllm_contract_equals_the_in_process_batch(pair64, mode):
    """Three rows of different lengths: one request per row and step to the engines, and one
    judge-accept request for the whole batch, give what the in-process batch gives."""
    target, draft = pair64
    judge = random_judge(target, draft, "draft+target")
    prompts = [PROMPT, PROMPT[:4], [1, 77, 3000, 25, 911, 5, 8]]
    config = DecodeConfig(mode=mode, window=4, top_k=3, max_new_tokens=24)
    in_process = SpeculativeDecoder(target, draft, judge).generate_batch(prompts, config, eos_token_ids=frozenset())
    models = ReferenceModels(target, draft, judge)
    backend = TensorRTLLMBackend(models, target.tokenizer, frozenset(), judge)
    served = SpeculativeLoop(backend).generate_batch(prompts, config)
    assert [r.token_ids for r in served] == [r.token_ids for r in in_process]
    assert [r.metrics.num_accepted_mismatches for r in served] == [r.metrics.num_accepted_mismatches
                                                                   for r in in_process]
    if mode == "judge":  # one engine call per cycle, for all rows at once
        assert models.requests[JUDGE_MODEL] == max(r.metrics.num_target_calls for r in served)
    if mode in ("topk", "judge"):  # the rule accepted some mismatches and rejected others
        assert sum(r.metrics.num_accepted_mismatches for r in served) > 0
        assert sum(r.metrics.num_draft_tokens - r.metrics.num_accepted_tokens for r in served) > 0


def test_a_window_beyond_the_engines_max_draft_len_is_a_clear_error(pair):
    from autojudge.errors import AutoJudgeError

    target, draft = pair
    backend = TensorRTLLMBackend(ReferenceModels(target, draft, None), target.tokenizer, frozenset(), None,
                                 max_window=4)
    with pytest.raises(AutoJudgeError, match=r"window must be in 1\.\.4 \(the target engine's max_draft_len\), got 8"):
        SpeculativeLoop(backend).generate(PROMPT, DecodeConfig(mode="lossless", window=8))


def test_a_served_request_is_bounded_by_the_engines_max_draft_len():
    import numpy as np

    from autojudge.serving.requests import RequestError, ServeDefaults, parse_request
    from autojudge.serving.trtllm.contract import MAX_DRAFT_LEN_BOUND

    defaults = ServeDefaults(mode="lossless", window=4, max_window=8, window_bound=MAX_DRAFT_LEN_BOUND)
    assert parse_request({"prompt": np.array([b"hi"]), "window": np.array([8])}, defaults).window == 8
    with pytest.raises(RequestError, match=r"'window': must be in 1\.\.8 \(the target engine's max_draft_len\)"):
        parse_request({"prompt": np.array([b"hi"]), "window": np.array([9])}, defaults)


def test_a_draft_engine_that_stops_early_still_gives_the_targets_tokens(pair64):
    """A draft request that ends before w tokens (the engine met its end id) leaves that row with
    fewer draft tokens: the row is padded, never accepts the padding, and the judge gets the
    states of the tokens that were drafted."""
    target, draft = pair64
    models = ReferenceModels(target, draft, random_judge(target, draft, "draft+target"))
    short = {"calls": 0}

    def call(model, inputs, outputs):
        out = models(model, inputs, outputs)
        if model == DRAFT_MODEL and len(inputs["input_ids"][0]) % 2:  # every other length: 2 tokens, 1 state after
            short["calls"] += 1
            out = {name: (t[..., :2] if name == "output_ids" else t[:, :2] if name == HIDDEN_OUTPUT else t)
                   for name, t in out.items()}
        return out

    prompts = [PROMPT, PROMPT[:4], [1, 77, 3000, 25, 911, 5, 8]]
    backend = TensorRTLLMBackend(call, target.tokenizer, frozenset(), models.judge)
    proposal = backend.open(3, uses_draft=True).propose(prompts, 4, need_hidden=True)
    assert proposal.lengths.tolist() == [1, 4, 1]  # lengths 9 and 7 are odd: one token has its state
    for row, n in enumerate(proposal.lengths.tolist()):  # a real draft state behind every drafted token
        assert bool((proposal.hidden[row, :n].abs().sum(dim=-1) > 0).all())
    greedy = SpeculativeDecoder(target).generate_batch(prompts, DecodeConfig(mode="target", max_new_tokens=24),
                                                       eos_token_ids=frozenset())
    for mode in ("lossless", "judge"):
        served = SpeculativeLoop(backend).generate_batch(prompts, DecodeConfig(mode=mode, window=4,
                                                                                max_new_tokens=24))
        if mode == "lossless":
            assert [r.token_ids for r in served] == [r.token_ids for r in greedy]
        assert all(len(r.token_ids) == 24 for r in served)
    assert short["calls"] > 0


def test_the_reference_refuses_generation_requests_without_output_ids_and_sequence_length(pair):
    """As the stock tensorrtllm backend's fillTritonResponse does (issue 17, point 4): a BLS that asks
    a generation model for fewer outputs gets an error, and ours asks for both in every request."""
    from autojudge.errors import AutoJudgeError

    target, draft = pair
    judge = random_judge(target, draft, "draft+target")
    models = ReferenceModels(target, draft, judge)
    inputs = {"input_ids": torch.tensor([PROMPT], dtype=torch.int32), "input_lengths": torch.tensor([[len(PROMPT)]]),
              "request_output_len": torch.tensor([[2]]), "runtime_top_k": torch.tensor([[1]])}
    for outputs in (["output_ids"], ["sequence_length", HIDDEN_OUTPUT], ["generation_logits"]):
        with pytest.raises(AutoJudgeError, match="tensor must be present in list of output tensors"):
            models(DRAFT_MODEL, inputs, outputs)
    asked = []

    def recording(model, inputs, outputs):
        asked.append((model, list(outputs)))
        return models(model, inputs, outputs)

    backend = TensorRTLLMBackend(recording, target.tokenizer, frozenset(), judge)
    SpeculativeLoop(backend).generate(PROMPT, DecodeConfig(mode="judge", window=3, max_new_tokens=6))
    generation = [outputs for model, outputs in asked if model != JUDGE_MODEL]
    assert generation and all({"output_ids", "sequence_length"} <= set(outputs) for outputs in generation)
