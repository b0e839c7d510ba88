"""The TensorRT-LLM flavour's orchestration, run on CPU through the same loop as flavour 1.

The BLS session (autojudge.serving.trtllm_backend) talks to the draft, target and
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
from autojudge.serving.trtllm_backend import JUDGE_MODEL, TensorRTLLMBackend
from autojudge.serving.trtllm_reference import ReferenceModels

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
