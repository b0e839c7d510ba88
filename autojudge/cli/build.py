"""TensorRT deployment: the ``build`` pipeline (``build --config``), ``build judge`` (the
judge-accept engine alone) and ``export-onnx`` (the judge-accept step as standard ONNX ops)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from autojudge.cli.options import json_option, load_judge

HIDDEN_DTYPES = ("float32", "float16", "bfloat16")


@click.group(invoke_without_command=True)
@click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Deployment description (YAML or JSON): draft, target, judge, output_dir, dtype, "
                   "quantization, tensor_parallel, max_batch_size, max_input_len, max_seq_len, window.")
@click.option("--dry-run", is_flag=True, help="Check the description and print every step, command and output "
                                              "path without running anything.")
@json_option("Print the preflight, the plan and the summary as JSON.")
@click.pass_context
def build(ctx, config_path, dry_run, as_json) -> None:
    """Build everything a GPU host needs to serve AutoJudge with TensorRT-LLM.

    \b
    autojudge-trt build --config deploy.yaml            the whole pipeline:
      draft and target checkpoints and engines (hidden states marked as outputs; the
      target for external draft tokens), the judge-accept plugin and engine, and the
      Triton repository (TensorRT-LLM flavour) pointing at them.
    autojudge-trt build --config deploy.yaml --dry-run  the plan, nothing run
    autojudge-trt build judge --judge J --out DIR       only the judge-accept engine

    \b
    Preflight runs first (GPU and compute capability, TensorRT / TensorRT-LLM 1.2.x, CUDA
    toolkit, CMake, disk, judge hidden sizes, window, tokenizers) and stops with what to
    fix. Re-running skips the steps whose outputs are complete (OUTPUT_DIR/manifest.json).
    """
    if ctx.invoked_subcommand is not None:
        if config_path or dry_run:
            raise click.UsageError("--config/--dry-run belong to the pipeline, not to `build "
                                   f"{ctx.invoked_subcommand}`")
        return
    if config_path is None:
        click.echo(ctx.get_help())
        ctx.exit(0)
    from autojudge.deploy.pipeline import run_build

    ctx.exit(run_build(config_path, dry_run=dry_run, as_json=as_json))


@build.command("judge")
@click.option("--judge", "judge_path", type=click.Path(exists=True, path_type=Path), required=True,
              help="Judge artifact directory (from `autojudge-trt train`).")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Output directory: judge_accept.plan, judge_accept.json (and the ONNX file or plugin build).")
@click.option("--path", "build_path", type=click.Choice(["plugin", "onnx"]), default="plugin", show_default=True,
              help="plugin: the AutoJudgeJudgeAccept CUDA kernel (early exit, dot products only at "
                   "mismatches). onnx: the standard-op graph, for TensorRT builds without custom plugins.")
@click.option("--plugin-library", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="A built libautojudge_judge_accept_plugin.so [default: build it with CMake, TENSORRT_ROOT].")
@click.option("--hidden-dtype", type=click.Choice(HIDDEN_DTYPES), default="bfloat16",
              show_default=True, help="Element type of the hidden-state inputs.")
@click.option("--max-batch", type=click.IntRange(1), default=64, show_default=True)
@click.option("--max-window", type=click.IntRange(1, 1024), default=64, show_default=True)
@json_option("Print the engine metadata as JSON.")
def build_judge(judge_path, out, build_path, plugin_library, hidden_dtype, max_batch, max_window, as_json):
    """Build a TensorRT engine of the judge-accept step for one judge artifact.

    Dynamic batch (1..--max-batch) and window (1..--max-window). Where TensorRT is absent
    this stops and says what to install; nothing is faked.
    """
    from autojudge.acceptance.engine import EngineSpec, build_judge_engine, require_tensorrt

    require_tensorrt()  # before any other work
    judge = load_judge(judge_path)
    spec = EngineSpec(path=build_path, hidden_dtype=hidden_dtype, max_batch=max_batch, max_window=max_window,
                      opt_batch=min(8, max_batch), opt_window=min(8, max_window))
    meta = build_judge_engine(judge, out, spec, plugin_library)
    click.echo(json.dumps(meta) if as_json else f"wrote {meta['engine']} (TensorRT {meta['tensorrt']}, {build_path})")


@click.command("export-onnx")
@click.option("--judge", "judge_path", type=click.Path(exists=True, path_type=Path), required=True,
              help="Judge artifact directory (from `autojudge-trt train`).")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=Path("judge_accept.onnx"),
              show_default=True, help="ONNX file to write.")
@click.option("--hidden-dtype", type=click.Choice(HIDDEN_DTYPES), default="bfloat16",
              show_default=True, help="Element type of the hidden-state inputs (what the models emit).")
@json_option("Print what was written as JSON.")
def export_onnx_command(judge_path, out, hidden_dtype, as_json):
    """Write the judge-accept step as a graph of standard ONNX ops (opset 17, IR 9).

    \b
    Inputs: draft_tokens [B, W] int32, target_tokens [B, W+1] int32, draft_hidden [B, W, Hd]
    (draft+target layout), target_hidden [B, W, Ht], scalar_features [B, W, E] fp32 (a judge
    with scalar features), threshold [B] fp32. Outputs:
    num_accepted [B], next_tokens [B] (int32) and probabilities [B, W] (-1 where the judge
    was not needed) - exactly the plugin kernel's. For TensorRT without custom plugins,
    onnxruntime, or any ONNX consumer.
    """
    from autojudge.acceptance.onnx import IR_VERSION, OPSET, export_onnx

    judge = load_judge(judge_path)
    path = export_onnx(judge, out, hidden_dtype)
    info = {"onnx": str(path), "opset": OPSET, "ir_version": IR_VERSION, "hidden_dtype": hidden_dtype,
            "feature_layout": judge.meta.feature_layout, "draft_hidden_size": judge.meta.draft_hidden_size,
            "target_hidden_size": judge.meta.target_hidden_size,
            "scalar_features": list(judge.meta.scalar_features)}
    click.echo(json.dumps(info) if as_json else f"wrote {path} (opset {OPSET}, IR {IR_VERSION}, {hidden_dtype})")
