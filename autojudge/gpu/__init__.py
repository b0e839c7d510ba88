"""GPU-shaped decoding: a static KV cache and step functions of static shape that replay as
CUDA graphs (``graphs``); on a CPU the same code runs eagerly (tested equal to the in-process
decoder there)."""
