"""Speculative decoding: one loop over a batch of sequences, for every backend and mode.

Where things are: ``config`` (modes, window bound, DecodeConfig, GenerationResult), ``loop``
(the cycle: propose -> verify -> accept -> commit; stops, budgets, metrics), ``backend``
(what a backend offers the loop: add one there), ``in_process`` (PyTorch models in this
process), ``metrics`` (vLLM-named counters), ``stops`` (EOS and stop strings).

Names are loaded on first use, so that ``config`` (read by the CLI at start-up) does not
import torch.
"""

from importlib import import_module

_HOMES = {"MAX_WINDOW": "config", "MODES": "config", "DecodeConfig": "config", "GenerationResult": "config",
          "InProcessBackend": "in_process", "SpeculativeDecoder": "in_process", "SpeculativeLoop": "loop",
          "SpecDecodeMetrics": "metrics"}
__all__ = sorted(_HOMES)


def __getattr__(name: str):
    if name not in _HOMES:
        raise AttributeError(f"module 'autojudge.decoding' has no attribute {name!r}")
    return getattr(import_module(f"autojudge.decoding.{_HOMES[name]}"), name)
