"""torch.ops.autojudge.judge_accept: the plugin's kernel as a PyTorch op (CPU: the host build of the
same rule). Equal to the oracle (autojudge.acceptance) over random batches, windows, layouts and
dtypes; its fake kernel and schema pass torch.library.opcheck; it traces under torch.compile."""

from __future__ import annotations

import pytest
import torch

from autojudge.acceptance import accept, judge_mismatch_ok
from autojudge.acceptance.torch_op import TorchJudgeAccept
from autojudge.judge import Judge, JudgeMetadata


def case(seed: int, batch: int, window: int, layout: str, dtype: torch.dtype):
    g = torch.Generator().manual_seed(seed)
    hd, ht = 24, 40
    meta = JudgeMetadata("t", ht, "d" if layout != "target" else "", hd if layout != "target" else 0, layout,
                         threshold=0.5)
    judge = Judge(torch.randn(meta.num_features, generator=g) * 0.3, 0.1, meta)
    target = torch.randint(0, 5, (batch, window + 1), generator=g)
    draft = torch.where(torch.rand(batch, window, generator=g) < 0.5, target[:, :window],
                        torch.randint(0, 5, (batch, window), generator=g))
    draft_hidden = torch.randn(batch, window, hd, generator=g).to(dtype) if layout != "target" else None
    target_hidden = torch.randn(batch, window, ht, generator=g).to(dtype)
    return judge, draft, target, draft_hidden, target_hidden


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("layout", ["draft+target", "target"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_op_equals_the_oracle(seed, layout, dtype):
    batch, window = 1 + seed % 4, 1 + 3 * seed
    judge, draft, target, draft_hidden, target_hidden = case(seed, batch, window, layout, dtype)
    threshold = 0.3 + 0.1 * seed
    want = accept(draft, target, judge_mismatch_ok(judge.probabilities(draft_hidden, target_hidden), threshold))
    got = TorchJudgeAccept(judge, "cpu")(draft, target, draft_hidden, target_hidden, threshold)
    assert got.num_accepted.tolist() == want.num_accepted.tolist()
    assert got.next_tokens.tolist() == want.next_tokens.tolist()
    assert torch.equal(got.mismatch_accepted, want.mismatch_accepted)


def test_the_op_passes_opcheck_and_compiles():
    judge, draft, target, draft_hidden, target_hidden = case(1, 3, 5, "draft+target", torch.float32)
    args = (draft.int(), target.int(), draft_hidden, target_hidden, judge.weight.float(), 0.1, torch.full((3,), 0.5))
    torch.library.opcheck(torch.ops.autojudge.judge_accept.default, args,
                          test_utils=("test_schema", "test_faketensor", "test_autograd_registration"))
    eager = torch.ops.autojudge.judge_accept(*args)
    compiled = torch.compile(lambda *a: torch.ops.autojudge.judge_accept(*a), fullgraph=True)(*args)
    assert all(torch.equal(a, b) for a, b in zip(eager, compiled))
