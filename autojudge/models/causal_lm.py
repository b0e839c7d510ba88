"""A loaded causal LM reduced to the calls speculative decoding makes (see :class:`CausalLM`)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from transformers import DynamicCache, PreTrainedModel, PreTrainedTokenizerBase

from autojudge.models.cpu.few_rows_linear import few_rows_linear, use_few_rows_linear
from autojudge.models.cpu.gqa_attention import use_gqa_attention
from autojudge.models.cpu.greedy_head import ScreenedGreedyHead
from autojudge.models.tokenizer import eos_ids_of


@dataclass(eq=False)
class CausalLM:
    """A loaded causal LM with the two calls the decoder makes.

    ``hidden_states`` runs the decoder stack (no LM head) and appends to a KV cache;
    ``logits`` applies the LM head only where the caller needs logits. Splitting the two
    keeps prefill cheap (no [S, vocab] matmul over the prompt) and gives the judge the
    last-layer hidden states (after the final norm) without any extra forward.
    """

    name: str
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    eos_token_ids: frozenset[int] = field(default_factory=frozenset)
    # Exact bf16-screened argmax for fp32 LM heads (see autojudge.models.cpu.greedy_head).
    screened_greedy: bool = True
    # [K] ascending token ids this model may emit greedily (a distilled draft's vocabulary);
    # None = the whole vocabulary. Only ``greedy`` uses it; hidden states are unaffected.
    greedy_vocab: torch.Tensor | None = None

    def __post_init__(self) -> None:
        self.model.eval()
        use_few_rows_linear(self.model)  # CPU fp32: W+1-token verification at ~1-token cost
        use_gqa_attention(self.model)  # CPU: no KV-head copies under a ragged batch's mask
        self._decoder = self.model.get_decoder()
        self._lm_head = self.model.get_output_embeddings()
        self._greedy_heads: dict = {}  # greedy heads by vocabulary (limit or subset)
        if not self.eos_token_ids:
            self.eos_token_ids = eos_ids_of(getattr(self.model, "generation_config", None), self.model.config,
                                            self.tokenizer)

    @property
    def hidden_size(self) -> int:
        return int(self.model.config.get_text_config().hidden_size)

    @property
    def vocab_size(self) -> int:
        return int(self._lm_head.weight.shape[0])

    @property
    def num_layers(self) -> int:
        return int(self.model.config.get_text_config().num_hidden_layers)

    @property
    def device(self) -> torch.device:
        return self._lm_head.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self._lm_head.weight.dtype

    def new_cache(self) -> DynamicCache:
        return DynamicCache(config=self.model.config)

    def hidden_states(self, input_ids: torch.Tensor, cache: DynamicCache,
                      attention_mask: torch.Tensor | None = None,
                      position_ids: torch.Tensor | None = None) -> torch.Tensor:
        """input_ids: [B, S] new tokens after the cached prefix -> [B, S, H] last-layer states.
        A batch of ragged rows passes ``attention_mask`` [B, cached + S] (0 = a hole) and its
        ``position_ids`` [B, S] (see :mod:`autojudge.models.ragged_cache`)."""
        out = self._decoder(input_ids=input_ids, cache=cache, use_cache=True,
                            attention_mask=attention_mask, position_ids=position_ids)
        return out.last_hidden_state

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden: [B, S, H] -> [B, S, V]. Final softcaps/scales are monotonic: greedy-safe."""
        return self._lm_head(hidden)

    def greedy(self, hidden: torch.Tensor, vocab_limit: int | None = None) -> torch.Tensor:
        """hidden: [B, S, H] -> [B, S] greedy token ids among the first ``vocab_limit``
        (and within ``greedy_vocab`` when set)."""
        limit = vocab_limit or self.vocab_size
        if self.greedy_vocab is None:
            return self._greedy_head(("limit", limit), lambda: slice(0, limit))(hidden)
        ids = self.greedy_vocab[self.greedy_vocab < limit]  # [K]
        return ids[self._greedy_head(("subset", limit, self.greedy_vocab.data_ptr()), lambda: ids)(hidden)]

    def _greedy_head(self, key, rows):
        """argmax over ``weight[rows]``: screened (exact, half the bytes) for fp32 heads."""
        key = (*key, self.screened_greedy)
        if key not in self._greedy_heads:
            head = self._lm_head
            weight = head.weight[rows()]  # [K, H]
            if self.screened_greedy and weight.dtype == torch.float32 and head.bias is None:
                self._greedy_heads[key] = ScreenedGreedyHead(weight)
            else:
                bias = None if head.bias is None else head.bias[rows()]
                self._greedy_heads[key] = lambda h: few_rows_linear(h, weight, bias).argmax(-1)
        return self._greedy_heads[key]


def crop_cache(cache: DynamicCache, length: int) -> None:
    """Drop cached positions past ``length`` (transformers 5 crops by a negative count)."""
    excess = cache.get_seq_length() - length
    if excess > 0:
        cache.crop(-excess)


