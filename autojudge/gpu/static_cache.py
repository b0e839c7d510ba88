"""A KV cache of fixed size whose every write goes through tensors, so a forward over it can be
captured once as a CUDA graph and replayed at any position.

Why not transformers' ``StaticCache``: its layers (``StaticLayer.update``, transformers 5.24
``cache_utils.py`` lines 462-488) ignore the caller's positions and write at
``arange(kv_length) + self.cumulative_length``, then advance that counter in place
(``self.cumulative_length.add_(kv_length)``). Captured in a graph, the ``add_`` is captured too:
every replay moves the write position on by the step's length, whatever the caller meant, and
nothing can crop it back (crop is a host-side call the graph never sees). The benchmark of
2026-11-22 (benchmarks/bench_h100_latency.py ``--graphs``: ``max_cache_len = context + 128``,
3 eager warm-ups + 22 replays per step) wrote 25 x (W + 1) slots past the context: 125 < 128
for W = 4, 225 > 128 for W = 8, so ``index_copy_`` went out of bounds on replay exactly from
W >= 8 (the device-side assert), and shorter windows "worked" while silently writing
past the tokens they meant to overwrite.

Here every row owns slots ``0 .. capacity - 1`` holding its tokens in order (``lengths[b]`` of
them; slots past that are stale and masked); slot ``capacity`` is a dump slot that pads write
to and nobody reads. Positions, write slots and the attention mask are computed on the device
from ``lengths`` and the ``fed`` mask, so a captured step follows the cache wherever it is, and
cropping a row is setting its length.
"""

from __future__ import annotations

import inspect

import torch

from autojudge.models import CausalLM


class StaticKV:
    """Per-layer keys/values [R, kv_heads, capacity + 1, head_dim] for R rows, and their lengths.

    It is the ``cache`` a Hugging Face decoder is called with: its attention layers call
    ``update(key_states, value_states, layer_idx, ...)`` (transformers 5.24
    models/llama/modeling_llama.py line 252; 5.x before the rename passed ``cache_kwargs``
    positionally: both land in ``*args/**kwargs``), which writes at the slots :meth:`read` chose.
    """

    def __init__(self, lm: CausalLM, rows: int, capacity: int):
        config = lm.model.config.get_text_config()
        heads = int(config.num_key_value_heads)
        head_dim = int(getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads)
        shape = (rows, heads, capacity + 1, head_dim)
        self.lm, self.rows, self.capacity = lm, rows, capacity
        self.keys = [torch.zeros(shape, dtype=lm.dtype, device=lm.device) for _ in range(lm.num_layers)]
        self.values = [torch.zeros(shape, dtype=lm.dtype, device=lm.device) for _ in range(lm.num_layers)]
        self.lengths = torch.zeros(rows, dtype=torch.long, device=lm.device)  # [R] tokens held per row
        self.slot_ids = torch.arange(capacity + 1, device=lm.device)  # [L+1]
        self._slots: torch.Tensor | None = None  # [R, S] where this forward's tokens go
        decoder = lm.model.get_decoder()
        # transformers 5.24 renamed past_key_values to cache (modeling_llama.py line 285, deprecate_kwarg)
        self._cache_kwarg = "cache" if "cache" in inspect.signature(decoder.forward).parameters else "past_key_values"
        self._decoder = decoder

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args, **kwargs):
        """key/value_states [R, kv_heads, S, D] -> the layer's whole keys/values [R, kv_heads, L+1, D]."""
        index = self._slots[:, None, :, None].expand_as(key_states)  # [R, kv_heads, S, D]
        self.keys[layer_idx].scatter_(2, index, key_states)
        self.values[layer_idx].scatter_(2, index, value_states)
        return self.keys[layer_idx], self.values[layer_idx]

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.capacity + 1  # never used for positions: read() always passes position_ids

    def read(self, ids: torch.Tensor, fed: torch.Tensor) -> torch.Tensor:
        """ids [R, S] with fed [R, S] (False = a pad: left padding, or a row not in use) -> last-layer
        states [R, S, H]; each row's fed tokens are appended after its ``lengths`` tokens.
        No host synchronisation: capturable."""
        positions = (self.lengths[:, None] + fed.long().cumsum(dim=1) - 1).clamp(min=0)  # [R, S] RoPE = slot
        self._slots = torch.where(fed, positions, self.capacity)  # [R, S]: pads go to the dump slot
        # A query sees its row's slots up to its own; a pad sees its row's tokens (finite, never NaN).
        visible = self.slot_ids[None, None, :] <= positions[:, :, None]  # [R, S, L+1]; the dump slot never
        hidden = self._decoder(input_ids=ids, attention_mask=visible[:, None], position_ids=positions,
                               use_cache=True, **{self._cache_kwarg: self}).last_hidden_state
        self.lengths.add_(fed.sum(dim=1))
        return hidden

    def copy_rows(self, rows: torch.Tensor, into: StaticKV | None = None) -> None:
        """Rows ``rows`` [n] move to rows 0..n-1 of ``into`` (default: in place, same tensors)."""
        into = into or self
        n = rows.numel()
        for source, target in zip(self.keys + self.values, into.keys + into.values):
            target[:n].copy_(source[rows])  # source[rows] gathers a copy first: in place is safe
        into.lengths[:n].copy_(self.lengths[rows])
        into.lengths[n:].zero_()
