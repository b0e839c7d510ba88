"""Faster fp32 ``nn.Linear`` on CPUs for the few rows that decoding feeds it.

Speculative decoding runs the target on W+1 tokens and the draft on one, so nearly every
matmul is ``x [M, in] @ W.T`` with M between 1 and ~16. For such shapes MKL's ``F.linear``
is slow on CPU: one row goes through a GEMV that reads the weight at well below
bandwidth, and 2-16 rows through a GEMM that repacks the whole weight on every call.
Computing the transposed product ``(W @ x.T).T`` instead makes the weight the streamed
left operand, and padding a single row to two keeps it on that path. Measured over a
SmolLM2-135M-sized stack on the 2-core EPYC (python benchmarks/bench_draft.py has the
end-to-end figures): 1 row 41 -> 34 ms, 2 rows 61 -> 28 ms, 5 rows 61 -> 37 ms; beyond
~16 rows MKL's own GEMM is as fast, so larger inputs (prefill, training) keep it.

The parameters are untouched (the module's class is swapped in place), so layers shared
between a target and a self-speculative draft stay shared, and autograd works as before.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

MAX_FEW_ROWS = 16  # above this MKL's F.linear is as fast (measured)


def few_rows_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear(x, weight, bias)`` computed weight-first for few rows: x [..., in] -> [..., out]."""
    flat = x.reshape(-1, x.shape[-1])  # [M, in]
    rows = flat.shape[0]
    if rows > MAX_FEW_ROWS or rows == 0 or x.device.type != "cpu":
        return F.linear(x, weight, bias)
    if rows == 1:
        flat = flat.expand(2, -1).contiguous()  # [2, in]: a 2-column GEMM beats MKL's GEMV
    out = torch.mm(weight, flat.T)[:, :rows].T.contiguous()  # [M, out]
    if bias is not None:
        out = out + bias
    return out.reshape(*x.shape[:-1], weight.shape[0])


class FewRowsLinear(torch.nn.Linear):
    """An ``nn.Linear`` whose forward is :func:`few_rows_linear`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return few_rows_linear(x, self.weight, self.bias)


def use_few_rows_linear(model: torch.nn.Module) -> int:
    """Swap every fp32 CPU ``nn.Linear`` in ``model`` to :class:`FewRowsLinear`; returns how many."""
    swapped = 0
    for module in model.modules():
        if (type(module) is torch.nn.Linear and module.weight.device.type == "cpu"
                and module.weight.dtype == torch.float32):
            module.__class__ = FewRowsLinear
            swapped += 1
    return swapped
