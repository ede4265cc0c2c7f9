"""BentoML's adaptive batching without the wait it learns from queueing.

Its learned wait held lone requests 120-200 ms for minutes after a burst, and
buys nothing when a batch costs the sum of its texts (docs/DESIGN.md #4).
`bentoml` is pinned exactly: this reaches a private module, and
tests/service/test_batching.py fails if it moves.
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
