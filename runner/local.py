"""RETRAIN_BACKEND=local: each retrain job runs as a child process of the serving worker.

The child is `python -m retrain run --job-id ID`, capped at RETRAIN_THREADS
threads, in a session of its own (`start_new_session`): under the kernel's
autogroup scheduling, on by default in most distributions, the CPU is shared
between sessions before nice levels count, and BentoML starts each worker in
a session of its own, so the job takes an even share beside each worker
rather than half of the worker that launched it (docs/DESIGN.md #2). The child
exits when that worker dies (`--exit-with`), so no orphan holds the queue.
Only that worker can kill it: a cancelled job's child is killed by its runner
(`runner.queue`) at its next beat.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

from core.settings import RunnerSettings
from store.jobs import Job

log = logging.getLogger(__name__)

LOG_TAIL_BYTES = 2000


class LocalProcess:
    def __init__(self, process: subprocess.Popen[bytes], log_path: Path) -> None:
        self.process = process
        self.log_path = log_path

    def exit_code(self) -> int | None:
        return self.process.poll()

    def kill(self) -> None:
        self.process.kill()
        self.process.wait(timeout=30)

    def log_tail(self) -> str:
        try:
            with self.log_path.open("rb") as f:
                f.seek(max(0, self.log_path.stat().st_size - LOG_TAIL_BYTES))
                return f.read().decode("utf-8", errors="replace")
        except OSError:
            return ""


class LocalBackend:
    """Training as a thread-capped child process of the serving worker, in a session of
    its own; its log is STATE_DIR/jobs/<job id>.log."""

    jobs_outlive_runner = False

    def __init__(self, settings: RunnerSettings) -> None:
        self.settings = settings
        self._logs = settings.state_dir.resolve() / "jobs"

    def launch(self, job: Job) -> LocalProcess:
        self._logs.mkdir(parents=True, exist_ok=True)
        log_path = self._logs / f"{job.id}.log"
        threads = str(self.settings.retrain_threads)
        env = (
            os.environ
            | self.settings.retrain_env()
            | {
                "OMP_NUM_THREADS": threads,
                "MKL_NUM_THREADS": threads,
                "TOKENIZERS_PARALLELISM": "false",
            }
        )
        command = [sys.executable, "-m", "retrain", "run", "--job-id", job.id]
        command += ["--exit-with", str(os.getpid())]
        with log_path.open("ab") as out:
            process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=Path(__file__).resolve().parent.parent,
                start_new_session=True,
            )
        log.info("job=%s started pid=%d log=%s", job.id, process.pid, log_path)
        return LocalProcess(process, log_path)

    def adopt(self, job: Job) -> None:
        """A local training process exits with the worker that started it."""

    def cancel(self, job_id: str) -> None:
        """Only the runner that started the process can kill it: it does at its next beat."""
