"""Exact greedy tokens from an fp32 LM head at about half its memory traffic.

Greedy decoding needs only ``argmax(h @ W.T)`` over the vocabulary, and on a CPU that
[V, H] GEMV is bound by memory bandwidth (SmolLM2: 49,152 x 576 fp32 = 113 MB read per
token, a third of a draft step). So:

1. **screen**: ``approx = bf16(h) @ bf16(W).T``: half the bytes;
2. **bound** each row's error with quantities known in advance (Cauchy-Schwarz):
   ``|h.W_j - approx_j| <= |h| |W_j - W16_j| + (|h - h16| + eps_acc |h|) |W16_j| + 2^-7 |approx_j|``
   (weight rounding, input rounding and fp32 accumulation, bf16 output rounding);
3. **recompute in fp32** only the rows whose upper bound reaches the best lower bound
   (about 2 of 49,152 on SmolLM2) and take their argmax.

This pays for one row (a decode step: 3.2 ms instead of 9 ms on SmolLM2). Several rows
(a verification) go through one fp32 weight-first GEMM (:mod:`autojudge.models.cpu.few_rows_linear`),
which reads the fp32 weight once for all rows and is faster than screening each row.

The result is the argmax of the fp32 logits (ties aside, which no greedy decoder
resolves meaningfully): the draft proposes, and the target verifies, exactly as before.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from autojudge.models.cpu.few_rows_linear import few_rows_linear

BF16_OUTPUT_ROUNDING = 2.0**-7  # bf16 keeps 8 significant bits: 2^-9 relative, doubled twice
FP32_ACCUMULATION = 1e-4  # >= K * 2^-24 for hidden sizes up to ~1,600; generous beyond


class ScreenedGreedyHead:
    """``greedy(hidden)`` == ``(hidden @ weight.T).argmax(-1)`` for an fp32 ``weight``."""

    def __init__(self, weight: torch.Tensor):  # [V, H] fp32
        assert weight.dtype == torch.float32, weight.dtype
        self.weight = weight.detach()
        self.weight16 = self.weight.to(torch.bfloat16)  # [V, H]
        self.row_rounding = (self.weight - self.weight16.float()).norm(dim=1)  # [V]
        self.row_norm16 = self.weight16.float().norm(dim=1)  # [V]

    def __call__(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden: [..., H] fp32 -> [...] int64 greedy token ids."""
        flat = hidden.reshape(-1, hidden.shape[-1])  # [N, H]
        if flat.shape[0] > 1:  # verification: fp32 weight-first GEMM beats N bf16 GEMVs
            return few_rows_linear(flat, self.weight).argmax(-1).reshape(hidden.shape[:-1])
        hidden16 = flat.to(torch.bfloat16)
        approx = F.linear(hidden16, self.weight16).float()  # [N, V]
        norm = flat.norm(dim=-1, keepdim=True)  # [N, 1]
        input_rounding = (flat - hidden16.float()).norm(dim=-1, keepdim=True)  # [N, 1]
        bound = (norm * self.row_rounding
                 + (input_rounding + FP32_ACCUMULATION * norm) * self.row_norm16
                 + BF16_OUTPUT_ROUNDING * approx.abs())  # [N, V]
        best_lower = (approx - bound).amax(dim=-1, keepdim=True)  # [N, 1]
        candidates = approx + bound >= best_lower  # [N, V], the true argmax is always inside
        tokens = torch.empty(flat.shape[0], dtype=torch.long, device=flat.device)
        for row, (h, mask) in enumerate(zip(flat, candidates)):
            ids = mask.nonzero().squeeze(1)  # [C] ascending: ties go to the lowest id
            tokens[row] = ids[F.linear(h, self.weight[ids]).argmax()]
        return tokens.reshape(hidden.shape[:-1])
