"""`python -m retrain run | standby | bootstrap`: the code that joins training and the store.

`run` executes one queued retrain job (the service launches it as a child
process or a Kubernetes Job); `standby` is the same, imported ahead of its job
(see `standby`); `bootstrap` is the first run of `make serve`. Settings come
from the environment (`core.settings.RetrainSettings`).
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

log = logging.getLogger("retrain")
OOM_SCORE_ADJ = 1000  # the kernel's maximum: chosen first under memory pressure


def run(job_id: str) -> int:
    from core.settings import RetrainSettings
    from retrain.cpu_share import SlowdownGovernor
    from retrain.job import run_job
    from store import jobs, open_store
    from store.jobs import JobState

    settings = RetrainSettings()
    store = open_store(settings.resolved_database_url)
    governor = SlowdownGovernor(settings.retrain_slowdown) if settings.retrain_slowdown else None
    try:
        if governor is not None:
            governor.start()
        state = run_job(job_id, store, settings)
    except Exception as exc:
        # Record why before dying, so GET /jobs/{id} says it rather than "process exited".
        with store.transaction() as tx:
            jobs.finish(tx, job_id, JobState.FAILED, error=f"{type(exc).__name__}: {exc}")
        raise
    finally:
        if governor is not None:
            governor.stop()
            log.info("autogroup nice over the job (per second): %s", governor.summary())
    sys.stdout.write(state + "\n")
    return 0


def _volunteer_for_oom_kill() -> None:
    """Be the process the kernel's OOM killer picks first, before the server.

    A local retrain shares the serving container's memory limit (the single
    overlay); raising one's own oom_score_adj needs no privilege. Where the
    runtime kills a whole container on OOM (cgroup v2 memory.oom.group), the
    limit sized from measured use is what protects serving (docs/DESIGN.md #13).
    """
    try:
        Path("/proc/self/oom_score_adj").write_text(f"{OOM_SCORE_ADJ}\n")
    except OSError as exc:
        log.warning("oom_score_adj not raised (%s): an OOM may pick the server first", exc)


def _log_to(path: Path) -> None:
    """Send this process's stdout and stderr (file descriptors 1 and 2) to `path`, appending."""
    sys.stdout.flush()
    sys.stderr.flush()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)


def standby(parser: argparse.ArgumentParser) -> int:
    """Import what a job needs, then wait on stdin for the job: a warm start for local retrains.

    Importing torch, transformers and ONNX Runtime's tools is ~6 s of every cold
    job (`python -X importtime`); the local backend keeps one of these waiting
    between jobs, so a job pays that while the service is idle instead. The line
    it reads is `run`'s arguments (`run --job-id ID --log PATH`); end of input,
    the runner stopping, ends it.

    The imports run at autogroup nice 19: work done ahead must not slow serving.
    Each worker's standby starts 15 s after the server, and at RETRAIN_NICE the two
    took a third of the CPU from 64 clients while they imported (bench/SERVING.md,
    2026-12-01 sixth session). A job's line, read meanwhile, puts the level back.
    """
    from retrain.cpu_share import MAX_NICE, autogroup_nice, set_session_nice

    level = autogroup_nice()
    restore = level if level is not None and set_session_nice(MAX_NICE) else None
    line = ""

    def wait_for_job() -> None:
        nonlocal line
        line = sys.stdin.readline()
        if restore is not None:
            set_session_nice(restore)

    reader = threading.Thread(target=wait_for_job, name="job-line", daemon=True)
    reader.start()
    import retrain.job  # noqa: F401  (the imports are the point)

    sys.stdout.write("ready\n")
    sys.stdout.flush()
    reader.join()
    if not line.strip():
        return 0
    args = parser.parse_args(shlex.split(line))
    if args.command != "run" or args.log is None:
        parser.error(f"standby takes `run --job-id ID --log PATH`, not {line.strip()!r}")
    _log_to(args.log)
    return run(args.job_id)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m retrain", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    job = sub.add_parser("run", help="run one queued retrain job (DATABASE_URL, BENTOML_HOME)")
    job.add_argument("--job-id", required=True)
    job.add_argument("--log", type=Path, help="append stdout and stderr to this file")
    sub.add_parser("standby", help="import, then run the job whose `run` arguments come on stdin")
    sub.add_parser("bootstrap", help="first run: a quick model now, the full one queued")
    args, rest = parser.parse_known_args(argv)
    logging.basicConfig(
        level=logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    for ours in ("retrain", "training", "core", "store"):
        logging.getLogger(ours).setLevel(logging.INFO)
    if args.command in ("run", "standby"):
        _volunteer_for_oom_kill()
    if args.command == "run":
        if args.log is not None:
            _log_to(args.log)
        return run(args.job_id)
    if args.command == "standby":
        return standby(parser)
    from retrain.bootstrap import main as bootstrap

    return bootstrap(rest)


if __name__ == "__main__":
    sys.exit(main())
