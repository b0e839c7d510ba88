"""build/build_engine.py against an emulation of the TensorRT-LLM 1.2.x builder that behaves like
the real one where the script depends on it (issue 17, point 1).

Facts the emulation encodes, each read in NVIDIA/TensorRT-LLM at the 1.2.x line:
- ``SpeculativeDecodingMode`` is an ``IntFlag`` (tensorrt_llm/models/modeling_utils.py).
- ``BuildConfig`` is a dataclass whose ``speculative_decoding_mode`` field is typed by that flag,
  default ``NONE``, with no conversion of other values (tensorrt_llm/builder.py).
- ``build()`` writes ``speculative_decoding_draft_tokens_external`` into the engine's build
  settings as ``build_config.speculative_decoding_mode == SpeculativeDecodingMode.DRAFT_TOKENS_EXTERNAL``
  (tensorrt_llm/builder.py): any other value, the string "draft_tokens_external" included,
  gives an engine that takes no external draft tokens, without an error.
"""

from __future__ import annotations

import runpy
import sys
import types
from dataclasses import dataclass, field
from enum import IntFlag, auto
from pathlib import Path

import pytest

from autojudge.storage import asset


class SpeculativeDecodingMode(IntFlag):  # tensorrt_llm/models/modeling_utils.py (1.2.x): an IntFlag of auto()s
    NONE = auto()
    DRAFT_TOKENS_EXTERNAL = auto()
    MEDUSA = auto()


@dataclass
class BuildConfig:  # tensorrt_llm/builder.py (1.2.x): a dataclass; the mode field is typed, not converted
    max_batch_size: int = 2048
    max_input_len: int = 1024
    max_seq_len: int | None = None
    max_draft_len: int = 0
    speculative_decoding_mode: SpeculativeDecodingMode = SpeculativeDecodingMode.NONE
    plugin_config: object = field(default_factory=lambda: types.SimpleNamespace())


@pytest.fixture
def fake_tensorrt_llm(monkeypatch):
    built: list[dict] = []

    def build(model, config):
        model.transformer.forward()  # building traces the network once
        settings = {  # tensorrt_llm/builder.py (1.2.x): the flag is an equality test against the enum
            "speculative_decoding_draft_tokens_external":
                config.speculative_decoding_mode == SpeculativeDecodingMode.DRAFT_TOKENS_EXTERNAL,
            "max_draft_len": config.max_draft_len, "hidden_output": model.marked,
        }
        built.append(settings)
        return types.SimpleNamespace(save=lambda path: None)

    class Stack:
        def forward(self, *args, **kwargs):
            return (types.SimpleNamespace(mark_output=lambda name, dtype: model.marked.append(name)),)

    model = types.SimpleNamespace(transformer=Stack(), config=types.SimpleNamespace(dtype="bfloat16"), marked=[])
    pretrained = types.SimpleNamespace(mapping=types.SimpleNamespace(world_size=1), architecture="LlamaForCausalLM")

    def from_checkpoint(path, rank):
        return model

    modules = {
        "tensorrt_llm": types.SimpleNamespace(__version__="1.2.1"),
        "tensorrt_llm.builder": types.SimpleNamespace(BuildConfig=BuildConfig, build=build),
        "tensorrt_llm.models": types.SimpleNamespace(
            MODEL_MAP={"LlamaForCausalLM": types.SimpleNamespace(from_checkpoint=from_checkpoint)},
            PretrainedConfig=types.SimpleNamespace(from_json_file=lambda path: pretrained)),
        "tensorrt_llm.models.modeling_utils": types.SimpleNamespace(SpeculativeDecodingMode=SpeculativeDecodingMode),
        "tensorrt_llm.plugin": types.SimpleNamespace(PluginConfig=lambda: types.SimpleNamespace()),
    }
    for name, module in modules.items():
        monkeypatch.setitem(sys.modules, name, module)
    return built


def run_build_engine(monkeypatch, *args: str) -> None:
    steps = asset("build_steps")
    monkeypatch.syspath_prepend(str(steps))
    monkeypatch.setattr(sys, "argv", ["build_engine.py", *args])
    runpy.run_path(str(Path(steps) / "build_engine.py"), run_name="__main__")


def test_the_target_engine_takes_external_draft_tokens(fake_tensorrt_llm, monkeypatch, tmp_path):
    """Fails if the mode goes back to a string: the real builder then makes an engine without it."""
    run_build_engine(monkeypatch, "--checkpoint", str(tmp_path), "--role", "target", "--max-draft-len", "8",
                     "--out", str(tmp_path / "engine"))
    (settings,) = fake_tensorrt_llm
    assert settings["speculative_decoding_draft_tokens_external"] is True
    assert settings["max_draft_len"] == 8
    assert settings["hidden_output"] == ["autojudge_hidden_states"]


def test_the_draft_engine_is_built_without_speculation(fake_tensorrt_llm, monkeypatch, tmp_path):
    run_build_engine(monkeypatch, "--checkpoint", str(tmp_path), "--role", "draft", "--out", str(tmp_path / "e"))
    (settings,) = fake_tensorrt_llm
    assert settings["speculative_decoding_draft_tokens_external"] is False and settings["max_draft_len"] == 0
