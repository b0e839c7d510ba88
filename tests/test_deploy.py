"""`autojudge-trt build --config`: validation, preflight, dry-run plans, and the resumable runner.

The models are described by real Llama-3.x config.json shapes (no weights: nothing here
needs them); the runner is exercised with real subprocess steps.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from autojudge.cli import main
from autojudge.deploy import lines as lines_module
from autojudge.deploy import preflight as preflight_module
from autojudge.deploy.config import DeployConfigError, load_config
from autojudge.deploy.plan import OUTPUT, Step
from autojudge.deploy.preflight import Preflight
from autojudge.deploy.runner import BuildStepError, Manifest, run_plan
from autojudge.judge import Judge, JudgeMetadata

LLAMA = {"architectures": ["LlamaForCausalLM"], "num_key_value_heads": 8, "vocab_size": 128256,
         "max_position_embeddings": 131072}
SHAPES = {  # hidden, layers, heads, intermediate, tied embeddings
    "llama-3.2-1b": (2048, 16, 32, 8192, True),
    "llama-3.1-8b": (4096, 32, 32, 14336, False),
    "llama-3.1-70b": (8192, 80, 64, 28672, False),
}


def write_model(root: Path, name: str, vocab: list[str] | None = None) -> Path:
    hidden, layers, heads, intermediate, tied = SHAPES[name]
    directory = root / name
    directory.mkdir()
    (directory / "config.json").write_text(json.dumps({
        **LLAMA, "hidden_size": hidden, "num_hidden_layers": layers, "num_attention_heads": heads,
        "intermediate_size": intermediate, "tie_word_embeddings": tied}))
    if vocab is not None:
        from tokenizers import Tokenizer
        from tokenizers.models import WordLevel

        Tokenizer(WordLevel({token: i for i, token in enumerate(vocab)}, unk_token=vocab[0])).save(
            str(directory / "tokenizer.json"))
    return directory


def write_judge(path: Path, draft_hidden: int, target_hidden: int) -> Path:
    meta = JudgeMetadata("target", target_hidden, "draft", draft_hidden, threshold=0.3)
    Judge(torch.zeros(draft_hidden + target_hidden), 0.0, meta).save(path)
    return path


@pytest.fixture
def deployment(tmp_path):
    """A 1B/8B deployment description with shared tokenizers; returns (path, writer)."""
    vocab = ["<unk>", "a", "b", "c"]
    write_model(tmp_path, "llama-3.2-1b", vocab)
    write_model(tmp_path, "llama-3.1-8b", vocab)
    write_judge(tmp_path / "judge", 2048, 4096)

    def write(text: str, name: str = "deploy.yaml") -> Path:
        path = tmp_path / name
        path.write_text(text)
        return path

    base = ("draft: llama-3.2-1b\ntarget: llama-3.1-8b\njudge: judge\noutput_dir: out\n"
            "max_batch_size: 4\nmax_input_len: 1024\nmax_seq_len: 2048\nwindow: 8\n")
    return write(base), write


def dry_run(path: Path):
    result = CliRunner().invoke(main, ["build", "--config", str(path), "--dry-run", "--json"])
    return result, (json.loads(result.output) if result.output.startswith("{") else None)


# ----------------------------------------------------------------------------- config


def test_a_valid_description_loads_with_paths_relative_to_the_file(deployment, tmp_path):
    path, write = deployment
    config = load_config(path)
    assert config.output_dir == tmp_path / "out" and config.judge == tmp_path / "judge"
    assert config.draft.model == str(tmp_path / "llama-3.2-1b")  # a local checkpoint, made absolute
    assert (config.dtype, config.quantization, config.tp("draft"), config.tp("target")) == ("bfloat16", "none", 1, 1)
    as_json = write(json.dumps({"draft": "meta-llama/Llama-3.1-8B-Instruct", "judge": "judge", "output_dir": "o",
                                "target": {"model": "meta-llama/Llama-3.1-70B-Instruct", "tensor_parallel": 4}}),
                    "deploy.json")
    config = load_config(as_json)
    assert config.draft.model == "meta-llama/Llama-3.1-8B-Instruct"  # a hub id stays as written
    assert (config.tp("draft"), config.tp("target")) == (1, 4)


@pytest.mark.parametrize("text, expected", [
    ("draft: a\njudge: j\noutput_dir: o\n", "target: required field is missing"),
    ("draft: a\ntarget: b\njudge: j\noutput_dir: o\ntensor_parallel: 0\n",
     "tensor_parallel: Input should be greater than or equal to 1 (got 0)"),
    ("draft: a\ntarget: {model: b, tensor_parallel: two}\njudge: j\noutput_dir: o\n", "target.tensor_parallel:"),
    ("draft: a\ntarget: b\njudge: j\noutput_dir: o\nwindow: 100\n", "window: Input should be less than or equal to 64"),
    ("draft: a\ntarget: b\njudge: j\noutput_dir: o\ndtype: float8\n", "dtype: Input should be 'float16', 'bfloat16' or 'float32'"),
    ("draft: a\ntarget: b\njudge: j\noutput_dir: o\nwindw: 4\n", "windw: unknown field (known: draft, target"),
    ("draft: a\ntarget: b\njudge: j\noutput_dir: o\nmax_input_len: 4096\nmax_seq_len: 4096\n",
     "max_input_len (4096) must be below max_seq_len (4096)"),
    ("draft: a\ntarget: [b\n", "deploy.yaml:3:1: not valid YAML"),
    ("- draft\n- target\n", "the top level must be a mapping of fields"),
])
def test_bad_descriptions_are_refused_naming_the_field(deployment, text, expected):
    _, write = deployment
    with pytest.raises(DeployConfigError) as error:
        load_config(write(text))
    assert expected in str(error.value)


def test_cli_reports_a_bad_description_without_a_traceback(deployment):
    _, write = deployment
    result = CliRunner().invoke(main, ["build", "--config", str(write("draft: a\n")), "--dry-run"])
    assert result.exit_code == 2
    assert "target: required field is missing" in result.output and "Traceback" not in result.output


# ----------------------------------------------------------------------------- dry-run plans


def test_dry_run_plans_a_1b_8b_pair_on_one_gpu_and_runs_nothing(deployment, tmp_path):
    path, _ = deployment
    result, report = dry_run(path)
    assert result.exit_code == 0, result.output
    steps = {step["step"]: step for step in report["plan"]}
    assert list(steps) == ["draft-checkpoint", "draft-engine", "target-checkpoint", "target-engine",
                           "judge-plugin", "judge-engine", "triton-repo"]
    assert all(step["status"] == "to build" for step in steps.values())
    out = tmp_path / "out"
    assert steps["target-engine"]["output"] == str(out / "engines" / "target")
    target_engine = steps["target-engine"]["commands"][0]
    assert "--hidden-output autojudge_hidden_states" in target_engine
    # the design's outputs: the target's states at every context token (a context pass verifies), the draft's at
    # every generation step; no external-draft mode (the executor would accept greedily itself), no gathered
    # logits (block reuse would be turned off)
    assert "at every context token" in steps["target-engine"]["title"]
    assert "no external-draft mode, no gathered logits" in steps["target-engine"]["title"]
    assert "at every generation step" in steps["draft-engine"]["title"]
    assert "load_library (getCreators)" in steps["judge-engine"]["title"]
    assert "one tritonserver process" in steps["triton-repo"]["title"]
    assert "--hidden-output autojudge_hidden_states" in steps["draft-engine"]["commands"][0]
    assert "--tp-size 1" in steps["target-checkpoint"]["commands"][0]
    assert f"--plugin-library {out / 'plugin' / 'libautojudge_judge_accept_plugin.so'}" in \
        steps["judge-engine"]["commands"][0]
    assert "--flavour tensorrt-llm" in steps["triton-repo"]["commands"][0]
    checks = {check["name"]: check for check in report["preflight"]}
    assert checks["judge"]["status"] == "ok" and "draft 2048 + target 4096" in checks["judge"]["detail"]
    assert checks["tokenizers"]["status"] == "ok"
    assert not out.exists()  # nothing ran


def test_dry_run_plans_an_8b_70b_pair_with_tensor_parallel_4(tmp_path):
    write_model(tmp_path, "llama-3.1-8b")
    write_model(tmp_path, "llama-3.1-70b")
    write_judge(tmp_path / "judge", 4096, 8192)
    path = tmp_path / "deploy.yaml"
    path.write_text("draft: llama-3.1-8b\ntarget: llama-3.1-70b\njudge: judge\noutput_dir: out\n"
                    "tensor_parallel: 4\nquantization: fp8\nwindow: 16\n")
    result, report = dry_run(path)
    assert result.exit_code == 0, result.output
    commands = {step["step"]: step["commands"][0] for step in report["plan"]}
    assert "--tp-size 4" in commands["draft-checkpoint"] and "--tp-size 4" in commands["target-checkpoint"]
    assert "--quantization fp8" in commands["target-checkpoint"]
    titles = {step["step"]: step["title"] for step in report["plan"]}
    assert "TP 4" in titles["target-engine"]  # one launch: each TP 4 executor spawns its 4 ranks
    assert "the target executor (TP 4) orchestrates 4 spawned ranks on GPUs 0,1,2,3" in titles["triton-repo"]
    checks = {check["name"]: check for check in report["preflight"]}
    assert checks["tensor parallel"]["status"] == "ok" and "target x4" in checks["tensor parallel"]["detail"]
    assert "70.55B parameters" in checks["target model"]["detail"]
    human = CliRunner().invoke(main, ["build", "--config", str(path), "--dry-run"])
    assert human.exit_code == 0 and "[4/7] target-engine" in human.output and "dry run: nothing was run" in human.output


def test_dry_run_plans_hub_ids_it_cannot_inspect_offline(deployment):
    _, write = deployment
    result, report = dry_run(write("draft: meta-llama/Llama-3.2-1B-Instruct\ntarget: meta-llama/Llama-3.1-8B-Instruct\n"
                                   "judge: judge\noutput_dir: out\n"))
    assert result.exit_code == 0, result.output
    checks = {check["name"]: check for check in report["preflight"]}
    assert checks["target model"]["status"] == "unknown" and "huggingface-cli download" in checks["target model"]["fix"]
    assert checks["judge"]["status"] == "unknown"
    assert "--model meta-llama/Llama-3.1-8B-Instruct" in report["plan"][2]["commands"][0]


# ----------------------------------------------------------------------------- preflight


def test_a_judge_for_other_hidden_sizes_is_caught_before_any_build(deployment, tmp_path):
    _, write = deployment
    write_judge(tmp_path / "judge-70b", 4096, 8192)
    path = write("draft: llama-3.2-1b\ntarget: llama-3.1-8b\njudge: judge-70b\noutput_dir: out\n")
    result, report = dry_run(path)
    assert result.exit_code == 2
    judge = next(check for check in report["preflight"] if check["name"] == "judge")
    assert judge["status"] == "fail"
    assert "expects target hidden size 8192" in judge["detail"] and "has 4096" in judge["detail"]
    real = CliRunner().invoke(main, ["build", "--config", str(path)])
    assert real.exit_code == 2 and "expects target hidden size 8192" in real.output
    assert not (tmp_path / "out").exists()


def test_without_a_gpu_or_tensorrt_llm_the_build_stops_saying_what_to_install(deployment, tmp_path, monkeypatch):
    monkeypatch.setattr(preflight_module, "detect_gpus", lambda: [])
    monkeypatch.setattr(lines_module, "installed_version", lambda module: None)
    path, _ = deployment
    result = CliRunner().invoke(main, ["build", "--config", str(path)])
    assert result.exit_code == 2, result.output
    assert "no NVIDIA GPU visible" in result.output
    assert "tensorrt_llm is not installed (needed: 1.2.x)" in result.output
    assert "pip install 'autojudge[trt]'" in result.output
    assert "preflight failed, nothing was built" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "out").exists()


def test_preflight_names_a_wrong_tensorrt_llm_line_and_a_gpu_that_is_too_small(deployment, monkeypatch):
    path, write = deployment
    monkeypatch.setattr(lines_module, "installed_version",
                        lambda module: {"tensorrt": "10.14.1", "tensorrt_llm": "1.3.0"}[module])
    monkeypatch.setattr(preflight_module, "detect_gpus",
                        lambda: [preflight_module.GpuInfo("Tesla T4", (7, 5), 15360)])
    engine_line = write(path.read_text() + "trtllm_line: engine\n", "engine.yaml")
    checks = {check.name: check for check in Preflight(load_config(engine_line)).host_checks()}
    assert checks["TensorRT-LLM line"].detail.startswith("engine: trtllm_line: engine (set in the description)")
    assert "tensorrt_llm 1.2.1, tensorrt 10.14, tensorrtllm_backend 1.2.1" in checks["TensorRT-LLM line"].detail
    assert checks["tensorrt"].status == "ok"
    assert checks["tensorrt_llm"].status == "fail" and "1.3.0 is installed; this build needs 1.2.x" in \
        checks["tensorrt_llm"].detail
    assert checks["GPU"].status == "fail" and "compute capability 7.5" in checks["GPU"].detail
    monkeypatch.setattr(preflight_module, "detect_gpus",
                        lambda: [preflight_module.GpuInfo("NVIDIA H100 80GB HBM3", (9, 0), 81559)])
    checks = {check.name: check for check in Preflight(load_config(engine_line)).host_checks()}
    assert checks["GPU"].status == "ok" and checks["tensorrt_llm"].status == "fail"


def test_an_installed_line_without_engines_plans_checkpoints_the_op_and_the_repository(deployment, monkeypatch,
                                                                                      tmp_path):
    """trtllm_line: auto follows the installed TensorRT-LLM: after 1.2 there are no engines to build, and the
    preflight says exactly what today's line lacks for the judge, and where."""
    path, _ = deployment
    monkeypatch.setattr(lines_module, "installed_version", lambda module: {"tensorrt_llm": "1.4.0"}.get(module))
    result, report = dry_run(path)
    assert result.exit_code == 0, result.output
    steps = {step["step"]: step for step in report["plan"]}
    assert list(steps) == ["judge-op", "triton-repo"]  # local checkpoints: nothing to download, no engines
    assert "torch.ops.autojudge.judge_accept" in steps["judge-op"]["title"]
    assert "the target LLM runs in it on GPU 0" in steps["triton-repo"]["title"]
    checks = {check["name"]: check for check in report["preflight"]}
    assert checks["TensorRT-LLM line"]["detail"].startswith("pytorch: TensorRT-LLM 1.4.0 is installed")
    hidden = checks["hidden states"]
    assert hidden["status"] == "unknown" and "tensorrt_llm/_torch/models/modeling_utils.py" in hidden["detail"]
    assert "handle_additional_outputs.py" in hidden["detail"] and "register_hidden_state_model" in hidden["detail"]
    monkeypatch.setattr(lines_module, "installed_version", lambda module: None)
    result, report = dry_run(path)  # without TensorRT-LLM: the engine line, said so
    assert [step["step"] for step in report["plan"]][:2] == ["draft-checkpoint", "draft-engine"]
    line = next(c for c in report["preflight"] if c["name"] == "TensorRT-LLM line")
    assert "TensorRT-LLM is not installed here: planning the engine line (1.2.1)" in line["detail"]


def test_preflight_catches_tokenizers_and_tensor_parallel_that_cannot_work(tmp_path):
    write_model(tmp_path, "llama-3.2-1b", ["<unk>", "a", "b"])
    write_model(tmp_path, "llama-3.1-8b", ["<unk>", "a", "c"])
    write_judge(tmp_path / "judge", 2048, 4096)
    path = tmp_path / "deploy.yaml"
    path.write_text("draft: llama-3.2-1b\ntarget: llama-3.1-8b\njudge: judge\noutput_dir: out\ntensor_parallel: 3\n")
    checks = {check.name: check for check in Preflight(load_config(path)).config_checks()}
    assert checks["tokenizers"].status == "fail" and "token id 2 is 'b' in the draft and 'c'" in \
        checks["tokenizers"].detail
    assert checks["tensor parallel"].status == "fail" and "32 attention heads do not split over" in \
        checks["tensor parallel"].detail


# ----------------------------------------------------------------------------- runner


def write_step(name: str, output: Path, text: str, after=(), fail: bool = False) -> Step:
    code = f"import pathlib; pathlib.Path(r'{OUTPUT}', 'out.txt').write_text({text!r})"
    if fail:
        code += "; raise SystemExit('boom')"
    return Step(name, f"write {name}", ((sys.executable, "-c", code),), output, after=tuple(after))


def test_the_runner_skips_complete_steps_and_rebuilds_what_changed(tmp_path):
    steps = [write_step("a", tmp_path / "a", "one"), write_step("b", tmp_path / "b", "two", after=["a"])]
    lines = []
    rows = run_plan(steps, tmp_path, lines.append)
    assert [r["status"] for r in rows] == ["built", "built"]
    assert (tmp_path / "b" / "out.txt").read_text() == "two"
    assert [r["status"] for r in run_plan(steps, tmp_path, lines.append)] == ["skipped", "skipped"]
    changed = [write_step("a", tmp_path / "a", "ONE"), steps[1]]
    assert [r["status"] for r in run_plan(changed, tmp_path, lines.append)] == ["built", "built"]  # b depends on a
    (tmp_path / "b" / "out.txt").write_text("tampered, longer")  # an output no longer as recorded
    assert [r["status"] for r in run_plan(changed, tmp_path, lines.append)] == ["skipped", "built"]


def test_an_interrupted_step_leaves_nothing_a_later_run_trusts(tmp_path):
    good = write_step("a", tmp_path / "a", "one")
    broken = write_step("b", tmp_path / "b", "half", after=["a"], fail=True)
    (tmp_path / ".b.partial-killed").mkdir()  # what a killed run leaves behind
    with pytest.raises(BuildStepError) as error:
        run_plan([good, broken], tmp_path, lambda line: None)
    assert "step b failed" in str(error.value) and str(tmp_path / "logs" / "b.log") in str(error.value)
    assert "boom" in (tmp_path / "logs" / "b.log").read_text()
    assert not (tmp_path / "b").exists() and not list(tmp_path.glob(".b.partial-*"))
    manifest = Manifest(tmp_path)
    assert "a" in manifest.steps and "b" not in manifest.steps
    fixed = write_step("b", tmp_path / "b", "whole", after=["a"])
    assert [r["status"] for r in run_plan([good, fixed], tmp_path, lambda line: None)] == ["skipped", "built"]
    assert (tmp_path / "b" / "out.txt").read_text() == "whole"


def test_past_the_preflight_the_step_scripts_themselves_refuse_to_fake_a_build(deployment, tmp_path, monkeypatch):
    """With the host checks waved through, the first step script still stops, naming TensorRT-LLM."""
    monkeypatch.setattr(Preflight, "host_checks", lambda self: [])
    path, _ = deployment
    result = CliRunner().invoke(main, ["build", "--config", str(path)])
    assert result.exit_code == 2, result.output
    assert "step draft-checkpoint failed" in result.output
    log = (tmp_path / "out" / "logs" / "draft-checkpoint.log").read_text()
    assert "convert_checkpoint.py needs TensorRT-LLM 1.2.x" in log
    assert not (tmp_path / "out" / "checkpoints" / "draft").exists()
    assert "draft-checkpoint" not in Manifest(tmp_path / "out").steps
