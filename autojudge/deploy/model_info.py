"""What the build needs to know about a checkpoint before touching its weights.

Read from ``config.json`` of a local checkpoint directory, or of the Hugging Face cache
for a hub id that was downloaded before. A hub id that is not in the cache is *unknown*
here (no network is used): the plan still shows its steps, and the checks that need its
shape say so instead of guessing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

# Architectures TensorRT-LLM 1.2 converts from Hugging Face with the decoder-only path used here.
SUPPORTED_ARCHITECTURES = ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM",
                           "GemmaForCausalLM", "Gemma2ForCausalLM", "Phi3ForCausalLM")


@dataclass(frozen=True)
class ModelInfo:
    name: str
    architecture: str
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    intermediate_size: int
    vocab_size: int
    max_position_embeddings: int
    tied_embeddings: bool
    directory: Path | None  # where config.json (and the tokenizer) were found

    @property
    def num_parameters(self) -> int:
        """Decoder-only transformer with gated MLP (Llama family): exact up to norms and biases."""
        h, i = self.hidden_size, self.intermediate_size
        kv = h // self.num_heads * self.num_kv_heads
        per_layer = h * (2 * h + 2 * kv) + 3 * h * i
        embeddings = self.vocab_size * h * (1 if self.tied_embeddings else 2)
        return self.num_layers * per_layer + embeddings


def config_path(spec: str) -> Path | None:
    """config.json of a local directory, or of a cached hub download; None when unknown."""
    local = Path(spec).expanduser()
    if local.is_dir():
        return local / "config.json" if (local / "config.json").is_file() else None
    if spec.count("/") != 1:
        return None
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    found = try_to_load_from_cache(spec, "config.json")
    return Path(found) if isinstance(found, str) else None


def read_model_info(spec: str) -> ModelInfo | None:
    path = config_path(spec)
    if path is None:
        return None
    raw = json.loads(path.read_text())
    raw = raw.get("text_config", raw)
    heads = raw.get("num_attention_heads", 1)
    return ModelInfo(
        name=spec, architecture=(raw.get("architectures") or ["?"])[0], hidden_size=raw["hidden_size"],
        num_layers=raw["num_hidden_layers"], num_heads=heads, num_kv_heads=raw.get("num_key_value_heads", heads),
        intermediate_size=raw.get("intermediate_size", 4 * raw["hidden_size"]), vocab_size=raw["vocab_size"],
        max_position_embeddings=raw.get("max_position_embeddings", 0),
        tied_embeddings=bool(raw.get("tie_word_embeddings", False)), directory=path.parent)
