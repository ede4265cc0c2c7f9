"""The one model a worker serves right now, and how it changes without a restart.

BentoML has no model-reload API and an HTTP call reaches one arbitrary worker,
so every worker polls which version should be active and swaps by itself
(docs/DESIGN.md #5). A swap loads and warms the new `Classifier` beside the
old one and then replaces a single reference; a batch reads that reference
once, so batches already running finish on the old model and no request fails
during a swap.

Which version is active is a question for the `resolver` callable: the
database's active-version record (`active_version_resolver`), which promotion,
activation and rollback move.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from core import registry
from core.periodic import Periodic
from core.registry import ModelVersion
from core.runtime import Classifier
from store import Store, versions

log = logging.getLogger(__name__)

# Texts of several lengths, so warm-up touches the shapes real traffic uses
# before the model takes its first request.
WARMUP_TEXTS = (
    "ok",
    "the service was good and the food was great",
    " ".join(["the movie was long, the day was sad, and the food was not that good"] * 4),
)

Resolver = Callable[[], str | None]
"""Returns the `name:version` tag that should be served, or None when there is none yet."""


class NoModelError(RuntimeError):
    """No version is loaded yet: the service is up but cannot classify."""


@dataclass(frozen=True)
class LoadedModel:
    """A version and its loaded classifier: read together so they can never disagree."""

    version: ModelVersion
    classifier: Classifier
    version_id: str  # `version.version`, read by every batch: worked out once

    @classmethod
    def of(cls, version: ModelVersion, classifier: Classifier) -> LoadedModel:
        return cls(version, classifier, version.version)


def active_version_resolver(store: Store, model_name: str) -> Resolver:
    """Serve the store's active-version record; with none yet, adopt the newest trained version.

    Adoption covers a store filled by `python -m training fit` before the
    service ever ran: that version becomes the active record (once,
    atomically, whichever worker gets there first), and from then on only
    promotion, activation and rollback move it. A retrain's output (it names
    the version it was to replace as `parent`) is never adopted: its gate
    decision lives in the database, and with a fresh or lost database it may be
    a rejected candidate. Such versions stay listed for POST /models/{v}/activate.
    """

    def resolve() -> str | None:
        with store.transaction() as tx:
            tag = versions.active_tag(tx, model_name)
        if tag is not None:
            return tag
        trained = (v for v in registry.list_versions(model_name) if not v.metadata.get("parent"))
        newest = next(trained, None)
        return versions.adopt_if_none(store, model_name, newest.tag) if newest else None

    return resolve


class ModelHolder:
    """Holds the (version, classifier) pair a worker serves and refreshes it from `resolver`.

    `current()` is what predictions call; it is one attribute read, safe from
    any thread. `refresh()` is called by the poller thread (and once at start
    up) and is the only writer.
    """

    def __init__(
        self,
        resolver: Resolver,
        threads: int,
        poll_seconds: float,
        spin: bool = True,
    ) -> None:
        self._resolver = resolver
        self._threads = threads
        self._spin = spin
        self._loaded: LoadedModel | None = None
        self._failed_tag: str | None = None
        self._poller = Periodic("model-poller", poll_seconds, self.refresh)
        self._on_swap: list[Callable[[LoadedModel, LoadedModel | None], None]] = []

    @property
    def ready(self) -> bool:
        return self._loaded is not None

    def current(self) -> LoadedModel:
        """The model to score the next batch with; raises NoModelError before the first load."""
        loaded = self._loaded
        if loaded is None:
            raise NoModelError("no model version is loaded yet")
        return loaded

    def on_swap(self, callback: Callable[[LoadedModel, LoadedModel | None], None]) -> None:
        """Call `callback(new, old)` after every swap (metrics use it to move the version gauge)."""
        self._on_swap.append(callback)

    def refresh(self) -> bool:
        """Load the resolver's version if it is not the one served; returns True on a swap.

        A version that fails to load is logged and skipped until the resolver
        names another one, so a broken artifact neither takes the worker down
        nor gets reloaded on every poll.
        """
        tag = self._resolver()
        old = self._loaded
        if tag is None or (old is not None and old.version.tag == tag) or tag == self._failed_tag:
            return False
        try:
            new = self._load(tag)
        except Exception:
            log.exception("model=%s failed to load; still serving %s", tag, old and old.version.tag)
            self._failed_tag = tag
            return False
        self._loaded = new
        log.info("model=%s now serving (was %s)", tag, old and old.version.tag)
        for callback in self._on_swap:
            callback(new, old)
        return True

    def _load(self, tag: str) -> LoadedModel:
        version = registry.get(tag)
        classifier = Classifier(version.path, version.max_length, self._threads, spin=self._spin)
        classifier.score(WARMUP_TEXTS)
        return LoadedModel.of(version, classifier)

    def start(self) -> None:
        """Load what is active now, then keep polling in a daemon thread."""
        self.refresh()
        self._poller.start()

    def stop(self) -> None:
        self._poller.stop()

    def wake(self) -> None:
        """Ask the resolver now: a retrain this worker watched may have promoted a version."""
        self._poller.wake()
