"""A local retrain volunteers for the OOM killer: the server sharing its container is spared."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from retrain.__main__ import OOM_SCORE_ADJ
from tests.helpers import ROOT


def oom_score_adj(pid: int | str) -> int:
    return int(Path(f"/proc/{pid}/oom_score_adj").read_text())


def test_a_retrain_process_raises_its_own_oom_score_adj_above_its_parents(
    tmp_path: Path,
) -> None:
    """`retrain run` as the local backend starts it: unprivileged, adj at the maximum (the
    adj is set before the job's imports, which take seconds; this job then finds no record)."""
    job = subprocess.Popen(
        [sys.executable, "-m", "retrain", "run", "--job-id", "0" * 32],
        cwd=ROOT,
        env={**os.environ, "STATE_DIR": str(tmp_path)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 30
        while oom_score_adj(job.pid) != OOM_SCORE_ADJ and time.monotonic() < deadline:
            time.sleep(0.05)
        assert oom_score_adj(job.pid) == OOM_SCORE_ADJ == 1000
        assert oom_score_adj("self") < OOM_SCORE_ADJ
    finally:
        assert job.wait(timeout=120) != 0  # no such job: it says so and fails
