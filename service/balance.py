"""Even out keep-alive connections over the server's workers.

BentoML's workers share one listening socket, and the kernel gives a new
connection to whichever worker accepts first. A client that opens its pool in
one burst can so put 60 of its 64 connections on one worker: that worker's
core saturates, the other idles, and the server runs at half speed
(bench/SERVING.md, 2026-12-01 sixth session: 156 against 324 texts/s).

Each worker counts the connections that sent it a request in the last
`WINDOW_S` and publishes the count in the server's activity file
(`core.activity`). A worker holding at least two more than the least-loaded
one answers a request with `Connection: close` (one every `CLOSE_INTERVAL_S`
at most, so the counts catch up between closes); the client's next request
opens a new connection, which a less busy worker, waiting in accept, usually
wins. HTTP/1.1 clients reconnect by themselves: no request fails.
"""

from __future__ import annotations

import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.activity import this_worker_activity

WINDOW_S = 1.0
CLOSE_INTERVAL_S = 0.05
PRUNE_INTERVAL_S = 0.1
CLOSE = (b"connection", b"close")


class ConnectionBalancer:
    """ASGI middleware: close a connection now and then while this worker holds more than
    its share (see the module docstring); with one worker it only passes requests on."""

    def __init__(self, app: ASGIApp, workers: int) -> None:
        self.app = app
        self.workers = workers
        self._seen: dict[tuple[str, int], float] = {}  # client address -> last request
        self._pruned = 0.0
        self._closed = 0.0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        client = scope.get("client") if scope["type"] == "http" else None
        if client is None or self.workers < 2 or not self._should_close(tuple(client)):
            await self.app(scope, receive, send)
            return

        async def closing(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", ()), CLOSE]}
            await send(message)

        await self.app(scope, receive, closing)

    def _should_close(self, client: tuple[str, int]) -> bool:
        activity = this_worker_activity()  # made on the first request, in the worker
        if activity is None:
            return False
        now = time.monotonic()
        self._seen[client] = now
        if now - self._pruned >= PRUNE_INTERVAL_S:
            self._seen = {c: at for c, at in self._seen.items() if at >= now - WINDOW_S}
            self._pruned = now
        others = activity.others_connections(self.workers, WINDOW_S)
        close = (
            bool(others)
            and len(self._seen) - min(others) >= 2
            and now - self._closed >= CLOSE_INTERVAL_S
        )
        if close:
            del self._seen[client]
            self._closed = now
        activity.count_connections(len(self._seen))
        return close
