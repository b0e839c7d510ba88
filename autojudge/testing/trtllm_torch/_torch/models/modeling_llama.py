"""``tensorrt_llm._torch.models.modeling_llama`` (emulated) over a CausalLM.

As read in modeling_llama.py / modeling_utils.py: ``self.model`` is the decoder stack, whose forward
ends with the final norm and returns the states of the step's tokens [num_tokens, H];
``LlamaForCausalLM.forward`` returns only a logits tensor (last token unless context logits are asked).
"""

from __future__ import annotations

import torch
from torch import nn


class _Decoder(nn.Module):
    def __init__(self, lm):
        super().__init__()
        self._lm = [lm]  # not a submodule: the CausalLM's weights stay its own

    def forward(self, input_ids: torch.Tensor, attn_metadata, **unused) -> torch.Tensor:
        return self._lm[0].hidden_states(input_ids[None], attn_metadata.cache)[0]  # [num_tokens, H]


class LlamaForCausalLM(nn.Module):
    def __init__(self, lm):
        super().__init__()
        self.model = _Decoder(lm)
        self._lm = [lm]

    def forward(self, attn_metadata, input_ids: torch.Tensor, position_ids=None, return_context_logits: bool = False,
                **unused) -> torch.Tensor:
        hidden = self.model(input_ids=input_ids, attn_metadata=attn_metadata)
        rows = hidden if return_context_logits else hidden[-1:]
        return self._lm[0].logits(rows[None])[0].float()  # [rows, V]
