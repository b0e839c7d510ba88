"""The decode service a served model runs: requests in, text + tokens + metrics out, optionally
streamed piece by piece, every request decoded in one running batch (:mod:`autojudge.serving.batcher`).
No Triton import here: it is tested in-process, and the Triton model (``triton_model.py``) only
converts tensors."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from autojudge.decoding import DecodeConfig, GenerationResult, SpeculativeLoop
from autojudge.decoding.loop import CycleRecord
from autojudge.decoding.metrics import SpecDecodeMetrics
from autojudge.models.model_thread import ModelThread
from autojudge.serving.batcher import ContinuousBatcher
from autojudge.serving.cycle_log import CycleLog
from autojudge.serving.requests import ServeDefaults, ServeRequest, messages_of

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
        "mean_batch_size": metrics.mean_batch_size,
        "mean_batch_window": metrics.mean_batch_window,
        "tokens_per_s": metrics.tokens_per_s,
        "finish_reason": finish_reason,
    }


class PieceStream:
    """One request's streamed pieces. Streamed text is the decoded answer so far, held back where
    it could still change: an incomplete UTF-8 character, or the last characters that could begin
    a stop string. ``finish`` gives the final piece, which completes the text."""

    def __init__(self, tokenizer, stop: tuple[str, ...], threshold: float | None, prompt_tokens: int,
                 on_piece: OnPiece):
        self.tokenizer, self.stop, self.threshold, self.prompt_tokens = tokenizer, stop, threshold, prompt_tokens
        self.on_piece = on_piece
        self.generated: list[int] = []
        self.text, self.ids = "", 0  # what has been sent
        self.hold = max((len(s) for s in stop), default=1) - 1

    def on_tokens(self, ids: list[int], metrics: SpecDecodeMetrics) -> None:
        self.generated.extend(ids)
        safe = self.tokenizer.decode(self.generated, skip_special_tokens=True)
        for stop in self.stop:  # never stream a stop string, nor what follows it
            found = safe.find(stop)
            safe = safe[:found] if found >= 0 else safe
        safe = safe[: len(safe) - self.hold] if self.hold else safe  # could still begin a stop string
        safe = safe.rstrip("\ufffd")  # an incomplete multi-byte character
        piece = safe[len(self.text):] if safe.startswith(self.text) else ""
        if piece or len(self.generated) > self.ids:
            self.on_piece(piece, self.generated[self.ids:],
                          metrics_dict(metrics, self.threshold, None, self.prompt_tokens))
            self.text += piece
            self.ids = len(self.generated)

    def finish(self, result: GenerationResult) -> tuple[str, list[int], dict]:
        """The last piece: (the rest of the text, the rest of the ids, the final metrics)."""
        final = metrics_dict(result.metrics, self.threshold, result.finish_reason, self.prompt_tokens)
        rest = result.text[len(self.text):] if result.text.startswith(self.text) else ""
        return rest, result.token_ids[self.ids:], final


@dataclass
class DecodeService:
    """A deployment's decoder behind its continuous batcher (one running batch per model instance)."""

    decoder: SpeculativeLoop
    defaults: ServeDefaults
    chat: bool = True
    batching: dict = field(default_factory=dict)  # ContinuousBatcher settings: max_batch, max_queue, prefill_chunk
    thread: ModelThread | None = None  # the thread the models were loaded on (None: the batcher starts one)
    cycle_log: CycleLog | None = None  # where each cycle of the batch is written (the ``cycle_log`` parameter)
    _batcher: ContinuousBatcher | None = None

    @classmethod
    def from_parameters(cls, params: dict[str, str], model_dir: str | Path = ".") -> DecodeService:
        """Load what a deployment names (config.pbtxt ``parameters``); relative paths are taken
        from ``model_dir`` (the model's folder in the repository). The models are loaded on the
        thread that will decode with them (:mod:`autojudge.models.model_thread`)."""
        thread = ModelThread()
        try:
            return thread.call(cls._load, params, model_dir, thread)
        except BaseException:
            thread.close()
            raise

    @classmethod
    def _load(cls, params: dict[str, str], model_dir: str | Path, thread: ModelThread) -> DecodeService:
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
        batching = {key: int(params[key]) for key in ("max_batch", "max_queue", "prefill_chunk") if params.get(key)}
        log = CycleLog(Path(model_dir, params["cycle_log"])) if params.get("cycle_log") else None
        return cls(loop, defaults, chat=params.get("chat", "true") == "true", batching=batching, thread=thread,
                   cycle_log=log)

    @property
    def batcher(self) -> ContinuousBatcher:
        """Started on first use: it measures this machine's cycle cost for adaptive requests."""
        if self._batcher is None:
            self._batcher = ContinuousBatcher(self.decoder, **self.batching,
                                              cost_prompt=self.prompt_ids("Hello! How are you today?"),
                                              cost_window=self.defaults.window, thread=self.thread,
                                              on_cycle=self._log_cycle if self.cycle_log else None)
        return self._batcher

    def _log_cycle(self, record: CycleRecord) -> None:  # (cycles begin after the batcher is made)
        self.cycle_log(record, self._batcher.running)

    def close(self) -> None:
        if self._batcher is not None:
            self._batcher.close()
            self._batcher = None
        if self.cycle_log is not None:
            self.cycle_log.close()
        if self.thread is not None:
            self.thread.close()
            self.thread = None

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

    def config_of(self, request: ServeRequest) -> DecodeConfig:
        return DecodeConfig(mode=request.mode, window=request.window, max_new_tokens=request.max_tokens,
                            adaptive=request.adaptive, threshold=request.threshold, stop=request.stop)

    def _prepared(self, request: ServeRequest, on_piece: OnPiece | None):
        """(prompt ids, config, on_tokens for the batcher, answer(result) -> (text, ids, metrics))."""
        config = self.config_of(request)
        threshold = config.judge_threshold(self.decoder.backend.judge)
        prompt = self.prompt_ids(request.prompt, request.format)
        tokenizer = self.decoder.backend.tokenizer
        stream = PieceStream(tokenizer, request.stop, threshold, len(prompt), on_piece) if on_piece else None

        def answer(result: GenerationResult) -> tuple[str, list[int], dict]:
            if stream is not None:
                return stream.finish(result)
            return result.text, result.token_ids, metrics_dict(result.metrics, threshold, result.finish_reason,
                                                               len(prompt))

        return prompt, config, stream.on_tokens if stream else None, answer

    def submit(self, request: ServeRequest, on_done: Callable[[tuple[str, list[int], dict] | None, str | None], None],
               on_piece: OnPiece | None = None, is_cancelled: Callable[[], bool] | None = None) -> None:
        """Queue one request in the running batch. ``on_piece(text, ids, metrics)`` gets each piece
        as cycles commit (see :class:`PieceStream`); ``on_done((text, ids, metrics), None)`` the
        last one (the whole answer without ``on_piece``), or ``on_done(None, error)``. Raises
        AutoJudgeError for a refused request (ServerFull when the queue is at its limit)."""
        prompt, config, on_tokens, answer = self._prepared(request, on_piece)

        def done(result: GenerationResult | None, error: str | None) -> None:
            if error is not None:
                on_done(None, error)
            else:
                on_done(answer(result), None)

        self.batcher.submit(prompt, config, done, on_tokens, is_cancelled)

    def run(self, request: ServeRequest, on_piece: OnPiece | None = None,
            timeout: float | None = None) -> tuple[str, list[int], dict]:
        """Decode one request and wait for it (it still shares the running batch with the others);
        with ``on_piece``, stream pieces as cycles commit and return the last one."""
        prompt, config, on_tokens, answer = self._prepared(request, on_piece)
        return answer(self.batcher.generate(prompt, config, on_tokens, timeout))


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
