"""BentoML's adaptive batching without the wait it learns from queueing.

BentoML's `CorkDispatcher` holds a lone request back for `Optimizer.wait`, the
average time the first request of recent batches spent in the queue. Under load
that time is mostly the wait for the batch in flight (one runs at a time), so
after a burst every request sent alone is held for about as long as a loaded
batch took, and the average decays by ~5% per 5-second refresh: measured here,
c=1 fell from 142 to 5-8 texts/s (p50 6 ms -> 120-200 ms) for minutes after a
c=64 burst (bench/SERVING.md).

Waiting buys this service nothing: every text runs through ONNX Runtime on its
own (service.runtime), so a batch costs the sum of its texts whatever its size;
batching only saves per-call overhead, and under load batches fill by
themselves while the previous one runs. So the learned wait is pinned at zero;
everything else (batch size cap, max-latency shedding, one batch in flight)
stays BentoML's. `bentoml` is pinned exactly in pyproject.toml because this
reaches a private module; tests/service/test_batching.py fails if it moves.
"""

from __future__ import annotations

from bentoml._internal.marshal import dispatcher


class NoWaitOptimizer(dispatcher.Optimizer):
    """BentoML's batch-cost model with the learned corking wait held at zero."""

    def trigger_refresh(self) -> None:
        super().trigger_refresh()
        self.wait = 0


def dispatch_without_learned_wait() -> None:
    """Make every CorkDispatcher built from now on use `NoWaitOptimizer`.

    Call before BentoML builds the service's ASGI app (i.e. at import of the
    service module), which is when the dispatchers are created.
    """
    dispatcher.Optimizer = NoWaitOptimizer  # type: ignore[misc]  # a module global, by design
