"""``tensorrt_llm.llmapi`` (emulated): the KV-cache settings the backend passes."""

from dataclasses import dataclass


@dataclass
class KvCacheConfig:
    enable_block_reuse: bool = True  # llm_args.py: reuse is on by default
    free_gpu_memory_fraction: float | None = 0.9
    tokens_per_block: int = 32
