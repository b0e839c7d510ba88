"""Mining important mismatches, self-supervised (ALGORITHM.md section 1).

``search`` labels one prompt's mismatches (alone or many prompts batched); ``prefix_cache``
is the KV-cache reuse and the step protocol that batches searches; ``shards`` writes labels
and features append-only and resumably; ``dataset`` reads them back for training.
"""

from autojudge.mining.dataset import MinedDataset, merge, read_mined
from autojudge.mining.search import DEFAULT_LOOKAHEAD, MinedPrompt, mine_example, mine_prompts, mine_steps
from autojudge.mining.shards import MINING_FORMAT, mine, shard_name

__all__ = ["DEFAULT_LOOKAHEAD", "MINING_FORMAT", "MinedDataset", "MinedPrompt", "merge", "mine", "mine_example",
           "mine_prompts", "mine_steps", "read_mined", "shard_name"]
