"""This BentoML worker's slot in its server's activity file (`core.activity`)."""

from __future__ import annotations

import functools
import logging

import bentoml

from core.activity import Activity, shared_path

log = logging.getLogger(__name__)


def worker_activity() -> Activity | None:
    """This BentoML worker's slot in its server's activity file; None outside a server,
    or where the file cannot be made (lone texts then stay on the worker's threads, and
    connections are not balanced)."""
    index = bentoml.server_context.worker_index
    if not index:
        return None
    try:
        return Activity(index - 1)
    except (OSError, ValueError) as exc:  # no temp dir to share; more workers than SLOTS
        log.warning("lone texts stay on one worker's threads and connections are not "
                    "balanced: cannot share %s: %s", shared_path(), exc)  # fmt: skip
        return None


@functools.cache
def this_worker_activity() -> Activity | None:
    """The one `worker_activity()` of this process, which the model holder (lone texts)
    and the connection balancer share."""
    return worker_activity()
