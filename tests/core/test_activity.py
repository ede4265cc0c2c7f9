"""A retrain reading the serving workers' activity: every core for each run while they
are quiet, its own threads while one runs, and the same logits either way."""

from __future__ import annotations

import os
import time
from pathlib import Path

import onnxruntime as ort
import pytest

from core import registry
from core.activity import BURST_QUIET_S, Activity, serving_burst
from core.runtime import Burst, Classifier
from tests.helpers import mixed_texts

pytestmark = pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="needs a core to add")


class CountingRuns:
    """ONNX Runtime's session, counting the runs made on it."""

    def __init__(self, session: ort.InferenceSession) -> None:
        self.session, self.runs = session, 0

    def run(self, *args: object) -> object:
        self.runs += 1
        return self.session.run(*args)


def test_a_retrain_scores_on_every_core_only_while_no_worker_runs(
    tiny_version: str, tmp_path: Path
) -> None:
    path = tmp_path / "activity"
    worker = Activity(0, path)
    burst = serving_burst(path, threads=1)
    assert burst is not None and burst.threads == os.cpu_count()
    answers: list[bool] = []

    def quiet() -> bool:
        answers.append(burst.quiet())
        return answers[-1]

    version = registry.get(tiny_version)
    watched = Classifier(version.path, version.max_length, 1, burst=Burst(burst.threads, quiet))
    assert watched.wide is not None
    wide = watched.wide = CountingRuns(watched.wide)  # type: ignore[assignment]
    texts = mixed_texts(40)  # 1 to ~60 words: several runs
    alone = watched.logits(texts)
    assert len(answers) > 1 and all(answers) and wide.runs == len(answers)
    answers.clear()
    wide_runs = wide.runs
    with worker.running():
        busy = watched.logits(texts)
    just_after = watched.logits(texts)  # the worker ran under BURST_QUIET_S ago
    assert len(answers) > 1 and not any(answers) and wide.runs == wide_runs
    time.sleep(BURST_QUIET_S)
    watched.logits(texts)
    assert wide.runs > wide_runs
    narrow = Classifier(version.path, version.max_length, 1).logits(texts)
    assert (
        (alone == narrow).all() and (busy == narrow).all() and (just_after == narrow).all()
    )  # the same bits on any threads


def test_no_burst_without_a_server_to_read_or_a_core_to_add(tmp_path: Path) -> None:
    path = tmp_path / "activity"
    assert serving_burst(None, threads=1) is None
    assert serving_burst(path, threads=1) is None  # no server made the file
    Activity(0, path)
    assert serving_burst(path, threads=os.cpu_count() or 1) is None
