"""Draft and target models: loading and the load-time checks (``loading``), the calls decoding makes
(``causal_lm``), token-level helpers (``tokenizer``), drafts made of the target's layers (``layer_subset``) and
distilled ones on disk (``draft_artifact``), the ragged-batch KV cache (``ragged_cache``), and
CPU speed kernels (``cpu/``)."""

from autojudge.models.causal_lm import CausalLM, crop_cache
from autojudge.models.layer_subset import (SELF_DRAFT_PREFIX, embedding_tensors, layer_subset_model,
                                           trainable_parameters, truncated_draft)
from autojudge.models.loading import (DEFAULT_DRAFT, EMBEDDED, EMBEDDED_DRAFT_DIR, EMBEDDED_NAME, check_compatible,
                                      embedded_target_dir, load_draft, load_target, parse_dtype, quiet_transformers,
                                      resolve_device)
from autojudge.models.tokenizer import encode_prompt, eos_ids_of, first_vocabulary_difference

__all__ = ["DEFAULT_DRAFT", "EMBEDDED", "EMBEDDED_DRAFT_DIR", "EMBEDDED_NAME", "SELF_DRAFT_PREFIX", "CausalLM",
           "check_compatible", "crop_cache", "embedded_target_dir", "embedding_tensors", "encode_prompt",
           "eos_ids_of", "first_vocabulary_difference", "layer_subset_model", "load_draft", "load_target",
           "parse_dtype", "quiet_transformers", "resolve_device", "trainable_parameters", "truncated_draft"]
