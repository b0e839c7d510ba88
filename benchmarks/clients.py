"""Closed-loop clients the load benchmarks share."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor


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


def take_turns(send: Callable[[str, int], dict], methods: list[str], seconds: float, clients: int = 1,
               per_client: int = 1) -> dict[str, list[tuple[float, list[dict]]]]:
    """The methods take turns, each turn the same burst of ``clients * per_client`` prompts for every
    method (the order rotated turn by turn): turn k sends prompts k*n .. k*n + n-1 (n the burst's
    size) through ``clients`` closed-loop clients, and the next method starts when the last answer
    is in -- vLLM's ``benchmark_serving --max-concurrency`` in miniature, one method after another.
    A first turn warms every method up and is dropped, then turns follow until ``seconds`` have
    passed (at least one). A method's throughput is its tokens over its turns' time; taking turns
    a burst at a time lets the machine's drift (a 2-core VM: 20% between runs minutes apart, within
    one run too) hit every method alike, and every method decodes the same prompts. ``send(method,
    i)`` returns one request's record; per method, its turns as (seconds, records)."""
    turns: dict[str, list[tuple[float, list[dict]]]] = {m: [] for m in methods}
    size, k, stop = clients * per_client, 0, 0.0
    while k < 2 or time.perf_counter() < stop:
        for method in methods[k % len(methods):] + methods[:k % len(methods)]:
            turn = burst(lambda i, method=method, first=k * size: send(method, first + i), size, clients)
            if k:
                turns[method].append(turn)
        if not k:
            stop = time.perf_counter() + seconds
        k += 1
    return turns


def burst(send: Callable[[int], dict], requests: int, clients: int) -> tuple[float, list[dict]]:
    """``send(i)`` for i in 0..requests-1 through ``clients`` closed-loop clients (each takes the next
    index as soon as its last answer is in); the seconds until the last answer and the records in
    index order."""
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=min(clients, requests)) as pool:
        records = list(pool.map(send, range(requests)))
    return time.perf_counter() - started, records


def pooled(turns: list[tuple[float, list[dict]]]) -> tuple[float, list[dict]]:
    """A method's turns (:func:`take_turns`) as one: their seconds summed, their records in order."""
    return sum(seconds for seconds, _ in turns), [r for _, records in turns for r in records]
