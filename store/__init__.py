"""The durable store shared by serving and retraining: examples, jobs, versions.

Use it as `with open_store(url).transaction() as tx:` and the functions of
`store.examples`, `store.jobs` and `store.versions`, each taking `tx`: one
explicit unit of work, committed when the block ends.
"""

from __future__ import annotations

from functools import lru_cache

from store.db import Store


@lru_cache(maxsize=8)
def open_store(url: str) -> Store:
    """One Store (and connection pool) per URL per process."""
    return Store(url)


__all__ = ["Store", "open_store"]
