"""A daemon thread that calls a function every few seconds until stopped.

The model poller, the job runner and a training job's heartbeat all need one;
an exception is logged and the next tick tries again, because each of them
reads shared state (the database) that may blink.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)


class Periodic:
    def __init__(self, name: str, every: float, tick: Callable[[], object]) -> None:
        self.name = name
        self.every = every
        self.tick = tick
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name=self.name, daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=timeout)

    def wait(self, seconds: float) -> bool:
        """Sleep up to `seconds`; True if `stop` was called meanwhile."""
        return self._stop.wait(seconds)

    def wake(self) -> None:
        """Tick now rather than at the end of the current wait (a running tick finishes first)."""
        self._wake.set()

    def _loop(self) -> None:
        while True:
            self._wake.wait(self.every)
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                self.tick()
            except Exception:
                log.exception("%s failed; trying again in %g s", self.name, self.every)
