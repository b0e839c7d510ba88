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
- **read alone**: a read pads every row to the longest one, so one joining prompt chunk of 64
  tokens beside 15 decoding rows would cost a [16, 64] forward. Rows that feed far more than
  the others read that excess first, each in a forward of its own over its own tokens; then
  every row reads the common block (:func:`block_width` picks its width).
"""

from __future__ import annotations

import torch

from autojudge.models.causal_lm import CausalLM

FORWARD_COST = 16  # a forward's fixed cost, in padded token positions (CPU: weights read once per forward)


def block_width(counts: list[int]) -> int:
    """The width of the block all rows read together, given each row's count of tokens: the
    one that minimises padded positions (rows x width) plus, for each longer row, its excess
    read alone and ``FORWARD_COST`` for that forward."""
    rows = len(counts)

    def cost(width: int) -> int:
        return rows * width + sum(c - width + FORWARD_COST for c in counts if c > width)

    return min(sorted(set(counts), reverse=True), key=cost)


class RaggedCache:
    """A KV cache for B rows of different lengths (holes masked out; see the glossary)."""

    def __init__(self, model: CausalLM, batch: int):
        self.model = model
        self.cache = model.new_cache()
        self.slots = torch.zeros(batch, 0, dtype=torch.bool, device=model.device)  # [B, L] True = a token
        self.lengths = torch.zeros(batch, dtype=torch.long, device=model.device)  # [B] tokens read per row

    def read(self, ids: torch.Tensor, fed: torch.Tensor) -> torch.Tensor:
        """ids [B, S] with fed [B, S] (False = a hole; each row's tokens right-aligned) ->
        last-layer states [B, S, H] (zeros at holes read alone; see the glossary)."""
        width = block_width(fed.sum(dim=1).tolist()) if len(ids) > 1 else ids.shape[1]
        if width >= ids.shape[1]:
            return self._read_together(ids, fed)
        split = ids.shape[1] - width  # (width 0: only some rows read, each alone; a draft catching up)
        alone = self._read_alone(ids[:, :split], fed[:, :split])  # [B, S - width, H]
        if not width:
            return alone
        return torch.cat([alone, self._read_together(ids[:, split:], fed[:, split:])], dim=1)

    def _read_alone(self, ids: torch.Tensor, fed: torch.Tensor) -> torch.Tensor:
        """Each row with tokens in ids [B, P] / fed [B, P] reads them in a forward of its own, after
        its own cached tokens; their keys and values join the cache as P new slots."""
        states = None  # [B, P, H]
        read = []  # (row, its token count, its own cache after the read)
        for b, n in enumerate(fed.sum(dim=1).tolist()):
            if not n:
                continue
            own = self._row_cache(b)
            positions = self.lengths[b] + torch.arange(n, device=ids.device)
            hidden = self.model.hidden_states(ids[b:b + 1, -n:], own, position_ids=positions[None])  # [1, n, H]
            if states is None:
                states = hidden.new_zeros(len(ids), ids.shape[1], hidden.shape[-1])
            states[b, -n:] = hidden[0]
            read.append((b, n, own))
        for i, layer in enumerate(self.cache.layers):
            first = read[0][2].layers[i].keys  # [1, heads, L + n, D]
            keys = first.new_zeros(len(ids), first.shape[1], ids.shape[1], first.shape[3])  # [B, heads, P, D]
            values = keys.clone()
            for b, n, own in read:
                keys[b, :, -n:], values[b, :, -n:] = own.layers[i].keys[0, :, -n:], own.layers[i].values[0, :, -n:]
            layer.update(keys, values)  # initialises a layer not yet read
        self.slots = torch.cat([self.slots, fed], dim=1)
        self.lengths = self.lengths + fed.sum(dim=1)
        return states

    def _row_cache(self, b: int):
        """Row ``b``'s cached tokens, without its holes, as a KV cache of its own."""
        own, held = self.model.new_cache(), self.slots[b]  # held: [L]
        if bool(held.any()):
            for i, layer in enumerate(self.cache.layers):
                if layer.is_initialized:
                    own.update(layer.keys[b:b + 1, :, held], layer.values[b:b + 1, :, held], i)
        return own

    def _read_together(self, ids: torch.Tensor, fed: torch.Tensor) -> torch.Tensor:
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
