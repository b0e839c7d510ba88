"""Mining: the fast loop matches a brute-force reading of ALGORITHM.md section 1 on tiny
models, finds the planted important mismatches, and shards resume after a crash."""

import json

import pytest
import torch

from autojudge import mining
from autojudge.jsonl import CorruptRecordError
from autojudge.mining import merge, mine, mine_example, read_mined
from autojudge.models import encode_prompt
from autojudge.tasks import Example, Task

from conftest import perturbed, tiny_model

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


def brute_force(target, draft, task, example, prompt, max_new):
    """ALGORITHM.md section 1 verbatim: full forwards, no cache, no early stop."""
    def text(ids):
        return target.tokenizer.decode(ids[len(prompt):], skip_special_tokens=True)

    def greedy(ids):
        ids = list(ids)
        while len(ids) - len(prompt) < max_new:
            ids.append(int(target.model(torch.tensor([ids])).logits[0, -1].argmax()))
            if ids[-1] in target.eos_token_ids:
                break
        return ids

    cur = greedy(prompt)
    ref = task.result(example, text(cur))
    labels, left = [], len(prompt)
    while True:
        d = draft.model(torch.tensor([cur])).logits[0].argmax(-1).tolist()  # d[j] predicts j + 1
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
