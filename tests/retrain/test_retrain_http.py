"""Continual retraining over HTTP, against a real server and store: what an incremental
retrain trains on, new labels, corrections and deletions, poison rows, compare-and-swap.

The first version is a CLI fit (no store snapshot), so the module starts with a refit
through the service; every test after it builds on a store-backed active version.
"""

from __future__ import annotations

import random
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from core import registry
from core.text import EVAL_FRACTION, in_eval_split
from tests.helpers import (
    AUTH,
    Retrainer,
    read_examples,
    served_version,
    wait_for_job,
    wait_for_version,
    wait_until,
)
from tests.tiny_model import FILLER, NEGATIVE, POSITIVE

REPLAY = {"REPLAY_RATIO": "2", "REPLAY_MIN": "40", "REPLAY_MAX": "120"}


@pytest.fixture(scope="module")
def trainer(
    tiny_base_model: Path, sentiment_csv: Path, tmp_path_factory: pytest.TempPathFactory
) -> Retrainer:
    root = tmp_path_factory.mktemp("incremental")
    # The rollback test goes back to the first version: retention must not have taken it.
    extra = REPLAY | {"INCREMENTAL_EPOCHS": "6", "RETAIN_VERSIONS": "100"}
    return Retrainer(root, "tiny-incremental", tiny_base_model, sentiment_csv, extra)


@pytest.fixture(scope="module")
def http(trainer: Retrainer, sentiment_csv: Path) -> Iterator[httpx.Client]:
    with trainer.serve() as server:
        wait_until(f"{server.url}/readyz", 200)
        with httpx.Client(base_url=server.url, timeout=30) as client:
            stored = client.post(
                "/examples",
                headers=AUTH,
                json={"examples": read_examples(sentiment_csv), "source": "seed"},
            )
            assert stored.status_code == 200, stored.text
            job = retrain(client, mode="auto")
            assert job["mode"] == "refit" and "not trained from the store" in job["mode_reason"]
            assert job["state"] == "succeeded", job
            wait_for_version(client, job["candidate_version"].split(":")[1])
            yield client


def retrain(client: httpx.Client, **body: Any) -> dict[str, Any]:
    started = client.post("/retrain", headers=AUTH, json=body)
    assert started.status_code == 202, started.text
    return wait_for_job(client, started.json()["job_id"])


def texts(words: list[str], n: int, seed: int, marker: str) -> list[str]:
    rng = random.Random(seed)
    out: set[str] = set()
    while len(out) < n:
        out.add(" ".join([marker, *rng.sample(FILLER, 3), rng.choice(words)]))
    return sorted(out)


def test_incremental_trains_on_exactly_the_new_rows_plus_replay(http: httpx.Client) -> None:
    new = [{"text": t, "label": "positive"} for t in texts(POSITIVE, 30, 1, "fresh")]
    new += [{"text": t, "label": "negative"} for t in texts(NEGATIVE, 30, 2, "fresh")]
    assert http.post("/examples", headers=AUTH, json={"examples": new}).status_code == 200
    # A correction and a deletion count as changes too: the corrected row is new data.
    page = http.get("/examples", headers=AUTH, params={"source": "seed", "limit": 2}).json()
    first, second = page["items"]
    assert page["next_cursor"] == str(second["id"])
    flipped = "negative" if first["label"] != "negative" else "positive"
    patched = http.patch(f"/examples/{first['id']}", headers=AUTH, json={"label": flipped})
    assert patched.status_code == 200 and patched.json()["label"] == flipped
    assert http.delete(f"/examples/{second['id']}", headers=AUTH).json() == {"deleted": 1}
    assert http.get(f"/examples/{second['id']}", headers=AUTH).status_code == 404

    job = retrain(http, mode="incremental")

    assert job["state"] in ("succeeded", "rejected"), job
    assert job["mode"] == "incremental"
    changed = [r["text"] for r in new] + [first["text"]]
    new_train = sum(not in_eval_split(t, EVAL_FRACTION) for t in changed)
    assert job["new_examples"] == len(changed)
    replay = min(120, max(40, 2 * new_train))
    assert job["replayed_examples"] == replay
    assert job["trained_examples"] == new_train + replay
    assert set(job["phases"]) >= {"start", "plan", "fit", "gate"}
    assert job["gate"]["new"]["texts"] + job["gate"]["old"]["texts"] == job["gate"]["all"]["texts"]


def test_a_new_label_extends_the_head(http: httpx.Client) -> None:
    rows = [{"text": t, "label": "question"} for t in texts(["why", "how", "what"], 40, 3, "ask")]
    refused = http.post("/examples", headers=AUTH, json={"examples": rows})
    assert refused.status_code == 409 and "allow_new_labels" in refused.text

    job = retrain(http, mode="auto", examples=rows, allow_new_labels=True)

    assert job["mode"] == "incremental", job
    models = http.get("/models", headers=AUTH).json()
    candidate = next(v for v in models["versions"] if v["tag"] == job["candidate_version"])
    assert candidate["labels"] == ["negative", "neutral", "positive", "question"]
    assert job["metrics"]["candidate"]["per_class"]["question"]["support"] > 0


def test_a_poison_row_is_skipped_and_named_and_the_job_still_decides(
    http: httpx.Client, trainer: Retrainer
) -> None:
    refused = http.post(
        "/examples", headers=AUTH, json={"examples": [{"text": "\u001c", "label": "positive"}]}
    )
    assert refused.status_code == 422 and "text is empty" in refused.text
    # A row stored by an older release, which intake would refuse today.
    with sqlite3.connect(trainer.state / "service.db") as db:
        db.execute(
            "INSERT INTO examples (text_hash, text, label, source, created_at, updated_at, "
            "revision) VALUES ('poison', '', 'positive', 'old', '2026-01-01 00:00:00.000000', "
            "'2026-01-01 00:00:00.000000', 0)"
        )
        poison_id = db.execute("SELECT id FROM examples WHERE text_hash = 'poison'").fetchone()[0]
    more = [{"text": t, "label": "positive"} for t in texts(POSITIVE, 10, 4, "later")]

    job = retrain(http, mode="incremental", examples=more)

    assert job["state"] in ("succeeded", "rejected") and job["error"] is None, job
    assert {"id": poison_id, "reason": "text is empty once surrounding whitespace is removed"} in (
        job["skipped_examples"]
    )


def conditions(job: dict[str, Any]) -> dict[str, str]:
    return {c["condition"]: c["verdict"] for c in job["gate"]["conditions"]}


def activate(http: httpx.Client, tag: str) -> None:
    response = http.post(f"/models/{tag.split(':')[1]}/activate", headers=AUTH)
    assert response.status_code == 200, response.text


def test_a_batch_of_wrong_labels_is_rejected_and_its_rows_listed(http: httpx.Client) -> None:
    wrong = [{"text": t, "label": "negative"} for t in texts(POSITIVE, 40, 6, "oops")]
    wrong += [{"text": t, "label": "positive"} for t in texts(NEGATIVE, 40, 7, "oops")]
    stored = http.post("/examples", headers=AUTH, json={"examples": wrong, "source": "bad-tool"})
    assert stored.status_code == 200, stored.text

    job = retrain(http, mode="incremental")

    assert job["state"] == "rejected", job
    assert conditions(job)["plausible labels"] == "failed", job["gate"]
    assert "PATCH /examples/{id}" in job["decision"]
    labels = job["gate"]["labels"]
    assert labels["support"] < 0 < labels["reference_support"]
    posted = {r["text"]: r["label"] for r in wrong}
    assert len(labels["suspects"]) >= 20
    for suspect in labels["suspects"]:
        assert posted[suspect["text"]] == suspect["label"] != suspect["predicted"]
        row = http.get(f"/examples/{suspect['id']}", headers=AUTH).json()
        assert (row["text"], row["label"]) == (suspect["text"], suspect["label"])
    gone = http.delete("/examples", headers=AUTH, params={"source": "bad-tool"})
    assert (gone.json()["deleted"], gone.json()["restored"]) == (len(wrong), 0)


def test_retraining_without_new_data_does_not_flap(http: httpx.Client) -> None:
    caught_up = retrain(http, mode="refit")  # everything stored is in it
    if caught_up["state"] != "succeeded":
        activate(http, caught_up["candidate_version"])
    active = http.get("/models", headers=AUTH).json()["active"]

    jobs = [retrain(http, mode="refit") for _ in range(2)]

    for job in jobs:
        assert job["new_examples"] == 0, job
        assert job["state"] == "rejected", job
        assert conditions(job)["better, with no new data"] == "failed"
        assert "add or correct labels" in job["decision"]
    assert http.get("/models", headers=AUTH).json()["active"] == active


def test_a_chain_of_incremental_steps_is_bounded_by_the_version_it_started_from(
    http: httpx.Client,
) -> None:
    root = http.get("/models", headers=AUTH).json()["active"]
    assert registry.get(root).metadata["mode"] == "refit"
    # A step that wrecked the model (rejected, then activated by hand), and a step after it
    # that barely moves: each is within the margin of its own active version.
    more = [{"text": t, "label": "positive"} for t in texts(POSITIVE, 20, 8, "chain")]
    wrecked = retrain(http, mode="incremental", examples=more, lr=0.05, epochs=3)
    assert wrecked["state"] == "rejected", wrecked
    activate(http, wrecked["candidate_version"])
    later = [{"text": t, "label": "negative"} for t in texts(NEGATIVE, 20, 9, "chain")]

    job = retrain(http, mode="incremental", examples=later, lr=1e-9)

    assert job["state"] == "rejected", job
    verdicts = conditions(job)
    assert verdicts["non-inferior on the old slice"] == "passed", job["gate"]
    assert verdicts["chain bounded by its reference"] == "failed", job["gate"]
    assert job["gate"]["reference"]["version"] == root
    assert root in job["decision"]
    activate(http, root)


def test_a_rollback_during_a_job_blocks_its_promotion(
    http: httpx.Client, trainer: Retrainer
) -> None:
    before = http.get("/models", headers=AUTH).json()["active"]
    more = [{"text": t, "label": "negative"} for t in texts(NEGATIVE, 10, 5, "during")]
    started = http.post("/retrain", headers=AUTH, json={"mode": "refit", "examples": more}).json()[
        "job_id"
    ]
    deadline = time.monotonic() + 60
    while http.get(f"/jobs/{started}", headers=AUTH).json()["compared_with"] is None:
        assert time.monotonic() < deadline  # the job has read the store: it is training
        time.sleep(0.05)
    rolled = http.post(f"/models/{trainer.first.split(':')[1]}/activate", headers=AUTH)
    assert rolled.status_code == 200 and rolled.json()["previous"] == before

    job = wait_for_job(http, started)

    assert job["state"] == "rejected", job
    assert job["compared_with"] == before
    assert f"the active version is now {trainer.first}" in job["decision"]
    wait_for_version(http, trainer.first.split(":")[1])
    time.sleep(1.5)
    assert served_version(http) == trainer.first.split(":")[1]
