"""A local retrain volunteers for the OOM killer: the server sharing its container is spared."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from retrain.__main__ import OOM_SCORE_ADJ

ROOT = Path(__file__).resolve().parents[2]


def oom_score_adj(pid: int | str) -> int:
    return int(Path(f"/proc/{pid}/oom_score_adj").read_text())


def test_a_retrain_process_raises_its_own_oom_score_adj_above_its_parents() -> None:
    """`retrain standby` as the local backend starts it: unprivileged, adj at the maximum."""
    standby = subprocess.Popen(
        [sys.executable, "-m", "retrain", "standby"],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 30
        while oom_score_adj(standby.pid) != OOM_SCORE_ADJ and time.monotonic() < deadline:
            time.sleep(0.05)
        assert oom_score_adj(standby.pid) == OOM_SCORE_ADJ == 1000
        assert oom_score_adj("self") < OOM_SCORE_ADJ
    finally:
        assert standby.stdin is not None
        standby.stdin.close()  # no job: the standby ends
        assert standby.wait(timeout=120) == 0
