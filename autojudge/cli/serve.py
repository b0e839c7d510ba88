"""Serving: ``repo`` writes a Triton model repository, ``serve`` runs tritonserver on it,
``client`` sends it prompts."""

from __future__ import annotations

import json
from pathlib import Path

import click

from autojudge.cli.options import DTYPES, MODE_CHOICE, json_option, status, window_option
from autojudge.errors import AutoJudgeError


@click.command()
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Deployment directory to write (models/, artifacts/, deployment.json).")
@click.option("--target", default="embedded", show_default=True, help="Target model spec (as in generate).")
@click.option("--draft", default="",
              help="Draft model spec [default: the packaged target's own draft (embedded, testbed)].")
@click.option("--judge", "judge_path", type=click.Path(exists=True, path_type=Path),
              help="Judge artifact; copied into the deployment. Enables mode 'judge'.")
@click.option("--mode", "default_mode", type=MODE_CHOICE,
              default=None, help="Default mode of requests that name none [default: judge with --judge, "
                                 "else lossless].")
@window_option(4, "Default window.", short=False)
@click.option("--threshold", type=click.FloatRange(0, 1), help="Default judge threshold [default: the judge's].")
@click.option("--max-tokens", type=click.IntRange(1), default=128, show_default=True,
              help="Default max new tokens per request.")
@click.option("--max-tokens-limit", type=click.IntRange(1), default=1024, show_default=True,
              help="Largest max_tokens a request may ask for.")
@click.option("--instances", type=click.IntRange(1), default=1, show_default=True,
              help="Instances of the decoding model, each with its own models and running batch.")
@click.option("--max-batch", type=click.IntRange(1), default=16, show_default=True,
              help="Requests decoded together per instance (continuous batching; 1 = one at a time).")
@click.option("--max-queue", type=click.IntRange(0), default=64, show_default=True,
              help="Requests waiting per instance beyond a full batch; one more gets a 'server is full' error.")
@click.option("--prefill-chunk", type=click.IntRange(1), default=256, show_default=True,
              help="Prompt tokens a cycle feeds in all, shared by the requests joining (a long prompt never "
                   "stalls the others for long).")
@click.option("--unary-instances", type=click.IntRange(1), default=4, show_default=True,
              help="Forwarding instances of the unary model `autojudge` (light: no model): unary requests in "
                   "flight; streaming and the OpenAI endpoint are not bounded by it.")
@click.option("--device", default="cpu", show_default=True, help="cpu or cuda[:N] (KIND_GPU).")
@click.option("--dtype", type=click.Choice(DTYPES), default="float32", show_default=True)
@click.option("--torch-threads", type=click.IntRange(0), default=0, show_default=True,
              help="CPU threads per model instance; 0 = this machine's cores / --instances.")
@click.option("--force", is_flag=True, help="Replace --out if it exists.")
@click.option("--flavour", type=click.Choice(["python", "tensorrt-llm"]), default="python", show_default=True,
              help="python: the in-process decoder (CPU or GPU). tensorrt-llm: the same loop over draft and "
                   "target served by TensorRT-LLM and the judge-accept engine or op (from `autojudge-trt build "
                   "--config`).")
@click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="tensorrt-llm: the deployment description the engines were built from.")
@click.option("--no-engine-check", is_flag=True, help="tensorrt-llm: write the repository even if the engines "
                                                      "are not built yet.")
@click.option("--cycle-log", type=click.Path(dir_okay=False, path_type=Path),
              help="python: append one JSON line per decoding cycle to this file (rows, window, seconds, and what "
                   "the adaptive schedule knew: costs, break-even, each row's acceptance estimate), to see why "
                   "a request's window moved.")
def repo(out, target, draft, judge_path, default_mode, window, threshold, max_tokens, max_tokens_limit, instances,
         max_batch, max_queue, prefill_chunk, unary_instances, device, dtype, torch_threads, force, flavour,
         config_path, no_engine_check, cycle_log):
    """Write a Triton model repository that serves AutoJudge.

    \b
    --flavour python (default): the speculative decoder in process (Python backend).
    --flavour tensorrt-llm --config deploy.yaml: the same decoding loop, driving
      TensorRT-LLM for draft and target itself (engine line: executor bindings over the
      engines; today's line: tensorrt_llm.LLM over the checkpoints) and running the
      judge-accept engine or op in process; window, judge and paths come from the description.

    Either way two front models: `autojudge_stream` (decoupled: one response per decoder
    cycle; gRPC streaming), which decodes every request of an instance in one running batch
    (requests join and leave between cycles, each with its own mode, window and budget), and
    `autojudge` (one response per request; HTTP or gRPC), which forwards to it. Serve
    the python flavour with `autojudge-trt serve --repo OUT`; deployment.json holds the
    command for the TensorRT-LLM flavour.
    """
    from autojudge.serving.repo import STREAM_MODEL, RepoSettings, write_repo

    if flavour == "tensorrt-llm":
        if cycle_log is not None:
            raise click.UsageError("--cycle-log is for --flavour python")
        if config_path is None:
            raise click.UsageError("--flavour tensorrt-llm needs --config (the deployment description)")
        from autojudge.deploy.config import load_config
        from autojudge.deploy.triton_repo import serve_command, write_trtllm_repo

        config = load_config(config_path)
        models = write_trtllm_repo(out, config, force=force, check_engines=not no_engine_check,
                                   default_mode=default_mode or "judge", max_tokens=max_tokens)
        click.echo(f"wrote {models} (models: draft, target, judge_accept, autojudge, autojudge_stream); serve it "
                   f"with: {serve_command(models.resolve())}")
        return

    from autojudge.models.loading import draft_spec_for

    draft_spec_for(target, draft or None)  # a target without a draft of its own needs --draft: say so now
    settings = RepoSettings(target=target, draft=draft, judge=judge_path,
                            default_mode=default_mode or ("judge" if judge_path else "lossless"),
                            window=window, threshold=threshold, max_tokens=max_tokens,
                            max_tokens_limit=max_tokens_limit, instances=instances, device=device, dtype=dtype,
                            torch_threads=torch_threads, max_batch=max_batch, max_queue=max_queue,
                            prefill_chunk=prefill_chunk, unary_instances=unary_instances)
    logged = {STREAM_MODEL: {"cycle_log": str(cycle_log.resolve())}} if cycle_log else None
    models = write_repo(out, settings, force=force, parameters=logged)
    click.echo(f"wrote {models} (models: autojudge, autojudge_stream); serve it with: "
               f"autojudge-trt serve --repo {out}")


@click.command()
@click.option("--repo", "repo_path", type=click.Path(exists=True, file_okay=False, path_type=Path), required=True,
              help="A deployment directory from `autojudge-trt repo` (or any Triton model repository).")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to bind. Loopback by default; 0.0.0.0 exposes the server to the network.")
@click.option("--http-port", type=click.IntRange(0, 65535), default=0, help="[default: a free port]")
@click.option("--grpc-port", type=click.IntRange(0, 65535), default=0, help="[default: a free port]")
@click.option("--log-file", type=click.Path(dir_okay=False, path_type=Path), help="Also write the server log here.")
@click.option("--quiet", is_flag=True, help="Do not stream the server log to stderr.")
@click.option("--openai-port", type=click.IntRange(0, 65535), default=0,
              help="Port of the OpenAI-compatible endpoint (/v1/completions, /v1/chat/completions) "
                   "[default: a free port].")
@click.option("--no-openai", is_flag=True, help="Serve only Triton's HTTP and gRPC endpoints.")
def serve(repo_path, host, http_port, grpc_port, log_file, quiet, openai_port, no_openai):
    """Start tritonserver on REPO and, beside it, an OpenAI-compatible endpoint in front of the same
    models; wait until both are ready, stream the server log; Ctrl-C stops them.

    Prints one JSON line when ready: {"ready", "http", "grpc", "openai"} (openai: the base URL for
    OpenAI clients, e.g. openai.OpenAI(base_url=..., api_key="none")).
    """
    import signal
    import threading

    from autojudge.serving.repo import model_repository
    from autojudge.serving.server import TritonServer

    server = TritonServer(model_repository(repo_path), host=host, http_port=http_port, grpc_port=grpc_port,
                          log_file=log_file, on_log=None if quiet else (lambda line: click.echo(line, err=True)))
    status(f"starting tritonserver on {host} (HTTP {server.http_port}, gRPC {server.grpc_port}) ...")

    def terminate(signum, frame):  # SIGTERM: stop the server as Ctrl-C does
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, terminate)
    # Explicitly, not Python's default: a process started in the background of a shell
    # inherits SIGINT *ignored*, and Ctrl-C / kill -INT must still stop the server.
    signal.signal(signal.SIGINT, terminate)
    try:
        server.start()
        urls = {"ready": True, "http": server.http_url, "grpc": server.grpc_url}
        if not no_openai:
            from autojudge.serving.openai_api import run_gateway

            ready, bound = threading.Event(), {}
            threading.Thread(target=run_gateway, args=(server.grpc_url, host, openai_port),
                             kwargs={"on_ready": lambda url: (bound.update(url=url), ready.set())},
                             daemon=True).start()
            if not ready.wait(30):
                raise AutoJudgeError(f"the OpenAI endpoint did not start on {host}:{openai_port}")
            urls["openai"] = bound["url"]
        click.echo(json.dumps(urls), err=False)
        status("ready; Ctrl-C stops it")
        server.process.wait()  # until the server exits, or Ctrl-C
    except KeyboardInterrupt:
        status("stopping tritonserver ...")
    finally:
        server.stop()
    if server.process and server.process.returncode not in (0, -2, None):
        raise AutoJudgeError(f"tritonserver exited with status {server.process.returncode}")


@click.command()
@click.option("--url", default=None, help="host:port [default: 127.0.0.1:8000 for HTTP, :8001 for gRPC].")
@click.option("--protocol", type=click.Choice(["http", "grpc", "grpc-stream"]), default="grpc-stream",
              show_default=True, help="grpc-stream prints tokens as the decoder commits them.")
@click.option("--prompt", "-p", "prompts", multiple=True, required=True, help="Prompt (repeatable).")
@click.option("--max-tokens", type=int, help="[default: the deployment's]")
@click.option("--mode", help="lossless | judge | topk | fly | target [default: the deployment's]")
@click.option("--window", type=int, help="[default: the deployment's]")
@click.option("--threshold", type=float, help="Judge threshold override.")
@click.option("--stop", multiple=True, help="Stop string (repeatable).")
@json_option("Print one JSON object per prompt.")
def client(url, protocol, prompts, max_tokens, mode, window, threshold, stop, as_json):
    """Send prompts to a served AutoJudge model; print the text and the request's metrics."""
    from autojudge.serving.client import infer_grpc, infer_http, request_arrays, stream_grpc

    url = url or ("127.0.0.1:8000" if protocol == "http" else "127.0.0.1:8001")
    for prompt in prompts:
        arrays = request_arrays(prompt, max_tokens, mode, window, threshold, stop)
        if protocol == "http":
            answer = infer_http(url, arrays)
        elif protocol == "grpc":
            answer = infer_grpc(url, arrays)
        else:
            streaming = not as_json
            answer = stream_grpc(url, arrays, on_piece=(lambda p: click.echo(p["text"], nl=False)) if streaming
                                 else None)
            if streaming:
                click.echo()
        if as_json:
            click.echo(json.dumps({"prompt": prompt, **answer}))
            continue
        if protocol != "grpc-stream":
            click.echo(answer["text"])
        m = answer["metrics"]
        click.echo(f"[{m['mode']} W={m['window']}] {m['num_generated_tokens']} tokens, tau "
                   f"{m['mean_acceptance_length']:.2f}, acceptance {m['draft_acceptance_rate']:.0%}, accepted "
                   f"mismatches {m['num_accepted_mismatches']}, {m['tokens_per_s']:.1f} tokens/s, "
                   f"finish {m['finish_reason']}", err=True)
