"""Batching over real HTTP must never mix up or alter answers."""

from __future__ import annotations

import asyncio

import httpx

from tests.helpers import Server, mixed_texts, scrape

CROWD = 96


def test_a_crowd_gets_the_same_answers_as_single_requests(
    client: httpx.Client, server: Server
) -> None:
    texts = mixed_texts(CROWD, seed=7)
    alone = [client.post("/predict", json={"texts": [t]}).json()[0] for t in texts]
    batches_before = scrape(client)

    async def crowd(requests: list[list[str]]) -> list[list[dict[str, object]]]:
        limits = httpx.Limits(max_connections=CROWD)
        async with httpx.AsyncClient(base_url=server.url, timeout=60, limits=limits) as http:
            replies = await asyncio.gather(
                *(http.post("/predict", json={"texts": r}) for r in requests)
            )
        assert [r.status_code for r in replies] == [200] * len(replies)
        return [r.json() for r in replies]

    # 64 single-text requests and 8 of four texts, all at once, so batches mix sizes.
    requests = [[t] for t in texts[:64]] + [texts[i : i + 4] for i in range(64, CROWD, 4)]
    together = [answer for reply in asyncio.run(crowd(requests)) for answer in reply]
    batches_after = scrape(client)

    # The crowd really was batched: fewer batches than requests.
    batches = (
        batches_after["selftune_inference_batch_size_count"]
        - batches_before["selftune_inference_batch_size_count"]
    )
    assert batches < len(requests)
    assert len(together) == CROWD
    # Bit-identical: the served int8 is static, so a text's run mates cannot move its logits.
    assert together == alone
