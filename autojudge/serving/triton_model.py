"""The Triton Python-backend models ``autojudge_stream`` and ``autojudge``.

A repository's ``1/model.py`` is one line that imports this class. Deployment settings come
from the ``parameters`` of its config.pbtxt.

- ``autojudge_stream`` (``decoupled: true``) holds the decoder: ``execute`` only queues each
  request in the instance's running batch (:mod:`autojudge.serving.batcher`) and returns; the
  batch thread sends one response per decoder cycle and the final flag. A client that goes away
  (``response_sender.is_cancelled()``, python_backend README "Request Cancellation Handling",
  23.10+) frees its batch row at the next cycle; the final flag is still sent, as that README
  requires. Passing the sender to another thread is what the README's decoupled mode allows.
- ``autojudge`` (``decoupled: false``; HTTP and gRPC unary) has ``forward_to``: it holds no
  model, and forwards each request to ``autojudge_stream`` through BLS, joining the pieces.
  A default-mode Python model must return one response per request from ``execute`` (README
  "Default Mode"), so its instances (light processes) bound the unary requests in flight.

An invalid request gets an error response naming the field, and the model keeps serving; a
full queue is an UNAVAILABLE error naming the limit; a failure inside one request never takes
the others down.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from autojudge.errors import AutoJudgeError
from autojudge.serving.protocol import INPUTS, response_arrays


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        import triton_python_backend_utils as pb_utils

        self.pb = pb_utils
        config = json.loads(args["model_config"])
        params = {key: value["string_value"] for key, value in config.get("parameters", {}).items()}
        self.decoupled = pb_utils.using_decoupled_model_transaction_policy(config)
        self.forward_to = params.get("forward_to") or None
        model_dir = Path(args["model_repository"])  # this model's folder
        self.service = None
        if not self.forward_to and not self.decoupled:
            raise AutoJudgeError(f"{args['model_name']}: a model that decodes must be decoupled; a unary model "
                                 "forwards to one (parameter forward_to)")
        if not self.forward_to:  # only the decoding model imports torch and loads the models
            from autojudge.serving.service import DecodeService

            self.service = DecodeService.from_parameters(params, model_dir)
            self.service.batcher  # noqa: B018 - start the batch thread (and measure the cycle cost) now

    def _response(self, arrays: dict[str, np.ndarray] | None = None, error: str | None = None, code=None):
        if error is not None:
            error = self.pb.TritonError(error) if code is None else self.pb.TritonError(error, code)
            return self.pb.InferenceResponse(output_tensors=[], error=error)
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
                return self._response(error=response.error().message(), code=response.error().code())
            if not response.output_tensors():  # the empty final flag of a decoupled stream
                continue
            out = {name: self.pb.get_output_tensor_by_name(response, name).as_numpy()
                   for name in ("text", "token_ids", "metrics")}
            text.append(out["text"].reshape(-1)[0].decode())
            ids.extend(int(i) for i in out["token_ids"].reshape(-1))
            metrics = out["metrics"].reshape(-1)[0].decode()
        return self._response(response_arrays("".join(text), ids, json.loads(metrics)))

    def _submit(self, request) -> None:
        """Queue one request in the running batch; its sender gets every piece and the final flag."""
        from autojudge.serving.batcher import ServerFull
        from autojudge.serving.requests import parse_request

        sender = request.get_response_sender()
        final = self.pb.TRITONSERVER_RESPONSE_COMPLETE_FINAL

        def on_piece(text, ids, metrics):
            sender.send(self._response(response_arrays(text, ids, metrics)))

        def on_done(answer, error):
            try:
                if sender.is_cancelled():  # nobody is listening: only the final flag
                    sender.send(flags=final)
                elif error is not None:
                    sender.send(self._response(error=error), flags=final)
                else:
                    sender.send(self._response(response_arrays(*answer)), flags=final)
            except Exception:  # noqa: BLE001 - the request must still be completed, or Triton holds it
                sender.send(flags=final)

        try:
            serve_request = parse_request(self._raw_inputs(request), self.service.defaults)
            self.service.submit(serve_request, on_done, on_piece, is_cancelled=sender.is_cancelled)
        except ServerFull as exc:
            sender.send(self._response(error=str(exc), code=self.pb.TritonError.UNAVAILABLE), flags=final)
        except AutoJudgeError as exc:
            sender.send(self._response(error=str(exc)), flags=final)
        except Exception as exc:  # noqa: BLE001 - one bad request must not stop the server
            sender.send(self._response(error=f"internal error: {type(exc).__name__}: {exc}"), flags=final)

    def execute(self, requests):
        if self.forward_to:
            return [self._forward(request) for request in requests]
        for request in requests:
            self._submit(request)
        return None

    def finalize(self) -> None:
        if self.service is not None:
            self.service.close()
        self.service = None
