"""Keep-alive connections end up spread over the workers, whichever worker accepted them."""

from __future__ import annotations

import asyncio
import logging
import tempfile
import time
from pathlib import Path

import httpx
import psutil
import pytest

from service.balance import Counts, worker_counts
from tests.helpers import Server

CONNECTIONS = 8
LOAD_S = 3.0


def _workers(server: Server) -> list[psutil.Process]:
    children = psutil.Process(server.pid).children(recursive=True)
    return [p for p in children if "_bentoml_impl.worker.service" in " ".join(p.cmdline())]


def _client_ports(worker: psutil.Process, port: int) -> set[int]:
    """The client-side ports of the connections `worker` has accepted on `port`."""
    return {
        c.raddr.port
        for c in worker.net_connections("tcp")
        if c.status == psutil.CONN_ESTABLISHED and c.laddr.port == port and c.raddr
    }


async def _load(server: Server, workers: list[psutil.Process]) -> tuple[list[int], ...]:
    """Open CONNECTIONS connections while only the first worker can accept, then send
    requests on them from CONNECTIONS clients for LOAD_S with both workers running."""
    before = [_client_ports(w, server.port) for w in workers]  # other tests' connections

    def ours() -> list[int]:
        now = [_client_ports(w, server.port) for w in workers]
        return [len(n - b) for n, b in zip(now, before, strict=True)]

    limits = httpx.Limits(max_connections=CONNECTIONS, max_keepalive_connections=CONNECTIONS)
    async with httpx.AsyncClient(base_url=server.url, limits=limits, timeout=30) as http:

        async def one(i: int) -> int:
            reply = await http.post("/predict", json={"texts": [f"a good day number {i}"]})
            return reply.status_code

        workers[1].suspend()
        try:
            statuses = list(await asyncio.gather(*(one(i) for i in range(CONNECTIONS))))
            piled = ours()
        finally:
            workers[1].resume()
        deadline = time.monotonic() + LOAD_S

        async def client(k: int) -> None:
            while time.monotonic() < deadline:
                statuses.append(await one(k))

        await asyncio.gather(*(client(k) for k in range(CONNECTIONS)))
        spread = ours()
    return statuses, piled, spread


def test_connections_piled_on_one_worker_spread_over_both(server: Server) -> None:
    workers = _workers(server)
    assert len(workers) == 2, workers
    statuses, piled, spread = asyncio.run(_load(server, workers))
    # While the second worker was stopped, the first accepted every connection.
    assert piled[0] > 0 and piled[1] == 0, piled
    # Then the first closed some after answering (Connection: close), and the clients'
    # new connections reached the second: about half each, and no request failed.
    assert min(spread) >= CONNECTIONS // 2 - 1, spread
    assert set(statuses) == {200}, sorted(set(statuses))


def test_a_worker_sees_the_others_connections_until_they_go_quiet(tmp_path: Path) -> None:
    path = tmp_path / "connections"
    first, second, third = Counts(0, 3, path), Counts(1, 3, path), Counts(2, 3, path)
    first.publish(5)
    second.publish(3)
    assert third.others(max_age_s=1) == [5, 3]
    assert first.others(max_age_s=1) == [3, 0]  # the third never counted
    time.sleep(0.2)
    assert third.others(max_age_s=0.1) == [0, 0]  # no requests lately
    first.close()
    assert not path.exists()
    with pytest.raises(ValueError, match="outside"):
        Counts(3, 3, path)


def test_only_a_worker_of_several_that_can_share_its_counts_balances(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    assert worker_counts(None, 2) is None  # not a BentoML worker
    assert worker_counts(1, 1) is None  # the only worker: nothing to even out
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    counts = worker_counts(2, 2)
    assert counts is not None and counts.path.parent == tmp_path and counts.slot == 1
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "missing"))
    with caplog.at_level(logging.WARNING):
        assert worker_counts(2, 2) is None
    assert "connections are not balanced: cannot share" in caplog.text
