"""A local retrain takes as much CPU as it needs to finish within RETRAIN_SLOWDOWN, no more.

A fixed nice level cannot hold both of a retrain's bounds on a shared machine
(bench/RETRAIN.md, 2026-12-01): under 64 predict clients on 2 cores, nice 0 ran
the job at 1.8x its quiet time and doubled predict p99; nice 3 kept p99 at
1.2x and ran it at 2.9x, just inside 3x, and how much a nice level takes
depends on the load and the machine. So the job measures its own slowdown
and steers its nice level to it, once a second: from the kernel's schedstat,
(time on a CPU + time runnable but waiting for one) / time on a CPU, over the
process's threads. Time asleep (files, the database) does not count. A job
that is not slowed at all yields too: on a quiet server that costs it nothing
(the job once ran at its quiet speed under load while predict throughput
halved; that was the load's connections piled on one worker, which
service/balance.py now evens out).

The level moved is the autogroup's (`/proc/self/autogroup`): the local backend
starts each retrain in a session of its own (service/local_backend.py), where that is
what ranks it against the serving workers, and any process may raise or lower
its own autogroup's nice between 0 and 19. Without autogroup there is nothing
to steer (an unprivileged process can only raise its nice), and it stays at
RETRAIN_NICE.
"""

from __future__ import annotations

import errno
import logging
import math
import os
import threading
import time
from pathlib import Path

log = logging.getLogger(__name__)

AUTOGROUP = Path("/proc/self/autogroup")
TASKS = Path("/proc/self/task")
PERIOD_S = 1.0
# Each nice level is ~1.25x the CPU weight of the next (the kernel's table).
WEIGHT_STEP = math.log(1.25)
# Steps per period: quick to take CPU back (a job starved by a new burst), slow to give it.
MAX_DOWN, MAX_UP = 6, 2
MAX_NICE = 19

Sample = dict[str, tuple[int, int]]  # thread id -> (ns on a CPU, ns runnable and waiting)


def _threads_ns() -> Sample:
    """Per thread of this process: ns on a CPU and ns runnable, waiting for one."""
    threads: Sample = {}
    for task in TASKS.iterdir():
        try:
            fields = (task / "schedstat").read_text().split()
        except OSError:  # a thread that just ended
            continue
        threads[task.name] = (int(fields[0]), int(fields[1]))
    return threads


def _ran_and_waited(before: Sample, after: Sample) -> tuple[int, int]:
    """ns run and waited between two samples, over the threads alive at both (an ended
    thread's time leaves the sum, so it would read as negative)."""
    ran = waited = 0
    for tid, (run, wait) in after.items():
        if tid in before:
            ran, waited = ran + run - before[tid][0], waited + wait - before[tid][1]
    return ran, waited


def autogroup_nice() -> int | None:
    try:
        return int(AUTOGROUP.read_text().split("nice")[-1])
    except (OSError, ValueError):
        return None


def own_session() -> bool:
    """The autogroup is the session's: steering it from a shared session would renice the
    shell or server that started us. The local backend starts a session per job."""
    return os.getsid(0) == os.getpid()


def set_session_nice(nice: int, tries: int = 10) -> bool:
    """Move this session's autogroup to `nice`, waiting out the kernel's limit of one change
    per 100 ms; False where there is no own session or autogroup to move."""
    if not own_session() or autogroup_nice() is None:
        return False
    for _ in range(tries):
        try:
            AUTOGROUP.write_text(str(nice))
            return True
        except OSError as exc:
            if exc.errno != errno.EAGAIN:
                return False
            time.sleep(0.1)
    return False


def next_nice(nice: int, slowdown: float, target: float, floor: int) -> int:
    """The nice level that should bring `slowdown` to `target`: share ~ 1.25^-nice."""
    step = round(math.log(slowdown / target) / WEIGHT_STEP)
    return min(MAX_NICE, max(floor, nice - max(-MAX_UP, min(MAX_DOWN, step))))


class SlowdownGovernor:
    """A daemon thread steering this process's autogroup nice toward `target` slowdown."""

    def __init__(self, target: float, period_s: float = PERIOD_S) -> None:
        self.target, self.period_s = target, period_s
        self.floor = autogroup_nice()
        self.nice = self.floor
        self.levels: list[int] = []  # the level after each period, for the job's log
        self.not_steered: str | None = None  # why, when it does not steer
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._steer, name="slowdown-governor", daemon=True)

    def start(self) -> SlowdownGovernor:
        if not own_session():
            self.not_steered = "not a session of its own"
        elif self.floor is None:
            self.not_steered = "no autogroup"
        if self.not_steered:
            log.info("%s: the retrain keeps its nice level", self.not_steered)
        else:
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def summary(self) -> str:
        if self.not_steered:
            return f"not steered ({self.not_steered})"
        if not self.levels:
            return f"{self.nice} (never awake for a whole period)"
        ordered, seconds = sorted(self.levels), len(self.levels) * self.period_s
        return (f"from {self.floor}: {ordered[0]}..{ordered[-1]}, median "
                f"{ordered[len(ordered) // 2]} over {seconds:g} s")  # fmt: skip

    def _steer(self) -> None:
        assert self.floor is not None and self.nice is not None
        before = _threads_ns()
        while not self._stop.wait(self.period_s):
            after = _threads_ns()
            ran, waited = _ran_and_waited(before, after)
            before = after
            if ran + waited < 0.1 * self.period_s * 1e9:  # mostly asleep: nothing to learn
                continue
            wanted = next_nice(self.nice, (ran + waited) / max(ran, 1), self.target, self.floor)
            if wanted != self.nice:
                # One try: a change another process made within 100 ms waits a period.
                if not set_session_nice(wanted, tries=1):
                    continue
                self.nice = wanted
            self.levels.append(self.nice)
