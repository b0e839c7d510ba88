"""The Triton Python-backend model ``autojudge``: our speculative decoder, in process.

A repository's ``1/model.py`` is one line that imports this class. Deployment settings come
from the ``parameters`` of its config.pbtxt. With ``model_transaction_policy { decoupled: true }``
every decoder cycle is streamed as a response (gRPC streaming); otherwise one response per
request. An invalid request gets an error response naming the field, and the model keeps
serving; a failure inside one request never takes the others down.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from autojudge.errors import AutoJudgeError
from autojudge.serving.protocol import INPUTS, response_arrays
from autojudge.serving.requests import parse_request
from autojudge.serving.service import DecodeService


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        import triton_python_backend_utils as pb_utils

        self.pb = pb_utils
        config = json.loads(args["model_config"])
        params = {key: value["string_value"] for key, value in config.get("parameters", {}).items()}
        self.decoupled = pb_utils.using_decoupled_model_transaction_policy(config)
        self.forward_to = params.get("forward_to") or None
        model_dir = Path(args["model_repository"])  # this model's folder
        self.service = None if self.forward_to else DecodeService.from_parameters(params, model_dir)

    def _response(self, arrays: dict[str, np.ndarray] | None = None, error: str | None = None):
        if error is not None:
            return self.pb.InferenceResponse(output_tensors=[], error=self.pb.TritonError(error))
        return self.pb.InferenceResponse(output_tensors=[self.pb.Tensor(k, v) for k, v in arrays.items()])

    def _raw_inputs(self, request) -> dict:
        raw = {}
        for name in INPUTS:
            tensor = self.pb.get_input_tensor_by_name(request, name)
            raw[name] = None if tensor is None else tensor.as_numpy()
        return raw

    def _forward(self, request):
        """One response: the pieces that ``forward_to`` streams for this request, joined."""
        inputs = [t for name in INPUTS if (t := self.pb.get_input_tensor_by_name(request, name)) is not None]
        call = self.pb.InferenceRequest(model_name=self.forward_to, inputs=inputs,
                                        requested_output_names=["text", "token_ids", "metrics"])
        text, ids, metrics = [], [], "{}"
        for response in call.exec(decoupled=True):
            if response.has_error():
                return self._response(error=response.error().message())
            if not response.output_tensors():  # the empty final flag of a decoupled stream
                continue
            out = {name: self.pb.get_output_tensor_by_name(response, name).as_numpy()
                   for name in ("text", "token_ids", "metrics")}
            text.append(out["text"].reshape(-1)[0].decode())
            ids.extend(int(i) for i in out["token_ids"].reshape(-1))
            metrics = out["metrics"].reshape(-1)[0].decode()
        return self._response(response_arrays("".join(text), ids, json.loads(metrics)))

    def _handle(self, request, send) -> None:
        """Decode one request, calling ``send(response, final)`` once (unary) or per piece."""
        try:
            serve_request = parse_request(self._raw_inputs(request), self.service.defaults)
            if self.decoupled:
                def on_piece(text, ids, metrics):
                    send(self._response(response_arrays(text, ids, metrics)), False)
                text, ids, metrics = self.service.run(serve_request, on_piece)
            else:
                text, ids, metrics = self.service.run(serve_request)
            send(self._response(response_arrays(text, ids, metrics)), True)
        except AutoJudgeError as exc:
            send(self._response(error=str(exc)), True)
        except Exception as exc:  # noqa: BLE001 - one bad request must not stop the server
            send(self._response(error=f"internal error: {type(exc).__name__}: {exc}"), True)

    def execute(self, requests):
        if self.forward_to:
            return [self._forward(request) for request in requests]
        if not self.decoupled:
            responses = []
            for request in requests:
                self._handle(request, lambda response, final: responses.append(response))
            return responses
        final_flag = self.pb.TRITONSERVER_RESPONSE_COMPLETE_FINAL
        for request in requests:
            sender = request.get_response_sender()
            self._handle(request, lambda response, final, s=sender: s.send(response, flags=final_flag if final else 0))
        return None

    def finalize(self) -> None:
        self.service = None
