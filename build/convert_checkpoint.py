#!/usr/bin/env python3
"""Step script: a Hugging Face checkpoint -> a TensorRT-LLM checkpoint (one shard per TP rank).

Run by ``autojudge-trt build`` (see build/README.md); usable alone:

    python build/convert_checkpoint.py --model meta-llama/Llama-3.2-1B-Instruct \
        --dtype bfloat16 --quantization none --tp-size 1 --out ckpt/draft

Weight-only quantizations (int8_wo, int4_wo) are applied while converting; fp8 and int4_awq
calibrate with NVIDIA ModelOpt through TensorRT-LLM's ``quantize`` (needs the GPU).
Written against TensorRT-LLM 1.2.x (the last line with the TensorRT-engine workflow).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

QUANT_ALGOS = {"none": None, "fp8": "FP8", "int8_wo": "W8A16", "int4_wo": "W4A16", "int4_awq": "W4A16_AWQ"}
CALIBRATED = {"fp8", "int4_awq"}


def require_tensorrt_llm():
    try:
        import tensorrt_llm
    except ImportError:
        sys.exit("convert_checkpoint.py needs TensorRT-LLM 1.2.x: pip install 'autojudge[trt]' on a GPU host, "
                 "or run inside nvcr.io/nvidia/tritonserver:<yy.mm>-trtllm-python-py3")
    if not tensorrt_llm.__version__.startswith("1.2."):
        sys.exit(f"TensorRT-LLM {tensorrt_llm.__version__} is installed; this script needs 1.2.x")
    return tensorrt_llm


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="Hugging Face hub id or local checkpoint directory")
    parser.add_argument("--dtype", choices=["float16", "bfloat16", "float32"], default="bfloat16")
    parser.add_argument("--quantization", choices=sorted(QUANT_ALGOS), default="none")
    parser.add_argument("--tp-size", type=int, default=1)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    require_tensorrt_llm()
    from huggingface_hub import snapshot_download
    from tensorrt_llm.mapping import Mapping
    from tensorrt_llm.models import MODEL_MAP
    from tensorrt_llm.models.modeling_utils import QuantConfig
    from tensorrt_llm.quantization import QuantAlgo

    source = args.model if Path(args.model).is_dir() else snapshot_download(args.model)
    architecture = json.loads((Path(source) / "config.json").read_text())["architectures"][0]
    if architecture not in MODEL_MAP:
        sys.exit(f"TensorRT-LLM has no converter for {architecture}")
    model_class = MODEL_MAP[architecture]
    algo = QUANT_ALGOS[args.quantization]
    quant_config = QuantConfig(quant_algo=QuantAlgo[algo]) if algo else QuantConfig()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.quantization in CALIBRATED:
        mapping = Mapping(world_size=args.tp_size, tp_size=args.tp_size)
        model_class.quantize(source, str(args.out), dtype=args.dtype, mapping=mapping, quant_config=quant_config)
        return
    for rank in range(args.tp_size):
        mapping = Mapping(world_size=args.tp_size, rank=rank, tp_size=args.tp_size)
        model = model_class.from_hugging_face(source, dtype=args.dtype, mapping=mapping, quant_config=quant_config)
        model.save_checkpoint(str(args.out), save_config=rank == 0)
        del model
        print(f"rank {rank + 1}/{args.tp_size} converted", flush=True)


if __name__ == "__main__":
    main()
