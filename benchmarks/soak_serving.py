"""Soak: a real tritonserver and the OpenAI endpoint under hostile, mixed load for a fixed time.

    python benchmarks/soak_serving.py --minutes 5 --json-out benchmarks/results/soak_cpu.json

One decoding instance (embedded pair, a batch of ``--max-batch`` rows, ``--max-queue`` waiting)
and, for ``--minutes``, these clients at once, each in a loop:

- ``stream``: gRPC streaming requests (lossless, adaptive or not, windows 1..6, some with stop
  strings), each answer checked token for token against the in-process target's greedy answer;
- ``openai``: the same through ``/v1/chat/completions`` with the official ``openai`` client,
  streaming and not;
- ``leaver``: starts a stream (gRPC or OpenAI SSE) and disconnects after the first piece;
- ``malformed``: a bad field on every protocol (window 0, an unknown mode, an empty prompt,
  a body that is not JSON), which must get an error naming the field;
- ``burst``: now and then sends more requests at once than the batch and the queue hold; the
  extra ones must get "server is full" at once, the rest their right answers.

A request is *lost* when it gets no answer or an error it should not get, *corrupted* when its
answer is not the greedy one. At the end every batch row must be free again: ``--max-batch``
+ ``--max-queue`` + 1 long requests sent together may see at most one refused.
"""

from __future__ import annotations

import argparse
import json
import queue
import random
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from prompts import CHAT, gsm8k

from autojudge.serving.client import ServingError, infer_http, request_arrays, stream_grpc
from autojudge.serving.repo import RepoSettings, write_repo
from autojudge.serving.server import TritonServer

MALFORMED = [({"window": 0}, "'window'"), ({"mode": "greedy"}, "'mode'"), ({"threshold": 2.0}, "'threshold'")]


class Tally:
    def __init__(self):
        self.counts, self.lock, self.problems = Counter(), threading.Lock(), []

    def add(self, kind: str, problem: str | None = None) -> None:
        with self.lock:
            self.counts[kind] += 1
            if problem and len(self.problems) < 20:
                self.problems.append(f"{kind}: {problem[:300]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--max-tokens", type=int, default=24)
    parser.add_argument("--max-batch", type=int, default=6)
    parser.add_argument("--max-queue", type=int, default=2)
    parser.add_argument("--json-out", type=Path)
    args = parser.parse_args()

    from autojudge.decoding import DecodeConfig, SpeculativeDecoder
    from autojudge.models import encode_prompt, load_draft, load_target, quiet_transformers
    from autojudge.serving.openai_api import run_gateway

    quiet_transformers()
    prompts = gsm8k(6) + CHAT[:4]
    target = load_target("embedded", device="cpu")
    decoder = SpeculativeDecoder(target, load_draft("embedded", target))
    greedy = {p: decoder.generate(encode_prompt(target.tokenizer, p),
                                  DecodeConfig(mode="target", max_new_tokens=args.max_tokens)).token_ids
              for p in prompts}
    tally, stop_at = Tally(), time.monotonic() + 60 * args.minutes
    with tempfile.TemporaryDirectory() as tmp:
        write_repo(Path(tmp) / "deploy", RepoSettings(window=4, max_tokens=args.max_tokens, max_batch=args.max_batch,
                                                      max_queue=args.max_queue, unary_instances=4))
        with TritonServer(Path(tmp) / "deploy" / "models", log_file=Path(tmp) / "server.log") as server:
            ready, bound = threading.Event(), {}
            threading.Thread(target=run_gateway, args=(server.grpc_url,), daemon=True,
                             kwargs={"on_ready": lambda url: (bound.update(url=url), ready.set())}).start()
            assert ready.wait(30)
            openai_url = bound["url"]

            def full(exc: Exception) -> bool:
                return "server is full" in str(exc)

            def stream_client(seed: int) -> None:
                rng = random.Random(seed)
                while time.monotonic() < stop_at:
                    prompt = rng.choice(prompts)
                    fields = {"mode": "lossless", "window": rng.randint(1, 6), "adaptive": rng.random() < 0.5,
                              "max_tokens": args.max_tokens}
                    try:
                        got = stream_grpc(server.grpc_url, request_arrays(prompt, **fields), timeout_s=300)
                    except ServingError as exc:
                        tally.add("refused_full" if full(exc) else "lost", None if full(exc) else str(exc))
                        continue
                    ok = got["token_ids"] == greedy[prompt]
                    tally.add("stream_ok" if ok else "corrupted", None if ok else f"{prompt!r} {fields}")

            def openai_client(seed: int) -> None:
                import openai

                rng = random.Random(seed)
                client = openai.OpenAI(base_url=openai_url, api_key="none", max_retries=0, timeout=300)
                while time.monotonic() < stop_at:
                    prompt = rng.choice(prompts)
                    try:
                        kwargs = {"model": "autojudge", "messages": [{"role": "user", "content": prompt}],
                                  "max_tokens": args.max_tokens, "extra_body": {"mode": "lossless", "window": 4}}
                        if rng.random() < 0.5:
                            text = "".join(chunk.choices[0].delta.content or "" for chunk in
                                           client.chat.completions.create(stream=True, **kwargs) if chunk.choices)
                        else:
                            text = client.chat.completions.create(**kwargs).choices[0].message.content
                    except openai.APIStatusError as exc:
                        tally.add("refused_full" if exc.status_code == 503 and full(exc) else "lost",
                                  None if exc.status_code == 503 else str(exc))
                        continue
                    except Exception as exc:  # noqa: BLE001
                        tally.add("lost", repr(exc))
                        continue
                    want = target.tokenizer.decode(greedy[prompt], skip_special_tokens=True)
                    tally.add("openai_ok" if text == want else "corrupted", None if text == want else repr(text))

            def leaver(seed: int) -> None:
                import tritonclient.grpc as grpcclient

                from autojudge.serving.client import _inputs

                rng = random.Random(seed)
                while time.monotonic() < stop_at:
                    prompt = rng.choice(prompts)
                    if rng.random() < 0.5:  # gRPC: cancel the stream after its first piece
                        pieces: queue.Queue = queue.Queue()
                        client = grpcclient.InferenceServerClient(server.grpc_url)
                        client.start_stream(callback=lambda result, error, pieces=pieces: pieces.put((result, error)))
                        client.async_stream_infer("autojudge_stream", _inputs(grpcclient, request_arrays(
                            prompt, max_tokens=args.max_tokens * 4, mode="lossless", window=3)))
                        try:
                            pieces.get(timeout=300)
                        except queue.Empty:
                            tally.add("lost", "a leaver got no first piece")
                        client.stop_stream(cancel_requests=True)
                        client.close()
                    else:  # OpenAI SSE: read the first chunk, drop the connection
                        body = json.dumps({"model": "autojudge", "prompt": prompt, "stream": True,
                                           "max_tokens": args.max_tokens * 4}).encode()
                        request = urllib.request.Request(f"{openai_url}/completions", body,
                                                         {"Content-Type": "application/json"})
                        try:
                            with urllib.request.urlopen(request, timeout=300) as response:
                                response.readline()
                        except urllib.error.HTTPError as exc:
                            if exc.code != 503:
                                tally.add("lost", f"leaver got HTTP {exc.code}")
                                continue
                    tally.add("left")

            def malformed(seed: int) -> None:
                rng = random.Random(seed)
                while time.monotonic() < stop_at:
                    fields, names = rng.choice(MALFORMED)
                    try:
                        infer_http(server.http_url, request_arrays("hello", max_tokens=4, **fields))
                        tally.add("lost", f"{fields} was answered")
                    except ServingError as exc:
                        tally.add("malformed_refused" if names in str(exc) else "lost", None if names in str(exc)
                                  else str(exc))
                    request = urllib.request.Request(f"{openai_url}/chat/completions", b"{not json",
                                                     {"Content-Type": "application/json"})
                    try:
                        urllib.request.urlopen(request, timeout=60)
                        tally.add("lost", "a body that is not JSON was answered")
                    except urllib.error.HTTPError as exc:
                        tally.add("malformed_refused" if exc.code == 400 else "lost",
                                  None if exc.code == 400 else f"HTTP {exc.code}")
                    time.sleep(0.5)

            def burst(seed: int) -> None:
                rng = random.Random(seed)
                while time.monotonic() < stop_at:
                    time.sleep(rng.uniform(10, 20))
                    threads = [threading.Thread(target=stream_client_once, args=(rng.choice(prompts),))
                               for _ in range(2 * (args.max_batch + args.max_queue))]
                    for t in threads:
                        t.start()
                    for t in threads:
                        t.join()

            def stream_client_once(prompt: str) -> None:
                try:
                    got = stream_grpc(server.grpc_url, request_arrays(prompt, max_tokens=args.max_tokens,
                                                                      mode="lossless", window=4), timeout_s=300)
                except ServingError as exc:
                    tally.add("refused_full" if full(exc) else "lost", None if full(exc) else str(exc))
                    return
                ok = got["token_ids"] == greedy[prompt]
                tally.add("burst_ok" if ok else "corrupted", None if ok else prompt)

            kinds = [stream_client] * 2 + [openai_client, leaver, malformed, burst]
            threads = [threading.Thread(target=kind, args=(i,)) for i, kind in enumerate(kinds)]
            started = time.perf_counter()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            # every row is free again: max_batch + max_queue + 1 long requests at once, and only the last
            # one to arrive can be refused (a leaked row would refuse one more)
            final = Tally()

            def last_check(prompt: str) -> None:
                try:
                    got = stream_grpc(server.grpc_url, request_arrays(prompt, max_tokens=4 * args.max_tokens,
                                                                      mode="target"), timeout_s=600)
                    final.add("ok" if got["token_ids"] else "empty")
                except ServingError as exc:
                    final.add("refused_full" if full(exc) else "lost", str(exc))

            threads = [threading.Thread(target=last_check, args=(prompts[i % len(prompts)],))
                       for i in range(args.max_batch + args.max_queue + 1)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            elapsed = time.perf_counter() - started
    counts = dict(tally.counts)
    report = {"minutes": elapsed / 60, "max_batch": args.max_batch, "max_queue": args.max_queue, "counts": counts,
              "lost": counts.get("lost", 0), "corrupted": counts.get("corrupted", 0),
              "final_check": dict(final.counts),
              "rows_free_at_end": final.counts.get("refused_full", 0) <= 1
              and final.counts.get("ok", 0) >= args.max_batch + args.max_queue, "problems": tally.problems + final.problems}
    print(json.dumps(report, indent=2))
    if args.json_out:
        args.json_out.write_text(json.dumps(report, indent=2) + "\n")
    if report["lost"] or report["corrupted"] or not report["rows_free_at_end"]:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
