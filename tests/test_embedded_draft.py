"""The draft shipped with the project for the embedded target."""

from __future__ import annotations

import hashlib
import json
import shutil

import pytest
import torch

from autojudge.errors import ModelLoadError
from autojudge.models import EMBEDDED_DRAFT_DIR, default_draft, draft_spec_for, load_draft
from autojudge.models.draft_artifact import DRAFT_METADATA, DRAFT_WEIGHTS, load_draft_artifact


def test_default_draft_is_the_shipped_one():
    assert default_draft("embedded") == "embedded" and default_draft("testbed") == "testbed"
    assert default_draft("some/checkpoint") is None
    assert draft_spec_for("some/checkpoint", "layers:2") == "layers:2"
    with pytest.raises(ModelLoadError, match="needs --draft"):
        draft_spec_for("some/checkpoint", None)


def test_shipped_draft_loads_with_checksum_shapes_and_tokenizer(embedded_target):
    meta = json.loads((EMBEDDED_DRAFT_DIR / DRAFT_METADATA).read_text())
    weights = (EMBEDDED_DRAFT_DIR / DRAFT_WEIGHTS).read_bytes()
    assert hashlib.sha256(weights).hexdigest() == meta["weights_sha256"]
    assert len(weights) <= 30 * 1024 * 1024  # shipped in the repository: at most 30 MB
    assert meta["made_by"]["command"].startswith("autojudge-trt draft distill")
    assert "seed" in meta["made_by"]["config"]
    draft = load_draft("embedded", embedded_target)
    assert draft.num_layers == meta["num_layers"] == len(meta["init_layers"])
    assert draft.hidden_size == embedded_target.hidden_size
    assert draft.tokenizer is embedded_target.tokenizer  # identical vocabulary by construction
    # embedding and LM head are the target's own tensors, not copies from the artifact
    assert draft.model.lm_head.weight.data_ptr() == embedded_target.model.lm_head.weight.data_ptr()
    assert draft.model.model.embed_tokens.weight.data_ptr() == embedded_target.model.model.embed_tokens.weight.data_ptr()


def test_shipped_draft_agrees_with_target_more_than_a_truncation(embedded_target):
    from autojudge.decoding import DecodeConfig, SpeculativeDecoder
    from autojudge.models import encode_prompt
    from autojudge.tasks.gsm8k import format_prompt

    prompt = encode_prompt(embedded_target.tokenizer, format_prompt(
        "Tom has 3 boxes with 12 pencils each. He gives away 10 pencils. How many are left?"))
    rates = {}
    for spec in ("embedded", "layers:4"):
        decoder = SpeculativeDecoder(embedded_target, load_draft(spec, embedded_target))
        rates[spec] = decoder.generate(prompt, DecodeConfig(window=3, max_new_tokens=48)).metrics.draft_acceptance_rate
    assert rates["embedded"] > rates["layers:4"] + 0.2


@pytest.mark.parametrize("damage", ["flip-byte", "truncate", "delete", "bad-json"])
def test_damaged_shipped_draft_is_a_clear_error(embedded_target, tmp_path, damage):
    copy = shutil.copytree(EMBEDDED_DRAFT_DIR, tmp_path / "draft")
    weights = copy / DRAFT_WEIGHTS
    if damage == "flip-byte":
        data = bytearray(weights.read_bytes())
        data[12345] ^= 0x01
        weights.write_bytes(bytes(data))
    elif damage == "truncate":
        weights.write_bytes(weights.read_bytes()[:1000])
    elif damage == "delete":
        weights.unlink()
    else:
        (copy / DRAFT_METADATA).write_text("{not json")
    message = {"flip-byte": "sha256", "truncate": "sha256", "delete": "has no draft.safetensors",
               "bad-json": "not valid JSON"}[damage]
    with pytest.raises(ModelLoadError, match=message):
        load_draft_artifact(copy, embedded_target)


@pytest.mark.parametrize("changes, message", [
    ({"init_layers": [0] * 100_000, "num_layers": 100_000}, "field 'num_layers': Input should be less than or equal"),
    ({"init_layers": [0] * 2000}, "field 'init_layers': List should have at most 1024 items"),
    ({"init_layers": [0] * 40, "num_layers": 40}, "field 'init_layers': must list num_layers \\(40\\) layers of the "
                                                  "target, at most its 30"),
    ({"init_layers": [0, 1, 2, 99]}, "field 'init_layers': .*each in 0..29"),
    ({"init_layers": [0, 1, 2]}, "field 'init_layers': must list num_layers \\(4\\)"),
    ({"init_layers": "0,1,2,3"}, "field 'init_layers': Input should be a valid list"),
    ({"init_layers": [0, 1, 2, "3"]}, "field 'init_layers.3': Input should be a valid integer"),
    ({"target_hidden_size": "576"}, "field 'target_hidden_size': Input should be a valid integer"),
    ({"target": "__delete__"}, "field 'target': Field required"),
])
def test_malformed_draft_metadata_is_refused_naming_the_field_before_anything_is_built(embedded_target, tmp_path,
                                                                                      changes, message):
    copy = shutil.copytree(EMBEDDED_DRAFT_DIR, tmp_path / "draft")
    meta = json.loads((copy / DRAFT_METADATA).read_text())
    meta.update(changes)
    meta = {k: v for k, v in meta.items() if v != "__delete__"}
    (copy / DRAFT_METADATA).write_text(json.dumps(meta))
    with pytest.raises(ModelLoadError, match=message):
        load_draft_artifact(copy, embedded_target)


@pytest.mark.parametrize("vocab", [torch.tensor([], dtype=torch.long), torch.tensor([1.0, 2.0]),
                                   torch.tensor([1, 2], dtype=torch.int8), torch.tensor([5, 3])],
                         ids=["empty", "float", "int8", "descending"])
def test_a_malformed_greedy_vocabulary_is_refused(embedded_target, tmp_path, vocab):
    from safetensors.torch import load_file

    from autojudge.models.draft_artifact import GREEDY_VOCAB
    from autojudge.storage import write_artifact

    meta = json.loads((EMBEDDED_DRAFT_DIR / DRAFT_METADATA).read_text())
    tensors = {**load_file(EMBEDDED_DRAFT_DIR / DRAFT_WEIGHTS), GREEDY_VOCAB: vocab}
    write_artifact(tmp_path / "d", DRAFT_WEIGHTS, DRAFT_METADATA, tensors, meta)
    with pytest.raises(ModelLoadError, match="greedy_vocab must be a non-empty int64 vector of ascending token ids"):
        load_draft_artifact(tmp_path / "d", embedded_target)


def test_embedded_draft_refuses_another_target(make_lm):
    from conftest import tiny_model

    with pytest.raises(ModelLoadError, match="the embedded draft is distilled for SmolLM2-135M-Instruct"):
        load_draft("embedded", make_lm(tiny_model(0), "tiny"))


def test_lossless_with_shipped_draft_equals_target(embedded_target):
    from autojudge.decoding import DecodeConfig, SpeculativeDecoder
    from autojudge.models import encode_prompt
    from autojudge.tasks.gsm8k import format_prompt

    decoder = SpeculativeDecoder(embedded_target, load_draft("embedded", embedded_target))
    prompt = encode_prompt(embedded_target.tokenizer, format_prompt(
        "A shop sells 5 apples for $2. How much do 20 apples cost?"))
    reference = decoder.generate(prompt, DecodeConfig(mode="target", max_new_tokens=40))
    for window in (2, 4, 8):
        result = decoder.generate(prompt, DecodeConfig(mode="lossless", window=window, max_new_tokens=40))
        assert result.token_ids == reference.token_ids
