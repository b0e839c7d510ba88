"""The judge-accept kernel as a PyTorch custom op: ``torch.ops.autojudge.judge_accept``.

The same source as the TensorRT plugin's kernel (plugins/judgeAcceptPlugin): on CUDA tensors
the kernel itself (nvcc build, launched on the current stream), on CPU tensors the host build
of the same rule (g++), both through :mod:`autojudge.acceptance.plugin`. A fake kernel gives
the output shapes, so the op traces under ``torch.compile`` and CUDA-graph capture. It is the
judge-accept step of serving stacks that run PyTorch (TensorRT-LLM's PyTorch backend: its
custom GPU code goes in as PyTorch ops, docs/source/torch/adding_custom_kernels.md).

    num_accepted [B] int32, next_tokens [B] int32, probabilities [B, W] fp32 =
        judge_accept(draft_tokens [B, W], target_tokens [B, W+1], draft_hidden [B, W, Hd] | None,
                     target_hidden [B, W, Ht], weight [Hd + Ht + E] fp32, bias, threshold [B] fp32, threads, blocks,
                     scalars [B, W, E] fp32 | None)

``scalars`` are the judge's E scalar features (:mod:`autojudge.features.scalars`), the last
segment of x = [h_draft ; h_target ; scalars]; None (or [B, W, 0]) for a judge without them.

``threads`` (per block, a multiple of 32 up to 1024) and ``blocks`` (per sequence: 1 = one block,
2..8 = a thread-block cluster on sm_90+) are launch parameters of the CUDA kernel; 0 lets the
launcher choose. They never change the result (the host build ignores them).
"""

from __future__ import annotations

import warnings

import torch

from autojudge.acceptance import Acceptance
from autojudge.acceptance.plugin import KernelCall, build_cuda_library
from autojudge.errors import AutoJudgeError
from autojudge.judge import Judge


@torch.library.custom_op("autojudge::judge_accept", mutates_args=())
def judge_accept(draft_tokens: torch.Tensor, target_tokens: torch.Tensor, draft_hidden: torch.Tensor | None,
                 target_hidden: torch.Tensor, weight: torch.Tensor, bias: float, threshold: torch.Tensor,
                 threads: int = 0, blocks: int = 0,
                 scalars: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    call = KernelCall(draft_tokens, target_tokens, draft_hidden, target_hidden, weight, bias, threshold,
                      scalars=scalars)
    result = call.run(threads, blocks)
    return result.num_accepted.clone(), result.next_tokens.clone(), result.probabilities.clone()


@judge_accept.register_fake
def _(draft_tokens, target_tokens, draft_hidden, target_hidden, weight, bias, threshold, threads=0, blocks=0,
      scalars=None):
    batch, window = draft_tokens.shape
    return (draft_tokens.new_empty((batch,), dtype=torch.int32), draft_tokens.new_empty((batch,), dtype=torch.int32),
            target_hidden.new_empty((batch, window), dtype=torch.float32))


class TorchJudgeAccept:
    """The loop's fused judge-accept step (:data:`autojudge.decoding.backend.FusedJudgeAccept`) over the op."""

    def __init__(self, judge: Judge, device: torch.device | str, threads: int = 0, blocks: int = 0):
        self.device, self.threads, self.blocks = torch.device(device), threads, blocks
        self.weight = judge.weight.float().to(self.device)  # [Hd + Ht + E] (or [Ht + E])
        self.bias, self.uses_draft_hidden = float(judge.bias), judge.uses_draft_hidden
        self.scalar_features = tuple(judge.scalar_features)  # E names, in the weight's order

    def __call__(self, draft_tokens: torch.Tensor, target_tokens: torch.Tensor, draft_hidden: torch.Tensor | None,
                 target_hidden: torch.Tensor, threshold: float, scalars: torch.Tensor | None = None) -> Acceptance:
        batch, w = draft_tokens.shape
        given = None if scalars is None else scalars.shape[-1]
        if (given or 0) != len(self.scalar_features):
            raise ValueError(f"the judge reads {len(self.scalar_features)} scalar features {self.scalar_features}, "
                             f"given {given}")
        if scalars is not None and tuple(scalars.shape[:-1]) != (batch, w):
            raise ValueError(f"scalars must be [B, w, E] = {[batch, w, len(self.scalar_features)]}, "
                             f"got {list(scalars.shape)}")
        hidden = target_hidden if target_hidden.dtype in (torch.float16, torch.bfloat16) else target_hidden.float()
        device = self.device
        num_accepted, next_tokens, _ = torch.ops.autojudge.judge_accept(
            draft_tokens.to(device, torch.int32), target_tokens.to(device, torch.int32),
            draft_hidden.to(device, hidden.dtype) if self.uses_draft_hidden else None, hidden.to(device),
            self.weight, self.bias, torch.full((batch,), float(threshold), device=device), self.threads, self.blocks,
            scalars.to(device, torch.float32) if self.scalar_features else None)
        num_accepted = num_accepted.long()  # [B]
        accepted = torch.arange(w, device=device)[None, :] < num_accepted[:, None]  # [B, w]
        mismatch = (draft_tokens.to(device) != target_tokens[:, :w].to(device)) & accepted
        return Acceptance(num_accepted, next_tokens.long(), accepted, mismatch)


def fused_judge_accept(judge: Judge, device: torch.device | str) -> TorchJudgeAccept | None:
    """The op for ``judge`` on a CUDA ``device`` (its library built now, once per machine: nvcc),
    or None, meaning the oracle, where it cannot be built (no nvcc, a failed compile): judge mode
    then still runs, only unfused."""
    try:
        build_cuda_library()
    except AutoJudgeError as exc:  # MissingDependencyError is one
        warnings.warn(f"the judge-accept op is unavailable, judging with the oracle instead: {exc}", stacklevel=2)
        return None
    return TorchJudgeAccept(judge, device)
