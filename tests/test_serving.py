"""Serving with a real tritonserver (from nvidia-pytriton) on a free loopback port.

The deployment is the embedded default pair plus a judge; answers over HTTP and gRPC
streaming must equal the in-process decoder's, token for token.
"""

from __future__ import annotations

import importlib.util
import json
import os
import threading
from pathlib import Path

import pytest
import torch

from autojudge.errors import AutoJudgeError
from autojudge.judge import Judge, JudgeMetadata
from autojudge.serving.client import ServingError, infer_grpc, infer_http, request_arrays, stream_grpc
from autojudge.serving.protocol import INPUTS, METRICS, OUTPUTS
from autojudge.serving.repo import RepoSettings, render, validate_config, write_repo
from autojudge.serving.requests import ServeRequest
from autojudge.serving.service import DecodeService

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("pytriton") is None or importlib.util.find_spec("tritonclient") is None,
    reason="needs the serve extra (nvidia-pytriton, tritonclient)")

PROMPTS = ["What is 7 times 8?", "Name a prime number larger than 10.", "Write one word: hello", "2 + 2 = ?"]


@pytest.fixture(scope="module")
def deployment(tmp_path_factory):
    """A deployment directory (embedded pair, a random judge that accepts some mismatches)."""
    from autojudge.models import load_draft, load_target

    target = load_target("embedded", device="cpu")
    draft = load_draft("embedded", target)
    g = torch.Generator().manual_seed(0)
    features = draft.hidden_size + target.hidden_size
    judge = Judge(weight=torch.randn(features, generator=g) / features ** 0.5, bias=0.0,
                  meta=JudgeMetadata(target.name, target.hidden_size, draft.name, draft.hidden_size, threshold=0.5))
    root = tmp_path_factory.mktemp("serving")
    judge_dir = judge.save(root / "judge")
    out = root / "deploy"
    write_repo(out, RepoSettings(judge=judge_dir, default_mode="lossless", window=4, max_tokens=16,
                                 max_tokens_limit=64, instances=2))
    return out


@pytest.fixture(scope="module")
def in_process(deployment):
    """The decode service exactly as the served model builds it, from the same config.pbtxt."""
    model = deployment / "models" / "autojudge_stream"
    config = validate_config((model / "config.pbtxt").read_text(), "autojudge_stream")
    params = {key: value.string_value for key, value in config.parameters.items()}
    service = DecodeService.from_parameters(params, model)
    yield service
    service.close()


@pytest.fixture(scope="module")
def server(deployment):
    from autojudge.serving.server import TritonServer

    with TritonServer(deployment / "models", log_file=deployment / "server.log") as running:
        yield running
    assert running.process.poll() is not None  # stopped, even when a test failed


def expected(service: DecodeService, prompt: str, **fields) -> tuple[str, list[int]]:
    request = ServeRequest(prompt=prompt, max_tokens=fields.get("max_tokens", 16), mode=fields.get("mode", "lossless"),
                           window=fields.get("window", 4), threshold=fields.get("threshold"),
                           stop=tuple(fields.get("stop", ())))
    text, ids, _ = service.run(request)
    return text, ids


def test_written_configs_parse_as_triton_model_configs(deployment):
    for name, decoupled in (("autojudge", False), ("autojudge_stream", True)):
        config = validate_config((deployment / "models" / name / "config.pbtxt").read_text(), name)
        assert config.name == name and config.backend == "python"
        assert config.model_transaction_policy.decoupled is decoupled
        assert [i.name for i in config.input] == list(INPUTS)
        assert [o.name for o in config.output] == list(OUTPUTS)
        assert config.instance_group[0].count == (2 if decoupled else 4)  # decoders; light unary forwarders
        assert config.parameters["forward_to"].string_value == ("" if decoupled else "autojudge_stream")
        assert config.parameters["max_batch"].string_value == "16"
        assert config.parameters["judge"].string_value == "../../artifacts/judge"
        assert (deployment / "models" / name / "1" / "model.py").is_file()
    assert (deployment / "artifacts" / "judge" / "judge.json").is_file()
    assert json.loads((deployment / "deployment.json").read_text())["models"] == ["autojudge", "autojudge_stream"]


def test_repo_refuses_unfilled_placeholders_bad_settings_and_existing_output(deployment, tmp_path):
    with pytest.raises(AutoJudgeError, match="no value for placeholders window"):
        render('name: "${model_name}" x: ${window}', {"model_name": "m"}, "t")
    with pytest.raises(AutoJudgeError, match="placeholders left unfilled: threshold"):
        validate_config('name: "m" parameters { key: "t" value: { string_value: "${threshold}" } }', "t")
    with pytest.raises(AutoJudgeError, match="not a valid Triton model config"):
        validate_config('name: "m" max_batch_sizes: 3', "t")
    with pytest.raises(AutoJudgeError, match="window must be in 1..64"):
        write_repo(tmp_path / "a", RepoSettings(window=0))
    with pytest.raises(AutoJudgeError, match="needs --judge"):
        write_repo(tmp_path / "b", RepoSettings(default_mode="judge"))
    with pytest.raises(AutoJudgeError, match="already exists"):
        write_repo(deployment, RepoSettings())
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


@pytest.mark.parametrize("mode", ["lossless", "judge"])
def test_http_and_grpc_streaming_return_the_in_process_tokens(server, in_process, mode):
    text, ids = expected(in_process, PROMPTS[0], mode=mode)
    arrays = request_arrays(PROMPTS[0], max_tokens=16, mode=mode)
    over_http = infer_http(server.http_url, arrays)
    assert over_http["token_ids"] == ids and over_http["text"] == text
    pieces = []
    streamed = stream_grpc(server.grpc_url, arrays, on_piece=pieces.append)
    assert streamed["token_ids"] == ids and streamed["text"] == text
    assert len(pieces) > 1  # one response per decoder cycle
    for piece in pieces:  # metrics on every response, with the keys the protocol documents
        assert piece["metrics"]["mode"] == mode and set(piece["metrics"]) == set(METRICS)
    assert pieces[-1]["metrics"]["finish_reason"] in ("length", "eos", "stop")
    assert all(p["metrics"]["finish_reason"] is None for p in pieces[:-1])
    if mode == "judge":
        assert streamed["metrics"]["threshold"] == 0.5
    assert infer_grpc(server.grpc_url, arrays)["token_ids"] == ids


def test_concurrent_clients_all_get_their_own_correct_answer(server, in_process):
    want = {p: expected(in_process, p, max_tokens=12)[1] for p in PROMPTS}
    got, errors = {}, []

    def ask(i: int, prompt: str) -> None:
        try:
            arrays = request_arrays(prompt, max_tokens=12)
            call = (lambda: infer_http(server.http_url, arrays)) if i % 2 else (
                lambda: stream_grpc(server.grpc_url, arrays))
            got[prompt] = call()["token_ids"]
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=ask, args=(i, p)) for i, p in enumerate(PROMPTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    assert not errors and got == want


@pytest.fixture(scope="module")
def one_row_server(tmp_path_factory, smol_tokenizer):
    """A server whose decoding model has one batch row and no queue, over a tiny random model that
    can never end by itself (its EOS embeddings are zero, so their logits are 0 while the largest of
    the others is positive): a request holds its row until its client leaves."""
    from conftest import tiny_model

    from autojudge.models.tokenizer import eos_ids_of
    from autojudge.serving.server import TritonServer

    model = tiny_model(0)
    with torch.no_grad():  # tied embeddings: zero rows are zero logits
        model.model.embed_tokens.weight[sorted(eos_ids_of(model.config, smol_tokenizer))] = 0.0
    root = tmp_path_factory.mktemp("one-row")
    model.save_pretrained(root / "tiny")
    smol_tokenizer.save_pretrained(root / "tiny")
    write_repo(root / "deploy", RepoSettings(target=str(root / "tiny"), draft=str(root / "tiny"), window=2,
                                             max_tokens=8, max_tokens_limit=10 ** 6, max_batch=1, max_queue=0,
                                             unary_instances=2, prefill_chunk=16))
    with TritonServer(root / "deploy" / "models", log_file=root / "server.log") as running:
        yield running


def test_a_full_server_refuses_at_once_and_a_client_that_leaves_frees_its_row(one_row_server):
    import queue

    import tritonclient.grpc as grpcclient

    from autojudge.serving.client import _inputs

    pieces: queue.Queue = queue.Queue()
    client = grpcclient.InferenceServerClient(one_row_server.grpc_url)
    client.start_stream(callback=lambda result, error: pieces.put((result, error)))
    client.async_stream_infer("autojudge_stream", _inputs(grpcclient, request_arrays("hello", max_tokens=10 ** 6)),
                              enable_empty_final_response=True)
    result, error = pieces.get(timeout=120)  # decoding: it holds the only row, and never ends by itself
    assert error is None and len(result.as_numpy("token_ids")) >= 1
    with pytest.raises(ServingError, match=r"server is full: 1 of 1 batch rows decoding and 0 waiting "
                                           r"\(max_queue 0\)"):
        infer_http(one_row_server.http_url, request_arrays("2 + 2 = ?", max_tokens=4))
    import openai

    from autojudge.serving.openai_api import run_gateway

    ready, bound = threading.Event(), {}
    threading.Thread(target=run_gateway, args=(one_row_server.grpc_url,), daemon=True,
                     kwargs={"on_ready": lambda url: (bound.update(url=url), ready.set())}).start()
    assert ready.wait(30)
    with pytest.raises(openai.APIStatusError, match="server is full") as refused:
        openai.OpenAI(base_url=bound["url"], api_key="none", max_retries=0).completions.create(
            model="autojudge", prompt="2 + 2 =", max_tokens=4)
    assert refused.value.status_code == 503
    client.stop_stream(cancel_requests=True)  # the client leaves mid-stream
    client.close()
    for _ in range(600):  # its row is freed at the next cycle: a new request gets it
        try:
            answer = infer_http(one_row_server.http_url, request_arrays("2 + 2 = ?", max_tokens=4))
            break
        except ServingError as exc:
            assert "server is full" in str(exc)
            threading.Event().wait(0.1)
    else:
        pytest.fail("the row of the client that left was never freed")
    assert len(answer["token_ids"]) == 4 and answer["metrics"]["finish_reason"] == "length"


@pytest.mark.parametrize("fields,message", [
    ({"window": 0}, "'window': must be in 1..64"),
    ({"threshold": 1.5}, "'threshold': must be in [0, 1]"),
    ({"mode": "greedy"}, "'mode': unknown mode"),
    ({"max_tokens": 65}, "'max_tokens': must be in 1..64"),
    ({"prompt": "   "}, "'prompt': empty"),
    ({"stop": [""]}, "'stop': stop strings must not be empty"),
])
def test_invalid_requests_get_an_error_naming_the_field_and_the_server_keeps_serving(server, fields, message):
    arrays = request_arrays(fields.pop("prompt", "hello"), **fields)
    for call in (lambda: infer_http(server.http_url, arrays), lambda: stream_grpc(server.grpc_url, arrays)):
        with pytest.raises(ServingError) as caught:
            call()
        assert message in str(caught.value)
    assert server.is_ready()
    assert infer_http(server.http_url, request_arrays("hello", max_tokens=2))["token_ids"]


def test_stop_strings_cut_the_text_the_same_way_in_process_and_served(server, in_process):
    text, ids = expected(in_process, PROMPTS[0], max_tokens=24)
    stop = text.split()[2]  # a word the answer is known to contain
    want_text, want_ids = expected(in_process, PROMPTS[0], max_tokens=24, stop=[stop])
    assert stop not in want_text
    arrays = request_arrays(PROMPTS[0], max_tokens=24, stop=[stop])
    for answer in (infer_http(server.http_url, arrays), stream_grpc(server.grpc_url, arrays)):
        assert answer["text"] == want_text and answer["token_ids"] == want_ids
        assert answer["metrics"]["finish_reason"] == "stop"


def test_server_log_was_written(server, deployment):
    assert Path(deployment / "server.log").read_text().count("Started GRPCInferenceService") == 1


def _descendants(pid: int) -> list[int]:
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return [int(c) for c in children] + [d for c in children for d in _descendants(int(c))]


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="reads /proc (Linux)")
def test_model_processes_keep_openmps_own_wait_policy_unless_the_caller_sets_one(server, monkeypatch):
    """PASSIVE waits made a two-thread instance wake its OpenMP worker from sleep at every op
    (served target 11 against 17 tokens/s at one client); a caller's own choice still passes on."""
    from autojudge.serving.server import TritonServer

    stubs = [pid for pid in _descendants(server.process.pid)
             if b"triton_python_backend_stub" in Path(f"/proc/{pid}/cmdline").read_bytes()]
    assert stubs  # the decoding and forwarding instances
    for pid in stubs:
        environ = dict(item.split(b"=", 1) for item in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0") if item)
        assert environ.get(b"OMP_WAIT_POLICY") == os.environb.get(b"OMP_WAIT_POLICY")
    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")
    assert TritonServer(server.repository).environment()["OMP_WAIT_POLICY"] == "PASSIVE"


def test_repo_command_writes_a_deployment_and_reports_bad_options(tmp_path):
    from click.testing import CliRunner

    from autojudge.cli import main

    result = CliRunner().invoke(main, ["repo", "--out", str(tmp_path / "d"), "--window", "6", "--instances", "3"])
    assert result.exit_code == 0, result.output
    config = validate_config((tmp_path / "d/models/autojudge_stream/config.pbtxt").read_text(), "s")
    assert config.parameters["default_window"].string_value == "6" and config.instance_group[0].count == 3
    assert "cycle_log" not in config.parameters
    result = CliRunner().invoke(main, ["repo", "--out", str(tmp_path / "e"), "--mode", "judge"])
    assert result.exit_code == 2 and "needs --judge" in result.output
    result = CliRunner().invoke(main, ["repo", "--out", str(tmp_path / "f"), "--cycle-log", "cycles.jsonl"])
    assert result.exit_code == 0, result.output
    config = validate_config((tmp_path / "f/models/autojudge_stream/config.pbtxt").read_text(), "s")
    assert config.parameters["cycle_log"].string_value == str(Path("cycles.jsonl").resolve())  # the decoding model's
    unary = validate_config((tmp_path / "f/models/autojudge/config.pbtxt").read_text(), "u")
    assert "cycle_log" not in unary.parameters


def test_serve_command_starts_answers_and_stops_cleanly_on_ctrl_c(deployment):
    import os
    import signal
    import subprocess
    import sys

    from autojudge.serving.server import free_port

    http_port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "autojudge.cli", "serve", "--repo", str(deployment), "--quiet",
                                "--http-port", str(http_port)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    try:
        ready = json.loads(process.stdout.readline())  # blocks until the server is ready
        assert ready["http"] == f"127.0.0.1:{http_port}"
        assert infer_http(ready["http"], request_arrays("hello", max_tokens=2))["token_ids"]
        assert ready["openai"].startswith("http://127.0.0.1:") and ready["openai"].endswith("/v1")  # loopback too
        import openai

        answer = openai.OpenAI(base_url=ready["openai"], api_key="none").completions.create(
            model="autojudge", prompt="hello", max_tokens=2)
        assert answer.usage.completion_tokens == 2
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=60) == 0
        with pytest.raises(ServingError, match="cannot reach"):
            infer_http(ready["http"], request_arrays("hello", max_tokens=2))
    finally:
        if process.poll() is None:
            os.kill(process.pid, signal.SIGKILL)


# ----------------------------------------------------------------------------- TensorRT-LLM flavour


@pytest.fixture(scope="module")
def trtllm_deployment(tmp_path_factory):
    """A TensorRT-LLM repository whose engines are the emulations of autojudge.testing: built by the
    plan's own build_engine.py commands against the emulated builder; served by the decoding model,
    which drives the executor emulation and runs the judge-accept plan with the host-built kernel.
    float32 engines, so decisions do not hinge on rounding; the judge (seed chosen here) accepts some
    mismatches and rejects others on the test prompt."""
    from autojudge.decoding import DecodeConfig, SpeculativeDecoder
    from autojudge.deploy.config import load_config
    from autojudge.deploy.triton_repo import write_trtllm_repo
    from autojudge.models import embedded_target_dir, encode_prompt, load_draft, load_target
    from autojudge.testing.trtllm_deployment import RUNTIME, build_emulated_engines

    target = load_target("embedded", device="cpu")
    draft = load_draft("embedded", target)
    meta = JudgeMetadata(target.name, target.hidden_size, draft.name, draft.hidden_size, threshold=0.5)
    ids = encode_prompt(target.tokenizer, PROMPTS[0], chat=True)
    for seed in range(20):
        torch.manual_seed(seed)
        judge = Judge(torch.randn(meta.num_features) * 0.05, 0.0, meta)
        metrics = SpeculativeDecoder(target, draft, judge).generate(
            ids, DecodeConfig(mode="judge", window=4, max_new_tokens=16)).metrics
        if metrics.num_accepted_mismatches and metrics.num_draft_tokens > metrics.num_accepted_tokens:
            break
    root = tmp_path_factory.mktemp("trtllm")
    judge.save(root / "judge")
    path = root / "deploy.yaml"
    path.write_text(f"draft: embedded\ntarget: {embedded_target_dir()}\njudge: judge\noutput_dir: build\n"
                    "window: 4\nmax_seq_len: 512\nmax_input_len: 256\ndtype: float32\n")
    config = load_config(path)
    build_emulated_engines(config, path, target="embedded", draft="embedded")
    models = write_trtllm_repo(root / "deploy", config, max_tokens=16, device="cpu", runtime=RUNTIME)
    return models, target, draft, Judge.load(root / "judge")


def test_the_tensorrt_llm_flavour_serves_the_in_process_decoders_tokens(trtllm_deployment):
    from autojudge.decoding import DecodeConfig, SpeculativeDecoder
    from autojudge.models import encode_prompt
    from autojudge.serving.server import TritonServer

    models, target, draft, judge = trtllm_deployment
    decoder = SpeculativeDecoder(target, draft, judge)
    prompt = PROMPTS[0]
    ids = encode_prompt(target.tokenizer, prompt, chat=True)
    with TritonServer(models, log_file=models.parent / "server.log") as running:
        for mode in ("lossless", "topk", "judge"):
            want = decoder.generate(ids, DecodeConfig(mode=mode, window=4, max_new_tokens=16))
            got = infer_http(running.http_url, request_arrays(prompt, max_tokens=16, mode=mode, window=4))
            assert got["token_ids"] == want.token_ids and got["text"] == want.text, mode
            metrics = got["metrics"]
            assert metrics["mode"] == mode and metrics["mean_acceptance_length"] == pytest.approx(want.metrics.mean_acceptance_length)
            assert metrics["num_accepted_mismatches"] == want.metrics.num_accepted_mismatches
        assert 0 < metrics["num_accepted_mismatches"] and metrics["draft_acceptance_rate"] < 1  # accepted, rejected
        streamed = stream_grpc(running.grpc_url, request_arrays(prompt, max_tokens=16, mode="judge", window=4),
                               model="autojudge_stream")
        assert streamed["token_ids"] == want.token_ids
    assert running.process.poll() is not None


def test_todays_tensorrt_llm_line_serves_the_in_process_decoders_tokens(tmp_path):
    """trtllm_line: pytorch: the same two served models over tensorrt_llm.LLM (its emulation, loading the
    testbed pair's Hugging Face checkpoints) and the judge-accept op, in a real tritonserver."""
    from autojudge.decoding import DecodeConfig, SpeculativeDecoder
    from autojudge.deploy.config import load_config
    from autojudge.deploy.triton_repo import write_trtllm_repo
    from autojudge.models import encode_prompt, load_target
    from autojudge.serving.repo import validate_config
    from autojudge.serving.server import TritonServer
    from autojudge.storage import asset
    from autojudge.testbed.problems import problem

    pair = asset("testbed_pair")
    target, draft = load_target(str(pair / "target")), load_target(str(pair / "draft"))
    meta = JudgeMetadata(target.name, target.hidden_size, draft.name, draft.hidden_size, threshold=0.5)
    torch.manual_seed(0)
    Judge(torch.randn(meta.num_features) * 0.2, 0.0, meta).save(tmp_path / "judge")
    (tmp_path / "deploy.yaml").write_text(f"draft: {pair / 'draft'}\ntarget: {pair / 'target'}\njudge: judge\n"
                                          "output_dir: build\nwindow: 4\nmax_seq_len: 512\nmax_input_len: 256\n"
                                          "dtype: float32\ntrtllm_line: pytorch\n")
    models = write_trtllm_repo(tmp_path / "deploy", load_config(tmp_path / "deploy.yaml"), max_tokens=24,
                               device="cpu", runtime={"llm_api": "autojudge.testing.trtllm_torch"})
    stream = validate_config((models / "autojudge_stream" / "config.pbtxt").read_text(), "autojudge_stream")
    assert stream.parameters["trtllm_line"].string_value == "pytorch"
    assert stream.parameters["target_model"].string_value == str(pair / "target")
    decoder = SpeculativeDecoder(target, draft, Judge.load(tmp_path / "judge"), check_judge_names=False)
    prompt = problem("test", 0).question
    ids = encode_prompt(target.tokenizer, prompt, chat=True)
    with TritonServer(models, log_file=tmp_path / "server.log") as running:
        for mode in ("lossless", "judge"):
            want = decoder.generate(ids, DecodeConfig(mode=mode, window=4, max_new_tokens=24))
            got = infer_http(running.http_url, request_arrays(prompt, max_tokens=24, mode=mode, window=4))
            assert got["token_ids"] == want.token_ids, mode
            assert got["metrics"]["num_accepted_mismatches"] == want.metrics.num_accepted_mismatches
        assert got["metrics"]["num_accepted_mismatches"] > 0 and got["metrics"]["draft_acceptance_rate"] < 1


# ----------------------------------------------------------------------------- the OpenAI-compatible endpoint


@pytest.fixture(scope="module")
def openai_url(server):
    """The gateway of `autojudge-trt serve`, in a thread, in front of the module's server."""
    from autojudge.serving.openai_api import run_gateway

    ready, bound = threading.Event(), {}
    threading.Thread(target=run_gateway, args=(server.grpc_url,),
                     kwargs={"on_ready": lambda url: (bound.update(url=url), ready.set())}, daemon=True).start()
    assert ready.wait(30)
    return bound["url"]


def test_the_openai_client_gets_the_decoders_tokens_with_vllm_named_metrics(openai_url, in_process):
    import openai

    client = openai.OpenAI(base_url=openai_url, api_key="none")
    assert [m.id for m in client.models.list().data] == ["autojudge"]
    prompt = "The capital of France is"
    completion = client.completions.create(model="autojudge", prompt=prompt, max_tokens=12,
                                           extra_body={"mode": "judge", "window": 4})
    request = ServeRequest(prompt, 12, "judge", 4, None, (), "raw")  # completions read the prompt as is
    text, ids, metrics = in_process.run(request)
    assert completion.choices[0].text == text and completion.usage.completion_tokens == len(ids)
    got = completion.model_extra["metrics"]
    assert got["mean_acceptance_length"] == pytest.approx(metrics["mean_acceptance_length"])
    assert set(got) == set(METRICS) and got["mode"] == "judge"
    assert completion.usage.prompt_tokens == got["num_prompt_tokens"] == len(in_process.prompt_ids(prompt, "raw"))

    messages = [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": PROMPTS[0]}]
    want = in_process.run(ServeRequest(json.dumps(messages), 16, "lossless", 4, None, (), "messages"))
    chat = client.chat.completions.create(model="autojudge", messages=messages, max_tokens=16)
    assert chat.choices[0].message.content == want[0] and chat.choices[0].finish_reason == want[2]["finish_reason"]
    stream = client.chat.completions.create(model="autojudge", messages=messages, max_tokens=16, stream=True)
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == want[0]
    assert len(chunks) > 1 and all("mean_acceptance_length" in c.model_extra["metrics"] for c in chunks)
    assert chunks[-1].choices[0].finish_reason == want[2]["finish_reason"]
    pieces = list(client.completions.create(model="autojudge", prompt=prompt, max_tokens=12, stream=True,
                                            extra_body={"mode": "judge", "window": 4}))
    assert "".join(p.choices[0].text for p in pieces) == text
    lossless = in_process.run(ServeRequest(prompt, 12, "lossless", 4, None, (), "raw"))
    adaptive = client.completions.create(model="autojudge", prompt=prompt, max_tokens=12,
                                         extra_body={"mode": "lossless", "window": 8, "adaptive": True})
    assert adaptive.choices[0].text == lossless[0]  # lossless whatever the window schedule
    assert 0 <= adaptive.model_extra["metrics"]["mean_window"] <= 8


def test_bad_openai_requests_get_400s_naming_the_field_and_the_endpoint_keeps_serving(openai_url):
    import openai

    client = openai.OpenAI(base_url=openai_url, api_key="none", max_retries=0)
    for kwargs, param in (({"temperature": 0.7}, "temperature"), ({"extra_body": {"window": 999}}, "window"),
                          ({"extra_body": {"mode": "beam"}}, "mode"), ({"max_tokens": 10**6}, "max_tokens"),
                          ({"n": 2}, "n")):
        with pytest.raises(openai.BadRequestError) as error:
            client.completions.create(model="autojudge", prompt="Hi", **{"max_tokens": 4, **kwargs})
        assert error.value.body["param"] == param, kwargs
    with pytest.raises(openai.BadRequestError) as error:  # a streamed request is refused before its 200
        list(client.completions.create(model="autojudge", prompt="Hi", max_tokens=4, stream=True,
                                       extra_body={"window": 999}))
    assert error.value.body["param"] == "window"
    with pytest.raises(openai.BadRequestError) as error:
        client.chat.completions.create(model="autojudge", messages=[{"role": "user"}], max_tokens=4)
    assert error.value.body["param"] == "messages"
    assert client.completions.create(model="autojudge", prompt="Hi", max_tokens=4).choices[0].text is not None


def test_the_service_loads_measures_and_decodes_on_one_thread(in_process):
    seen = set()
    request = ServeRequest(prompt="Hi", max_tokens=4, mode="lossless", window=4, threshold=None, stop=())
    in_process.run(request, on_piece=lambda *a: seen.add(threading.current_thread()))
    assert in_process.batcher.model_thread is in_process.thread  # the thread from_parameters loaded the models on
    assert seen == {in_process.thread.thread} and in_process.thread.thread is not threading.current_thread()


def test_the_cycle_log_writes_each_served_cycle_with_what_the_schedule_knew(deployment, tmp_path):
    model = deployment / "models" / "autojudge_stream"
    config = validate_config((model / "config.pbtxt").read_text(), "autojudge_stream")
    params = {key: value.string_value for key, value in config.parameters.items()}
    log = tmp_path / "logs" / "cycles.jsonl"
    service = DecodeService.from_parameters({**params, "cycle_log": str(log)}, model)
    try:
        request = ServeRequest(prompt=PROMPTS[0], max_tokens=16, mode="lossless", window=4, threshold=None, stop=(),
                               adaptive=True)
        _, _, metrics = service.run(request)
    finally:
        service.close()
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert len(lines) == metrics["num_target_calls"]  # one line per cycle, the request alone in the batch
    assert sum(line["window"] for line in lines) / len(lines) == pytest.approx(metrics["mean_window"])
    assert all(line["rows"] == 1 and line["plain_s"] > 0 and line["w1_s"] >= line["plain_s"] for line in lines)
    assert [line["feeding"] for line in lines] == [1] + [0] * (len(lines) - 1)  # the prompt fed in one chunk
    assert lines[0]["active"][0]["mode"] == "lossless" and lines[0]["active"][0]["adaptive"]
    assert [line["active"][0]["generated"] for line in lines[:-1]] == sorted(
        line["active"][0]["generated"] for line in lines[:-1])  # the row grows cycle by cycle, then leaves
    assert lines[-1]["active"] == [] and lines[-1]["prior"].get("lossless", {"requests": 0})["requests"] == (
        1 if any(line["window"] for line in lines) else 0)  # the ended request is remembered if it drafted
