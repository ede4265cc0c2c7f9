"""Uncertainty sampling of served texts into the review queue (`store.review`), opt-in.

The model thread, after each batch, considers REVIEW_SAMPLE_RATE of its texts
and keeps the least sure (smallest margin between the two top scores) in a
bounded in-memory buffer, REVIEW_CAPACITY at most; the job-runner poll hands
the buffer to the store. So the predict path does no database work and at
most a few microseconds of Python per batch, and nothing at all when the
queue is off.
"""

from __future__ import annotations

import heapq
import random
import threading
from collections.abc import Sequence
from datetime import timedelta

import numpy as np
import numpy.typing as npt

from core.text import text_hash
from service.settings import Settings
from store import Store, review
from store.db import utcnow
from store.review import Candidate


class ReviewSampler:
    """One worker's buffer of candidate texts for the review queue."""

    def __init__(self, settings: Settings, seed: int | None = None) -> None:
        self.enabled = settings.review_queue
        self.rate = settings.review_sample_rate
        self.capacity = settings.review_capacity
        self.ttl = timedelta(hours=settings.review_ttl_hours)
        self._random = random.Random(seed)
        self._heap: list[tuple[float, str]] = []  # (-margin, text hash): the surest on top
        self._buffered: dict[str, Candidate] = {}
        self._lock = threading.Lock()

    def observe(
        self,
        texts: Sequence[str],
        probabilities: npt.NDArray[np.floating],
        labels: Sequence[str],
        version_id: str,
    ) -> None:
        """Model thread, after a batch: sample its texts and keep the least sure."""
        chosen = [i for i in range(len(texts)) if self._random.random() < self.rate]
        if not chosen:
            return
        picked = probabilities[chosen]
        top_two = np.sort(picked, axis=1)[:, -2:]
        margins = (top_two[:, -1] - top_two[:, 0]).tolist()
        winners = picked.argmax(axis=1).tolist()
        now = utcnow()
        with self._lock:
            for i, margin, winner in zip(chosen, margins, winners, strict=True):
                key = text_hash(texts[i])
                if key in self._buffered:
                    continue
                if len(self._heap) < self.capacity:
                    heapq.heappush(self._heap, (-margin, key))
                elif -margin > self._heap[0][0]:
                    del self._buffered[heapq.heapreplace(self._heap, (-margin, key))[1]]
                else:
                    continue
                self._buffered[key] = Candidate(
                    text_hash=key, text=texts[i], label=labels[winner], margin=round(margin, 6),
                    model_version=version_id, created_at=now,
                )  # fmt: skip

    def start(self, store: Store) -> None:
        """With the queue off, what an earlier run kept is dropped: it is user text."""
        if not self.enabled:
            with store.transaction() as tx:
                review.clear(tx)

    def flush(self, store: Store) -> None:
        """Job-runner poll: offer the buffer to the store's queue, and start a new one."""
        if not self.enabled:
            return
        with self._lock:
            taken, self._buffered, self._heap = self._buffered, {}, []
        with store.transaction() as tx:
            review.offer(tx, list(taken.values()), self.capacity, self.ttl)
