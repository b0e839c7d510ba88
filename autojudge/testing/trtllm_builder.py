"""An emulation of the TensorRT-LLM 1.2.x builder API that ``build/build_engine.py`` uses.

``emulated_tensorrt_llm()`` puts modules named ``tensorrt_llm``, ``tensorrt_llm.builder``,
``tensorrt_llm.models``, ``tensorrt_llm.models.modeling_utils`` and ``tensorrt_llm.plugin``
into ``sys.modules`` for the duration of a ``with`` block, so the real script runs unchanged
and writes an engine directory that :mod:`autojudge.testing.trtllm_executor` can serve.
Facts encoded, each read in NVIDIA/TensorRT-LLM at the 1.2.x line:
- ``SpeculativeDecodingMode`` is an ``IntFlag`` (tensorrt_llm/models/modeling_utils.py);
  ``BuildConfig`` is a dataclass that types ``speculative_decoding_mode`` by it, default ``NONE``,
  and converts nothing; ``build()`` tests it with ``== DRAFT_TOKENS_EXTERNAL``, so a string
  builds, silently, an engine without external-draft support (tensorrt_llm/builder.py).
- ``gather_context_logits`` / ``gather_generation_logits`` are ``BuildConfig`` fields, False by
  default; the engine's config.json records them and the runtime reads them from there.
- ``PluginConfig.use_paged_context_fmha`` is True by default (tensorrt_llm/plugin/plugin.py).
- ``transformer.forward`` returns the final-norm states of every packed token; a tensor given
  ``mark_output(name, dtype)`` becomes an engine output (tensorrt_llm/models/modeling_utils.py).
"""

from __future__ import annotations

import contextlib
import json
import sys
import types
from dataclasses import asdict, dataclass, field
from enum import IntFlag, auto
from pathlib import Path

VERSION = "1.2.1"


class SpeculativeDecodingMode(IntFlag):
    NONE = auto()
    DRAFT_TOKENS_EXTERNAL = auto()
    MEDUSA = auto()
    LOOKAHEAD_DECODING = auto()
    EXPLICIT_DRAFT_TOKENS = auto()
    EAGLE = auto()


@dataclass
class PluginConfig:
    use_paged_context_fmha: bool = True
    tokens_per_block: int = 32


@dataclass
class BuildConfig:
    max_batch_size: int = 2048
    max_input_len: int = 1024
    max_seq_len: int | None = None
    max_draft_len: int = 0
    speculative_decoding_mode: SpeculativeDecodingMode = SpeculativeDecodingMode.NONE
    gather_context_logits: bool = False
    gather_generation_logits: bool = False
    plugin_config: PluginConfig = field(default_factory=PluginConfig)


class _Output:
    def __init__(self, model):
        self._model = model

    def mark_output(self, name: str, dtype) -> None:
        self._model.marked.append(name)


class _Model:
    """A checkpoint's network: ``transformer.forward`` is what build_engine.py wraps to mark an output."""

    def __init__(self, checkpoint: Path, pretrained: dict):
        self.checkpoint, self.pretrained, self.marked = checkpoint, pretrained, []
        self.config = types.SimpleNamespace(dtype=pretrained["dtype"])
        self.transformer = types.SimpleNamespace(forward=lambda *a, **k: (_Output(self),))


class _Engine:
    def __init__(self, model: _Model, config: BuildConfig):
        self.model, self.config = model, config

    def save(self, path: str) -> None:
        build = asdict(self.config)
        # build(): the engine has external-draft support only when the mode equals the enum member
        build["speculative_decoding_mode"] = ("DRAFT_TOKENS_EXTERNAL" if self.config.speculative_decoding_mode
                                              == SpeculativeDecodingMode.DRAFT_TOKENS_EXTERNAL else "NONE")
        out = Path(path)
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps(
            {"version": VERSION, "pretrained_config": self.model.pretrained, "build_config": build}, indent=2))
        emulation = {**self.model.pretrained["autojudge_emulation"], "marked_outputs": self.model.marked}
        (out / "emulation.json").write_text(json.dumps(emulation, indent=2))


def _build(model: _Model, config: BuildConfig) -> _Engine:
    model.marked.clear()
    model.transformer.forward()  # building traces the network once
    return _Engine(model, config)


def _from_checkpoint(path: str, rank: int = 0) -> _Model:
    return _Model(Path(path), json.loads((Path(path) / "config.json").read_text()))


def write_checkpoint(out: Path, checkpoint: str, dtype: str = "bfloat16", tp_size: int = 1,
                     draft_of: str | None = None) -> Path:
    """What ``build/convert_checkpoint.py`` would leave (its config.json), answering from ``checkpoint``
    (a target spec; a draft spec with ``draft_of`` its target's; or ``memory:NAME`` of
    :func:`autojudge.testing.trtllm_executor.register_model`)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps({
        "architecture": "LlamaForCausalLM", "dtype": dtype,
        "mapping": {"world_size": tp_size, "tp_size": tp_size, "pp_size": 1},
        "autojudge_emulation": {"checkpoint": checkpoint, "draft_of": draft_of}}, indent=2))
    return out


@contextlib.contextmanager
def emulated_tensorrt_llm():
    """``tensorrt_llm`` (the builder side) importable inside the block."""
    pretrained_config = types.SimpleNamespace(from_json_file=lambda path: types.SimpleNamespace(
        architecture="LlamaForCausalLM",
        mapping=types.SimpleNamespace(world_size=json.loads(Path(path).read_text())["mapping"]["world_size"])))
    modules = {
        "tensorrt_llm": types.SimpleNamespace(__version__=VERSION),
        "tensorrt_llm.builder": types.SimpleNamespace(BuildConfig=BuildConfig, build=_build),
        "tensorrt_llm.models": types.SimpleNamespace(
            MODEL_MAP={"LlamaForCausalLM": types.SimpleNamespace(from_checkpoint=_from_checkpoint)},
            PretrainedConfig=pretrained_config),
        "tensorrt_llm.models.modeling_utils": types.SimpleNamespace(SpeculativeDecodingMode=SpeculativeDecodingMode),
        "tensorrt_llm.plugin": types.SimpleNamespace(PluginConfig=PluginConfig),
    }
    saved = {name: sys.modules.get(name) for name in modules}
    sys.modules.update(modules)
    try:
        yield
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module


def build_engine(*argv: str) -> None:
    """Run build/build_engine.py (the real script) with ``argv`` against the emulated builder."""
    import runpy

    from autojudge.storage import asset

    steps = Path(asset("build_steps"))
    saved_argv, path = sys.argv, list(sys.path)
    sys.argv = ["build_engine.py", *map(str, argv)]
    sys.path.insert(0, str(steps))
    try:
        with emulated_tensorrt_llm():
            runpy.run_path(str(steps / "build_engine.py"), run_name="__main__")
    finally:
        sys.argv, sys.path[:] = saved_argv, path
