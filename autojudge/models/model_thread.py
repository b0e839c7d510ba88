"""One thread for every torch call of a served model: the one that loads it also decodes with it.

PyTorch's CPU ops run on an OpenMP team that belongs to the calling thread. Once a process
holds two teams, say the loader's and a decoding thread's, GNU OpenMP manages more threads
than there are cores. It then stops spinning between parallel regions, so each small op waits
for its workers to wake up (read in GCC's libgomp, config/linux/wait.h ``do_spin``: while
``gomp_managed_threads > gomp_available_cpus`` it spins ``gomp_throttled_spin_count_var``
times, not ``gomp_spin_count_var``; observed here: ``GOMP_SPINCOUNT=0`` makes the first
thread as slow as the second). Measured on 2 cores, torch 2.13: a
[16, 576] x [576, 1536] matmul took 245-300 us on the first thread and 340-440 us on a second
thread; a target-only decode cycle (1, 4 or 16 rows) 1.6x as long on a second thread as on the
one that loaded the models, a lossless W=4 cycle 1.1-1.35x (``benchmarks/bench_model_thread.py``).

:class:`ModelThread` is that one thread: a daemon (a server that is never closed does not hold
the interpreter open at exit) that runs what it is given, in order.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any


class ModelThread:
    def __init__(self, name: str = "autojudge-model"):
        self.tasks: queue.SimpleQueue = queue.SimpleQueue()
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.thread.start()

    def submit(self, fn: Callable, *args: Any, **kwargs: Any) -> Future:
        """Run ``fn(*args, **kwargs)`` on the thread, after what was submitted before."""
        future: Future = Future()
        self.tasks.put((future, fn, args, kwargs))
        return future

    def call(self, fn: Callable, *args: Any, **kwargs: Any) -> Any:
        """``submit`` and wait: its result, or its exception raised here."""
        return self.submit(fn, *args, **kwargs).result()

    def close(self) -> None:
        """The thread ends once what was submitted has run."""
        self.tasks.put(None)

    def _run(self) -> None:
        while (task := self.tasks.get()) is not None:
            future, fn, args, kwargs = task
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(fn(*args, **kwargs))
                except BaseException as exc:  # noqa: BLE001 - the caller gets it from the future
                    future.set_exception(exc)
