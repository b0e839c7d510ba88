"""A KV cache shared by B rows of different lengths, for batched decoding and mining.

Glossary
- **slot**: one position of the KV cache shared by the batch. Every forward appends the same
  number of slots to every row.
- **hole**: a slot that holds no token of its row: the left padding of a block in which rows
  feed different numbers of tokens, a token the row later gave up (a rejected draft token, a
  truncated continuation), or a row nobody uses yet. Holes are masked out of attention
  instead of cropped, so rows never need equal lengths; a row's RoPE positions count its own
  tokens only. ``compact()`` squeezes the holes out when they pile up; slots that are holes in
  every row at the end of the cache are cropped as they appear (a batch of one never holds a
  hole, and reads without a mask, exactly as a plain KV cache does).
"""

from __future__ import annotations

import torch

from autojudge.models.causal_lm import CausalLM


class RaggedCache:
    """A KV cache for B rows of different lengths (holes masked out; see the glossary)."""

    def __init__(self, model: CausalLM, batch: int):
        self.model = model
        self.cache = model.new_cache()
        self.slots = torch.zeros(batch, 0, dtype=torch.bool, device=model.device)  # [B, L] True = a token
        self.lengths = torch.zeros(batch, dtype=torch.long, device=model.device)  # [B] tokens read per row

    def read(self, ids: torch.Tensor, fed: torch.Tensor) -> torch.Tensor:
        """ids [B, S] with fed [B, S] (False = a hole) -> last-layer states [B, S, H]."""
        positions = (self.lengths[:, None] + fed.long().cumsum(dim=1) - 1).clamp(min=0)  # [B, S]
        self.slots = torch.cat([self.slots, fed], dim=1)
        self.lengths = self.lengths + fed.sum(dim=1)
        if bool(self.slots.all()):  # no holes: a plain KV cache's read (default positions, causal mask)
            return self.model.hidden_states(ids, self.cache)
        return self.model.hidden_states(ids, self.cache, attention_mask=self.slots.long(), position_ids=positions)

    def keep(self, lengths: torch.Tensor) -> None:
        """Row b keeps its first ``lengths[b]`` tokens [B]; later ones become holes."""
        self.slots &= self.slots.long().cumsum(dim=1) <= lengths[:, None]
        self.lengths = torch.minimum(self.lengths, lengths)
        used = self.slots.any(dim=0).nonzero()  # slots some row still holds
        width = int(used[-1]) + 1 if len(used) else 0
        if width < self.width:  # the tail is holes in every row: crop it
            for layer in self.cache.layers:
                if layer.is_initialized:
                    layer.keys, layer.values = layer.keys[..., :width, :], layer.values[..., :width, :]
            self.slots = self.slots[:, :width]

    def add_rows(self, count: int) -> None:
        """``count`` empty rows join the batch at the end (all their slots are holes)."""
        self.slots = torch.cat([self.slots, self.slots.new_zeros(count, self.width)])
        self.lengths = torch.cat([self.lengths, self.lengths.new_zeros(count)])
        for layer in self.cache.layers:
            if layer.is_initialized:
                layer.keys = torch.cat([layer.keys, layer.keys.new_zeros(count, *layer.keys.shape[1:])])
                layer.values = torch.cat([layer.values, layer.values.new_zeros(count, *layer.values.shape[1:])])

    def keep_row(self, row: int, length: int) -> None:
        """Row ``row`` keeps its first ``length`` tokens; the other rows are untouched."""
        self.slots[row] &= self.slots[row].long().cumsum(dim=0) <= length  # [L]: only this row's slots
        self.lengths[row] = self.lengths[row].clamp(max=length)

    def compact(self) -> None:
        """Drop holes: every row's tokens move, in order, into the last ``max(lengths)`` slots
        (positions are baked into the keys, so moving slots changes nothing a row sees)."""
        width = int(self.lengths.max()) if len(self.lengths) else 0
        index = self.slots.long().sort(dim=1, stable=True).indices[:, self.slots.shape[1] - width:]  # [B, width]
        for layer in self.cache.layers:
            if layer.is_initialized:
                layer.keys = _gather_slots(layer.keys, index)
                layer.values = _gather_slots(layer.values, index)
        self.slots = self.slots.gather(1, index)

    @property
    def width(self) -> int:
        """Slots per row, tokens and holes."""
        return self.slots.shape[1]

    def select(self, rows: torch.Tensor) -> None:
        """Keep only ``rows`` [B'] of the batch."""
        for layer in self.cache.layers:  # not Cache.batch_select_indices: a layer cropped to 0 slots
            if layer.is_initialized:     # keeps every row there (transformers 5.24 cache_utils.DynamicLayer)
                layer.keys, layer.values = layer.keys[rows], layer.values[rows]
        self.slots, self.lengths = self.slots[rows], self.lengths[rows]

    def unread(self, sequences: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Each row's tokens past what it has read, left-padded: ids [B, U], fed [B, U]."""
        tails = [seq[n:] for seq, n in zip(sequences, self.lengths.tolist())]
        width = max(len(t) for t in tails)
        ids = torch.tensor([[pad_id] * (width - len(t)) + t for t in tails], dtype=torch.long)
        fed = torch.tensor([[False] * (width - len(t)) + [True] * len(t) for t in tails])
        return ids.to(self.model.device), fed.to(self.model.device)


def _gather_slots(states: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """states [B, heads, L, D], index [B, L'] -> [B, heads, L', D]."""
    b, heads, _, dim = states.shape
    return states.gather(2, index[:, None, :, None].expand(b, heads, index.shape[1], dim))
