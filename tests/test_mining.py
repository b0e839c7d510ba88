"""Mining: the fast loop matches a brute-force reading of ALGORITHM.md section 1 on tiny
models, finds the planted important mismatches, and shards resume after a crash."""

import copy
import json

import pytest
import torch
from conftest import perturbed, tiny_model

from autojudge.mining import merge, mine, mine_example, read_mined
from autojudge.mining import search as mining  # the module whose functions mine() calls
from autojudge.models import encode_prompt
from autojudge.models.ragged_cache import RaggedCache
from autojudge.storage import CorruptRecordError
from autojudge.tasks import Example, Task

QUESTIONS = ["What is two plus three?", "Name a colour.", "Count to five.", "Why is the sky blue?",
             "Say hello.", "How many legs has a cat?"]


class FirstEightCharacters(Task):
    """Planted rule: only the first 8 characters of the answer are its result, so a
    mismatch is important iff swapping it in changes them."""

    name = "first8"
    max_new_tokens = 20

    def __init__(self, determined_after: int | None = None):
        self.determined_after = determined_after

    def load(self, split="test", limit=None, offset=0):
        return [Example(id=f"q{i}", question=q) for i, q in enumerate(QUESTIONS)][offset:][:limit]

    def prompt(self, example):
        return example.question

    def result(self, example, completion):
        return completion[:8]

    def determined(self, example, completion):
        return self.determined_after is not None and len(completion) >= self.determined_after


@pytest.fixture(scope="module")
def pair(make_lm):
    target = tiny_model(0, layers=2)
    return make_lm(target, "tiny-target"), make_lm(perturbed(target, 0.6, seed=1), "tiny-draft")


@pytest.fixture(scope="module")
def pair64(pair, make_lm):
    """float64 copies: batched matmuls then round exactly like batch-1 ones, so labels must match."""
    target, draft = pair
    return make_lm(copy.deepcopy(target.model).double(), "tiny-target"), \
        make_lm(copy.deepcopy(draft.model).double(), "tiny-draft")


def brute_force(target, draft, task, example, prompt, max_new):
    """ALGORITHM.md section 1 verbatim: full forwards, no cache, no early stop."""
    def text(ids):
        return target.tokenizer.decode(ids[len(prompt):], skip_special_tokens=True)

    def greedy(ids):  # an answer that ends in EOS (a swapped-in one too) is finished
        ids = list(ids)
        while len(ids) - len(prompt) < max_new and not (len(ids) > len(prompt) and ids[-1] in target.eos_token_ids):
            ids.append(int(target.model(torch.tensor([ids])).logits[0, -1].argmax()))
        return ids

    cur = greedy(prompt)
    ref = task.result(example, text(cur))
    labels, left = [], len(prompt)
    while True:
        logits = draft.model(torch.tensor([cur])).logits[0]
        if draft.greedy_vocab is not None:
            logits = logits[:, draft.greedy_vocab]
        d = logits.argmax(-1).tolist() if draft.greedy_vocab is None else draft.greedy_vocab[logits.argmax(-1)].tolist()
        mismatches = [i for i in range(left, len(cur)) if cur[i] != d[i - 1]]
        if not mismatches:
            return labels
        i = mismatches[0]
        alt = greedy(cur[:i] + [d[i - 1]])
        important = task.result(example, text(alt)) != ref
        labels.append({"pos": i - len(prompt), "draft_token": d[i - 1], "target_token": cur[i],
                       "important": important})
        if not important:
            cur = alt
        left = i + 1


@pytest.mark.parametrize("lookahead", [0, 8])
def test_fast_loop_equals_brute_force_and_finds_the_planted_rule(pair, lookahead):
    target, draft = pair
    task = FirstEightCharacters()
    seen = set()
    for example in task.load():
        prompt = encode_prompt(target.tokenizer, task.prompt(example))
        mined = mine_example(target, draft, task, example, prompt, task.max_new_tokens, lookahead=lookahead)
        expected = brute_force(target, draft, task, example, prompt, task.max_new_tokens)
        assert mined.record["labels"] == expected
        assert mined.target_hidden.shape == (len(expected), target.hidden_size)
        assert mined.draft_hidden.shape == (len(expected), draft.hidden_size)
        seen |= {label["important"] for label in expected}
    assert seen == {True, False}  # the tiny pair exercises both branches


def test_a_swapped_in_eos_ends_the_answer_there(pair, make_lm):
    """A draft that only ever proposes EOS: each swap ends the answer at the swap (decoding stops
    at an accepted EOS), so the continuation is empty and the result is the prefix's; the answer
    after an important EOS swap is searched on (garipovroma/autojudge stops the prompt there)."""
    target, draft = pair
    eos = min(target.eos_token_ids)
    eos_only = make_lm(draft.model, "tiny-draft")
    eos_only.greedy_vocab = torch.tensor([eos])
    task = FirstEightCharacters()
    example = task.load()[0]
    prompt = encode_prompt(target.tokenizer, task.prompt(example))
    mined = mine_example(target, eos_only, task, example, prompt, task.max_new_tokens)
    labels = mined.record["labels"]
    assert labels == brute_force(target, eos_only, task, example, prompt, task.max_new_tokens)
    assert {label["draft_token"] for label in labels} == {eos} and len(labels) > 1
    reference = target.tokenizer.decode(mined.record["final_ids"], skip_special_tokens=True)
    for label in labels:  # important iff the answer cut at the swap has other first 8 characters
        cut = target.tokenizer.decode(mined.record["final_ids"][: label["pos"]], skip_special_tokens=True)
        assert label["important"] == (cut[:8] != reference[:8])


def test_max_labels_keeps_the_first_labels_of_the_full_search(pair):
    target, draft = pair
    task = FirstEightCharacters()
    capped = 0
    for example in task.load()[:4]:
        prompt = encode_prompt(target.tokenizer, task.prompt(example))
        full = mine_example(target, draft, task, example, prompt, task.max_new_tokens).record["labels"]
        first = mine_example(target, draft, task, example, prompt, task.max_new_tokens, max_labels=2)
        assert first.record["labels"] == full[:2]
        assert first.target_hidden.shape[0] == len(full[:2])
        capped += len(full) > 2
    assert capped  # at least one prompt had more than two labels to cut


def test_features_are_the_hidden_states_at_the_swapped_in_draft_token(pair):
    target, draft = pair
    task = FirstEightCharacters()
    example = task.load()[0]
    prompt = encode_prompt(target.tokenizer, task.prompt(example))
    mined = mine_example(target, draft, task, example, prompt, task.max_new_tokens)
    label = mined.record["labels"][0]
    prefix = prompt + mined.record["final_ids"][: label["pos"]] + [label["draft_token"]]
    ids = torch.tensor([prefix])
    torch.testing.assert_close(mined.target_hidden[0].float(),
                               target.hidden_states(ids, target.new_cache())[0, -1], atol=2e-3, rtol=2e-3)
    torch.testing.assert_close(mined.draft_hidden[0].float(),
                               draft.hidden_states(ids, draft.new_cache())[0, -1], atol=2e-3, rtol=2e-3)


def test_early_stop_and_kv_reuse_give_the_naive_labels_for_fewer_target_tokens(pair):
    target, draft = pair
    task = FirstEightCharacters(determined_after=30)
    fast_cost = naive_cost = 0
    for example in task.load()[:3]:
        prompt = encode_prompt(target.tokenizer, task.prompt(example))
        fast = mine_example(target, draft, task, example, prompt, 40)
        naive = mine_example(target, draft, task, example, prompt, 40, naive=True)
        assert fast.record["labels"] == naive.record["labels"]
        fast_cost += fast.record["target_forward_tokens"]
        naive_cost += naive.record["target_forward_tokens"]
    assert naive_cost > 2 * fast_cost


def test_shards_resume_after_a_crash_and_merge(pair, tmp_path, monkeypatch):
    target, draft = pair
    task = FirstEightCharacters()
    examples = task.load()
    out = tmp_path / "mined"
    calls = []
    real = mining.mine_example

    def crash_on_third(*args, **kwargs):
        calls.append(args[3].id)
        if len(calls) == 3:
            raise KeyboardInterrupt  # Ctrl-C mid-prompt
        return real(*args, **kwargs)

    monkeypatch.setattr(mining, "mine_example", crash_on_third)
    with pytest.raises(KeyboardInterrupt):
        mine(target, draft, task, examples, out, split="test", progress=False)
    shard = out / "shard-00000-of-00001.jsonl"
    assert [json.loads(line)["index"] for line in shard.read_text().splitlines()] == [0, 1]
    with open(shard, "a") as f:
        f.write('{"index": 2, "exam')  # a torn line, as a crash mid-write leaves
    calls.clear()
    monkeypatch.setattr(mining, "mine_example", lambda *a, **k: calls.append(a[3].id) or real(*a, **k))
    summary = mine(target, draft, task, examples, out, split="test", progress=False)
    assert calls == ["q2", "q3", "q4", "q5"]  # only what was missing
    assert summary["prompts"] == len(examples)

    fresh = tmp_path / "fresh"
    for shard_id in range(2):  # the same work in two shards
        mine(target, draft, task, examples, fresh, split="test", num_shards=2, shard_id=shard_id, progress=False)
    a, b = read_mined(out), read_mined(fresh)
    assert [(x["index"], x["pos"], x["important"]) for x in a.labels] == \
           [(x["index"], x["pos"], x["important"]) for x in b.labels]
    assert torch.equal(a.target_hidden, b.target_hidden) and torch.equal(a.draft_hidden, b.draft_hidden)
    merged = merge(fresh, tmp_path / "merged")
    again = read_mined(tmp_path / "merged")
    assert again.labels == merged.labels and torch.equal(again.draft_hidden, b.draft_hidden)


def test_a_corrupted_shard_line_is_reported_with_file_and_line(pair, tmp_path):
    target, draft = pair
    task = FirstEightCharacters()
    out = tmp_path / "mined"
    mine(target, draft, task, task.load()[:3], out, split="test", progress=False)
    shard = out / "shard-00000-of-00001.jsonl"
    lines = shard.read_text().splitlines(keepends=True)
    lines[1] = lines[1][:10] + "#garbage#" + lines[1][10:]
    shard.write_text("".join(lines))
    with pytest.raises(CorruptRecordError, match=r"shard-00000-of-00001\.jsonl:2: corrupt record"):
        read_mined(out)
    with pytest.raises(CorruptRecordError, match=r":2:"):
        mine(target, draft, task, task.load()[:3], out, split="test", progress=False)


def test_other_settings_in_the_same_directory_are_refused(pair, tmp_path):
    from autojudge.errors import AutoJudgeError

    target, draft = pair
    task = FirstEightCharacters()
    mine(target, draft, task, task.load()[:1], tmp_path, split="test", progress=False)
    with pytest.raises(AutoJudgeError, match="other settings.*max_new_tokens"):
        mine(target, draft, task, task.load()[:1], tmp_path, split="test", max_new_tokens=7, progress=False)
    with pytest.raises(AutoJudgeError, match="other settings.*max_labels_per_prompt"):
        mine(target, draft, task, task.load()[:1], tmp_path, split="test", max_labels=3, progress=False)


def _alone(target, draft, task, examples, max_new):
    return [mine_example(target, draft, task, e, encode_prompt(target.tokenizer, task.prompt(e)), max_new)
            for e in examples]


@pytest.mark.parametrize("batch_size, chunk", [(2, 16), (4, 3)])
def test_batched_search_equals_the_search_alone(pair64, batch_size, chunk, monkeypatch):
    """Six prompts through 2 or 4 rows: rows are recycled, long feeds chunked, the shared
    cache compacted and idle rows dropped, and every prompt gets exactly its labels, features
    and costs from mining alone."""
    target, draft = pair64
    task = FirstEightCharacters(determined_after=30)
    examples = task.load()
    calls = {"compact": 0, "select": 0}
    for name in calls:
        real = getattr(RaggedCache, name)
        monkeypatch.setattr(RaggedCache, name, lambda self, *a, _real=real, _name=name: (
            calls.__setitem__(_name, calls[_name] + 1), _real(self, *a))[1])

    with torch.inference_mode():
        batched = dict(mining.mine_prompts(target, draft, task, examples, range(len(examples)), 40,
                                           batch_size=batch_size, chunk=chunk))
        alone = _alone(target, draft, task, examples, 40)
    assert sorted(batched) == list(range(len(examples)))
    for k, want in enumerate(alone):
        got = batched[k]
        assert got.record["labels"] == want.record["labels"] and want.record["labels"]
        assert got.record["target_forward_tokens"] == want.record["target_forward_tokens"]
        torch.testing.assert_close(got.target_hidden, want.target_hidden)
        torch.testing.assert_close(got.draft_hidden, want.draft_hidden)
    assert calls["compact"] > 0 and calls["select"] > 0


def test_batched_mining_writes_each_prompt_as_it_finishes_and_resumes(pair64, tmp_path, monkeypatch):
    """Ctrl-C while three prompts are in flight loses only those: the ones that finished
    are on disk, and re-running (at another batch size) mines just the rest."""
    target, draft = pair64
    task = FirstEightCharacters()
    examples = task.load()
    out = tmp_path / "mined"
    with torch.inference_mode():
        alone = _alone(target, draft, task, examples, task.max_new_tokens)
    started = []
    real = mining.mine_steps

    def crash_on_fifth(*args, **kwargs):
        started.append(args[3].id)
        if len(started) == 5:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(mining, "mine_steps", crash_on_fifth)
    with pytest.raises(KeyboardInterrupt):
        mine(target, draft, task, examples, out, split="test", batch_size=3, progress=False)
    shard = out / "shard-00000-of-00001.jsonl"
    written = [json.loads(line) for line in shard.read_text().splitlines()]
    assert len(written) == 2 and all(r["batch"] == 3 for r in written)  # 3 rows, the 5th start: two had finished

    started.clear()
    summary = mine(target, draft, task, examples, out, split="test", batch_size=2, progress=False)
    assert sorted(started) == sorted(e.id for e in examples if e.id not in {r["example_id"] for r in written})
    assert summary["prompts"] == len(examples)
    data = read_mined(out)
    assert [{k: v for k, v in x.items() if k not in ("index", "example_id")} for x in data.labels] == \
           [label for mined in alone for label in mined.record["labels"]]


class FailsOnSomeOutputs(FirstEightCharacters):
    """A task whose own code raises on some model outputs (as a buggy user task would)."""

    name = "fails-sometimes"

    def result(self, example, completion):
        if example.id == "q1" and len(completion) > 3:
            raise ValueError("cannot parse this output")
        return completion[:8]


def test_a_task_that_fails_on_one_output_is_recorded_against_that_prompt_and_mining_goes_on(pair, tmp_path):
    target, draft = pair
    task = FailsOnSomeOutputs()
    examples = task.load()[:3]
    for batch_size in (1, 2):
        out = tmp_path / f"b{batch_size}"
        summary = mine(target, draft, task, examples, out, split="test", max_new_tokens=20, progress=False,
                       batch_size=batch_size)
        records = {r["example_id"]: r for r in map(json.loads, (out / "shard-00000-of-00001.jsonl").open())}
        assert summary["prompts"] == 3 and set(records) == {"q0", "q1", "q2"}
        assert "ValueError: cannot parse this output" in records["q1"]["error"]
        assert "error" not in records["q0"] and records["q0"]["labels"]
        assert len(read_mined(out).labels) == sum(len(r["labels"]) for r in records.values())
