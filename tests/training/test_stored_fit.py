"""`training fit --store`: the fit's data goes into the service's store, so retrains build on it."""

from __future__ import annotations

from pathlib import Path

import pytest

from core import registry
from core.text import EVAL_FRACTION, in_eval_split
from store import Store, examples, versions
from tests.helpers import fit_tiny, read_examples


def test_a_stored_fit_records_its_data_and_the_revision_it_was_trained_at(
    tiny_base_model: Path, sentiment_csv: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"sqlite:///{tmp_path / 'service.db'}"
    monkeypatch.setenv("DATABASE_URL", url)

    tag = fit_tiny(tiny_base_model, sentiment_csv, "tiny-stored", "--store", "--epochs", "1")

    rows = read_examples(sentiment_csv)
    with Store(url).transaction() as tx:
        snapshot = examples.snapshot(tx)
        revision = versions.data_revision(tx, tag)
    assert len(snapshot.rows) == len(rows) and revision == snapshot.revision == 1
    # evaluated on the store's hash split: no evaluation text was trained on
    version = registry.get(tag)
    held = sum(in_eval_split(r["text"], EVAL_FRACTION) for r in rows)
    assert version.metadata["examples"]["eval"] == held
    trained = version.trained_keys()
    assert trained is not None and len(trained) == len(rows) - held
