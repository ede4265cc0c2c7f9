"""The retrain's CPU governor against a real competing process on the same core."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from retrain.cpu_share import MAX_NICE, SlowdownGovernor, next_nice

ROOT = Path(__file__).resolve().parents[2]

# Pinned to CPU 0 beside a busy loop pinned there too, in sessions of their own (as the
# local backend starts a retrain), this process spins with the governor on for SECONDS
# and prints the slowdown it had over the last half and the levels the governor chose.
CONTENDED = """
import json, os, subprocess, sys, time
from retrain.cpu_share import SlowdownGovernor, _ran_and_waited, _threads_ns
os.sched_setaffinity(0, {0})
rival = subprocess.Popen([sys.executable, "-c", "while True: pass"], start_new_session=True,
                         preexec_fn=lambda: os.sched_setaffinity(0, {0}))
governor = SlowdownGovernor(float(sys.argv[1]), period_s=0.5).start()
start = time.monotonic()
while time.monotonic() - start < SECONDS / 2:
    pass
half, before = time.monotonic(), _threads_ns()
while time.monotonic() - start < SECONDS:
    pass
ran, _ = _ran_and_waited(before, _threads_ns())
governor.stop()
rival.kill()
print(json.dumps({"slowdown": (time.monotonic() - half) / (ran / 1e9),
                  "levels": governor.levels}))
"""
SECONDS = 8

needs_autogroup = pytest.mark.skipif(
    not Path("/proc/self/autogroup").exists(), reason="the kernel has no autogroup scheduling"
)


def contended(target: float) -> dict[str, object]:
    out = subprocess.run(
        [sys.executable, "-c", f"SECONDS = {SECONDS}\n{CONTENDED}", str(target)],
        cwd=ROOT, capture_output=True, text=True, timeout=60, start_new_session=True, check=True,
    )  # fmt: skip
    result: dict[str, object] = json.loads(out.stdout)
    return result


@needs_autogroup
def test_a_contended_retrain_yields_down_to_its_target_slowdown() -> None:
    # An even share of one core is a slowdown of 2; asked for 4, the governor raises the
    # job's nice level until it gets about a quarter.
    result = contended(4.0)
    levels = result["levels"]
    assert isinstance(levels, list) and levels, result
    assert max(levels) >= 3, result
    assert 3.0 <= float(result["slowdown"]) <= 5.5, result  # type: ignore[arg-type]


@needs_autogroup
def test_a_retrain_slowed_no_more_than_its_target_keeps_its_level() -> None:
    # At nice 0 an even share is a slowdown of ~2: at a target of 2 there is no reason to yield.
    result = contended(2.0)
    assert set(result["levels"]) == {0}, result  # type: ignore[arg-type]


def test_a_process_that_shares_its_session_is_not_steered() -> None:
    # pytest shares the session (and autogroup) of the shell that started it.
    governor = SlowdownGovernor(2.5).start()
    governor.stop()
    assert governor.summary().startswith("not steered"), governor.summary()


def test_next_nice_steps() -> None:
    # Twice as slow as the target: ~3 levels back, never under the floor (RETRAIN_NICE).
    assert next_nice(7, 5.0, 2.5, 0) == 4
    assert next_nice(2, 5.0, 2.5, 1) == 1
    # Starved: back quickly, 6 levels a period at most.
    assert next_nice(19, 200.0, 2.5, 0) == 13
    # Faster than the target, even not slowed at all: yield, 2 levels a period at most, up to 19.
    assert next_nice(0, 1.4, 2.5, 0) == 2
    assert next_nice(7, 1.0, 2.5, 0) == 9
    assert next_nice(MAX_NICE, 1.4, 2.5, 0) == MAX_NICE
    # Within ~11% of the target: hold.
    assert next_nice(3, 2.7, 2.5, 0) == 3
