"""A database made by the first release upgrades in place, with every row kept.

The old schema comes from the first release's own code: `service/store.py` as of
commit 914ae71, the last before migrations, kept verbatim in
`data/first_release_store.py.txt` (so a shallow clone can run this too).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

from sqlalchemy import create_engine, inspect

from store import Store, examples, jobs, versions
from store.examples import NewExample
from store.jobs import JobState

HERE = Path(__file__).resolve().parent


def first_release_store(tmp_path: Path) -> ModuleType:
    path = tmp_path / "first_release_store.py"
    path.write_text((HERE / "data" / "first_release_store.py.txt").read_text())
    spec = importlib.util.spec_from_file_location("first_release_store", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while defining
    spec.loader.exec_module(module)
    return module


def test_a_first_release_database_migrates_in_place_with_nothing_lost(
    database_url: str, tmp_path: Path
) -> None:
    old = first_release_store(tmp_path)
    before = old.Store(database_url)
    before.add_examples(
        [old.NewExample(f"text {i}", "pos" if i % 3 else "neg") for i in range(50)], "tool"
    )
    queued = before.create_job("m", {"training": {"epochs": 1}})
    before.activate("m", "m:v1", "first")
    before.engine.dispose()
    assert "alembic_version" not in inspect(create_engine(database_url)).get_table_names()

    store = Store(database_url)
    with store.transaction() as tx:
        snap = examples.snapshot(tx)
        assert len(snap.rows) == 50 and {r.revision for r in snap.rows} == {0}
        assert snap.rows[0].updated_at == snap.rows[0].created_at
        assert versions.active_tag(tx, "m") == "m:v1"
        job = jobs.get(tx, queued.id)
        assert job is not None and job.state == JobState.QUEUED
        assert job.params == {"training": {"epochs": 1}}
        # and the new schema works on the old rows
        assert examples.relabel(tx, 1, "pos", "api") is not None
        added = examples.add(tx, [NewExample("a new text", "neg")], "tool")
    assert added.revision == 2 and added.total == 51
    with store.transaction() as tx:  # the newest id, deleted, is not handed out again
        assert examples.delete_one(tx, 51, reason="typo")
        examples.add(tx, [NewExample("another new text", "neg")], "tool")
        assert [e.id for e in examples.page(tx, after_id=50)] == [52]
    Store(database_url)  # opening again is a no-op
