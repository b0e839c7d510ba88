"""The continuous batcher: requests submitted from many threads share one running batch and get
what they get alone (float64); a full queue is refused at once, naming the limit; a request
whose client went away frees its row; a failing callback or request never stops the batch."""

from __future__ import annotations

import threading

import pytest
from conftest import perturbed, tiny_model

from autojudge.decoding import DecodeConfig, SpeculativeDecoder
from autojudge.errors import AutoJudgeError
from autojudge.models.model_thread import ModelThread
from autojudge.serving.batcher import ContinuousBatcher, ServerFull

PROMPTS = [[1, 504, 3458, 314, 253, 1345, 28, 288], [1, 42, 977], [1, 9, 8, 7, 6, 5, 4, 3, 2000, 31, 77, 12],
           [1, 3000, 25, 911, 5]]
CONFIGS = [DecodeConfig(mode="lossless", window=4, max_new_tokens=24), DecodeConfig(mode="target", max_new_tokens=20),
           DecodeConfig(mode="topk", window=3, top_k=2, max_new_tokens=24),
           DecodeConfig(mode="lossless", window=6, max_new_tokens=24, adaptive=True)]


@pytest.fixture(scope="module")
def decoder(make_lm):
    target = tiny_model(11).double()
    return SpeculativeDecoder(make_lm(target, "t11"), make_lm(perturbed(target, 0.08, 11), "d11"))


def test_concurrent_requests_share_the_batch_and_get_what_they_get_alone(decoder):
    batcher = ContinuousBatcher(decoder, max_batch=8, max_queue=8, prefill_chunk=4, cost_prompt=PROMPTS[0])
    try:
        results, streamed = {}, {}

        def client(i):
            pieces = streamed.setdefault(i, [])
            results[i] = batcher.generate(PROMPTS[i % 4], CONFIGS[i % 4], on_tokens=lambda ids, m: pieces.extend(ids),
                                          timeout=120)

        threads = [threading.Thread(target=client, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        batched = 0
        for i, got in results.items():
            config = CONFIGS[i % 4]
            alone = decoder.generate(PROMPTS[i % 4], config)
            if not config.adaptive:  # an adaptive window depends on the batch; its lossless tokens do not
                assert got.metrics.num_target_calls == alone.metrics.num_target_calls
            assert got.token_ids == alone.token_ids == streamed[i] and got.finish_reason == alone.finish_reason
            batched = max(batched, got.metrics.mean_batch_size)
        assert len(results) == 8 and batched > 1
        assert batcher.load == (0, 0)
    finally:
        batcher.close()


def test_a_full_queue_is_refused_at_once_naming_the_limit(decoder):
    hold = threading.Event()
    batcher = ContinuousBatcher(decoder, max_batch=1, max_queue=1)
    try:
        done, decoding = [], threading.Event()

        def slow(ids, metrics):
            decoding.set()
            hold.wait(30)

        config = DecodeConfig(mode="lossless", window=2, max_new_tokens=200)
        batcher.submit(PROMPTS[0], config, lambda r, e: done.append(e), on_tokens=slow)
        assert decoding.wait(60)
        batcher.submit(PROMPTS[1], config, lambda r, e: done.append(e))  # waits in the queue
        with pytest.raises(ServerFull, match=r"server is full: 1 of 1 batch rows decoding and 1 waiting "
                                             r"\(max_queue 1\)"):
            batcher.submit(PROMPTS[2], config, lambda r, e: done.append(e))
        hold.set()
        for _ in range(1200):
            if len(done) == 2:
                break
            threading.Event().wait(0.05)
        assert done == [None, None]  # the two it took were answered
    finally:
        batcher.close()


def test_a_request_whose_client_left_frees_its_row_for_the_next(decoder):
    batcher = ContinuousBatcher(decoder, max_batch=1, max_queue=0)
    try:
        gone, first_piece, outcome = threading.Event(), threading.Event(), {}

        def on_tokens(ids, metrics):
            first_piece.set()

        def on_done(result, error):
            outcome.update(result=result, error=error)

        batcher.submit(PROMPTS[0], DecodeConfig(mode="lossless", window=2, max_new_tokens=100_000), on_done,
                       on_tokens, is_cancelled=gone.is_set)
        assert first_piece.wait(60)
        with pytest.raises(ServerFull):  # its row is taken, nothing may wait
            batcher.submit(PROMPTS[1], DecodeConfig(max_new_tokens=4), lambda r, e: None)
        gone.set()  # the client disconnects mid-stream
        second = None
        for _ in range(600):
            try:
                second = batcher.generate(PROMPTS[1], DecodeConfig(mode="lossless", window=2, max_new_tokens=8),
                                          timeout=60)
                break
            except ServerFull:
                threading.Event().wait(0.05)
        assert second is not None and len(second.token_ids) == 8
        assert outcome["result"].finish_reason == "cancelled" and outcome["error"] is None
        assert len(outcome["result"].token_ids) < 100_000
    finally:
        batcher.close()


def test_bad_requests_and_failing_callbacks_never_stop_the_batch(decoder):
    batcher = ContinuousBatcher(decoder, max_batch=4, max_queue=4)
    try:
        with pytest.raises(AutoJudgeError, match="window must be in 1..64"):
            batcher.submit(PROMPTS[0], DecodeConfig(window=0), lambda r, e: None)
        with pytest.raises(AutoJudgeError, match="prompt is empty"):
            batcher.submit([], DecodeConfig(), lambda r, e: None)
        with pytest.raises(AutoJudgeError, match="adaptive speculation is not available"):
            batcher.submit(PROMPTS[0], DecodeConfig(adaptive=True), lambda r, e: None)  # no cost was measured

        def broken(ids, metrics):
            raise ConnectionError("the client's socket is closed")

        outcome = {}
        batcher.submit(PROMPTS[0], DecodeConfig(max_new_tokens=50), lambda r, e: outcome.update(r=r, e=e), broken)
        fine = batcher.generate(PROMPTS[1], DecodeConfig(max_new_tokens=10), timeout=60)
        assert fine.token_ids == decoder.generate(PROMPTS[1], DecodeConfig(max_new_tokens=10)).token_ids
        for _ in range(200):
            if outcome:
                break
            threading.Event().wait(0.05)
        assert outcome["r"].finish_reason == "cancelled"  # a row we cannot stream to leaves
    finally:
        batcher.close()
    with pytest.raises(AutoJudgeError, match="shutting down"):
        batcher.submit(PROMPTS[0], DecodeConfig(), lambda r, e: None)


def test_a_failing_cycle_fails_its_requests_and_the_batch_starts_afresh(decoder, monkeypatch):
    """A cycle that raises (out of memory, say) fails the requests decoding then, with the error;
    requests after it get their own right answers from a fresh batch."""
    from autojudge.decoding.loop import Running

    batcher = ContinuousBatcher(decoder, max_batch=4, max_queue=4)
    try:
        real, calls = Running.cycle, {"n": 0}

        def flaky(self):
            calls["n"] += 1
            if calls["n"] == 3:
                raise RuntimeError("CUDA out of memory (simulated)")
            return real(self)

        monkeypatch.setattr(Running, "cycle", flaky)
        with pytest.raises(AutoJudgeError, match="internal error: RuntimeError: CUDA out of memory"):
            batcher.generate(PROMPTS[0], DecodeConfig(max_new_tokens=400), timeout=60)
        config = DecodeConfig(mode="lossless", window=3, max_new_tokens=6)
        after = batcher.generate(PROMPTS[1], config, timeout=60)
        assert after.token_ids == decoder.generate(PROMPTS[1], config).token_ids
    finally:
        batcher.close()


def test_generate_from_a_callback_is_refused_not_a_deadlock(decoder):
    batcher = ContinuousBatcher(decoder, max_batch=2, max_queue=2)
    try:
        seen = []

        def nested(ids, metrics):
            if not seen:
                try:
                    batcher.generate(PROMPTS[1], DecodeConfig(max_new_tokens=2))
                except AutoJudgeError as exc:
                    seen.append(str(exc))

        batcher.generate(PROMPTS[0], DecodeConfig(max_new_tokens=4), on_tokens=nested, timeout=60)
        assert seen and "would wait for itself" in seen[0]
    finally:
        batcher.close()


def test_the_batch_measures_and_decodes_on_the_thread_it_is_given(decoder):
    models = ModelThread("models")
    seen, measure = set(), decoder.cycle_cost

    def timed_cost(*args, **kwargs):
        seen.add(threading.current_thread())
        return measure(*args, **kwargs)

    decoder.cycle_cost, decoder._costs = timed_cost, {}
    try:
        batcher = ContinuousBatcher(decoder, max_batch=2, max_queue=2, cost_prompt=PROMPTS[0], thread=models)
        batcher.generate(PROMPTS[1], CONFIGS[3], on_tokens=lambda ids, m: seen.add(threading.current_thread()),
                         timeout=120)
        batcher.close()
        assert seen == {models.thread}
        assert models.call(lambda: threading.current_thread()) is models.thread  # still there: the caller's to close
    finally:
        del decoder.cycle_cost
        models.close()


def test_a_model_thread_runs_in_order_and_hands_back_errors():
    models, order = ModelThread(), []
    futures = [models.submit(order.append, i) for i in range(5)]
    assert [f.result(timeout=10) for f in futures] == [None] * 5 and order == list(range(5))
    with pytest.raises(ZeroDivisionError):
        models.call(lambda: 1 / 0)
    assert models.call(sum, [1, 2]) == 3 and models.thread.daemon
    models.close()
    models.thread.join(timeout=10)
    assert not models.thread.is_alive()
