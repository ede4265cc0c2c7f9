"""A retrain reading the serving workers' activity: every core for each run while they
are quiet, its own threads while one runs, and the same logits either way."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from core import registry
from core.activity import BURST_QUIET_S, Activity, wide_when_quiet
from core.runtime import Classifier, Wide
from tests.helpers import CountingRuns, mixed_texts

pytestmark = pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="needs a core to add")


def test_a_retrain_scores_on_every_core_only_while_no_worker_runs(
    tiny_version: str, tmp_path: Path
) -> None:
    path = tmp_path / "activity"
    worker = Activity(0, path)
    wide = wide_when_quiet(path, threads=1)
    assert wide is not None and wide.threads == os.cpu_count() and wide.quiet is not None
    serving_quiet = wide.quiet
    answers: list[bool] = []

    def quiet() -> bool:
        answers.append(serving_quiet())
        return answers[-1]

    version = registry.get(tiny_version)
    watched = Classifier(version.path, version.max_length, 1, wide=Wide(wide.threads, False, quiet))
    texts = mixed_texts(40)  # 1 to ~60 words: several runs
    with worker.running():
        busy = watched.logits(texts)
    just_after = watched.logits(texts)  # the worker ran under BURST_QUIET_S ago
    assert len(answers) > 1 and not any(answers)
    assert watched.wide_session is None and watched.wide_runs == 0  # never even loaded
    answers.clear()
    time.sleep(BURST_QUIET_S)
    alone = watched.logits(texts)
    assert len(answers) > 1 and all(answers) and watched.wide_runs == len(answers)
    assert watched.wide_session is not None
    runs = watched.wide_session = CountingRuns(watched.wide_session)  # type: ignore[assignment]
    first_pass = len(answers)
    watched.logits(texts)
    assert runs.runs == len(answers) - first_pass > 0  # every run of the second pass went wide
    narrow = Classifier(version.path, version.max_length, 1).logits(texts)
    assert (
        (alone == narrow).all() and (busy == narrow).all() and (just_after == narrow).all()
    )  # the same bits on any threads


def test_no_wide_session_without_a_server_to_read_or_a_core_to_add(tmp_path: Path) -> None:
    path = tmp_path / "activity"
    assert wide_when_quiet(None, threads=1) is None
    assert wide_when_quiet(path, threads=1) is None  # no server made the file
    Activity(0, path)
    assert wide_when_quiet(path, threads=os.cpu_count() or 1) is None
