"""build/build_engine.py against the emulation of the TensorRT-LLM 1.2.x builder
(autojudge.testing.trtllm_builder), which behaves like the real one where the script depends on
it, and the engines it writes against the executor emulation that serves them.

Issue 17, points 1 and 2: a speculative mode given as a string builds, silently, an engine
without it (BuildConfig types the field as an IntFlag and build() compares with ==,
tensorrt_llm/builder.py); an engine built with gather_context_logits gets KV-cache block reuse
turned off at load (trtGptModelInflightBatching.cpp fixExecutorConfig). The target is verified by
a context pass, so neither is wanted: these tests fail if either comes back.
"""

from __future__ import annotations

import json

import pytest
from conftest import tiny_model

from autojudge.testing import trtllm_executor
from autojudge.testing.trtllm_builder import (BuildConfig, SpeculativeDecodingMode, _build, _Model, build_engine,
                                              write_checkpoint)


@pytest.fixture(scope="module")
def target(make_lm):
    return make_lm(tiny_model(0), "tiny-target")


def built(tmp_path, target, *args: str) -> dict:
    checkpoint = write_checkpoint(tmp_path / "ckpt", trtllm_executor.register_model("build-contract", target),
                                  "float32")
    build_engine("--checkpoint", checkpoint, "--out", tmp_path / "engine", *args)
    return json.loads((tmp_path / "engine" / "config.json").read_text())["build_config"]


def test_the_engines_keep_block_reuse_and_return_their_hidden_states(tmp_path, target):
    build = built(tmp_path, target, "--hidden-output", "autojudge_hidden_states")
    assert build["speculative_decoding_mode"] == "NONE"
    assert not build["gather_context_logits"] and not build["gather_generation_logits"]
    assert build["plugin_config"]["use_paged_context_fmha"]
    emulation = json.loads((tmp_path / "engine" / "emulation.json").read_text())
    assert emulation["marked_outputs"] == ["autojudge_hidden_states"]
    api = trtllm_executor
    executor = api.Executor(tmp_path / "engine", api.ModelType.DECODER_ONLY, api.ExecutorConfig(
        additional_model_outputs=[api.AdditionalModelOutput("autojudge_hidden_states", gather_context=True)]))
    assert executor.reuse  # each row's prefix survives between cycles


def test_the_emulated_builder_behaves_like_the_real_one_on_the_mode_field(tmp_path):
    """The fact behind point 1, encoded: the string builds without external drafts, the enum with them."""
    model = _Model(tmp_path, {"dtype": "float32", "autojudge_emulation": {"checkpoint": "x"}})
    for mode, expected in (("draft_tokens_external", "NONE"),
                           (SpeculativeDecodingMode.DRAFT_TOKENS_EXTERNAL, "DRAFT_TOKENS_EXTERNAL")):
        _build(model, BuildConfig(speculative_decoding_mode=mode)).save(str(tmp_path / "e"))
        assert json.loads((tmp_path / "e" / "config.json").read_text())["build_config"][
            "speculative_decoding_mode"] == expected
