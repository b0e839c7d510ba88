"""Closed-loop clients the load benchmarks share."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


def run_clients(client: Callable[[int], None], clients: int) -> float:
    """Run ``client(k)`` for k in 0..clients-1 on threads of their own until each returns; the
    seconds that took."""
    started = time.perf_counter()
    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - started


def take_turns(send: Callable[[str, int], dict], methods: list[str], seconds: float) -> dict[str, list[dict]]:
    """One client whose k-th prompt goes to every method in turn (the order rotated with k): a first
    turn warms every method up and is dropped, then turns follow until ``seconds`` have passed (at
    least one). At one client a method's throughput is its tokens over its requests' time, and
    taking turns request by request lets the machine's drift (a 2-core VM: 20% between runs minutes
    apart, within one run too) hit every method alike. ``send(method, k)`` returns a record; each
    method's, in order."""
    records: dict[str, list[dict]] = {m: [] for m in methods}
    k, stop = 0, 0.0
    while k < 2 or time.perf_counter() < stop:
        for method in methods[k % len(methods):] + methods[:k % len(methods)]:
            record = send(method, k)
            if k:
                records[method].append(record)
        if not k:
            stop = time.perf_counter() + seconds
        k += 1
    return records
