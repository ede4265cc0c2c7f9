"""RETRAIN_BACKEND=local: each retrain job runs as a child process of the serving worker.

The child is `python -m retrain run --job-id ID`, thread-capped, in a session
of its own at RETRAIN_NICE (the CPU policy of docs/DESIGN.md #2), killed with
the worker that started it; between jobs a standby process, imported ahead,
takes the next job (docs/DESIGN.md #9). Only that worker can kill its child:
a cancelled job's is killed by its runner (`service.runner`) at its next beat.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import IO

from service.settings import Settings
from store.jobs import Job

log = logging.getLogger(__name__)

LOG_TAIL_BYTES = 2000
# A standby starts this long after the runner does: the workers load their models first.
STANDBY_AFTER_S = 15.0
STANDBY_RETRY_S = 60.0  # after a standby died unasked: not a crash loop of imports
STANDBY_LOG = "standby.log"  # what a standby prints before it is handed a job
_PR_SET_PDEATHSIG = 1


def _autogroup_nice(nice: int) -> None:
    """In the child, which `start_new_session` made a session of its own: nice that session.

    Under the kernel's autogroup scheduling (`/proc/sys/kernel/sched_autogroup_enabled`,
    on by default in most distributions) CPU is shared between sessions before nice
    counts, and BentoML starts each worker in a session of its own. Left in the
    worker's session, the retrain competed only with the worker that launched it: at
    nice 10 it ran ~13x slower under 64 clients; at nice 0 it halved that one worker
    and predict p99 tripled (bench/RETRAIN.md, 2026-12-01). In a session of its own it
    takes an even share from every worker. Without autogroup the file is absent and
    `os.nice` alone ranks it against every process: the same policy.
    """
    with contextlib.suppress(OSError), Path("/proc/self/autogroup").open("w") as group:
        group.write(str(nice))


def _die_with_parent() -> None:
    """In the child: be killed when the worker that launched us dies (no orphan training)."""
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


class LocalProcess:
    def __init__(self, process: subprocess.Popen[bytes], log_path: Path) -> None:
        self.process = process
        self.log_path = log_path

    def exit_code(self) -> int | None:
        return self.process.poll()

    def kill(self) -> None:
        _kill(self.process)

    def log_tail(self) -> str:
        try:
            with self.log_path.open("rb") as f:
                f.seek(max(0, self.log_path.stat().st_size - LOG_TAIL_BYTES))
                return f.read().decode("utf-8", errors="replace")
        except OSError:
            return ""


class LocalBackend:
    """Training as a thread-capped child process of the serving worker, in a session of
    its own (`_autogroup_nice`) at RETRAIN_NICE.

    One thread at nice 0 is one more task with an even share of the CPU: on 2 cores
    under 64 predict clients an incremental retrain took 1.6-1.8x its quiet time while
    predict p99 rose 2-2.9x (bench/RETRAIN.md, 2026-12-01; targets 3x and 2x). So the
    job steers its session's nice level itself to RETRAIN_SLOWDOWN
    (retrain/cpu_share.py). The child dies with its parent, so a killed server leaves
    no orphan training behind.

    Between jobs it keeps a standby (`python -m retrain standby`, RETRAIN_STANDBY):
    the same process, started and imported ahead, which the next job is handed to.
    Given the workers' activity file, a job evaluates on every core while they are quiet.
    """

    jobs_outlive_runner = False

    def __init__(
        self,
        settings: Settings,
        activity: Path | None = None,
        standby_after_s: float = STANDBY_AFTER_S,
    ) -> None:
        self.settings = settings
        self.activity = activity
        self._logs = settings.state_dir.resolve() / "jobs"
        self._standby: subprocess.Popen[bytes] | None = None
        self._standby_from = time.monotonic() + standby_after_s
        self._last_job = time.monotonic()  # start-up opens the first idle window too
        self._in_job = False

    def _start(
        self, args: list[str], out: IO[bytes], stdin: int | None = None
    ) -> subprocess.Popen[bytes]:
        threads = str(self.settings.retrain_threads)
        serving = {"SERVING_ACTIVITY": str(self.activity)} if self.activity else {}
        env = (
            os.environ
            | self.settings.retrain_env()
            | serving
            | {
                "OMP_NUM_THREADS": threads,
                "MKL_NUM_THREADS": threads,
                "TOKENIZERS_PARALLELISM": "false",
            }
        )
        nice = self.settings.retrain_nice

        def prepare() -> None:
            _autogroup_nice(nice)
            os.nice(nice)
            _die_with_parent()

        return subprocess.Popen(
            [sys.executable, "-m", "retrain", *args],
            stdin=stdin,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=Path(__file__).resolve().parent.parent,
            start_new_session=True,  # its own autogroup (_autogroup_nice)
            # only one write to /proc, nice and prctl: safe between fork and exec
            preexec_fn=prepare,
        )

    def idle(self) -> None:
        """No job is running here: have a standby ready for the next one (once past start-up,
        so its imports do not compete with the workers loading their models), until
        RETRAIN_STANDBY_IDLE_S pass without a job: a server that stopped retraining gets
        the memory back, and its next job starts cold and brings the standby back."""
        now = time.monotonic()
        if self._in_job:  # the first poll after a job: when it ended
            self._in_job, self._last_job = False, now
        if self._standby is not None and (code := self._standby.poll()) is not None:
            log.warning("retrain standby exited with code %s; the next in %g s (log: %s)",
                        code, STANDBY_RETRY_S, self._logs / STANDBY_LOG)  # fmt: skip
            self._standby = None
            self._standby_from = now + STANDBY_RETRY_S
        if now - self._last_job > self.settings.retrain_standby_idle_s:
            if self._standby is not None:
                log.info("closing the retrain standby: no job for %g s", now - self._last_job)
                self.close()
            return
        if not self.settings.retrain_standby or self._standby is not None:
            return
        if now >= self._standby_from:
            self._logs.mkdir(parents=True, exist_ok=True)
            with (self._logs / STANDBY_LOG).open("ab") as out:
                self._standby = self._start(["standby"], out, stdin=subprocess.PIPE)

    def launch(self, job: Job) -> LocalProcess:
        self._logs.mkdir(parents=True, exist_ok=True)
        log_path = self._logs / f"{job.id}.log"
        args = ["run", "--job-id", job.id, "--log", str(log_path)]
        self._in_job = True
        standby, self._standby = self._standby, None
        if standby is not None:
            if _hand_over(standby, args):
                log.info("job=%s handed to standby pid=%d log=%s", job.id, standby.pid, log_path)
                return LocalProcess(standby, log_path)
            _kill(standby)  # it died meanwhile: start cold
        with log_path.open("ab") as out:
            process = self._start(args, out)
        log.info("job=%s started pid=%d log=%s", job.id, process.pid, log_path)
        return LocalProcess(process, log_path)

    def adopt(self, job: Job) -> None:
        """A local training process dies with the worker that started it (`_die_with_parent`)."""

    def cancel(self, job_id: str) -> None:
        """Only the runner that started the process can kill it: it does at its next beat."""

    def close(self) -> None:
        """Stop the standby, if any: the end of its input tells it to exit."""
        standby, self._standby = self._standby, None
        if standby is None:
            return
        with contextlib.suppress(OSError):
            if standby.stdin is not None:
                standby.stdin.close()
        try:
            standby.wait(timeout=10)
        except subprocess.TimeoutExpired:
            _kill(standby)


def _hand_over(standby: subprocess.Popen[bytes], args: list[str]) -> bool:
    """Give a waiting standby its job (`run`'s arguments, one line); False if it is gone."""
    if standby.poll() is not None or standby.stdin is None:
        return False
    try:
        standby.stdin.write(shlex.join(args).encode() + b"\n")
        standby.stdin.close()
    except OSError:
        return False
    return True


def _kill(process: subprocess.Popen[bytes]) -> None:
    process.kill()
    process.wait(timeout=30)
