#!/usr/bin/env python3
"""Step script: a TensorRT-LLM checkpoint -> an engine whose last-layer hidden states are an output.

Run by ``autojudge-trt build`` (see build/README.md); usable alone:

    python build/build_engine.py --checkpoint ckpt/target \
        --max-batch-size 8 --max-input-len 2048 --max-seq-len 4096 --out engines/target

The judge reads the draft's and the target's final-norm hidden states, which TensorRT-LLM
does not return by default: this script marks that tensor as the engine output
``--hidden-output`` so the executor hands it back (``AdditionalModelOutput``): the draft's at
each generation step, the target's at every context token.

Both engines are plain decoders with paged context attention, which KV-cache block reuse
needs. The target verifies a window as a *context pass* over prefix + drafts, so it is built
neither for external draft tokens (with them the executor accepts greedily itself and drops
the logits of rejected drafts) nor with ``gather_context_logits`` (an engine built with it
gets block reuse turned off at load, trtGptModelInflightBatching.cpp 1.2.x, so every cycle
would recompute the whole prefix): the serving backend applies the target's LM head to the
returned states at the w+1 verified positions. Written against TensorRT-LLM 1.2.1 (the last
line with the TensorRT-engine workflow).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from convert_checkpoint import require_tensorrt_llm


def mark_hidden_output(model, name: str) -> None:
    """Make the decoder stack's output (after its final norm) an engine output called ``name``."""
    stack = model.transformer
    forward = stack.forward

    def forward_and_mark(*args, **kwargs):
        out = forward(*args, **kwargs)
        hidden = out[0] if isinstance(out, tuple) else out
        hidden.mark_output(name, model.config.dtype)
        return out

    stack.forward = forward_and_mark


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--max-batch-size", type=int, default=8)
    parser.add_argument("--max-input-len", type=int, default=2048)
    parser.add_argument("--max-seq-len", type=int, default=4096)
    parser.add_argument("--hidden-output", default="autojudge_hidden_states")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    require_tensorrt_llm()
    from tensorrt_llm.builder import BuildConfig, build
    from tensorrt_llm.models import MODEL_MAP, PretrainedConfig
    from tensorrt_llm.plugin import PluginConfig

    pretrained = PretrainedConfig.from_json_file(str(args.checkpoint / "config.json"))
    plugin_config = PluginConfig()
    plugin_config.use_paged_context_fmha = True  # KV-cache reuse needs paged context attention
    # No speculative_decoding_mode (its default NONE) and no gather_context_logits / gather_generation_logits:
    # see the module doc. (Were a mode wanted, BuildConfig types it as the SpeculativeDecodingMode IntFlag and
    # build() compares with ==, so a string would build, silently, without it: tensorrt_llm/builder.py 1.2.x.)
    build_config = BuildConfig(max_batch_size=args.max_batch_size, max_input_len=args.max_input_len,
                               max_seq_len=args.max_seq_len, plugin_config=plugin_config)
    args.out.mkdir(parents=True, exist_ok=True)
    world = pretrained.mapping.world_size
    for rank in range(world):
        model = MODEL_MAP[pretrained.architecture].from_checkpoint(str(args.checkpoint), rank=rank)
        mark_hidden_output(model, args.hidden_output)
        engine = build(model, build_config)
        engine.save(str(args.out))
        del model, engine
        print(f"rank {rank + 1}/{world} built", flush=True)


if __name__ == "__main__":
    main()
