"""The decode service a served model runs: one request in, text + tokens + metrics out,
optionally streamed piece by piece. No Triton import here: it is tested in-process, and the
Triton model (``triton_model.py``) only converts tensors."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from autojudge.decoding import DecodeConfig, SpeculativeLoop
from autojudge.decoding.metrics import SpecDecodeMetrics
from autojudge.serving.requests import ServeDefaults, ServeRequest

# A streamed piece: (new text, new token ids, metrics so far)
OnPiece = Callable[[str, list[int], dict], None]


def metrics_dict(metrics: SpecDecodeMetrics, threshold: float | None, finish_reason: str | None,
                 prompt_tokens: int) -> dict:
    """The metrics JSON of a response: the keys of :data:`autojudge.serving.protocol.METRICS`."""
    return {
        "mode": metrics.mode,
        "window": metrics.window,
        "threshold": threshold,
        "mean_acceptance_length": metrics.mean_acceptance_length,
        "draft_acceptance_rate": metrics.draft_acceptance_rate,
        "num_accepted_mismatches": metrics.num_accepted_mismatches,
        "num_generated_tokens": metrics.num_generated_tokens,
        "num_prompt_tokens": prompt_tokens,
        "num_target_calls": metrics.num_target_calls,
        "mean_window": metrics.mean_window,
        "tokens_per_s": metrics.tokens_per_s,
        "finish_reason": finish_reason,
    }


@dataclass
class DecodeService:
    decoder: SpeculativeLoop
    defaults: ServeDefaults
    chat: bool = True

    @classmethod
    def from_parameters(cls, params: dict[str, str], model_dir: str | Path = ".") -> DecodeService:
        """Load what a deployment names (config.pbtxt ``parameters``); relative paths are taken
        from ``model_dir`` (the model's folder in the repository)."""
        from autojudge.models import quiet_transformers

        quiet_transformers()
        if params.get("torch_threads"):  # instances share the cores: no oversubscription
            import torch

            torch.set_num_threads(int(params["torch_threads"]))
        judge = _judge(params, model_dir)
        if params.get("backend", "in-process") == "tensorrt-llm":
            loop = _tensorrt_llm_loop(params, judge, model_dir)
            defaults = ServeDefaults.from_parameters(params, judge is not None, "judge", 8, loop.backend.max_window,
                                                     loop.backend.window_bound)
        else:
            loop = _in_process_decoder(params, judge)
            defaults = ServeDefaults.from_parameters(params, judge is not None, "lossless", 4)
        return cls(loop, defaults, chat=params.get("chat", "true") == "true")

    def prompt_ids(self, prompt: str, form: str = "chat") -> list[int]:
        """The model's input: ``prompt`` as the user message of the chat template ("chat"; the deployment's
        ``chat`` parameter false reads it raw), as is ("raw"), or a JSON list of {role, content} messages
        rendered by the chat template ("messages")."""
        from autojudge.models import encode_prompt

        tokenizer = self.decoder.backend.tokenizer
        if form == "messages":
            return list(tokenizer.apply_chat_template(messages_of(prompt), add_generation_prompt=True, tokenize=True,
                                                      return_dict=False))
        return encode_prompt(tokenizer, prompt, chat=self.chat and form == "chat")

    def run(self, request: ServeRequest, on_piece: OnPiece | None = None) -> tuple[str, list[int], dict]:
        """Decode one request; with ``on_piece``, stream (text, ids, metrics) pieces as cycles commit.

        Streamed text is the decoded answer so far, held back where it could still change: an
        incomplete UTF-8 character, or the last characters that could begin a stop string.
        The final piece (sent by the caller with the returned values) completes the text.
        """
        config = DecodeConfig(mode=request.mode, window=request.window, max_new_tokens=request.max_tokens,
                              adaptive=request.adaptive,
                              threshold=request.threshold, stop=request.stop)
        tokenizer = self.decoder.backend.tokenizer
        threshold = config.judge_threshold(self.decoder.backend.judge)
        prompt = self.prompt_ids(request.prompt, request.format)
        generated: list[int] = []
        sent = {"text": "", "ids": 0}
        hold = max((len(s) for s in request.stop), default=1) - 1

        def on_tokens(ids: list[int], metrics: SpecDecodeMetrics) -> None:
            generated.extend(ids)
            safe = tokenizer.decode(generated, skip_special_tokens=True)
            for stop in request.stop:  # never stream a stop string, nor what follows it
                found = safe.find(stop)
                safe = safe[:found] if found >= 0 else safe
            safe = safe[: len(safe) - hold] if hold else safe  # could still begin a stop string
            safe = safe.rstrip("\ufffd")  # an incomplete multi-byte character
            piece = safe[len(sent["text"]):] if safe.startswith(sent["text"]) else ""
            if piece or len(generated) > sent["ids"]:
                on_piece(piece, generated[sent["ids"]:], metrics_dict(metrics, threshold, None, len(prompt)))
                sent["text"] += piece
                sent["ids"] = len(generated)

        result = self.decoder.generate(prompt, config, on_tokens=on_tokens if on_piece else None)
        final = metrics_dict(result.metrics, threshold, result.finish_reason, len(prompt))
        if on_piece is None:
            return result.text, result.token_ids, final
        rest = result.text[len(sent["text"]):] if result.text.startswith(sent["text"]) else ""
        return rest, result.token_ids[sent["ids"]:], final


def _judge(params: dict[str, str], model_dir: str | Path):
    """The deployment's judge (None without one), its threshold overridden by ``default_threshold``."""
    from autojudge.judge import Judge

    if not params.get("judge"):
        return None
    judge = Judge.load(Path(model_dir) / params["judge"])
    if params.get("default_threshold"):
        judge = replace(judge, meta=replace(judge.meta, threshold=float(params["default_threshold"])))
    return judge


def _in_process_decoder(params: dict[str, str], judge) -> SpeculativeLoop:
    from autojudge.decoding import SpeculativeDecoder
    from autojudge.models import draft_spec_for, load_draft, load_target

    target_spec = params.get("target", "embedded")
    draft_spec = draft_spec_for(target_spec, params.get("draft"))
    target = load_target(target_spec, dtype=params.get("dtype", "float32"), device=params.get("device", "cpu"))
    draft = load_draft(draft_spec, target)
    return SpeculativeDecoder(target, draft, judge,
                              check_judge_names=params.get("check_judge_models", "true") == "true")


def _tensorrt_llm_loop(params: dict[str, str], judge, model_dir: str | Path) -> SpeculativeLoop:
    """The TensorRT-LLM flavour: the same loop over the draft and target executors and the
    judge-accept engine (:mod:`autojudge.serving.trtllm.loader`)."""
    from autojudge.serving.trtllm.loader import open_backend

    return SpeculativeLoop(open_backend(params, judge, Path(model_dir)))


def messages_of(text: str) -> list[dict]:
    """A request's ``prompt`` in format "messages": a JSON list of {"role", "content"} (RequestError otherwise)."""
    import json

    from autojudge.serving.requests import RequestError

    try:
        messages = json.loads(text)
    except ValueError as exc:
        raise RequestError("prompt", f"format 'messages' needs a JSON list of messages ({exc})") from None
    if not isinstance(messages, list) or not messages or not all(
            isinstance(m, dict) and m.get("role") in ("system", "user", "assistant") and isinstance(m.get("content"), str)
            for m in messages):
        raise RequestError("prompt", "format 'messages' needs a non-empty JSON list of {\"role\": system|user|"
                                     "assistant, \"content\": string}")
    return [{"role": m["role"], "content": m["content"]} for m in messages]
