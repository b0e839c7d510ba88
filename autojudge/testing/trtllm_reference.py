"""The tensor contract of :mod:`autojudge.serving.trtllm.backend`, served by in-process models.

An executable specification of what the BLS expects from the ``draft`` and ``target``
TensorRT-LLM models and the ``judge_accept`` engine, answered by PyTorch models and the
acceptance oracle. Tests run the TensorRT-LLM orchestration against it on CPU; on a GPU
host the real engines answer the same requests.
"""

from __future__ import annotations

from pathlib import Path

import torch

from autojudge.acceptance import accept, judge_mismatch_ok
from autojudge.errors import AutoJudgeError
from autojudge.judge import Judge
from autojudge.models import CausalLM
from autojudge.serving.trtllm.contract import DRAFT_MODEL, HIDDEN_OUTPUT, JUDGE_MODEL, TARGET_MODEL

GENERATION_REQUIRED_OUTPUTS = ("output_ids", "sequence_length")  # the emulation's own copy of the fact
BACKEND_REQUIRED_PARAMETERS = ("tokenizer_dir", "xgrammar_tokenizer_info_path", "guided_decoding_backend")


class ReferenceModels:
    """``call(model, inputs, outputs)`` for the three models; every request starts from scratch
    (no state between requests, as with the real server)."""

    def __init__(self, target: CausalLM, draft: CausalLM, judge: Judge | None):
        self.target, self.draft, self.judge = target, draft, judge
        self.vocab = min(target.vocab_size, draft.vocab_size)
        self.requests: dict[str, int] = {DRAFT_MODEL: 0, TARGET_MODEL: 0, JUDGE_MODEL: 0}

    @torch.inference_mode()
    def __call__(self, model: str, inputs: dict[str, torch.Tensor], outputs: list[str]) -> dict[str, torch.Tensor]:
        self.requests[model] += 1
        if model == JUDGE_MODEL:
            result = self._judge_accept(inputs)
        else:
            for required in GENERATION_REQUIRED_OUTPUTS:
                # tensorrtllm_backend inflight_batcher_llm/src/model_instance_state.cc (v1.2.x), fillTritonResponse:
                # a response is refused unless the request asks for both output_ids and sequence_length
                if required not in outputs:
                    raise AutoJudgeError(f"Error encountered while populating response: {required} tensor must be "
                                         "present in list of output tensors")
            result = self._generate(self.draft if model == DRAFT_MODEL else self.target, inputs)
        return {name: result[name] for name in outputs}

    def _generate(self, lm: CausalLM, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Greedy generation; with draft_input_ids, one pass over input + drafts (the states and
        logits at every draft position, as the target's external-draft-token step computes)."""
        prompt = inputs["input_ids"].to(torch.long)  # [1, T]
        length = int(inputs["request_output_len"].reshape(-1)[0])
        cache = lm.new_cache()
        if "draft_input_ids" in inputs:
            drafts = inputs["draft_input_ids"].to(torch.long)  # [1, w]
            hidden = lm.hidden_states(torch.cat([prompt, drafts], dim=1), cache)[:, -(drafts.shape[1] + 1):]
        else:
            states, fed = [], prompt
            for _ in range(length):
                state = lm.hidden_states(fed, cache)[:, -1:]  # [1, 1, H]
                states.append(state)
                fed = lm.greedy(state, self.vocab)
            hidden = torch.cat(states, dim=1)  # [1, L, H]
        logits = lm.logits(hidden)[..., : self.vocab].float()  # [1, L, V]
        return {"output_ids": logits.argmax(-1).to(torch.int32)[:, None],  # [1, 1, L]
                "sequence_length": torch.tensor([[logits.shape[1]]], dtype=torch.int32),
                "generation_logits": logits[:, None], HIDDEN_OUTPUT: hidden}

    def _judge_accept(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        draft_tokens, target_tokens = inputs["draft_tokens"].long(), inputs["target_tokens"].long()
        threshold = inputs["threshold"].reshape(-1, 1)  # [B, 1]
        probs = self.judge.probabilities(inputs.get("draft_hidden"), inputs["target_hidden"])  # [B, W]
        result = accept(draft_tokens, target_tokens, judge_mismatch_ok(probs, threshold))
        return {"num_accepted": result.num_accepted.to(torch.int32), "next_tokens": result.next_tokens.to(torch.int32),
                "probabilities": probs}


class ReferenceTritonModel:
    """A Python-backend model that answers one engine slot (draft, target or judge_accept) of a
    TensorRT-LLM repository with :class:`ReferenceModels`: the BLS then runs for real in
    tritonserver on a CPU. Parameters: ``target``, ``draft``, ``judge`` (as flavour 1's)."""

    def initialize(self, args: dict) -> None:
        import json

        import triton_python_backend_utils as pb_utils

        from autojudge.models import load_draft, load_target

        self.pb = pb_utils
        config = json.loads(args["model_config"])
        params = {key: value["string_value"] for key, value in config.get("parameters", {}).items()}
        self.name, self.inputs = config["name"], [entry["name"] for entry in config["input"]]
        hidden_type = next((o["data_type"] for o in config["output"] if o["name"] == HIDDEN_OUTPUT), "TYPE_FP32")
        self.hidden_dtype = {"TYPE_BF16": torch.bfloat16, "TYPE_FP16": torch.float16}.get(hidden_type, torch.float32)
        target = load_target(params["target"], device="cpu")
        judge = Judge.load(Path(args["model_repository"]) / params["judge"]) if params.get("judge") else None
        self.models = ReferenceModels(target, load_draft(params["draft"], target), judge)

    def _tensor(self, tensor) -> torch.Tensor:
        from torch.utils.dlpack import from_dlpack

        try:
            return from_dlpack(tensor.to_dlpack())
        except Exception:  # noqa: BLE001 - types DLPack cannot carry (BOOL) come as NumPy
            return torch.from_numpy(tensor.as_numpy())

    def execute(self, requests):
        from torch.utils.dlpack import to_dlpack

        responses = []
        for request in requests:
            inputs = {name: self._tensor(t) for name in self.inputs
                      if (t := self.pb.get_input_tensor_by_name(request, name)) is not None}
            outputs = self.models(self.name, inputs, list(request.requested_output_names()))
            if HIDDEN_OUTPUT in outputs:
                outputs[HIDDEN_OUTPUT] = outputs[HIDDEN_OUTPUT].to(self.hidden_dtype)
            responses.append(self.pb.InferenceResponse(output_tensors=[
                self.pb.Tensor.from_dlpack(name, to_dlpack(value.contiguous())) for name, value in outputs.items()]))
        return responses


def use_reference_engines(models_dir: Path, target: str, draft: str, judge: str = "../../artifacts/judge") -> None:
    """Turn the engine slots of a TensorRT-LLM repository into :class:`ReferenceTritonModel`s
    (Python backend, CPU), keeping their names, inputs and outputs."""
    import re

    for name in (DRAFT_MODEL, TARGET_MODEL, JUDGE_MODEL):
        folder = models_dir / name
        text = (folder / "config.pbtxt").read_text()
        if name != JUDGE_MODEL:
            present = set(re.findall(r'^parameters \{ key: "([^"]+)"', text, flags=re.M))
            for required in BACKEND_REQUIRED_PARAMETERS:
                # tensorrtllm_backend v1.2.x model_instance_state.cc (getGuidedDecodingConfigFromParams) reads
                # these through model_state.cc GetParameter, which throws for an absent one: the load fails
                if required not in present:
                    raise AutoJudgeError(f"{folder / 'config.pbtxt'}: the tensorrtllm backend would fail to load "
                                         f"{name!r}: Cannot find parameter with name: {required}")
        text = re.sub(r'(backend: "tensorrtllm"|platform: "tensorrt_plan")', 'backend: "python"', text)
        text = re.sub(r"^parameters .*$\n?", "", text, flags=re.M).replace("KIND_GPU", "KIND_CPU")
        text += "".join(f'parameters {{ key: "{key}" value: {{ string_value: "{value}" }} }}\n'
                        for key, value in (("target", target), ("draft", draft), ("judge", judge)))
        (folder / "config.pbtxt").write_text(text)
        for stale in (folder / "1").iterdir():
            stale.unlink()
        (folder / "1" / "model.py").write_text(
            "from autojudge.testing.trtllm_reference import ReferenceTritonModel as TritonPythonModel  # noqa: F401\n")
