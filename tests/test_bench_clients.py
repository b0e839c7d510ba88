"""The load benchmarks' turn-taking: every method decodes the same bursts, in rotated order."""

import sys
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from clients import burst, take_turns  # noqa: E402


def test_a_burst_sends_every_index_once_through_at_most_its_clients():
    live, most, lock = [0], [0], threading.Lock()
    gate = threading.Barrier(3)

    def send(i):
        with lock:
            live[0] += 1
            most[0] = max(most[0], live[0])
        if i < 3:
            gate.wait(timeout=5)  # the first three run at once: three clients
        with lock:
            live[0] -= 1
        return {"i": i}

    seconds, records = burst(send, 7, 3)
    assert [r["i"] for r in records] == list(range(7))
    assert most[0] == 3
    assert seconds > 0


def test_methods_take_turns_on_the_same_prompts_in_rotated_order_the_first_turn_dropped():
    calls = []

    def send(method, i):
        calls.append((method, i))
        return {"method": method, "i": i}

    turns = take_turns(send, ["a", "b", "c"], 0.0, clients=2, per_client=2)
    order = [m for m, _ in calls[::4]]
    assert order[:6] == ["a", "b", "c", "b", "c", "a"]  # turn 0 warms up, turn 1 rotated by one
    for method in "abc":
        assert len(turns[method]) == 1  # the warm-up turn dropped, then one turn: seconds were 0
        _, records = turns[method][0]
        assert sorted(r["i"] for r in records) == [4, 5, 6, 7]  # turn 1: the same burst for every method
