"""What a busy labeling team sends, against a real server on SQLite and on PostgreSQL:
bad batches reverted, retried intakes at once, local times, text a database cannot store.

One server per backend for the module (its own copy of the tiny model, admin API on); each
test uses texts of its own, so they share the store without seeing each other's rows.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.helpers import AUTH, serve_copy
from tests.pg import PostgresServer


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def admin(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    tiny_version: str,
    bentoml_home: Path,
) -> Iterator[httpx.Client]:
    env = {}
    if request.param == "postgresql":
        postgres: PostgresServer = request.getfixturevalue("postgres")
        env["DATABASE_URL"] = postgres.create_database(f"http_{uuid.uuid4().hex[:12]}")
    root = tmp_path_factory.mktemp(f"examples-{request.param}")
    with (
        serve_copy(root, tiny_version, bentoml_home, env) as server,
        httpx.Client(base_url=server.url, headers=AUTH, timeout=60) as client,
    ):
        yield client


def post(client: httpx.Client, rows: dict[str, str], source: str, **extra: Any) -> Any:
    body = {"examples": [{"text": t, "label": label} for t, label in rows.items()]}
    response = client.post("/examples", json={**body, "source": source, **extra})
    assert response.status_code == 200, response.text
    return response.json()


def stored(client: httpx.Client, texts: list[str]) -> dict[str, tuple[str, str]]:
    """The label and source of each of `texts` as stored now."""
    items = client.get("/examples", params={"limit": 1000}).json()["items"]
    return {e["text"]: (e["label"], e["source"]) for e in items if e["text"] in texts}


def test_a_bad_relabel_batch_is_reverted_and_every_label_is_as_before(
    admin: httpx.Client,
) -> None:
    """The labeling tool's sequence: create, relabel by another source, revert, relabel again."""
    rows = {"the soup was lovely": "positive", "the bus was late again": "negative"}
    texts = list(rows)
    post(admin, rows, "orig")
    before = stored(admin, texts)
    flipped = {"the soup was lovely": "negative", "the bus was late again": "positive"}
    bad = post(admin, flipped, "bad-batch", on_conflict="relabel")
    assert bad["relabeled"] == 2

    response = admin.delete("/examples", params={"source": "bad-batch", "reason": "wrong tool"})

    assert response.status_code == 200, response.text
    reverted = response.json()
    assert (reverted["deleted"], reverted["restored"], reverted["kept"]) == (0, 2, [])
    assert reverted["revisions"] == [bad["revision"]]
    assert stored(admin, texts) == before
    again = post(admin, {"the soup was lovely": "neutral"}, "good-batch", on_conflict="relabel")
    assert again["relabeled"] == 1
    assert stored(admin, texts)["the soup was lovely"] == ("neutral", "good-batch")


def test_a_correction_made_after_the_bad_batch_is_kept_and_named(admin: httpx.Client) -> None:
    post(admin, {"a quiet calm morning": "neutral", "a calm quiet evening": "neutral"}, "seed")
    post(admin, {"a quiet calm morning": "negative", "a calm quiet evening": "negative"},
         "sloppy", on_conflict="relabel")  # fmt: skip
    [row] = [
        e
        for e in admin.get("/examples", params={"source": "sloppy"}).json()["items"]
        if e["text"] == "a quiet calm morning"
    ]
    fixed = admin.patch(f"/examples/{row['id']}", json={"label": "positive", "source": "person"})
    assert fixed.status_code == 200 and fixed.json()["source"] == "person"

    reverted = admin.delete("/examples", params={"source": "sloppy"}).json()

    assert reverted["restored"] == 1 and reverted["kept_count"] == 1
    assert reverted["kept"] == [
        {
            "id": row["id"],
            "label": "positive",
            "source": "person",
            "revision": reverted["kept"][0]["revision"],
        }
    ]
    assert stored(admin, ["a quiet calm morning", "a calm quiet evening"]) == {
        "a quiet calm morning": ("positive", "person"),
        "a calm quiet evening": ("neutral", "seed"),
    }


def test_one_write_is_reverted_by_its_revision_and_an_unknown_one_is_a_404(
    admin: httpx.Client,
) -> None:
    first = post(admin, {"one sunny walk": "positive"}, "daily-tool")
    second = post(admin, {"two rainy walks": "negative"}, "daily-tool")

    reverted = admin.delete(
        "/examples", params={"source": "daily-tool", "revision": second["revision"]}
    ).json()
    missing = admin.delete("/examples", params={"source": "daily-tool", "revision": 10**9})

    assert (reverted["deleted"], reverted["revisions"]) == (1, [second["revision"]])
    assert stored(admin, ["one sunny walk", "two rainy walks"]) == {
        "one sunny walk": ("positive", "daily-tool")
    }
    assert first["revision"] < second["revision"]
    assert missing.status_code == 404
    assert "each POST /examples answer names its revision" in missing.json()["error"]


async def _intake_at_once(url: str, body: dict[str, Any], n: int) -> list[httpx.Response]:
    async with httpx.AsyncClient(base_url=url, headers=AUTH, timeout=60) as client:
        return await asyncio.gather(*(client.post("/examples", json=body) for _ in range(n)))


def test_identical_intakes_at_once_all_succeed_and_store_each_text_once(
    admin: httpx.Client,
) -> None:
    """A client retrying a slow request (before: the second copy hit UNIQUE and answered 500)."""
    for round_ in range(3):
        texts = [f"retried text {round_} number {i}" for i in range(40)]
        body = {
            "examples": [{"text": t, "label": "positive"} for t in texts],
            "source": f"retry-{round_}",
        }

        answers = asyncio.run(_intake_at_once(str(admin.base_url), body, 8))

        assert [a.status_code for a in answers] == [200] * 8, [a.text for a in answers]
        counts = sorted((a.json()["accepted"], a.json()["duplicates"]) for a in answers)
        assert counts == [(0, 40)] * 7 + [(40, 0)]  # the copies say they were duplicates
        assert len(stored(admin, texts)) == 40


@pytest.mark.parametrize("offset", ["+05:00", "Z"])
def test_since_with_any_offset_finds_what_was_stored_after_it(
    admin: httpx.Client, offset: str
) -> None:
    source = f"sync-{offset}"
    post(admin, {f"synced just now {offset}": "neutral"}, source)
    zone = timezone(timedelta(hours=5)) if offset == "+05:00" else UTC
    ten_minutes_ago = (datetime.now(UTC) - timedelta(minutes=10)).astimezone(zone)
    since = ten_minutes_ago.isoformat().replace("+00:00", "Z")
    assert since.endswith(offset)

    found = admin.get("/examples", params={"source": source, "since": since}).json()["items"]
    later = (ten_minutes_ago + timedelta(minutes=20)).isoformat().replace("+00:00", "Z")
    none = admin.get("/examples", params={"source": source, "since": later}).json()["items"]

    assert [e["text"] for e in found] == [f"synced just now {offset}"]
    assert none == []


@pytest.mark.parametrize(
    ("example", "where", "why"),
    [
        ({"text": "a nul\u0000inside", "label": "positive"}, "examples[1].text", "U+0000"),
        ({"text": "fine words", "label": "posi\u0000tive"}, "examples[1].label", "U+0000"),
        ({"text": "fine words", "label": "\u200b"}, "examples[1].label", "no visible character"),
    ],
)
def test_text_a_database_cannot_store_is_a_422_naming_the_row(
    admin: httpx.Client, example: dict[str, str], where: str, why: str
) -> None:
    body = {"examples": [{"text": "a perfectly fine row", "label": "positive"}, example]}

    response = admin.post("/examples", json=body)

    assert response.status_code == 422, response.text
    [detail] = response.json()["details"]
    assert detail["loc"] == where and why in detail["msg"]
    assert stored(admin, ["a perfectly fine row"]) == {}  # nothing of the request was stored


def test_a_nul_in_a_query_is_a_422_not_a_database_error(admin: httpx.Client) -> None:
    for response in (
        admin.get("/examples", params={"source": "to\u0000l"}),
        admin.delete("/examples", params={"source": "to\u0000l"}),
    ):
        assert response.status_code == 422, response.text
        assert "U+0000" in response.json()["error"]
