"""torch.ops.autojudge.judge_accept: the plugin's kernel as a PyTorch op (CPU: the host build of the
same rule). Equal to the oracle (autojudge.acceptance) over random batches, windows, layouts and
dtypes; its fake kernel and schema pass torch.library.opcheck; it traces under torch.compile.
Where a CUDA device exists, the kernel itself equals the oracle at 32, 256 and 1024 threads per
block, one block or a cluster per sequence, in the worst case's shapes too, and replays in a graph.
All of it with and without the judge's scalar features (E = 0 or 5, an optional last input)."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_model

from autojudge.acceptance import accept, judge_accept, judge_mismatch_ok
from autojudge.acceptance.torch_op import TorchJudgeAccept
from autojudge.decoding.in_process import InProcessBackend
from autojudge.features.scalars import SCALAR_FEATURES
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


def with_scalars(judge: Judge, batch: int, window: int, seed: int, size: int = 5):
    """(``judge`` with the first ``size`` scalar features, their weights appended; scalars [B, W, E])
    of the real features' scale: log probabilities in [-20, 0], the last in [0, 1]."""
    g = torch.Generator().manual_seed(100 + seed)
    meta = JudgeMetadata(judge.meta.target_model, judge.meta.target_hidden_size, judge.meta.draft_model,
                         judge.meta.draft_hidden_size, judge.meta.feature_layout, threshold=judge.meta.threshold,
                         scalar_features=SCALAR_FEATURES[:size])
    scalars = -20.0 * torch.rand(batch, window, size, generator=g)
    scalars[..., -1] = torch.rand(batch, window, generator=g)
    weight = torch.cat([judge.weight, 0.15 * torch.randn(size, generator=g)])
    return Judge(weight, judge.bias, meta), scalars


def oracle(judge: Judge, draft, target, draft_hidden, target_hidden, threshold, scalars=None):
    """autojudge.acceptance.rule.judge_accept (the target-only layout as zero draft features)."""
    if draft_hidden is None:
        draft_hidden = target_hidden[..., :0]
    return judge_accept(draft, target, draft_hidden, target_hidden, judge.weight, judge.bias, threshold,
                        scalars=scalars)


@pytest.mark.parametrize("layout", ["draft+target", "target"])
def test_the_op_follows_the_scalar_features_where_they_flip_decisions(layout):
    """E = 5 against the same judge without them (E = 0, given None or an empty [B, W, 0]): the
    scalar part turns decisions around, and the op takes every one as the oracle does."""
    flips = 0
    for seed in range(4):
        batch, window = 2 + seed, 4 + 5 * seed
        plain, draft, target, draft_hidden, target_hidden = case(seed, batch, window, layout, torch.bfloat16)
        judge, scalars = with_scalars(plain, batch, window, seed)
        for threshold in (0.2, 0.5, 0.8):
            want, _ = oracle(judge, draft, target, draft_hidden, target_hidden, threshold, scalars)
            got = TorchJudgeAccept(judge, "cpu")(draft, target, draft_hidden, target_hidden, threshold,
                                                 scalars=scalars)
            assert (got.num_accepted.tolist(), got.next_tokens.tolist()) == (want.num_accepted.tolist(),
                                                                             want.next_tokens.tolist())
            want0, _ = oracle(plain, draft, target, draft_hidden, target_hidden, threshold)
            for empty in (None, scalars[..., :0]):
                got0 = TorchJudgeAccept(plain, "cpu")(draft, target, draft_hidden, target_hidden, threshold,
                                                      scalars=empty)
                assert got0.num_accepted.tolist() == want0.num_accepted.tolist()
            flips += int((want.num_accepted != want0.num_accepted).sum())
    assert flips > 0, "the scalar features decide nothing here: a kernel that ignored them would pass"


def test_a_scalar_feature_mismatch_with_the_judge_is_refused():
    plain, draft, target, draft_hidden, target_hidden = case(0, 2, 4, "draft+target", torch.float32)
    judge, scalars = with_scalars(plain, 2, 4, 0)
    with pytest.raises(ValueError, match="reads 5 scalar features .*target_logprob.*given None"):
        TorchJudgeAccept(judge, "cpu")(draft, target, draft_hidden, target_hidden, 0.5)
    with pytest.raises(ValueError, match="reads 5 scalar features .*given 4"):
        TorchJudgeAccept(judge, "cpu")(draft, target, draft_hidden, target_hidden, 0.5, scalars=scalars[..., :4])
    with pytest.raises(ValueError, match="reads 0 scalar features .*given 5"):
        TorchJudgeAccept(plain, "cpu")(draft, target, draft_hidden, target_hidden, 0.5, scalars=scalars)
    with pytest.raises(ValueError, match="must be \\[B, w, E\\]"):
        TorchJudgeAccept(judge, "cpu")(draft, target, draft_hidden, target_hidden, 0.5, scalars=scalars[:1])
    with pytest.raises(ValueError, match="Hd \\+ Ht \\+ E"):  # the op itself: a weight without the scalar part
        torch.ops.autojudge.judge_accept(draft.int(), target.int(), draft_hidden, target_hidden, plain.weight, 0.1,
                                         torch.full((2,), 0.5), 0, 0, scalars)


@pytest.mark.parametrize("scalar_count", [0, 5])
@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("layout", ["draft+target", "target"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_op_equals_the_oracle(seed, layout, dtype, scalar_count):
    batch, window = 1 + seed % 4, 1 + 3 * seed
    judge, draft, target, draft_hidden, target_hidden = case(seed, batch, window, layout, dtype)
    scalars = None
    if scalar_count:
        judge, scalars = with_scalars(judge, batch, window, seed, scalar_count)
    threshold = 0.3 + 0.1 * seed
    want = accept(draft, target, judge_mismatch_ok(judge.probabilities(draft_hidden, target_hidden, scalars),
                                                   threshold))
    rule, _ = oracle(judge, draft, target, draft_hidden, target_hidden, threshold, scalars)
    assert torch.equal(rule.num_accepted, want.num_accepted)
    extra = {} if scalars is None else {"scalars": scalars}  # the loop passes scalars only when the judge has some
    got = TorchJudgeAccept(judge, "cpu")(draft, target, draft_hidden, target_hidden, threshold, **extra)
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


def test_the_op_with_scalar_features_passes_opcheck_and_compiles():
    plain, draft, target, draft_hidden, target_hidden = case(1, 3, 5, "draft+target", torch.float32)
    judge, scalars = with_scalars(plain, 3, 5, 1)
    args = (draft.int(), target.int(), draft_hidden, target_hidden, judge.weight.float(), 0.1, torch.full((3,), 0.5))
    utils = ("test_schema", "test_faketensor", "test_autograd_registration")
    op = torch.ops.autojudge.judge_accept.default
    torch.library.opcheck(op, (*args, 0, 0, scalars), test_utils=utils)  # positional, after threads and blocks
    torch.library.opcheck(op, args, {"scalars": scalars}, test_utils=utils)  # by keyword
    eager = torch.ops.autojudge.judge_accept(*args, scalars=scalars)
    compiled = torch.compile(lambda *a, s: torch.ops.autojudge.judge_accept(*a, scalars=s), fullgraph=True)(
        *args, s=scalars)
    assert all(torch.equal(a, b) for a, b in zip(eager, compiled))
    want, probabilities = oracle(judge, draft, target, draft_hidden, target_hidden, 0.5, scalars)
    assert eager[0].tolist() == want.num_accepted.tolist() and eager[1].tolist() == want.next_tokens.tolist()
    evaluated = eager[2] != -1.0
    torch.testing.assert_close(eager[2][evaluated], probabilities[evaluated], rtol=2e-5, atol=1e-6)


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def cluster_sizes() -> list[int]:
    """Blocks per sequence to test: one block, the launcher's choice, and a full cluster where clusters exist."""
    return [1, 0] + ([2, 8] if torch.cuda.is_available() and torch.cuda.get_device_capability()[0] >= 9 else [])


def cuda_case(scenario: str, batch: int, window: int, hd: int, ht: int, seed: int = 0):
    """Inputs on the GPU for one of the kernel's cases: random, match (all d_k = t_k), reject
    (one mismatch mid-window, rejected), accept_all (every position a mismatch, all accepted)."""
    judge, draft, target, draft_hidden, target_hidden = case(seed, batch, window, "draft+target", torch.bfloat16)
    g = torch.Generator().manual_seed(seed)
    draft_hidden = torch.randn(batch, window, hd, generator=g).bfloat16()
    target_hidden = torch.randn(batch, window, ht, generator=g).bfloat16()
    meta = JudgeMetadata("t", ht, "d", hd, "draft+target", threshold=0.5)
    bias = {"reject": 50.0, "accept_all": -50.0}.get(scenario, 0.1)
    judge = Judge(torch.randn(hd + ht, generator=g) / (hd + ht) ** 0.5, bias, meta)
    if scenario == "match":
        target[:, :window] = draft
    elif scenario == "reject":
        target[:, :window] = draft
        target[:, window // 2] = draft[:, window // 2] + 1
    elif scenario == "accept_all":
        target[:, :window] = draft + 1
    return judge, draft, target, draft_hidden, target_hidden


@cuda
@pytest.mark.parametrize("threads", [32, 256, 1024])
@pytest.mark.parametrize("scenario,batch,window,hd,ht", [
    ("random", 5, 7, 24, 40), ("random", 3, 64, 64, 128), ("random", 2, 33, 13, 29),
    ("match", 1, 32, 4096, 8192), ("reject", 1, 32, 4096, 8192), ("accept_all", 1, 32, 4096, 8192),
    ("accept_all", 8, 64, 2048, 4096),
])
def test_the_cuda_op_equals_the_oracle(threads, scenario, batch, window, hd, ht):
    """The kernel itself at 32, 256 and 1024 threads per block, one block or a cluster per sequence."""
    judge, draft, target, draft_hidden, target_hidden = cuda_case(scenario, batch, window, hd, ht, seed=window)
    for threshold in (0.2, 0.5, 0.8):
        probabilities = judge.probabilities(draft_hidden, target_hidden)  # [B, W] on the CPU, fp32
        want = accept(draft, target, judge_mismatch_ok(probabilities, threshold))
        for blocks in cluster_sizes():
            got = TorchJudgeAccept(judge, "cuda", threads=threads, blocks=blocks)(
                draft.cuda(), target.cuda(), draft_hidden.cuda(), target_hidden.cuda(), threshold)
            assert got.num_accepted.tolist() == want.num_accepted.tolist(), (blocks, threshold)
            assert got.next_tokens.tolist() == want.next_tokens.tolist(), (blocks, threshold)
            assert torch.equal(got.mismatch_accepted.cpu(), want.mismatch_accepted)
            # The probabilities the kernel evaluated: accepted mismatches and the rejected position.
            _, _, kernel_p = torch.ops.autojudge.judge_accept(
                draft.cuda().int(), target.cuda().int(), draft_hidden.cuda(), target_hidden.cuda(),
                judge.weight.float().cuda(), float(judge.bias), torch.full((batch,), threshold, device="cuda"),
                threads, blocks)
            positions = torch.arange(window)
            evaluated = (draft != target[:, :window]) & (positions <= want.num_accepted[:, None])
            assert torch.equal(kernel_p.cpu() == -1.0, ~evaluated)
            torch.testing.assert_close(kernel_p.cpu()[evaluated], probabilities[evaluated], rtol=1e-4, atol=1e-5)


@cuda
@pytest.mark.parametrize("threads", [32, 1024])
@pytest.mark.parametrize("scenario,batch,window,hd,ht", [
    ("random", 5, 7, 24, 40), ("random", 2, 33, 13, 29), ("reject", 1, 32, 4096, 8192),
    ("accept_all", 1, 32, 4096, 8192), ("accept_all", 8, 64, 2048, 4096),
])
def test_the_cuda_op_with_scalar_features_equals_the_oracle(threads, scenario, batch, window, hd, ht):
    """E = 5: every team (one block, a cluster) adds the scalar part the same way as the oracle."""
    plain, draft, target, draft_hidden, target_hidden = cuda_case(scenario, batch, window, hd, ht, seed=window)
    judge, scalars = with_scalars(plain, batch, window, window)  # a few logit units: bias +-50 still decides
    for threshold in (0.2, 0.5, 0.8):
        want, probabilities = oracle(judge, draft, target, draft_hidden, target_hidden, threshold, scalars)
        for blocks in cluster_sizes():
            got = TorchJudgeAccept(judge, "cuda", threads=threads, blocks=blocks)(
                draft.cuda(), target.cuda(), draft_hidden.cuda(), target_hidden.cuda(), threshold,
                scalars=scalars.cuda())
            assert got.num_accepted.tolist() == want.num_accepted.tolist(), (blocks, threshold)
            assert got.next_tokens.tolist() == want.next_tokens.tolist(), (blocks, threshold)
            _, _, kernel_p = torch.ops.autojudge.judge_accept(
                draft.cuda().int(), target.cuda().int(), draft_hidden.cuda(), target_hidden.cuda(),
                judge.weight.float().cuda(), float(judge.bias), torch.full((batch,), threshold, device="cuda"),
                threads, blocks, scalars.cuda())
            positions = torch.arange(window)
            evaluated = (draft != target[:, :window]) & (positions <= want.num_accepted[:, None])
            assert torch.equal(kernel_p.cpu() == -1.0, ~evaluated)
            torch.testing.assert_close(kernel_p.cpu()[evaluated], probabilities[evaluated], rtol=1e-4, atol=1e-5)


@cuda
def test_the_cuda_op_replays_in_a_cuda_graph():
    judge, draft, target, draft_hidden, target_hidden = cuda_case("random", 4, 16, 64, 128)
    args = (draft.cuda().int(), target.cuda().int(), draft_hidden.cuda(), target_hidden.cuda(),
            judge.weight.float().cuda(), float(judge.bias), torch.full((4,), 0.5, device="cuda"))
    eager = torch.ops.autojudge.judge_accept(*args)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = torch.ops.autojudge.judge_accept(*args)
    graph.replay()
    torch.cuda.synchronize()
    assert all(torch.equal(a, b) for a, b in zip(eager, captured))


def test_bad_launch_parameters_are_refused_on_cuda_only():
    """The host build ignores threads/blocks (one thread); the CUDA launcher refuses bad ones."""
    judge, draft, target, draft_hidden, target_hidden = case(0, 2, 4, "draft+target", torch.float32)
    got = TorchJudgeAccept(judge, "cpu", threads=33, blocks=9)(draft, target, draft_hidden, target_hidden, 0.5)
    assert got.num_accepted.shape == (2,)
    if torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="cudaError"):
            TorchJudgeAccept(judge, "cuda", threads=33)(draft.cuda(), target.cuda(), draft_hidden.cuda(),
                                                         target_hidden.cuda(), 0.5)


def test_the_in_process_backend_fuses_the_op_only_on_cuda(make_lm):
    target, draft = make_lm(tiny_model(0), "t"), make_lm(tiny_model(1), "d")
    judge = Judge(torch.zeros(2 * 64), 0.0, JudgeMetadata("t", 64, "d", 64, "draft+target", threshold=0.5))
    assert InProcessBackend(target, draft, judge).judge_accept is None  # CPU: the oracle
    if torch.cuda.is_available():
        target.model.cuda(), draft.model.cuda()
        assert isinstance(InProcessBackend(target, draft, judge).judge_accept, TorchJudgeAccept)
        target.model.cpu(), draft.model.cpu()


@cuda
def test_on_cuda_the_decoder_commits_what_the_oracle_commits(make_lm):
    """Judge mode with the fused op (the in-process backend on CUDA) against the same decoder
    with the oracle rule: the same tokens and the same accepted mismatches."""
    import copy

    from autojudge.decoding import DecodeConfig, SpeculativeDecoder

    base = tiny_model(3)
    target = make_lm(copy.deepcopy(base).cuda(), "t")
    draft = make_lm(copy.deepcopy(base).cuda(), "d")
    with torch.no_grad():  # a draft that often disagrees
        for p in draft.model.parameters():
            p.add_(torch.randn_like(p) * 0.1 * p.std())
    g = torch.Generator().manual_seed(4)
    judge = Judge(torch.randn(128, generator=g) * 0.3, 0.0, JudgeMetadata("t", 64, "d", 64, "draft+target",
                                                                          threshold=0.5))
    fused = SpeculativeDecoder(target, draft, judge)
    oracle = SpeculativeDecoder(target, draft, judge)
    assert isinstance(fused.backend.judge_accept, TorchJudgeAccept)
    oracle.backend.judge_accept = None
    config = DecodeConfig(mode="judge", window=6, threshold=0.5, max_new_tokens=40)
    prompts = [[1, 504, 3458, 314], [1, 42, 977, 12, 13]]
    got, want = fused.generate_batch(prompts, config), oracle.generate_batch(prompts, config)
    assert [r.token_ids for r in got] == [r.token_ids for r in want]
    assert [r.metrics.num_accepted_mismatches for r in got] == [r.metrics.num_accepted_mismatches for r in want]


def test_without_nvcc_the_decoder_falls_back_to_the_oracle(monkeypatch):
    from autojudge.acceptance import torch_op
    from autojudge.errors import MissingDependencyError

    judge, *_ = case(0, 1, 2, "draft+target", torch.float32)

    def no_nvcc(*args, **kwargs):
        raise MissingDependencyError("`nvcc` was not found on PATH")
    monkeypatch.setattr(torch_op, "build_cuda_library", no_nvcc)
    with pytest.warns(UserWarning, match="oracle"):
        assert torch_op.fused_judge_accept(judge, "cpu") is None
