"""Models made of some of the target's layers: self-speculative drafts and distillation students."""

from __future__ import annotations

import copy

import torch
from transformers import AutoModelForCausalLM, PreTrainedModel

from autojudge.errors import AutoJudgeError, ModelLoadError
from autojudge.models.causal_lm import CausalLM

SELF_DRAFT_PREFIX = "layers:"


def embedding_tensors(model: PreTrainedModel) -> tuple[torch.Tensor, ...]:
    """The token embedding and LM head weights (one tensor if tied), whatever the family's names."""
    tensors = (model.get_input_embeddings().weight, model.get_output_embeddings().weight)
    return tensors[:1] if tensors[0] is tensors[1] else tensors


def trainable_parameters(model: PreTrainedModel) -> dict[str, torch.nn.Parameter]:
    """Every parameter but the embedding and LM head, which derived drafts share with the target."""
    shared = embedding_tensors(model)
    return {n: p for n, p in model.named_parameters() if not any(p is t for t in shared)}


def layer_subset_model(target: CausalLM, layers: tuple[int, ...], name: str,
                       trainable: bool = False) -> CausalLM:
    """The target's architecture with only ``layers`` (in that order), its final norm and LM head.

    Embedding and LM head are the target's own tensors. The layers and norm are the target's
    tensors too (``trainable=False``: a free self-speculative draft) or copies that can be
    trained (``trainable=True``: a student for distillation).
    """
    from transformers.initialization import no_init_weights

    if not layers or any(not 0 <= i < target.num_layers for i in layers):
        raise ModelLoadError(f"layers {layers} must be in 0..{target.num_layers - 1}")
    config = copy.deepcopy(target.model.config)
    text_config = config.get_text_config()
    text_config.num_hidden_layers = len(layers)
    if getattr(text_config, "layer_types", None):
        text_config.layer_types = [text_config.layer_types[i] for i in layers]
    with no_init_weights():
        model = AutoModelForCausalLM.from_config(config, dtype=target.dtype)
    source = target.model.state_dict()
    shared_ptrs = {t.data_ptr() for t in embedding_tensors(target.model)}
    state = {}
    for key in model.state_dict():
        source_key = key
        if ".layers." in key:
            head, rest = key.split(".layers.", 1)
            index, tail = rest.split(".", 1)
            source_key = f"{head}.layers.{layers[int(index)]}.{tail}"
        shared = not trainable or source[source_key].data_ptr() in shared_ptrs
        state[key] = source[source_key] if shared else source[source_key].clone()
    model.load_state_dict(state, assign=True, strict=True)
    model.to(target.device)
    model.requires_grad_(False)
    if trainable:
        for param in trainable_parameters(model).values():
            param.requires_grad_(True)
    lm = CausalLM(name=name, model=model, tokenizer=target.tokenizer,
                  eos_token_ids=target.eos_token_ids, screened_greedy=target.screened_greedy)
    lm._greedy_heads = target._greedy_heads  # the same LM-head tensor: share its greedy heads
    return lm


def truncated_draft(target: CausalLM, num_layers: int) -> CausalLM:
    """The target's first ``num_layers`` layers + final norm + LM head, weights shared."""
    return layer_subset_model(target, tuple(range(num_layers)),
                              name=f"{target.name}[{SELF_DRAFT_PREFIX}{num_layers}]")


def build_student(target: CausalLM, init_layers: tuple[int, ...]) -> CausalLM:
    """The target's architecture with ``len(init_layers)`` layers copied from ``init_layers``;
    embedding and LM head shared with the target (same tensors, frozen)."""
    try:
        return layer_subset_model(target, tuple(init_layers), trainable=True,
                                  name=f"{target.name}[distilled:{len(init_layers)}]")
    except ModelLoadError as exc:
        raise AutoJudgeError(f"bad init layers: {exc}") from exc


def trainable_state(student: CausalLM) -> dict[str, torch.Tensor]:
    return trainable_parameters(student.model)
