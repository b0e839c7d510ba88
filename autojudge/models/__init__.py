"""Draft and target models: loading and the load-time checks (``loading``), the calls decoding makes
(``causal_lm``), token-level helpers (``tokenizer``), drafts made of the target's layers (``layer_subset``) and
distilled ones on disk (``draft_artifact``), the ragged-batch KV cache (``ragged_cache``), and
CPU speed kernels (``cpu/``)."""

from autojudge.models.causal_lm import CausalLM, crop_cache
from autojudge.models.layer_subset import (SELF_DRAFT_PREFIX, embedding_tensors, layer_subset_model,
                                           trainable_parameters, truncated_draft)
from autojudge.models.loading import (EMBEDDED, EMBEDDED_DRAFT_DIR, EMBEDDED_NAME, PACKAGED_PAIRS, TESTBED,
                                      check_compatible, default_draft, draft_spec_for, embedded_target_dir, load_draft,
                                      load_target, parse_dtype, quiet_transformers, resolve_device)
from autojudge.models.tokenizer import encode_prompt, eos_ids_of, first_vocabulary_difference

__all__ = ["EMBEDDED", "EMBEDDED_DRAFT_DIR", "EMBEDDED_NAME", "PACKAGED_PAIRS", "SELF_DRAFT_PREFIX", "TESTBED",
           "CausalLM", "check_compatible", "crop_cache", "default_draft", "draft_spec_for", "embedded_target_dir",
           "embedding_tensors", "encode_prompt", "eos_ids_of", "first_vocabulary_difference", "layer_subset_model",
           "load_draft", "load_target", "parse_dtype", "quiet_transformers", "resolve_device", "trainable_parameters",
           "truncated_draft"]
