"""Even out keep-alive connections over the server's workers.

BentoML's workers share one listening socket, and the kernel gives a new
connection to whichever worker accepts first; a client that opens its pool in
one burst can so put most of its connections on one worker, whose core then
saturates while the other idles (docs/DESIGN.md #2 has the measurement).

Each worker counts the connections that sent it a request in the last
`WINDOW_S` and publishes the count in its slot of a small file the server's
workers share (`Counts`). A worker holding at least two more than the
least-loaded one answers a request with `Connection: close` (one every
`CLOSE_INTERVAL_S` at most, so the counts catch up between closes); the
client's next request opens a new connection, which a less busy worker,
waiting in accept, usually wins. HTTP/1.1 clients reconnect by themselves: no
request fails.
"""

from __future__ import annotations

import atexit
import logging
import mmap
import os
import struct
import tempfile
import time
from pathlib import Path

import bentoml
from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger(__name__)

WINDOW_S = 1.0
CLOSE_INTERVAL_S = 0.05
PRUNE_INTERVAL_S = 0.1
CLOSE = (b"connection", b"close")
# Per worker: how many client connections it serves, and when it counted them
# (time.monotonic(), the same clock in every process of the machine).
SLOT = struct.Struct("dd")


def shared_path() -> Path:
    """One file per server, named by the workers' parent (BentoML's arbiter)."""
    return Path(tempfile.gettempdir()) / f"selftune-connections-{os.getppid()}"


class Counts:
    """This worker's `slot` among `workers` in the server's shared file of connection counts."""

    def __init__(self, slot: int, workers: int, path: Path | None = None) -> None:
        if not 0 <= slot < workers:
            raise ValueError(f"worker slot {slot} is outside 0..{workers - 1}")
        self.path = path or shared_path()
        self.slot, self.workers = slot, workers
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            if os.fstat(fd).st_size < workers * SLOT.size:
                os.ftruncate(fd, workers * SLOT.size)
            self._slots = mmap.mmap(fd, workers * SLOT.size)
        finally:
            os.close(fd)

    def publish(self, connections: int) -> None:
        """How many connections this worker serves now."""
        SLOT.pack_into(self._slots, self.slot * SLOT.size, connections, time.monotonic())

    def others(self, max_age_s: float) -> list[int]:
        """The other workers' connections; 0 for one that counted none in `max_age_s`: a
        worker no request reaches serves none."""
        since = time.monotonic() - max_age_s
        fields = struct.unpack_from(SLOT.format * self.workers, self._slots)
        counts = zip(fields[0::2], fields[1::2], strict=True)
        return [int(n) if at >= since else 0 for k, (n, at) in enumerate(counts) if k != self.slot]

    def close(self) -> None:
        """At shutdown: remove the file (workers that still run keep their mapping)."""
        self.path.unlink(missing_ok=True)


def worker_counts(worker_index: int | None, workers: int) -> Counts | None:
    """The shared counts of BentoML's worker `worker_index` (1-based); None with a single
    worker, outside a server, or where the file cannot be made (nothing is balanced)."""
    if not worker_index or workers < 2:
        return None
    try:
        return Counts(worker_index - 1, workers)
    except (OSError, ValueError) as exc:
        log.warning("connections are not balanced: cannot share %s: %s", shared_path(), exc)
        return None


class ConnectionBalancer:
    """ASGI middleware: close a connection now and then while this worker holds more than
    its share (see the module docstring); with one worker it only passes requests on.

    Built in each worker, when BentoML builds the worker's app: BentoML's
    `server_context` names the worker then. The shared file goes when the worker exits.
    """

    def __init__(self, app: ASGIApp, workers: int) -> None:
        self.app = app
        self.counts = worker_counts(bentoml.server_context.worker_index, workers)
        if self.counts is not None:
            atexit.register(self.counts.close)
        self._seen: dict[tuple[str, int], float] = {}  # client address -> last request
        self._pruned = 0.0
        self._closed = 0.0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        client = scope.get("client") if scope["type"] == "http" else None
        if client is None or self.counts is None or not self._should_close(tuple(client)):
            await self.app(scope, receive, send)
            return

        async def closing(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", ()), CLOSE]}
            await send(message)

        await self.app(scope, receive, closing)

    def _should_close(self, client: tuple[str, int]) -> bool:
        assert self.counts is not None
        now = time.monotonic()
        self._seen[client] = now
        if now - self._pruned >= PRUNE_INTERVAL_S:
            self._seen = {c: at for c, at in self._seen.items() if at >= now - WINDOW_S}
            self._pruned = now
        others = self.counts.others(WINDOW_S)
        close = (
            bool(others)
            and len(self._seen) - min(others) >= 2
            and now - self._closed >= CLOSE_INTERVAL_S
        )
        if close:
            del self._seen[client]
            self._closed = now
        self.counts.publish(len(self._seen))
        return close
