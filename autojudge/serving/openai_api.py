"""An OpenAI-compatible endpoint in front of a Triton deployment: what most clients speak.

``/v1/completions``, ``/v1/chat/completions`` (both streaming by server-sent events with
``"stream": true``) and ``/v1/models``. Each request becomes one gRPC stream to the decoupled
model ``autojudge_stream`` of the same Triton server, so every flavour (in-process or
TensorRT-LLM) serves it unchanged; each piece the decoder commits becomes one SSE chunk.
Every response and chunk carries ``metrics``: the speculative-decoding metrics under vLLM's
names (:data:`autojudge.serving.protocol.METRICS`).

Request fields: the OpenAI ones this greedy decoder honours (``prompt`` or ``messages``,
``max_tokens`` / ``max_completion_tokens``, ``stop``, ``stream``; ``temperature`` and
``top_p`` only at their greedy values, ``n`` only 1), plus ``mode``, ``window``, ``threshold``
and ``adaptive`` (the openai client sends them with ``extra_body=``). A bad field gets HTTP 400
with OpenAI's error shape naming it in ``param``; a full server (its queue at the limit) a 503
naming the limit; the server keeps serving.

Completions read the prompt as is (``format`` raw); chat renders the messages with the
model's chat template (``format`` messages).
"""

from __future__ import annotations

import asyncio
import json
import re
import time
import uuid

import numpy as np

from autojudge.serving.client import _inputs, request_arrays

STREAM_MODEL = "autojudge_stream"
GREEDY = {"temperature": (0, 0.0), "top_p": (1, 1.0), "n": (1,)}


class Overloaded(Exception):
    """The decoding model's queue is full (its message names the limit): a 503, retry later."""


class BadRequest(Exception):
    def __init__(self, param: str | None, message: str):
        super().__init__(message)
        self.param = param


def _error(status: int, message: str, param: str | None = None, kind: str = "invalid_request_error"):
    from aiohttp import web

    return web.json_response({"error": {"message": message, "type": kind, "param": param, "code": None}},
                             status=status)


def _field(body: dict, name: str, kinds, default=None):
    value = body.get(name, default)
    if value is not None and (not isinstance(value, kinds) or isinstance(value, bool) and bool not in kinds):
        raise BadRequest(name, f"'{name}' must be {' or '.join(k.__name__ for k in kinds)}, got {value!r}")
    return value


def parse(body, chat: bool) -> tuple[dict, dict]:
    """(Triton input arrays, request facts) of an OpenAI request body, or BadRequest naming the field."""
    if not isinstance(body, dict):
        raise BadRequest(None, "the request body must be a JSON object")
    for name, allowed in GREEDY.items():
        if body.get(name) is not None and body[name] not in allowed:
            raise BadRequest(name, f"'{name}' must be {allowed[0]}: this server decodes greedily (speculative "
                                   "decoding verifies the target's greedy tokens)")
    if chat:
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise BadRequest("messages", "'messages' must be a non-empty list of {role, content}")
        for message in messages:
            if not isinstance(message, dict) or not isinstance(message.get("content"), str):
                raise BadRequest("messages", "each message needs a string 'content' (text only)")
        prompt, form = json.dumps([{"role": m.get("role"), "content": m["content"]} for m in messages]), "messages"
    else:
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
            prompt = prompt[0]
        if not isinstance(prompt, str):
            raise BadRequest("prompt", "'prompt' must be a string (one prompt per request)")
        form = "raw"
    max_tokens = _field(body, "max_completion_tokens", (int,)) if chat else None
    max_tokens = max_tokens if max_tokens is not None else _field(body, "max_tokens", (int,))
    stop = body.get("stop")
    stop = [stop] if isinstance(stop, str) else stop
    if stop is not None and (not isinstance(stop, list) or not all(isinstance(s, str) for s in stop)):
        raise BadRequest("stop", "'stop' must be a string or a list of strings")
    arrays = request_arrays(prompt, max_tokens=max_tokens, mode=_field(body, "mode", (str,)),
                            window=_field(body, "window", (int,)),
                            threshold=_field(body, "threshold", (int, float)), stop=stop or (), form=form,
                            adaptive=_field(body, "adaptive", (bool,)))
    return arrays, {"stream": bool(_field(body, "stream", (bool,), False)), "model": body.get("model")}


class Gateway:
    """The aiohttp application; one gRPC stream to ``autojudge_stream`` per request."""

    def __init__(self, grpc_url: str, model_id: str = "autojudge"):
        self.grpc_url, self.model_id = grpc_url, model_id

    def app(self):
        from aiohttp import web

        app = web.Application(client_max_size=4 * 2**20)
        app.add_routes([web.get("/v1/models", self.models), web.post("/v1/completions", self.completions),
                        web.post("/v1/chat/completions", self.chat_completions),
                        web.get("/health", lambda request: web.json_response({"ok": True}))])
        return app

    async def models(self, request):
        from aiohttp import web

        return web.json_response({"object": "list", "data": [
            {"id": self.model_id, "object": "model", "created": 0, "owned_by": "autojudge"}]})

    async def completions(self, request):
        return await self._serve(request, chat=False)

    async def chat_completions(self, request):
        return await self._serve(request, chat=True)

    async def _pieces(self, arrays: dict[str, np.ndarray]):
        """The decoder's pieces, as Triton streams them: {"text", "token_ids", "metrics"}."""
        import tritonclient.grpc.aio as grpc_aio

        client = grpc_aio.InferenceServerClient(self.grpc_url)

        async def requests():
            yield {"model_name": STREAM_MODEL, "inputs": _inputs(grpc_aio, arrays),
                   "request_id": uuid.uuid4().hex, "enable_empty_final_response": True}

        stream = client.stream_infer(requests())
        try:
            async for result, error in stream:
                if error is not None:
                    message = str(error.message() if hasattr(error, "message") else error)
                    if "server is full" in message:
                        raise Overloaded(message)
                    param = _refused_field(message)
                    if param is None:  # not the request's fault
                        raise RuntimeError(message)
                    raise BadRequest(param, message)
                if result.as_numpy("text") is not None:
                    text = result.as_numpy("text")[0]
                    yield {"text": text.decode("utf-8") if isinstance(text, bytes) else str(text),
                           "token_ids": result.as_numpy("token_ids").tolist(),
                           "metrics": json.loads(result.as_numpy("metrics")[0])}
                final = result.get_response().parameters.get("triton_final_response")
                if final is not None and final.bool_param:
                    return
        finally:
            stream.cancel()  # a client that left mid-stream cancels its request
            await client.close()

    async def _serve(self, request, chat: bool):
        from aiohttp import web

        try:
            body = await request.json()
        except (ValueError, UnicodeDecodeError) as exc:
            return _error(400, f"the request body is not JSON: {exc}")
        try:
            arrays, facts = parse(body, chat)
        except BadRequest as exc:
            return _error(400, str(exc), exc.param)
        ident = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}"
        head = {"id": ident, "created": int(time.time()), "model": facts["model"] or self.model_id}
        pieces = self._pieces(arrays)
        if not facts["stream"]:
            text, metrics = [], {}
            try:
                async for piece in pieces:
                    text.append(piece["text"])
                    metrics = piece["metrics"]
            except BadRequest as exc:
                return _error(400, str(exc), exc.param)
            except Overloaded as exc:
                return _error(503, str(exc), kind="server_overloaded")
            except Exception as exc:  # noqa: BLE001 - the server must answer, and keep serving
                return _error(502, f"the decoding model failed: {exc}", kind="server_error")
            content = "".join(text)
            choice = ({"index": 0, "message": {"role": "assistant", "content": content}} if chat
                      else {"index": 0, "text": content, "logprobs": None})
            return web.json_response({**head, "object": "chat.completion" if chat else "text_completion",
                                      "choices": [{**choice, "finish_reason": metrics.get("finish_reason")}],
                                      "usage": _usage(metrics), "metrics": metrics})
        try:  # the first piece before the 200: a refused request still gets its 400
            first_piece = await anext(pieces)
        except BadRequest as exc:
            return _error(400, str(exc), exc.param)
        except Overloaded as exc:
            return _error(503, str(exc), kind="server_overloaded")
        except StopAsyncIteration:
            return _error(502, "the decoding model returned nothing", kind="server_error")
        except Exception as exc:  # noqa: BLE001
            return _error(502, f"the decoding model failed: {exc}", kind="server_error")
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await response.prepare(request)
        kind = "chat.completion.chunk" if chat else "text_completion"

        async def all_pieces():
            yield first_piece
            async for piece in pieces:
                yield piece

        try:
            first = True
            async for piece in all_pieces():
                metrics = piece["metrics"]
                if chat:
                    delta = {"content": piece["text"], **({"role": "assistant"} if first else {})}
                    choice = {"index": 0, "delta": delta}
                else:
                    choice = {"index": 0, "text": piece["text"], "logprobs": None}
                chunk = {**head, "object": kind, "choices": [{**choice, "finish_reason": metrics.get("finish_reason")}],
                         "metrics": metrics}
                if metrics.get("finish_reason"):
                    chunk["usage"] = _usage(metrics)
                await response.write(f"data: {json.dumps(chunk)}\n\n".encode())
                first = False
            await response.write(b"data: [DONE]\n\n")
        except BadRequest as exc:
            await response.write(f"data: {json.dumps({'error': {'message': str(exc), 'param': exc.param}})}\n\n"
                                 .encode())
        except ConnectionResetError:  # the client left (aiohttp's ClientConnectionResetError is one)
            await pieces.aclose()  # cancel its decoding; nobody is left to answer
            return response
        except asyncio.CancelledError:
            await pieces.aclose()
            raise
        return response


def _usage(metrics: dict) -> dict:
    prompt, completion = metrics.get("num_prompt_tokens") or 0, metrics.get("num_generated_tokens") or 0
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _refused_field(message: str) -> str | None:
    """The field a model's error names when it refused the request (None: another failure)."""
    found = re.search(r"invalid request field '([a-z_]+)'", message)
    return found.group(1) if found else None


def run_gateway(grpc_url: str, host: str = "127.0.0.1", port: int = 0, on_ready=None) -> None:
    """Serve until cancelled (KeyboardInterrupt); ``on_ready(url)`` once listening."""
    from aiohttp import web

    async def main():
        runner = web.AppRunner(Gateway(grpc_url).app())
        await runner.setup()
        site = web.TCPSite(runner, host, port)
        await site.start()
        bound = runner.addresses[0][1]
        if on_ready:
            on_ready(f"http://{host}:{bound}/v1")
        try:
            await asyncio.Event().wait()
        finally:
            await runner.cleanup()

    asyncio.run(main())
