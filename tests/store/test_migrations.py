"""Databases made by earlier releases upgrade in place, with every row kept.

The old schema comes from the first release's own code: `service/store.py` as of
commit 914ae71, the last before migrations, kept verbatim in
`data/first_release_store.py.txt` (so a shallow clone can run this too).
"""

from __future__ import annotations

import importlib.util
import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from sqlalchemy import create_engine, inspect, select

from core.text import text_hash
from store import Store, examples, jobs, versions
from store.changes import ChangeRow
from store.db import MIGRATIONS, make_engine
from store.examples import NewExample
from store.jobs import JobState
from store.revert import NotRevertibleError, revert

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


def _made_by_0003(url: str) -> None:
    """A database at revision 0003 holding what that release wrote: a batch, and a batch
    relabel whose change log kept only a count (the labels it replaced were lost)."""
    engine = make_engine(url)
    with engine.connect() as conn:
        cfg = Config()
        cfg.set_main_option("script_location", str(MIGRATIONS))
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0003")
        now = datetime.now(UTC)
        rows = [("a", "x", "orig", 2), ("b", "y", "orig", 1)]  # "a" was relabeled at 2
        for text, label, source, revision in rows:
            conn.execute(
                sa.text(
                    "INSERT INTO examples (text_hash, text, label, source, created_at, "
                    "updated_at, revision) VALUES (:h, :t, :l, :s, :now, :now, :r)"
                ),
                {"h": text_hash(text), "t": text, "l": label, "s": source, "now": now,
                 "r": revision},
            )  # fmt: skip
        for revision, detail in ((1, {"relabeled": 0}), (2, {"relabeled": 1})):
            conn.execute(
                sa.text(
                    "INSERT INTO example_changes (revision, at, kind, source, count, detail) "
                    "VALUES (:r, :now, 'added', :s, :n, :d)"
                ),
                {"r": revision, "now": now, "s": "orig" if revision == 1 else "bad",
                 "n": 2 if revision == 1 else 1, "d": json.dumps(detail)},
            )  # fmt: skip
        conn.execute(sa.text("UPDATE store_meta SET value = 2"))
        conn.commit()
    engine.dispose()


def test_a_0003_database_upgrades_keeps_its_change_log_and_reverts_from_then_on(
    database_url: str,
) -> None:
    _made_by_0003(database_url)

    store = Store(database_url)
    with store.transaction() as tx:
        log = tx.execute(select(ChangeRow.revision, ChangeRow.source, ChangeRow.detail))
        assert sorted(log) == [(1, "orig", {"relabeled": 0}), (2, "bad", {"relabeled": 1})]
        assert [(e.text, e.label) for e in examples.page(tx)] == [("a", "x"), ("b", "y")]
        after = examples.add(tx, [NewExample("a", "z")], "fix", relabel=True)
    assert after.revision == 3
    with store.transaction() as tx:
        reverted = revert(tx, "fix")  # logged per row since the upgrade: the label comes back
    assert (reverted.restored, reverted.revisions) == (1, [3])
    with store.transaction() as tx:
        assert [(e.text, e.label, e.source) for e in examples.page(tx)] == [
            ("a", "x", "orig"),
            ("b", "y", "orig"),
        ]
    with pytest.raises(NotRevertibleError, match="migration 0004"), store.transaction() as tx:
        revert(tx, "orig", 1)
    with store.transaction() as tx:
        gone = revert(tx, "orig")  # no per-row history: deleted, as DELETE ?source= did
    assert gone.deleted == 2


def test_the_migrations_build_the_schema_the_code_declares(database_url: str) -> None:
    """Alembic's autogenerate finds nothing to add, drop or alter after every migration."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from store import label_studio, review  # noqa: F401  (registers their tables)
    from store.db import Base

    store = Store(database_url)
    with store.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == [], diff
