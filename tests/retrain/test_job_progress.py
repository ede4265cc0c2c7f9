"""A retrain's progress writes against a database that is down for a moment: a lost
progress line is not a reason to end the training; a write that carries results is."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy.exc import SQLAlchemyError

from retrain.job import Reporter
from store import Store, jobs
from tests.helpers import database_down


def test_a_progress_line_lost_to_the_database_does_not_end_the_job(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'jobs.db'}"
    store = Store(url)
    with store.transaction() as tx:
        job = jobs.create(tx, "model", {"mode": "auto"})
    assert jobs.claim_next(store) is not None
    report = Reporter(store, job.id)

    with database_down(url):
        report(0.5, "training step 5/10")  # logged, not raised
        with pytest.raises(SQLAlchemyError):
            report(0.9, "gate", candidate_version="model:abc")

    report(0.6, "training step 6/10", force=True)
    with store.transaction() as tx:
        assert jobs.get(tx, job.id).message == "training step 6/10"  # type: ignore[union-attr]
