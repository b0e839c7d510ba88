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
