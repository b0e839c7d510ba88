"""Shared fixtures: the real embedded target and tiny random-initialised models that reuse
its tokenizer (fast enough to decode hundreds of sequences in a test run)."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from autojudge.models import CausalLM, embedded_target_dir, load_target, quiet_transformers

quiet_transformers()
torch.set_grad_enabled(False)

TINY_VOCAB = 49152  # SmolLM2's vocabulary, so the real tokenizer applies


@pytest.fixture(scope="session")
def smol_tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(embedded_target_dir())


def tiny_config(layers: int = 2, hidden: int = 64) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=TINY_VOCAB, hidden_size=hidden, intermediate_size=2 * hidden,
        num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=1024, bos_token_id=1, eos_token_id=2, pad_token_id=2,
        tie_word_embeddings=True,
    )


def tiny_model(seed: int, layers: int = 2, hidden: int = 64) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    model = LlamaForCausalLM(tiny_config(layers, hidden))
    with torch.no_grad():  # larger weights: confident, varied greedy choices
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.25 if p.shape[0] == TINY_VOCAB else 0.12)
    return model.eval()


def perturbed(model: LlamaForCausalLM, noise: float, seed: int) -> LlamaForCausalLM:
    """A copy of ``model`` with Gaussian noise on its weights: a draft that agrees often."""
    import copy

    torch.manual_seed(seed)
    other = copy.deepcopy(model)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(torch.randn_like(p) * noise * p.std())
    return other


@pytest.fixture(scope="session")
def make_lm(smol_tokenizer):
    def make(model, name: str) -> CausalLM:
        return CausalLM(name=name, model=model, tokenizer=smol_tokenizer)

    return make


@pytest.fixture(scope="session")
def embedded_target():
    return load_target("embedded", device="cpu")
