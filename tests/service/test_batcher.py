"""The batcher behind /predict, driven directly: what it batches, what it sheds, what it keeps.

The scorer here is a plain function that records each batch it is given and
can be held until the test releases it, so queues form deterministically;
over HTTP, tests/service/test_batching.py checks the same batching with the
real model, and test_surface.py the shed answer.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable

import pytest

from service.predict_route import Batcher, OverloadedError
from service.schemas import Prediction


class HeldScorer:
    """Scores a text as a Prediction labelled with the text; waits on `release` per batch."""

    def __init__(self, seconds: float = 0.0) -> None:
        self.batches: list[list[str]] = []
        self.release = threading.Event()
        self.release.set()
        self.seconds = seconds
        self.fail_next = False

    def __call__(self, texts: list[str]) -> list[Prediction]:
        self.batches.append(list(texts))
        self.release.wait(timeout=10)
        threading.Event().wait(self.seconds)
        if self.fail_next:
            self.fail_next = False
            raise RuntimeError("the model broke")
        return [
            Prediction(label=t, score=1.0, scores={}, logits={}, model_version="v") for t in texts
        ]


def run(test: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(test(), timeout=20))


async def _started(scorer: HeldScorer, batches: int) -> None:
    while len(scorer.batches) < batches:
        await asyncio.sleep(0.001)


def test_requests_queued_behind_a_batch_run_together_and_get_their_own_answers() -> None:
    scorer = HeldScorer()
    batcher = Batcher(scorer, max_batch_size=8, max_latency_s=10)

    async def test() -> None:
        scorer.release.clear()
        first = asyncio.ensure_future(batcher.submit(["a"]))
        await _started(scorer, 1)  # a lone request runs at once: nothing waits for company
        queued = [asyncio.ensure_future(batcher.submit([f"q{i}", f"r{i}"])) for i in range(3)]
        await asyncio.sleep(0.01)
        scorer.release.set()

        assert [p.label for p in await first] == ["a"]
        answers = [[p.label for p in await q] for q in queued]
        assert answers == [[f"q{i}", f"r{i}"] for i in range(3)]
        assert scorer.batches == [["a"], ["q0", "r0", "q1", "r1", "q2", "r2"]]

    run(test)


def test_a_batch_never_passes_the_size_limit_and_a_larger_request_runs_alone() -> None:
    scorer = HeldScorer()
    batcher = Batcher(scorer, max_batch_size=4, max_latency_s=10)

    async def test() -> None:
        scorer.release.clear()
        first = asyncio.ensure_future(batcher.submit(["a"]))
        await _started(scorer, 1)
        rest = [
            asyncio.ensure_future(batcher.submit(texts))
            for texts in (["b", "c", "d"], ["e", "f"], ["g", "h", "i", "j", "k", "l"], ["m"])
        ]
        await asyncio.sleep(0.01)
        scorer.release.set()
        await asyncio.gather(first, *rest)

        assert scorer.batches == [["a"], ["b", "c", "d"], ["e", "f"], list("ghijkl"), ["m"]]

    run(test)


def test_a_request_is_shed_when_the_texts_ahead_would_pass_the_latency_limit() -> None:
    scorer = HeldScorer(seconds=0.02)  # 20 ms per batch of one: ~20 ms per text
    batcher = Batcher(scorer, max_batch_size=64, max_latency_s=0.11)

    async def test() -> None:
        await batcher.submit(["learn the cost"])
        scorer.release.clear()
        running = asyncio.ensure_future(batcher.submit(["x"]))
        await _started(scorer, 2)
        queued = [asyncio.ensure_future(batcher.submit([f"t{i}"])) for i in range(3)]
        await asyncio.sleep(0.01)  # they join the queue
        with pytest.raises(OverloadedError):  # 1 running + 3 queued + 2 = 6 texts, ~120 ms
            await batcher.submit(["y", "z"])
        scorer.release.set()
        assert len(await running) == 1
        assert [len(await q) for q in queued] == [1, 1, 1]

    run(test)


def test_a_request_that_waited_past_the_latency_limit_is_shed_not_scored() -> None:
    scorer = HeldScorer()
    batcher = Batcher(scorer, max_batch_size=64, max_latency_s=0.05)

    async def test() -> None:
        scorer.release.clear()  # the cost per text is still unknown: nothing is shed up front
        running = asyncio.ensure_future(batcher.submit(["slow"]))
        await _started(scorer, 1)
        late = asyncio.ensure_future(batcher.submit(["late"]))
        await asyncio.sleep(0.1)
        scorer.release.set()
        await running
        with pytest.raises(OverloadedError):
            await late
        assert scorer.batches == [["slow"]]

    run(test)


def test_a_failed_batch_fails_its_requests_and_the_next_batch_still_runs() -> None:
    scorer = HeldScorer()
    batcher = Batcher(scorer, max_batch_size=64, max_latency_s=10)

    async def test() -> None:
        scorer.fail_next = True
        with pytest.raises(RuntimeError, match="the model broke"):
            await batcher.submit(["a"])
        assert [p.label for p in await batcher.submit(["b"])] == ["b"]

    run(test)


def test_a_request_its_client_gave_up_on_is_not_scored() -> None:
    scorer = HeldScorer()
    batcher = Batcher(scorer, max_batch_size=64, max_latency_s=10)

    async def test() -> None:
        scorer.release.clear()
        running = asyncio.ensure_future(batcher.submit(["first"]))
        await _started(scorer, 1)
        with pytest.raises(TimeoutError):  # what REQUEST_TIMEOUT_S does to a waiting request
            await asyncio.wait_for(batcher.submit(["abandoned"]), 0.01)
        kept = asyncio.ensure_future(batcher.submit(["kept"]))
        scorer.release.set()
        await asyncio.gather(running, kept)
        assert scorer.batches == [["first"], ["kept"]]

    run(test)


def test_a_request_given_up_while_its_batch_runs_leaves_the_others_their_own_answers() -> None:
    scorer = HeldScorer()
    batcher = Batcher(scorer, max_batch_size=64, max_latency_s=10)

    async def test() -> None:
        scorer.release.clear()
        first = asyncio.ensure_future(batcher.submit(["a"]))
        await _started(scorer, 1)
        b = asyncio.ensure_future(batcher.submit(["b1", "b2"]))
        c = asyncio.ensure_future(batcher.submit(["c"]))
        d = asyncio.ensure_future(batcher.submit(["d1", "d2"]))
        await asyncio.sleep(0.01)
        scorer.release.set()  # the held batch goes on; the next one waits again
        scorer.release.clear()
        await _started(scorer, 2)
        c.cancel()
        scorer.release.set()

        assert [p.label for p in await first] == ["a"]
        assert [p.label for p in await b] == ["b1", "b2"]
        assert [p.label for p in await d] == ["d1", "d2"]
        assert scorer.batches[1] == ["b1", "b2", "c", "d1", "d2"]

    run(test)
