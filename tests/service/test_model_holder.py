"""The model holder in-process: a version that fails to load never takes serving down,
and a lone text runs on every core only while the other workers are idle."""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path

import bentoml
import pytest

from core.activity import QUIET_S, SLOTS, Activity
from service.activity import worker_activity
from service.model_holder import ModelHolder, NoModelError
from tests.helpers import CountingRuns


def test_a_broken_version_is_skipped_and_the_served_one_stays(
    tiny_version: str, caplog: pytest.LogCaptureFixture
) -> None:
    wanted: list[str | None] = [None]
    holder = ModelHolder(resolver=lambda: wanted[0], threads=1, poll_seconds=60)
    assert not holder.refresh() and not holder.ready
    with pytest.raises(NoModelError):
        holder.current()

    wanted[0] = "tiny-sentiment:doesnotexist"
    with caplog.at_level(logging.ERROR):
        assert not holder.refresh()
    assert not holder.ready and "failed to load" in caplog.text

    wanted[0] = tiny_version
    assert holder.refresh() and holder.current().version.tag == tiny_version

    wanted[0] = "tiny-sentiment:doesnotexist"
    assert not holder.refresh()
    assert holder.current().version.tag == tiny_version  # still serving the good one
    caplog.clear()
    with caplog.at_level(logging.ERROR):
        assert not holder.refresh()
    assert caplog.text == ""  # a failed version is not retried (and logged) every poll


def test_a_lone_text_runs_wide_only_while_the_other_workers_are_quiet(
    tiny_version: str, tmp_path: Path
) -> None:
    mine, other = Activity(0, tmp_path / "activity"), Activity(1, tmp_path / "activity")
    holder = ModelHolder(
        resolver=lambda: tiny_version, threads=1, poll_seconds=60, wide_threads=2, activity=mine
    )
    holder.refresh()
    loaded = holder.current()
    assert loaded.classifier.wide_session is not None
    runs = loaded.classifier.wide_session = CountingRuns(loaded.classifier.wide_session)  # type: ignore[assignment]

    alone, wide = holder.score(loaded, ["the food was great"])
    assert wide and runs.runs == 1
    with other.running():
        busy, wide = holder.score(loaded, ["the food was great"])
        assert not wide and runs.runs == 1
    assert not holder.score(loaded, ["the food was great"])[1]  # the other ran just now
    time.sleep(QUIET_S * 2)
    assert holder.score(loaded, ["the food was great"])[1]
    assert not holder.score(loaded, ["two texts", "never go wide"])[1]
    assert (alone.logits == busy.logits).all()  # bit-identical on 1 and 2 threads


def test_activity_shows_a_running_worker_and_one_that_ran_lately(tmp_path: Path) -> None:
    a, b = Activity(0, tmp_path / "activity"), Activity(3, tmp_path / "activity")
    assert a.quiet() and b.quiet()
    with a.running():
        with a.running():
            assert not b.quiet() and not a.quiet()
        assert not b.quiet(seconds=0)  # the outer batch is still running
    assert not b.quiet() and b.quiet(seconds=0) and a.quiet()
    time.sleep(QUIET_S * 2)
    assert b.quiet()
    a.close()
    assert not (tmp_path / "activity").exists()
    with pytest.raises(ValueError, match="outside"):
        Activity(SLOTS, tmp_path / "activity")


def test_a_woken_holder_swaps_without_waiting_for_its_poll(tiny_version: str) -> None:
    wanted: list[str | None] = [None]
    holder = ModelHolder(resolver=lambda: wanted[0], threads=1, poll_seconds=60)
    holder.start()
    try:
        wanted[0] = tiny_version
        holder.wake()  # what a finished retrain does in the worker that watched it
        deadline = time.monotonic() + 30
        while not holder.ready and time.monotonic() < deadline:
            time.sleep(0.05)
        assert holder.ready and holder.current().version.tag == tiny_version
    finally:
        holder.stop()


def test_a_worker_without_a_shared_activity_file_stays_narrow(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(bentoml.server_context, "worker_index", None)
    assert worker_activity() is None  # not a BentoML worker
    monkeypatch.setattr(bentoml.server_context, "worker_index", 2)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    activity = worker_activity()
    assert activity is not None and activity.path.parent == tmp_path
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "missing"))
    with caplog.at_level(logging.WARNING):
        assert worker_activity() is None
    assert "lone texts stay on one worker's threads and connections are not" in caplog.text
