"""The model holder in-process: a version that fails to load never takes serving down,
and a woken holder swaps at once."""

from __future__ import annotations

import logging
import time

import pytest

from service.model_holder import ModelHolder, NoModelError


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
